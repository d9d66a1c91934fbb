"""Table-driven tests of the planner's parts (controller/graybaggage_controller/plan.py): the situation table,
`run_steps` over the clean-up lists, and the facts read back from status. The plans themselves are checked row
by row in test_plan.py; these rows pin the structure those plans come from."""

from __future__ import annotations

import pytest

from graybaggage_controller import names as n
from graybaggage_controller import plan as p
from graybaggage_controller.plan import Action, Verb, facts_of, go_on, run_steps

from .test_plan import HASH, T0, approved, paused_status, promoting_status, world


def _step(verb: str, waiting: str | None):
    return lambda f: ([Action(Verb(verb), name=verb)], waiting)


@pytest.mark.parametrize("steps, want_names, want_waiting", [
    ([("1", _step("table", None)), ("2", _step("delete", "gray pods left")), ("3", _step("patch", None))],
     ["table", "delete"], "gray pods left"),
    ([("1", _step("table", None)), ("2", _step("delete", None))], ["table", "delete"], None),
    ([("1", _step("table", "first")), ("2", _step("delete", None))], ["table"], "first"),
    ([("1", go_on(_step("table", "not observed yet"))), ("2", _step("delete", None))], ["table", "delete"], None),
    ([], [], None),
], ids=["stops-at-first-not-done-with-its-actions", "all-done", "first-not-done", "go-on-never-waits", "empty"])
def test_run_steps(steps, want_names, want_waiting):
    acts, waiting = run_steps(steps, facts_of(world()))
    assert [a.name for a in acts] == want_names and waiting == want_waiting


RB = {n.ROLLBACK_ANN: HASH["new"]}


@pytest.mark.parametrize("kw, want", [
    (dict(base=False, deleting=True, other_targeting="x"), "missing workload"),
    (dict(other_targeting="rollout-first", deleting=True), "workload targeted by another release"),
    (dict(deleting=True, ann=RB), "deleting"),
    (dict(template="old", status={"phase": "Healthy"}), "healthy: the base runs its stable template"),
    (dict(template="new", stable="new", status=promoting_status()), "healthy: the base runs its stable template"),
    (dict(stable=None, status={}), "healthy: the base runs its stable template"),   # first pass: records it
    (dict(ann=RB, stable_pods=False), "rollback requested"),
    (dict(status={"phase": "Healthy"}), "canary: progressing or paused at a step"),
    (dict(status=promoting_status()), "promoting"),
    (dict(status=paused_status(), ann=approved()), "promoting"),
    (dict(status=paused_status(), steps=[{"pause": {"duration": 10}}], now=T0 + 11), "promoting"),
    (dict(status=paused_status()), "canary: progressing or paused at a step"),
], ids=["missing-first", "taken-before-deleting", "deleting-before-rollback", "healthy", "healthy-after-promote",
        "healthy-first-pass", "rollback", "canary", "promoting-persisted", "promoting-approved",
        "promoting-last-pause-over", "paused"])
def test_situation(kw, want):
    assert p.situation(facts_of(world(**kw)))[0] == want


def test_stable_replicaset_missing_is_a_situation():
    obs = world(status={"phase": "Healthy"})
    obs.replicasets = [rs for rs in obs.replicasets if "old" not in rs["metadata"]["name"]]
    assert p.situation(facts_of(obs))[0] == "stable ReplicaSet missing"


@pytest.mark.parametrize("status, ann, now, want", [
    (paused_status(step=0), None, T0 + 1, dict(same=True, step=0, promoting=False, approved_step=None)),
    (paused_status(step=0), approved(0), T0 + 1, dict(step=1, approved_step=1, started=T0 + 1)),
    (paused_status(step=0), approved(3), T0 + 1, dict(step=0, approved_step=None)),
    ({**paused_status(step=0), "canaryRevision": HASH["old"]}, None, T0 + 1,
     dict(same=False, step=0, started=None)),                             # another template: the steps restart
    (promoting_status(), approved(0), T0 + 1, dict(promoting=True, step=0, approved_step=None)),
], ids=["paused", "approved-this-step", "approval-for-another-step", "persisted-step-of-another-template",
        "promoting-ignores-approvals"])
def test_progress_facts(status, ann, now, want):
    f = facts_of(world(status=status, ann=ann, now=now))
    assert {k: getattr(f, k) for k in want} == want


def test_timed_pause_facts():
    steps = [{"pause": {"duration": 60}}, {"pause": {"duration": 60}}, {"pause": {}}]
    running = facts_of(world(status=paused_status(), steps=steps, now=T0 + 20))
    assert (running.step, running.pause_requeue) == (0, pytest.approx(40))
    over = facts_of(world(status=paused_status(), steps=steps, now=T0 + 130))
    assert (over.step, over.started, over.pause_requeue) == (2, T0 + 120, None)


def test_promote_steps_are_a_to_f_in_order():
    assert [name[:3] for name, _ in p.PROMOTE_STEPS] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"]
    for steps in (p.ROLLBACK_STEPS, p.DELETE_STEPS, p.SETTLE_STEPS):
        names = [name for name, _ in steps]
        assert names.index("(d) no gray pod left") < names.index("(e) unpin the base Services")
        assert names[0].startswith("(a)")
