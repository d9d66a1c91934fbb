"""KruiseMode.manager_down's log lines (the live test covers the refused webhook with the real manager; this covers
the branches it cannot reach as cluster admin: a 403 on the probe). A stub Kube answering each GET."""

from __future__ import annotations

import logging

from graybaggage_controller.kruise_io import KruiseMode
from graybaggage_controller.kube import KubeError

REFUSED = ('Internal error occurred: StorageError: corrupt object ... conversion webhook for rollouts.kruise.io/v1beta1, '
           'Kind=Rollout failed: Post "https://127.0.0.1:1/convert?timeout=30s": dial tcp 127.0.0.1:1: connect: '
           'connection refused')
ROLLOUTS = [{"metadata": {"name": "rollout-a", "namespace": "demo"}}]


class StubKube:
    def __init__(self, answers, events_fail=False):
        self.answers = list(answers)
        self.paths = []
        self.events = []
        self.events_fail = events_fail

    def create(self, kind, namespace, body):
        assert kind == "Event" and namespace == "demo"
        if self.events_fail:
            raise KubeError(403, "events is forbidden", {})
        self.events.append(body)
        return body

    def request(self, method, path, **_):
        self.paths.append(path)
        answer = self.answers.pop(0)
        if isinstance(answer, KubeError):
            raise answer
        return answer


def mode(answers, **kw):
    m = KruiseMode(StubKube(answers, **kw), rec=None, resync=1e-9)
    m._served = "v1beta1"
    return m


def test_refused_is_down_with_one_line_then_one_line_back(caplog):
    m = mode([KubeError(500, REFUSED, {"message": REFUSED})] * 3 + [{"kind": "Rollout"}] * 2)
    with caplog.at_level(logging.INFO, logger="graybaggage_controller.kruise_io"):
        got = [m.manager_down("demo", ROLLOUTS) for _ in range(5)]
    assert got == ["its webhook refuses connections"] * 3 + [None, None]
    assert m.kube.paths[0] == "/apis/rollouts.kruise.io/v1alpha1/namespaces/demo/rollouts/rollout-a"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("Kruise Rollout manager not answering (its webhook refuses")
    assert lines[1] == "Kruise Rollout manager answering again: Kruise mode resumes in demo"
    # one Event per Rollout per transition, about the Rollout (never a write to it)
    assert [(e["type"], e["reason"], e["involvedObject"]["kind"], e["involvedObject"]["name"]) for e in m.kube.events] \
        == [("Warning", "KruiseManagerDown", "Rollout", "rollout-a"), ("Normal", "KruiseManagerAnswering", "Rollout",
                                                                       "rollout-a")]
    assert "its webhook refuses connections" in m.kube.events[0]["message"]


def test_event_not_allowed_is_one_line_and_the_pass_goes_on(caplog):
    m = mode([KubeError(500, REFUSED, {"message": REFUSED})] * 2, events_fail=True)
    with caplog.at_level(logging.INFO, logger="graybaggage_controller.kruise_io"):
        assert [m.manager_down("demo", ROLLOUTS) for _ in range(2)] == ["its webhook refuses connections"] * 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[1].startswith("Event KruiseManagerDown on Rollout demo/rollout-a not posted")


def test_probe_not_allowed_logs_once_and_never_says_down(caplog):
    m = mode([KubeError(403, "forbidden", {"message": "forbidden"})] * 3)
    with caplog.at_level(logging.INFO, logger="graybaggage_controller.kruise_io"):
        assert [m.manager_down("demo", ROLLOUTS) for _ in range(3)] == [None] * 3
    assert [r.getMessage() for r in caplog.records] == [
        "not allowed to get rollouts.rollouts.kruise.io: cannot tell whether Kruise's manager answers (grant get, "
        "see controller/deploy/rbac.yaml)"]


def test_no_rollouts_no_probe():
    m = mode([])
    assert m.manager_down("demo", []) is None and m.kube.paths == []
