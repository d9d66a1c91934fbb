"""`kubectl graybaggage status/get` for Kruise-mode lanes: the pure rows and their formatting, one row per rule.
The live check (real Kruise Rollout manager, full and view-like RBAC) is in test_kruise_live.py."""

from __future__ import annotations

import pytest

from graybaggage_controller import cli
from graybaggage_controller import kruise as k
from graybaggage_controller import names as n

NS = "demo"


def view(rollout="rollout-a", deployment="spring-cloud-a", tag="gray", member=True, reason="Member", message="m"):
    return k.RolloutView(rollout, deployment, tag, "higress-traffic", "spring-cloud-a-x1", "h2", member, reason, message)


def lane_svc(name="spring-cloud-a-gray", rollout="rollout-a", tag="gray"):
    return {"metadata": {"name": name, "namespace": NS, "labels": {k.ROLLOUT_LABEL: rollout, n.LANE_LABEL: tag}},
            "spec": {"selector": {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: "h2"}}}


def base_svc(name="spring-cloud-a", pinned_by="kruise:rollout-a", h="h1"):
    ann = {n.PINNED_BY_ANN: pinned_by} if pinned_by else {}
    sel = {"app": name} | ({n.POD_TEMPLATE_HASH: h} if pinned_by else {})
    return {"metadata": {"name": name, "namespace": NS, "annotations": ann}, "spec": {"selector": sel}}


TABLE = {"lanes": {"gray": {"routes": {"spring-cloud-a": "spring-cloud-a-gray"}}}}


def one(views, services, table=TABLE, known=True):
    rows = cli.kruise_rows(NS, views, services, table, known)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("rule,views,services,table,known,want", [
    ("member: lane Service, pinned base with its hash, routed in the table",
     [view()], [lane_svc(), base_svc()], TABLE, True,
     {"reason": "Member", "lane": "gray", "laneServices": ["spring-cloud-a-gray"],
      "basePinned": ["spring-cloud-a (h1)"], "inTable": True}),
    ("not a member yet: lane Service exists, table does not route it",
     [view(member=False, reason="CanaryNotReady")], [lane_svc(), base_svc()], {"lanes": {}}, True,
     {"reason": "CanaryNotReady", "inTable": False, "laneServices": ["spring-cloud-a-gray"]}),
    ("no table published: not in table",
     [view(reason="Finalising", member=False)], [lane_svc()], None, True, {"inTable": False, "basePinned": []}),
    ("table unreadable: in table unknown (None)",
     [view()], [lane_svc()], None, False, {"inTable": None}),
    ("a GrayRelease's pin is not shown as the Rollout's",
     [view()], [lane_svc(), base_svc(pinned_by="grayrelease:gr-a")], TABLE, True, {"basePinned": []}),
    ("unpinned base: empty list",
     [view(reason="NoCanary", member=False)], [base_svc(pinned_by=None)], {"lanes": {}}, True,
     {"basePinned": [], "laneServices": [], "inTable": False}),
    ("services unreadable: lane Services and pins unknown (None)",
     [view()], None, TABLE, True, {"laneServices": None, "basePinned": None, "inTable": True}),
])
def test_kruise_rows(rule, views, services, table, known, want):
    row = one(views, services, table, known)
    assert {key: row[key] for key in want} == want, rule


def test_rollouts_unreadable_rows_from_our_services():
    rows = cli.kruise_rows(NS, None, [lane_svc(), base_svc(), base_svc("spring-cloud-b", pinned_by=None)], TABLE)
    assert rows == [{"namespace": NS, "rollout": "rollout-a", "workload": None, "lane": "gray", "reason": "?",
                     "message": "", "laneServices": ["spring-cloud-a-gray"], "basePinned": ["spring-cloud-a (h1)"],
                     "inTable": True}]


def test_another_rollouts_lane_service_is_not_this_ones():
    rows = cli.kruise_rows(NS, [view()], [lane_svc(name="spring-cloud-c-gray", rollout="rollout-c")], TABLE)
    assert [(r["rollout"], r["reason"], r["laneServices"]) for r in rows] == [
        ("rollout-a", "Member", []), ("rollout-c", "NoRollout", ["spring-cloud-c-gray"])]


def test_leftovers_of_a_deleted_rollout_are_a_row():
    row = one([], [lane_svc()])
    assert row["reason"] == "NoRollout" and row["laneServices"] == ["spring-cloud-a-gray"]


def test_table_block_formats_unknowns_booleans_lists_and_notes():
    rows = cli.kruise_rows(NS, [view(), view("rollout-b", "spring-cloud-b", member=False, reason="NoCanary",
                                             message="no canary Deployment")],
                           [lane_svc(), base_svc()], TABLE)
    text = cli.kruise_table(rows, all_namespaces=False, notes=["not allowed to list deployments in namespace demo"])
    lines = text.splitlines()
    assert lines[0] == "Kruise Rollouts (Kruise mode):"
    assert lines[1].split() == ["ROLLOUT", "WORKLOAD", "LANE", "REASON", "IN", "TABLE", "LANE", "SERVICES", "BASE",
                                "PINNED", "MESSAGE"]
    assert lines[2].split()[:8] == ["rollout-a", "spring-cloud-a", "gray", "Member", "yes", "spring-cloud-a-gray",
                                    "spring-cloud-a", "(h1)"]
    assert lines[3].split()[:7] == ["rollout-b", "spring-cloud-b", "gray", "NoCanary", "no", "-", "-"]
    assert lines[4] == "(not allowed to list deployments in namespace demo)"
    wide = cli.kruise_table(rows, all_namespaces=True).splitlines()
    assert wide[1].startswith("NAMESPACE") and wide[2].startswith("demo ")
    unknown = cli.kruise_table(cli.kruise_rows(NS, [view()], None, None, False), False).splitlines()
    assert unknown[2].split()[4:7] == ["?", "?", "?"]
    assert cli.kruise_table([], False).splitlines()[1] == "  none"


def test_detail():
    text = cli.kruise_detail(one([view()], [lane_svc(), base_svc()]))
    assert "Kind:          Rollout (rollouts.kruise.io; graybaggage Kruise mode)" in text
    assert "Base pinned:   spring-cloud-a (h1)" in text and "In table:      yes" in text
