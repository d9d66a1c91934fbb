"""cache.py: which reads the watch cache answers, and that a dry pass never writes (pure rows; the idle cost on a
real API server is asserted by tests/benchmarks/test_controller_scale.py::test_tiny_run: 0 LIST)."""
from __future__ import annotations

import pytest

from graybaggage_controller import cache as c
from graybaggage_controller import names as n
from graybaggage_controller.kube import Kube


@pytest.mark.parametrize("selector,parsed", [
    (None, {}),
    ("", {}),
    ("app=a", {"app": "a"}),
    ("app=a,graybaggage.io/lane=gray", {"app": "a", "graybaggage.io/lane": "gray"}),
    (" app = a ", {"app": "a"}),
    ("app==a", None),             # == is valid Kubernetes syntax, but not ours: the API answers it
    ("app!=a", None),             # inequality
    ("app", None),                # existence
    ("!app", None),
    ("app in (a,b)", None),       # set-based
    ("=a", None),
])
def test_parse_equality_selector(selector, parsed):
    assert c.parse_equality_selector(selector) == parsed


def obj(kind, name, ns="ns", labels=None):
    return {"kind": kind, "metadata": {"name": name, "namespace": ns, "labels": labels or {}}}


class _NoAPI:
    """An ApiClient stand-in that fails the test if a read reaches the API."""
    def __getattr__(self, item):
        raise AssertionError(f"read went to the API ({item})")


def cached(objects):
    indexes = c.Indexes()
    by_kind: dict = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {}).setdefault(o["metadata"]["namespace"], []).append(o)
    indexes.attach({ix.index_id: by_kind.get(ix.kind, {}) for ix in c.INDEXED})
    return c.CachedKube(Kube(_NoAPI()), indexes)


WORLD = [obj("Deployment", "a", labels={"app": "a"}), obj("Deployment", "a-gray", labels={"app": "a", n.LANE_LABEL: "gray"}),
         obj("Deployment", "x", ns="other"), obj("Pod", "a-gray-1", labels={"app": "a", n.LANE_LABEL: "gray"}),
         obj("ConfigMap", n.TABLE_CONFIGMAP), obj("GrayRelease", "rollout-a")]


@pytest.mark.parametrize("call,names", [
    (("list", "Deployment", "ns", None), ["a", "a-gray"]),                    # one namespace only
    (("list", "Deployment", "ns", "app=a"), ["a", "a-gray"]),
    (("list", "Deployment", "ns", f"app=a,{n.LANE_LABEL}=gray"), ["a-gray"]),
    (("list", "Deployment", "empty", None), []),                              # nothing there: empty, not the API
    (("list", "Pod", "ns", f"app=a,{n.LANE_LABEL}=gray"), ["a-gray-1"]),      # gray pods: the index holds them
    (("get", "Deployment", "ns", "a"), ["a"]),
    (("get", "Deployment", "ns", "missing"), []),                             # absent: None, not the API
    (("get", "ConfigMap", "ns", n.TABLE_CONFIGMAP), [n.TABLE_CONFIGMAP]),     # the one ConfigMap indexed
    (("get", "GrayRelease", "ns", "rollout-a"), ["rollout-a"]),
])
def test_reads_the_cache_answers(call, names):
    verb, kind, ns, arg = call
    kube = cached(WORLD)
    got = kube.list(kind, ns, arg) if verb == "list" else kube.get(kind, ns, arg)
    got = got if isinstance(got, list) else ([got] if got else [])
    assert [o["metadata"]["name"] for o in got] == names
    assert kube.served == 1


@pytest.mark.parametrize("call", [
    ("list", "Pod", "ns", "app=a"),                  # the index holds only gray pods: a wider read is the API's
    ("list", "Deployment", "ns", "app!=a"),          # a selector the cache does not evaluate
    ("list", "ConfigMap", "ns", None),               # only one ConfigMap name is indexed
    ("get", "ConfigMap", "ns", "someone-elses"),
    ("get", "Pod", "ns", "a-gray-1"),
    ("list", "Deployment", None, None),              # all namespaces
    ("get", "MutatingWebhookConfiguration", None, "graybaggage"),   # a kind not indexed
])
def test_reads_the_cache_cannot_answer_go_to_the_api(call):
    verb, kind, ns, arg = call
    kube = cached(WORLD)
    with pytest.raises(AssertionError, match="went to the API"):
        kube.list(kind, ns, arg) if verb == "list" else kube.get(kind, ns, arg)


def test_copies_so_a_pass_cannot_change_the_cache():
    kube = cached(WORLD)
    kube.get("Deployment", "ns", "a")["metadata"]["labels"]["app"] = "changed"
    assert kube.get("Deployment", "ns", "a")["metadata"]["labels"]["app"] == "a"


def test_not_attached_nothing_is_cached():
    kube = c.CachedKube(Kube(_NoAPI()), c.Indexes())
    with pytest.raises(AssertionError, match="went to the API"):
        kube.list("Deployment", "ns")


@pytest.mark.parametrize("write", [
    lambda k: k.create("Service", "ns", {}),
    lambda k: k.replace("Service", "ns", "a", {}),
    lambda k: k.patch("GrayRelease", "ns", "a", {"status": {}}, sub="status"),
    lambda k: k.delete("Deployment", "ns", "a-gray"),
])
def test_every_write_raises_would_write(write):
    with pytest.raises(c.WouldWrite):
        write(cached(WORLD))


def test_would_write_passes_through_best_effort_handlers():
    """A pass's `except Exception` blocks (events, entry sync) must not swallow the signal."""
    with pytest.raises(c.WouldWrite):
        try:
            raise c.WouldWrite("x")
        except Exception:       # noqa: BLE001 - what the pass's best-effort blocks do
            pytest.fail("swallowed")


class _Reconciler:
    def __init__(self, kube):
        self.kube, self.events, self.state = kube, None, {"shared": []}

    def _apply(self, ns, release, act, plan):
        self.state["shared"].append(act.verb)


class _Act:
    def __init__(self, verb):
        self.verb, self.kind, self.name = verb, "Service", "a"


def test_dry_twin_shares_state_and_raises_on_writes():
    passes = c.Passes(Kube(_NoAPI()), c.Indexes())
    rec = _Reconciler(Kube(_NoAPI()))
    twin = passes.dry(rec)
    assert twin.kube is passes.kube and twin.state is rec.state
    twin._apply("ns", "r", _Act("table"), None)          # the table sync runs (its writes raise in the kube)
    assert rec.state["shared"] == ["table"]
    with pytest.raises(c.WouldWrite):
        twin._apply("ns", "r", _Act("patch"), None)       # any other action is a write: raised before it runs
    with pytest.raises(c.WouldWrite):
        twin.events({}, "Normal", "Paused", "x")


@pytest.mark.parametrize("ready,dry_result,expect,api_calls", [
    (False, "dry", "api", 1),             # indexes not filled yet: the API, always
    (True, "dry", "dry", 0),              # nothing to write: served from the cache
    (True, c.WouldWrite("patch"), "api", 1),   # a write: the pass again, against the API
])
def test_run(ready, dry_result, expect, api_calls):
    indexes = c.Indexes()
    if ready:
        indexes.attach({ix.index_id: {} for ix in c.INDEXED})
    passes = c.Passes(Kube(_NoAPI()), indexes)
    calls = []

    def dry():
        if isinstance(dry_result, BaseException):
            raise dry_result
        return dry_result

    def api():
        calls.append(1)
        return "api"
    assert passes.run(dry, api) == expect
    assert len(calls) == api_calls == passes.api_passes
