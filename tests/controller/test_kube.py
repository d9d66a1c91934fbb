"""kube.py, the controller's one I/O layer: the error classes the API server's answers map to, `retry_on_conflict`
(client-go's RetryOnConflict) as a table of pure rows, then the same against the real kube-apiserver, where a
conflict is what it is in production: a write carrying a stale resourceVersion."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from graybaggage_controller.kube import Conflict, Kube, KubeError, NotFound, error_for, retry_on_conflict

# ---------------------------------------------------------------------------------------------- pure rows


@pytest.mark.parametrize("status,cls", [
    (404, NotFound),        # a missing object or API: `except NotFound`, and `e.status == 404` still holds
    (409, Conflict),        # stale resourceVersion / name taken
    (403, KubeError),
    (422, KubeError),
    (500, KubeError),
])
def test_error_for(status, cls):
    e = error_for(status, "m", {"message": "m"})
    assert type(e) is cls and isinstance(e, KubeError) and e.status == status and e.body == {"message": "m"}


@dataclasses.dataclass
class Row:
    rule: str
    answers: list[Any]                  # what fn does on each call: raise it (an exception) or return it
    calls: int                          # how many times fn was called
    result: Any = None                  # what retry_on_conflict returned ...
    raises: type[BaseException] | None = None   # ... or raised
    attempts: int = 5
    retriable: tuple[type[BaseException], ...] = (Conflict,)


C, NF = Conflict(409, "stale"), NotFound(404, "gone")
ROWS = [
    Row("no conflict: one call, its value returned", ["ok"], 1, "ok"),
    Row("a conflict is retried with a fresh call", [C, "ok"], 2, "ok"),
    Row("conflicts up to the last attempt still succeed", [C, C, C, C, "ok"], 5, "ok"),
    Row("every attempt conflicts: the last Conflict is raised after `attempts` calls", [C] * 9, 5, raises=Conflict),
    Row("attempts=1 never retries", [C, "ok"], 1, raises=Conflict, attempts=1),
    Row("NotFound is no conflict: raised at once", [NF, "ok"], 1, raises=NotFound),
    Row("other API errors are raised at once", [KubeError(500, "boom"), "ok"], 1, raises=KubeError),
    Row("non-API errors are raised at once", [ValueError("bug"), "ok"], 1, raises=ValueError),
    Row("`retriable` widens what is retried (a write racing a delete)", [NF, C, "ok"], 3, "ok",
        retriable=(Conflict, NotFound)),
    Row("... and exhausted, the last of them is raised", [C, NF], 2, raises=NotFound, attempts=2,
        retriable=(Conflict, NotFound)),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.rule for r in ROWS])
def test_retry_on_conflict(row: Row):
    answers, calls, sleeps = iter(row.answers), [], []

    def fn():
        calls.append(1)
        a = next(answers)
        if isinstance(a, BaseException):
            raise a
        return a
    if row.raises:
        with pytest.raises(row.raises) as info:
            retry_on_conflict(fn, row.attempts, retriable=row.retriable, sleep=sleeps.append)
        assert info.type is row.raises
    else:
        assert retry_on_conflict(fn, row.attempts, retriable=row.retriable, sleep=sleeps.append) == row.result
    assert len(calls) == row.calls
    assert len(sleeps) == row.calls - 1            # a pause between two calls, none after the last


@pytest.mark.parametrize("kw,want", [
    ({}, [0.01] * 4),                                               # client-go DefaultRetry: 10 ms, factor 1
    ({"factor": 5.0}, [0.01, 0.05, 0.25, 1.25]),                    # client-go DefaultBackoff shape
    ({"delay": 0.0}, [0.0] * 4),
])
def test_retry_on_conflict_backoff(kw, want):
    sleeps: list[float] = []
    with pytest.raises(Conflict):
        retry_on_conflict(lambda: (_ for _ in ()).throw(C), 5, sleep=sleeps.append, **kw)
    assert len(sleeps) == len(want)
    for got, base in zip(sleeps, want):
        assert base <= got <= base * 1.1 + 1e-12                     # jitter: up to +10 %


def test_retry_on_conflict_needs_an_attempt():
    with pytest.raises(ValueError):
        retry_on_conflict(lambda: None, 0)


@pytest.mark.parametrize("args,want", [
    (("Service", "demo", "a"), "/api/v1/namespaces/demo/services/a"),
    (("GrayRelease", "demo", "a", "status"), "/apis/graybaggage.io/v1alpha1/namespaces/demo/grayreleases/a/status"),
    (("GatewayClass", None, "gw"), "/apis/gateway.networking.k8s.io/v1/gatewayclasses/gw"),
    (("Lease", "kube system", None), "/apis/coordination.k8s.io/v1/namespaces/kube%20system/leases"),
    (("Rollout/v1alpha1", "demo"), "/apis/rollouts.kruise.io/v1alpha1/namespaces/demo/rollouts"),
])
def test_paths(args, want):
    assert Kube.path(*args) == want


# ---------------------------------------------------------------------------------------------- real API server

CORE_KINDS = ["Deployment", "ReplicaSet", "Service", "Pod", "ConfigMap", "Secret", "Event", "Lease", "Ingress",
              "MutatingWebhookConfiguration"]


def _cm(ns: str, name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def test_errors_and_paths_on_the_api_server(k8s_cluster, k8s_namespace):
    kube, ns = Kube(k8s_cluster.api_client()), k8s_namespace
    for kind in CORE_KINDS:                         # every built-in kind's path is served
        assert isinstance(kube.list(kind, ns), list), kind
    assert kube.get("ConfigMap", ns, "missing") is None
    assert kube.delete("ConfigMap", ns, "missing") is False
    with pytest.raises(NotFound) as nf:
        kube.request("GET", Kube.path("ConfigMap", ns, "missing"))
    assert nf.value.status == 404
    first = kube.create("ConfigMap", ns, _cm(ns, "c", a="1"))
    with pytest.raises(Conflict) as taken:          # AlreadyExists is a 409 too
        kube.create("ConfigMap", ns, _cm(ns, "c", a="2"))
    assert taken.value.status == 409
    kube.replace("ConfigMap", ns, "c", dict(first, data={"a": "2"}))
    with pytest.raises(Conflict) as stale:          # first's resourceVersion is stale now
        kube.replace("ConfigMap", ns, "c", dict(first, data={"a": "3"}))
    assert stale.value.status == 409 and (stale.value.body or {}).get("reason") == "Conflict"
    with pytest.raises(NotFound):                   # an API group nobody serves: the whole API is missing
        kube.request("GET", f"/apis/never-installed.graybaggage.io/v1/namespaces/{ns}/things")


def test_retry_on_conflict_loses_no_update(k8s_cluster, k8s_namespace):
    """Read-modify-write of a ConfigMap while another writer slips in between our read and our write: the
    first write conflicts (stale resourceVersion), the retry reads again and both updates survive."""
    kube, ns = Kube(k8s_cluster.api_client()), k8s_namespace
    kube.create("ConfigMap", ns, _cm(ns, "t", base="1"))
    calls = []

    def add_ours():
        cm = kube.get("ConfigMap", ns, "t")
        calls.append(cm["metadata"]["resourceVersion"])
        if len(calls) == 1:                         # the other writer, between our read and our write
            other = kube.get("ConfigMap", ns, "t")
            kube.replace("ConfigMap", ns, "t", dict(other, data={**other["data"], "theirs": "1"}))
        return kube.replace("ConfigMap", ns, "t", dict(cm, data={**cm["data"], "ours": "1"}))
    out = retry_on_conflict(add_ours)
    assert len(calls) == 2 and calls[0] != calls[1]
    assert out["data"] == {"base": "1", "theirs": "1", "ours": "1"}
    assert kube.get("ConfigMap", ns, "t")["data"] == {"base": "1", "theirs": "1", "ours": "1"}


def test_retry_on_conflict_gives_up_with_the_servers_conflict(k8s_cluster, k8s_namespace):
    """A write that never reads again (the bug retry_on_conflict's callers must not have) conflicts on every
    attempt: exactly `attempts` PUTs, then the API server's own 409 is raised; the other writer's value stays."""
    kube, ns = Kube(k8s_cluster.api_client()), k8s_namespace
    stale = kube.create("ConfigMap", ns, _cm(ns, "s", v="0"))
    current = kube.get("ConfigMap", ns, "s")
    kube.replace("ConfigMap", ns, "s", dict(current, data={"v": "theirs"}))
    calls = []

    def write_stale():
        calls.append(1)
        return kube.replace("ConfigMap", ns, "s", dict(stale, data={"v": "ours"}))
    with pytest.raises(Conflict) as info:
        retry_on_conflict(write_stale, attempts=3)
    assert len(calls) == 3 and info.value.status == 409
    assert kube.get("ConfigMap", ns, "s")["data"] == {"v": "theirs"}
