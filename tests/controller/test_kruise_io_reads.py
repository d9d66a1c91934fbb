"""What Kruise mode reads on every GrayRelease pass, counted on the real API server (with or without Kruise's
CRDs installed by an earlier test of the session): API discovery at most once per DISCOVERY_TTL, and
`managed()` is at most one Rollout LIST, not a whole Kruise pass."""

from __future__ import annotations

import pytest

from graybaggage_controller import kruise_io
from graybaggage_controller.kruise_io import KruiseMode

DISCOVERY = ("/apis/rollouts.kruise.io/v1beta1", "/apis/rollouts.kruise.io/v1alpha1")


class Counting:
    """The real Kube client, with every request's method and path recorded."""

    def __init__(self, kube):
        self.kube, self.calls = kube, []

    def request(self, method, path, *args, **kwargs):
        self.calls.append((method, path))
        return self.kube.request(method, path, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kube, name)


@pytest.mark.parametrize("ttl,asked_again", [
    (kruise_io.DISCOVERY_TTL, False),   # the first pass asks; the next two do not
    (0.0, True),                        # no memory: every pass asks again (what the scale benchmark measured)
])
def test_discovery_is_asked_once_per_ttl(gb_kube, monkeypatch, ttl, asked_again):
    monkeypatch.setattr(kruise_io, "DISCOVERY_TTL", ttl)
    kube = Counting(gb_kube)
    mode = KruiseMode(kube, rec=None)
    per_pass = []
    for _ in range(3):
        before = len(kube.calls)
        mode.managed("default")
        per_pass.append(kube.calls[before:])
    discovery = [[p for _m, p in calls if p in DISCOVERY] for calls in per_pass]
    assert discovery[0] in (list(DISCOVERY[:1]), list(DISCOVERY))    # v1beta1 served, or neither/only v1alpha1
    assert discovery[1:] == ([discovery[0]] * 2 if asked_again else [[], []])
    for calls in per_pass:   # besides discovery: at most one LIST of the namespace's Rollouts
        rest = [p for m, p in calls if p not in DISCOVERY]
        assert all(m == "GET" for m, _p in calls) and len(rest) <= 1, calls
        assert all(p.endswith("/namespaces/default/rollouts") for p in rest), rest
