"""KruiseMode.reconcile's order of writes for the entry Ingresses, with stub I/O (the live test shows the same
against the real manager; this covers the races it cannot force): each Ingress write comes before the lane table,
a conflict (409) stops the pass before the table, a canary Ingress Kruise deleted meanwhile (404) is skipped."""

from __future__ import annotations

import contextlib

import pytest

from graybaggage_controller import kruise as k
from graybaggage_controller.kruise_io import KruiseMode, LostRace
from graybaggage_controller.kube import KubeError

from .test_kruise import ingress, kruise_canary, routed, traffic_routing, world


class Stub:
    def __init__(self, put_error=None):
        self.calls = []
        self.put_error = put_error

    # the Kube verbs a pass uses
    def get(self, kind, ns, name):
        return None

    def create(self, kind, ns, body):
        self.calls.append(("create", kind, body["metadata"]["name"]))

    def patch(self, kind, ns, name, body, **_):
        self.calls.append(("patch", kind, name))

    def delete(self, kind, ns, name, **_):
        self.calls.append(("delete", kind, name))

    def replace(self, kind, ns, name, body):
        self.calls.append(("PUT", kind, name))
        if self.put_error:
            raise KubeError(self.put_error, "stub", {})
        return body

    # the Reconciler's part
    @contextlib.contextmanager
    def lock(self, ns):
        yield

    def sync_table(self, ns):
        self.calls.append(("table",))

    def sync_entries(self, ns):
        self.calls.append(("entries",))


def mode(seen, put_error=None):
    stub = Stub(put_error)
    m = KruiseMode(stub, stub)
    m.observe = lambda ns: seen
    m.manager_down = lambda ns, rollouts: None
    return m, stub


def seen(ingresses, **over):
    w = world(trs=[traffic_routing(ingress=("spring-cloud-a", "higress"))], **over)
    return dict(w, ingresses=ingresses)


def test_joining_ingresses_before_the_table():
    m, stub = mode(seen([ingress(), kruise_canary()]))
    m.reconcile("default")
    order = [c[:3] if c[0] != "table" else c for c in stub.calls]
    assert order.index(("PUT", "Ingress", "spring-cloud-a-canary")) < order.index(("table",))
    assert order.index(("PUT", "Ingress", "spring-cloud-a")) < order.index(("table",))
    assert order.index(("create", "Service", "spring-cloud-a-gray")) < order.index(("PUT", "Ingress",
                                                                                    "spring-cloud-a-canary"))


def test_leaving_undo_before_the_table():
    from .test_kruise import rollout
    m, stub = mode(seen(routed(lanes={"gray": {"spring-cloud-a": "spring-cloud-a-gray"}}),
                        rollouts=[rollout(reason="Finalising")]))
    m._lanes["default"] = {"gray": {"spring-cloud-a": "spring-cloud-a-gray"}}   # the last pass had the lane
    p = m.reconcile("default")
    assert p.lanes == {} and set(p.ingresses) == {"spring-cloud-a", "spring-cloud-a-canary"}
    order = [c[:3] for c in stub.calls]
    assert max(order.index(("PUT", "Ingress", x)) for x in p.ingresses) < order.index(("table",))


def test_conflict_stops_the_pass_before_the_table():
    m, stub = mode(seen([ingress(), kruise_canary()]), put_error=409)
    with pytest.raises(LostRace):
        m.reconcile("default")
    assert ("table",) not in stub.calls and "default" not in m._lanes


def test_canary_ingress_gone_meanwhile_is_skipped():
    m, stub = mode(seen([ingress(), kruise_canary()]), put_error=404)
    m.reconcile("default")
    assert ("table",) in stub.calls


def test_entry_summary_logged_once(caplog):
    import logging
    m, _ = mode(seen([ingress(), kruise_canary()]))
    with caplog.at_level(logging.INFO, logger="graybaggage_controller.kruise_io"):
        m.reconcile("default")
        m.reconcile("default")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Kruise entry default/")]
    assert lines == ["Kruise entry default/spring-cloud-a-canary Routed: spring-cloud-a-canary: header x-mse-tag: "
                     "gray, backend spring-cloud-a-gray; spring-cloud-a strips x-mse-tag"], lines
    assert k.entry_summary([]) == "no entry Ingress"
