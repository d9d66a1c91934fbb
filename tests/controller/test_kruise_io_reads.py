"""What Kruise mode reads on every GrayRelease pass, counted on the real API server (no Kruise installed here):
API discovery at most once per DISCOVERY_TTL, and `managed()` is one Rollout LIST, not a whole Kruise pass."""

from __future__ import annotations

import pytest

from graybaggage_controller import kruise_io
from graybaggage_controller.kruise_io import KruiseMode


class Counting:
    """The real Kube client, with every request's method and path recorded."""

    def __init__(self, kube):
        self.kube, self.calls = kube, []

    def request(self, method, path, *args, **kwargs):
        self.calls.append((method, path))
        return self.kube.request(method, path, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kube, name)


@pytest.mark.parametrize("ttl,discovery_gets", [
    (kruise_io.DISCOVERY_TTL, 2),   # the first pass asks v1beta1 and v1alpha1 (both 404); the next two ask nothing
    (0.0, 6),                       # no memory: every pass asks both again (what the scale benchmark measured)
])
def test_discovery_is_asked_once_per_ttl(gb_kube, monkeypatch, ttl, discovery_gets):
    monkeypatch.setattr(kruise_io, "DISCOVERY_TTL", ttl)
    kube = Counting(gb_kube)
    mode = KruiseMode(kube, rec=None)
    assert [mode.managed("default") for _ in range(3)] == [{}, {}, {}]
    assert [p for m, p in kube.calls if p.startswith("/apis/rollouts.kruise.io/")] == \
        ["/apis/rollouts.kruise.io/v1beta1", "/apis/rollouts.kruise.io/v1alpha1"] * (discovery_gets // 2)
    assert all(m == "GET" for m, _ in kube.calls) and len(kube.calls) == discovery_gets
