"""The controller's RBAC (controller/deploy/rbac.yaml) against the API calls it really makes.

The walk-through run (`gb_seed_flow`: install, seed flow, approve, roll back, operator edits, uninstall) has the
controller run with its ServiceAccount's token on a kube-apiserver that audits every request of that
ServiceAccount. Every call must be granted (and none denied), and every granted verb must have been used,
except the entry-routing rules (issue 7), which the seed flow without a gateway cannot exercise.
"""

from __future__ import annotations

import json
import sys

import pytest

from .conftest import CONTROLLER_SA_USER
from .test_deploy import SYSTEM, deploy_docs, find


#: granted for entry routing (issue 7): Lane spec.entry.route programs an HTTPRoute or an Ingress
ENTRY_ROUTING = {  # what the entry providers call (controller/graybaggage_controller/entry/)
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "update"},
    ("gateway.networking.k8s.io", "gatewayclasses"): {"get"},
    ("gateway.networking.k8s.io", "gateways"): {"get"},
    ("networking.k8s.io", "ingresses"): {"get", "list", "create", "update", "delete"},
}


def grants() -> list[dict]:
    """Every (scope, group, resource, verb, names) the controller's ServiceAccount is bound to."""
    docs = deploy_docs()
    out = []
    for kind, binding_kind in (("ClusterRole", "ClusterRoleBinding"), ("Role", "RoleBinding")):
        binding = find(docs, binding_kind, "graybaggage-controller")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "graybaggage-controller",
                                        "namespace": SYSTEM}]
        role = find(docs, kind, binding["roleRef"]["name"])
        scope = "cluster" if kind == "ClusterRole" else role["metadata"]["namespace"]
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            for g in rule["apiGroups"]:
                for res in rule["resources"]:
                    for v in rule["verbs"]:
                        out.append({"scope": scope, "group": g, "resource": res, "verb": v,
                                    "names": frozenset(rule.get("resourceNames") or ())})
    return out


def audited_calls(path) -> list[dict]:
    calls = []
    for line in open(path):
        ev = json.loads(line)
        if ev["user"]["username"] != CONTROLLER_SA_USER or ev["stage"] != "ResponseComplete":
            continue
        ref = ev.get("objectRef") or {}
        res = ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else "")
        calls.append({"group": ref.get("apiGroup", ""), "resource": res, "verb": ev["verb"],
                      "namespace": ref.get("namespace"), "name": ref.get("name"),
                      "code": (ev.get("responseStatus") or {}).get("code"), "uri": ev["requestURI"]})
    return calls


def allows(g: dict, call: dict) -> bool:
    return (g["group"] == call["group"] and g["resource"] == call["resource"] and g["verb"] == call["verb"]
            and (g["scope"] == "cluster" or g["scope"] == call["namespace"])
            and (not g["names"] or call["name"] in g["names"]))

#: granted for Kruise mode (issue 14): read only, used when Kruise Rollout is installed (not in the seed flow)
KRUISE_MODE = {
    ("rollouts.kruise.io", "rollouts"): {"get", "list", "watch"},
    ("rollouts.kruise.io", "trafficroutings"): {"list", "watch"},
}


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_every_call_granted_and_every_grant_used(gb_seed_flow, gb_install_cluster):
    calls = audited_calls(gb_install_cluster.audit_log)
    assert len(calls) > 100, "the audit log should hold the whole seed flow"
    denied = [c for c in calls if c["code"] == 403]
    assert denied == [], denied[:5]
    granted = grants()
    ungranted = [c for c in calls if c["resource"] and not any(allows(g, c) for g in granted)]
    assert ungranted == [], ungranted[:5]
    non_resource = sorted({c["uri"].split("?")[0] for c in calls if not c["resource"]})

    rows, unused = [], []
    for g in granted:
        hits = [c for c in calls if allows(g, c)]
        names = ",".join(sorted(g["names"])) or "*"
        rows.append(f"{g['scope']:<18} {g['group'] or 'core':<28} {g['resource']:<32} {g['verb']:<7} "
                    f"{names:<24} {len(hits)}")
        if not hits:
            unused.append((g["group"], g["resource"], g["verb"]))
    entry = {(grp, res, v) for (grp, res), verbs in {**ENTRY_ROUTING, **KRUISE_MODE}.items() for v in verbs}
    # Every grant is used by the seed flow, except entry-routing calls the flow has no gateway for.
    assert set(unused) <= entry, f"granted but never used: {sorted(set(unused) - entry)}"
    sys.stderr.write("\n[rbac] scope / group / resource / verb / resourceNames / calls in the seed flow\n"
                     + "\n".join(rows) + f"\n[rbac] {len(calls)} calls; non-resource: {non_resource}\n")


def test_no_wider_than_needed():
    """Static: nothing cluster-wide for secrets or leases, names pinned where the name is known."""
    by = {(g["scope"], g["group"], g["resource"]): g for g in grants()}
    assert not any(g["resource"] in ("secrets", "leases") and g["scope"] == "cluster" for g in grants())
    assert by[(SYSTEM, "coordination.k8s.io", "leases")]["names"] == {"graybaggage-controller"}
    assert by[(SYSTEM, "", "secrets")]["names"] == {"graybaggage-webhook-tls"}
    assert by[("cluster", "admissionregistration.k8s.io", "mutatingwebhookconfigurations")]["names"] == {
        "graybaggage"}
    assert not any(g["verb"] in ("create", "delete") and g["resource"] in ("secrets", "leases",
                                                                           "mutatingwebhookconfigurations")
                   for g in grants())
