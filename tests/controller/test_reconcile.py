"""The executor and the status writer of reconcile.Reconciler, against a recording stand-in for Kube (one row
per verb / rule). The live tests (test_live.py and others) run the same code against the real API server."""

from __future__ import annotations

import pytest

from graybaggage_controller import desired as d
from graybaggage_controller.kube import Conflict, NotFound
from graybaggage_controller.plan import Action, Plan, Verb
from graybaggage_controller.reconcile import Reconciler

NS = "demo"


class Recorder:
    """Records the Kube verbs called; `objects` answers get(); `fail` maps a verb to the error it raises."""

    def __init__(self, objects=None, fail=None):
        self.calls: list[tuple] = []
        self.objects = objects or {}
        self.fail = fail or {}

    def _call(self, verb, *args):
        self.calls.append((verb, *args))
        if verb in self.fail:
            raise self.fail[verb]

    def get(self, kind, ns, name):
        self.calls.append(("get", kind, ns, name))
        return self.objects.get((kind, name))

    def create(self, kind, ns, body):
        self._call("create", kind, ns, body["metadata"]["name"])

    def replace(self, kind, ns, name, body):
        self._call("replace", kind, ns, name, body)

    def delete(self, kind, ns, name):
        self._call("delete", kind, ns, name)

    def patch(self, kind, ns, name, body, content_type=None, sub=None):
        self._call("patch", kind, ns, name, body, content_type, sub)


def svc(name="a-gray", **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS,
                                                                "resourceVersion": "3"},
            "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}], **spec}}


WANT = svc(selector={"app": "a", "lane": "gray"})
WANT["metadata"]["ownerReferences"] = [{"kind": "GrayRelease", "name": "r", "uid": "u"}]
CURRENT = svc(clusterIP="10.96.0.9")

EXEC_ROWS = [
    # (rule, action, objects, fail, expected calls)
    ("create", Action(Verb.CREATE, "Service", "a-gray", WANT), {}, {}, [("create", "Service", NS, "a-gray")]),
    ("create of an existing name is no error", Action(Verb.CREATE, "Service", "a-gray", WANT), {},
     {"create": Conflict(409, "exists")}, [("create", "Service", NS, "a-gray")]),
    ("update of a missing object creates it", Action(Verb.UPDATE, "Service", "a-gray", WANT), {}, {},
     [("get", "Service", NS, "a-gray"), ("create", "Service", NS, "a-gray")]),
    ("update replaces with the pure merge of what was read", Action(Verb.UPDATE, "Service", "a-gray", WANT),
     {("Service", "a-gray"): CURRENT}, {},
     [("get", "Service", NS, "a-gray"), ("replace", "Service", NS, "a-gray",
                                         d.merged_for_update("Service", CURRENT, WANT))]),
    ("delete", Action(Verb.DELETE, "Service", "a-gray"), {}, {}, [("delete", "Service", NS, "a-gray")]),
    ("merge patch", Action(Verb.PATCH, "Deployment", "a", {"spec": {"paused": False}}), {}, {},
     [("patch", "Deployment", NS, "a", {"spec": {"paused": False}}, "application/merge-patch+json", None)]),
    ("merge patch of a deleted object is no error", Action(Verb.PATCH, "Deployment", "a", {}), {},
     {"patch": NotFound(404, "gone")}, [("patch", "Deployment", NS, "a", {}, "application/merge-patch+json", None)]),
    ("json patch", Action(Verb.JSONPATCH, "Deployment", "a", [{"op": "remove", "path": "/x"}]), {}, {},
     [("patch", "Deployment", NS, "a", [{"op": "remove", "path": "/x"}], "application/json-patch+json", None)]),
    ("patch of the release itself", Action(Verb.PATCH_RELEASE, "", "r", {"metadata": {}}), {}, {},
     [("patch", "GrayRelease", NS, "r", {"metadata": {}}, "application/merge-patch+json", None)]),
]


def test_every_verb_has_an_executor():
    assert set(Reconciler._EXECUTE) == set(Verb)


@pytest.mark.parametrize("rule,act,objects,fail,calls", EXEC_ROWS, ids=[r[0] for r in EXEC_ROWS])
def test_execute_dispatches_on_the_verb(rule, act, objects, fail, calls):
    kube = Recorder(objects, fail)
    Reconciler(kube)._apply(NS, "r", act, Plan([act], {}, {}, []))
    assert kube.calls == calls


def test_an_unknown_verb_is_an_error_not_a_silent_skip():
    with pytest.raises(ValueError):
        Reconciler(Recorder())._apply(NS, "r", Action("bogus"), Plan([], {}, {}, []))   # type: ignore[arg-type]


def obj(kind, status):
    return {"kind": kind, "metadata": {"name": "x", "namespace": NS}, "status": status}


COND = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
STATUS_ROWS = [
    # (rule, kind, old status, want, patch body written or None)
    ("unchanged: nothing written", "Lane", {"phase": "Ready"}, {"phase": "Ready"}, None),
    ("kopf's bookkeeping and condition timestamps are not a change", "GrayRelease",
     {"phase": "Paused", "kopf": {"progress": {}}, "conditions": [COND]},
     {"phase": "Paused", "conditions": [dict(COND, lastTransitionTime="2026-02-02T00:00:00Z")]}, None),
    ("a change is written", "Lane", {"phase": "Ready"}, {"phase": "Degraded"}, {"phase": "Degraded"}),
    ("a key no longer wanted is nulled (kopf's left alone)", "Lane", {"phase": "Ready", "message": "m", "kopf": {}},
     {"phase": "Ready"}, {"phase": "Ready", "message": None}),
    ("a map's dropped entries are nulled (merge patch merges maps)", "GrayRelease",
     {"routes": {"a": "a-gray", "b": "b-gray"}}, {"routes": {"a": "a-gray"}}, {"routes": {"a": "a-gray", "b": None}}),
    ("a map emptied has every entry nulled", "GrayRelease", {"routes": {"a": "a-gray"}}, {"routes": {}},
     {"routes": {"a": None}}),
    ("a Lane's entry detail that lost a key (Ingress -> HTTPRoute entry) has it nulled", "Lane",
     {"entry": {"route": "Ingress/a", "canary": "Ingress/a-gray", "backend": "a-gray"}},
     {"entry": {"route": "HTTPRoute/a", "backend": "a-gray"}},
     {"entry": {"route": "HTTPRoute/a", "backend": "a-gray", "canary": None}}),
    ("a map no longer wanted at all is nulled whole", "Lane", {"phase": "Ready", "entry": {"route": "HTTPRoute/a"}},
     {"phase": "Ready"}, {"phase": "Ready", "entry": None}),
]


@pytest.mark.parametrize("rule,kind,old,want,body", STATUS_ROWS, ids=[r[0] for r in STATUS_ROWS])
def test_one_status_writer(rule, kind, old, want, body):
    kube = Recorder()
    wrote = Reconciler(kube)._write_status(kind, obj(kind, old), want)
    assert wrote is (body is not None)
    assert kube.calls == ([("patch", kind, NS, "x", {"status": body}, None, "status")] if body is not None else [])


def test_status_of_a_deleted_object_is_no_error():
    kube = Recorder(fail={"patch": NotFound(404, "gone")})
    assert Reconciler(kube)._write_status("Lane", obj("Lane", {}), {"phase": "Ready"}) is True


def test_webhook_configuration_created_meanwhile_by_another_replica_is_merged_not_lost():
    """Two replicas start at once: ours finds none, the other creates it first (409), ours reads it again and
    replaces the webhooks (labels merged) on the other's resourceVersion instead of failing its startup."""
    kind = "MutatingWebhookConfiguration"
    theirs = {"metadata": {"name": "w", "resourceVersion": "5", "labels": {"b": "2"}}, "webhooks": [{"name": "old"}]}

    class Racing(Recorder):
        def create(self, kind, ns, body):
            self.calls.append(("create", kind, ns, body["metadata"]["name"]))
            self.objects[(kind, "w")] = theirs
            raise Conflict(409, "already exists")
    kube = Racing()
    Reconciler(kube).apply_webhook_configuration({"metadata": {"name": "w", "labels": {"a": "1"}},
                                                  "webhooks": [{"name": "new"}]})
    assert kube.calls == [("get", kind, None, "w"), ("create", kind, None, "w"), ("get", kind, None, "w"),
                          ("replace", kind, None, "w", {"metadata": {"name": "w", "resourceVersion": "5",
                                                                     "labels": {"b": "2", "a": "1"}},
                                                        "webhooks": [{"name": "new"}]})]
