"""Pure unit tests of the controller's desired-state builders (no cluster)."""

import copy
import json

import pytest

from graybaggage_controller import desired as d
from graybaggage_controller import names as n

NS = "demo"


def deployment(name="spring-cloud-a", image="a:1", uid="uid-a"):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 1},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"msePilotCreateAppName": name}},
                "spec": {"containers": [{"name": name, "image": image,
                                         "env": [{"name": "JAVA_HOME", "value": "/jre"}]}]},
            },
            "strategy": {"type": "RollingUpdate"},
        },
    }


def release(name="rollout-a", workload="spring-cloud-a", lane="gray", **spec):
    return {"apiVersion": n.API_VERSION, "kind": "GrayRelease",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
            "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
                     "lane": lane, "replicas": 1, **spec}}


def service(name="spring-cloud-a", selector=None):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector or {"app": name},
                     "ports": [{"name": "http", "port": 20001, "targetPort": 20001, "protocol": "TCP"}]}}


def test_template_hash_ignores_pod_template_hash_and_creation_timestamp():
    t = deployment()["spec"]["template"]
    rs_t = copy.deepcopy(t)
    rs_t["metadata"]["labels"][n.POD_TEMPLATE_HASH] = "abc"
    rs_t["metadata"]["creationTimestamp"] = None
    assert d.template_hash(t) == d.template_hash(rs_t)
    assert d.template_hash(t) == d.template_hash(d.replicaset_template({"spec": {"template": rs_t}}))
    t2 = deployment(image="a:2")["spec"]["template"]
    assert d.template_hash(t) != d.template_hash(t2)


def test_gray_deployment_labels_env_replicas_owner():
    base = deployment(image="a:2")
    gr = release(patchPodTemplateMetadata={"labels": {"team": "x"}, "annotations": {"note": "gray"}})
    g = d.gray_deployment(base, gr, None, "gray", 3)
    assert g["metadata"]["name"] == "spring-cloud-a-gray"
    assert g["spec"]["replicas"] == 3
    assert g["spec"]["selector"]["matchLabels"] == {"app": "spring-cloud-a", n.LANE_LABEL: "gray"}
    labels = g["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app": "spring-cloud-a", "team": "x", n.LANE_LABEL: "gray",
                      "alicloud.service.tag": "gray", "opensergo.io/canary-gray": "gray"}
    assert g["spec"]["template"]["metadata"]["annotations"]["note"] == "gray"
    env = g["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": n.LANE_ENV, "value": "gray"} in env and {"name": "JAVA_HOME", "value": "/jre"} in env
    assert g["spec"]["template"]["spec"]["containers"][0]["image"] == "a:2"
    ref = g["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "GrayRelease" and ref["uid"] == "uid-rollout-a" and ref["controller"] is True
    assert g["metadata"]["annotations"][n.SPEC_HASH_ANN]
    # the base object is not modified
    assert n.LANE_ENV not in json.dumps(base)
    # idempotent: same inputs, same hash
    assert d.gray_deployment(base, gr, None, "gray", 3) == g


def test_lane_pod_labels_from_lane_spec():
    lane = {"spec": {"tag": "gray", "podLabels": {"version": "canary"}}}
    assert d.lane_pod_labels(lane, "gray") == {"version": "canary", n.LANE_LABEL: "gray"}
    assert d.lane_pod_labels(None, "blue") == d.default_pod_labels("blue")


def test_workload_services_and_lane_service():
    svcs = [service("spring-cloud-a"), service("other", {"app": "other"}), service("empty", {}),
            {**service("spring-cloud-a-gray", {"app": "spring-cloud-a", n.LANE_LABEL: "gray"}),
             "metadata": {"name": "spring-cloud-a-gray", "labels": {n.OWNER_LABEL: "rollout-a"}}}]
    found = d.workload_services(svcs, {"app": "spring-cloud-a"})
    assert [s["metadata"]["name"] for s in found] == ["spring-cloud-a"]
    ls = d.lane_service(found[0], release(), "gray")
    assert ls["metadata"]["name"] == "spring-cloud-a-gray"
    assert ls["spec"]["selector"] == {"app": "spring-cloud-a", n.LANE_LABEL: "gray"}
    assert ls["spec"]["ports"] == [{"name": "http", "port": 20001, "targetPort": 20001, "protocol": "TCP"}]
    assert not d.service_differs({**ls, "spec": {**ls["spec"], "clusterIP": "10.0.0.9"}}, ls)


def test_pin_and_unpin_round_trip():
    svc = service()
    patch = d.pin_patch(svc, "5d8f", "rollout-a")
    assert patch["spec"]["selector"] == {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: "5d8f"}
    pinned = {"metadata": {"name": "spring-cloud-a", "annotations": {
        k: v for k, v in patch["metadata"]["annotations"].items()}},
        "spec": {"selector": {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: "5d8f"}}}
    assert d.pin_patch(pinned, "5d8f", "rollout-a") is None          # idempotent
    assert d.original_selector(pinned) == {"app": "spring-cloud-a"}
    # a pinned Service still "selects" the workload by its original selector
    assert d.workload_services([pinned], {"app": "spring-cloud-a"})
    un = d.unpin_patch(pinned)
    assert un["spec"]["selector"] == {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: None}
    assert un["metadata"]["annotations"] == {n.ORIGINAL_SELECTOR_ANN: None, n.PINNED_BY_ANN: None}
    assert d.unpin_patch(svc) is None


def test_lane_table_follows_docs_format():
    lanes = [{"metadata": {"name": "gray", "creationTimestamp": "2026-01-01T00:00:00Z"},
              "spec": {"tag": "gray", "header": "x-mse-tag", "fallback": "strict"}},
             {"metadata": {"name": "gone", "deletionTimestamp": "x"}, "spec": {"tag": "gone"}}]
    a = release("rollout-a", "spring-cloud-a")
    a["status"] = {"routes": {"spring-cloud-a": "spring-cloud-a-gray"}}
    b = release("rollout-b", "spring-cloud-b")
    c = release("rollout-c", "spring-cloud-c")
    orphan = release("rollout-x", "x", lane="nolane")
    orphan["status"] = {"routes": {"x": "x-nolane"}}
    t = d.build_lane_table(NS, lanes, [a, b, c, orphan], {"rollout-c": {"spring-cloud-c": "spring-cloud-c-gray"}})
    assert t == {"version": 1, "namespace": NS, "lanes": {"gray": {"fallback": "strict", "routes": {
        "spring-cloud-a": "spring-cloud-a-gray", "spring-cloud-c": "spring-cloud-c-gray"}}}}
    text = d.render_lane_table(t, 7)
    parsed = json.loads(text)
    assert parsed["revision"] == "7" and parsed["version"] == 1
    assert d.same_table(parsed, t)
    cm = d.lane_table_configmap(NS, text)
    assert cm["metadata"]["name"] == "graybaggage-lanes" and list(cm["data"]) == ["lanes.json"]
    assert cm["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "graybaggage"}


def test_lane_table_matches_library_schema_if_available():
    import pathlib
    schema_path = pathlib.Path(__file__).resolve().parents[2] / "graybaggage" / "schema" / "lane-table.schema.json"
    if not schema_path.exists():
        import pytest
        pytest.skip("library schema not present")
    try:
        import jsonschema
    except ImportError:
        import pytest
        pytest.skip("jsonschema not installed")
    t = d.build_lane_table(NS, [{"metadata": {"name": "gray"}, "spec": {"tag": "gray", "entry": {"rules": []}}}],
                           [], {})
    jsonschema.validate(json.loads(d.render_lane_table(t, 1)), json.loads(schema_path.read_text()))


def test_webhook_patch_only_for_changed_templates_of_targeted_deployments():
    dep = deployment()
    assert d.webhook_patch(dep) is None                           # not targeted
    dep["metadata"]["labels"] = {n.RELEASE_LABEL: "rollout-a"}
    assert d.webhook_patch(dep) is None                           # no stable recorded yet
    dep["metadata"]["annotations"] = {n.STABLE_ANN: d.template_hash(dep["spec"]["template"])}
    assert d.webhook_patch(dep) is None                           # stable template
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "a:2"
    assert d.webhook_patch(dep) == {"spec": {"paused": True},
                                    "metadata": {"annotations": {n.PAUSED_BY_ANN: "webhook"}}}
    dep["spec"]["paused"] = True
    assert d.webhook_patch(dep) is None


def test_webhook_configuration_is_narrow():
    cfg = d.webhook_configuration("gb", {"url": "https://127.0.0.1:9443", "caBundle": "Q0E="}, ["demo"])
    wh = cfg["webhooks"][0]
    assert wh["clientConfig"]["url"] == "https://127.0.0.1:9443/" + n.WEBHOOK_HANDLER_ID
    assert wh["failurePolicy"] == "Ignore"
    assert wh["rules"][0]["operations"] == ["UPDATE"] and wh["rules"][0]["resources"] == ["deployments"]
    assert wh["objectSelector"] == {"matchExpressions": [{"key": n.RELEASE_LABEL, "operator": "Exists"}]}
    assert wh["namespaceSelector"]["matchExpressions"][0]["values"] == ["demo"]


def test_lane_status_members():
    lane = {"metadata": {"name": "gray", "generation": 2}, "spec": {"tag": "gray"}}
    a = release("rollout-a", "spring-cloud-a")
    a["status"] = {"phase": "Paused", "routes": {"spring-cloud-a": "spring-cloud-a-gray"}}
    st = d.lane_status(lane, [a, release("rollout-b", "spring-cloud-b"), release("o", "o", lane="blue")])
    assert st["memberCount"] == 2 and st["routedCount"] == 1
    assert st["members"][0] == {"release": "rollout-a", "workload": "spring-cloud-a", "phase": "Paused",
                                "routes": {"spring-cloud-a": "spring-cloud-a-gray"}}


def test_lane_table_is_read_by_the_library():
    import pytest
    table_mod = pytest.importorskip("graybaggage.table")
    a = release("rollout-a", "spring-cloud-a")
    a["status"] = {"routes": {"spring-cloud-a": "spring-cloud-a-gray"}}
    t = d.build_lane_table(NS, [{"metadata": {"name": "gray"}, "spec": {"tag": "gray", "fallback": "base"}}], [a])
    lt = table_mod.load_table_text(d.render_lane_table(t, 3), default_namespace="other")
    route = lt.decide("gray", "spring-cloud-a", 20001, caller_ns=NS)
    assert route is not None and route.host == "spring-cloud-a-gray" and route.port == 20001
    assert route.fallback == "base"
    assert lt.decide("gray", "spring-cloud-b", 20001, caller_ns=NS) is None
    assert lt.decide("blue", "spring-cloud-a", 20001, caller_ns=NS) is None


# ---------------------------------------------------------------------------------------------- celery queues
# One row per rule of the `graybaggage.io/celery-queues` annotation (the base Deployment's, opt-in).

def _annotated(value=None):
    dep = deployment()
    if value is not None:
        dep["metadata"]["annotations"] = {n.CELERY_QUEUES_ANN: value}
    return dep


CELERY_QUEUE_ROWS = [
    # (rule, annotation value or None, tag, expected queues, error contains)
    ("no annotation: opt-in, nothing published, no error", None, "gray", None, None),
    ("one queue", "default", "gray", ["default"], None),
    ("comma-separated, spaces trimmed, sorted", " emails , default", "gray", ["default", "emails"], None),
    ("duplicates collapse", "tasks,tasks", "gray", ["tasks"], None),
    ("dots, colons, dashes and underscores are names", "_q.high:1-x", "gray", ["_q.high:1-x"], None),
    ("empty annotation is an error", "  ", "gray", None, "lists no queue"),
    ("an empty name between commas is an error", "a,,b", "gray", None, "invalid queue name(s) ''"),
    ("a space inside a name is an error", "my queue", "gray", None, "'my queue'"),
    ("a bad character is an error", "tasks,em@ils", "gray", None, "'em@ils'"),
    ("a leading dash is an error", "-tasks", "gray", None, "'-tasks'"),
    ("one bad name refuses the whole list", "good,bad/name", "gray", None, "no queue is published"),
    ("<name>-<tag> at most 255 characters", "q" * 250, "gray", ["q" * 250], None),
    ("<name>-<tag> over 255 characters is an error", "q" * 251, "gray", None, "at most 255"),
]


@pytest.mark.parametrize("rule,value,tag,queues,error", CELERY_QUEUE_ROWS, ids=[r[0] for r in CELERY_QUEUE_ROWS])
def test_celery_queues_annotation(rule, value, tag, queues, error):
    got, err = d.celery_queues(_annotated(value), tag)
    assert got == queues
    if error is None:
        assert err is None
    else:
        assert err is not None and error in err and n.CELERY_QUEUES_ANN in err


GRAY_LANE = {"metadata": {"name": "gray", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"tag": "gray"}}
BLUE_LANE = {"metadata": {"name": "blue", "creationTimestamp": "2026-01-02T00:00:00Z"}, "spec": {"tag": "blue"}}


def _rel(name, lane="gray", routes=None, queues=None):
    r = release(name, name.replace("rollout-", ""), lane=lane)
    r["status"] = {"routes": dict(routes or {})}
    if queues is not None:
        r["status"]["queues"] = queues
    return r


QUEUE_TABLE_ROWS = [
    # (rule, releases, queue_overrides, expected lanes.<tag>.queues per tag (absent: no field))
    ("no release has queues: no `queues` field (old readers refuse unknown lane fields)",
     [_rel("rollout-a", routes={"a": "a-gray"})], None, {"gray": None}),
    ("a release's status.queues are published, versioned",
     [_rel("rollout-w", queues=["default", "emails"])], None,
     {"gray": {"version": 1, "celery": ["default", "emails"]}}),
    ("two releases in one lane: union, sorted, no duplicates",
     [_rel("rollout-w", queues=["emails", "default"]), _rel("rollout-v", queues=["default", "reports"])], None,
     {"gray": {"version": 1, "celery": ["default", "emails", "reports"]}}),
    ("queues stay in their own lane",
     [_rel("rollout-w", queues=["default"]), _rel("rollout-v", lane="blue", queues=["emails"])], None,
     {"gray": {"version": 1, "celery": ["default"]}, "blue": {"version": 1, "celery": ["emails"]}}),
    ("the override (this pass's plan) wins over the release's status: drop",
     [_rel("rollout-w", queues=["default"])], {"rollout-w": []}, {"gray": None}),
    ("the override (this pass's plan) wins over the release's status: add",
     [_rel("rollout-w")], {"rollout-w": ["default"]}, {"gray": {"version": 1, "celery": ["default"]}}),
    ("a hand-edited status with bad names: those are never published",
     [_rel("rollout-w", queues=["ok", "", "bad name", 7, "x" * 300])], None,
     {"gray": {"version": 1, "celery": ["ok"]}}),
    ("a status.queues that is not a list: ignored",
     [_rel("rollout-w", queues="default")], None, {"gray": None}),
    ("a release in a lane without a Lane object: nothing published",
     [_rel("rollout-w", lane="nolane", queues=["default"])], None, {"gray": None}),
]


@pytest.mark.parametrize("rule,releases,queue_overrides,want", QUEUE_TABLE_ROWS,
                         ids=[r[0] for r in QUEUE_TABLE_ROWS])
def test_lane_table_queues(rule, releases, queue_overrides, want):
    t = d.build_lane_table(NS, [GRAY_LANE, BLUE_LANE], releases, None, queue_overrides)
    assert set(t["lanes"]) == {"gray", "blue"}
    for tag, queues in want.items():
        assert t["lanes"][tag].get("queues") == queues, t["lanes"][tag]
    for tag in set(t["lanes"]) - set(want):
        assert "queues" not in t["lanes"][tag]


def test_lane_status_lists_a_members_queues_only_when_it_has_some():
    st = d.lane_status(GRAY_LANE, [_rel("rollout-w", queues=["default"]), _rel("rollout-a", routes={"a": "a-gray"})])
    by = {m["release"]: m for m in st["members"]}
    assert by["rollout-w"]["queues"] == ["default"] and "queues" not in by["rollout-a"]
    assert st["routedCount"] == 1


def test_lane_table_queues_are_read_by_the_library():
    table_mod = pytest.importorskip("graybaggage.table")
    t = d.build_lane_table(NS, [GRAY_LANE], [_rel("rollout-w", routes={"a": "a-gray"}, queues=["default"])])
    lt = table_mod.load_table_text(d.render_lane_table(t, 4), default_namespace=NS)
    assert lt.ignored == ()
    assert lt.lane_has_queue("gray", "default") and not lt.lane_has_queue("gray", "emails")
    assert not lt.lane_has_queue("blue", "default")
    schema_path = __import__("pathlib").Path(__file__).resolve().parents[2] / "graybaggage" / "schema" / \
        "lane-table.schema.json"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(d.render_lane_table(t, 4)), json.loads(schema_path.read_text()))


# ---------------------------------------------------------------------------------------------- merge for update

def _current(kind):
    spec = ({"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "ipFamilies": ["IPv4"], "sessionAffinity": "ClientIP",
             "type": "ClusterIP", "selector": {"app": "a", "old": "1"},
             "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
            if kind == "Service" else {"replicas": 3, "paused": True, "selector": {"matchLabels": {"app": "a"}}})
    return {"apiVersion": "v1" if kind == "Service" else "apps/v1", "kind": kind,
            "metadata": {"name": "a-gray", "namespace": NS, "uid": "u-1", "resourceVersion": "7",
                         "labels": {"user": "1", "shared": "theirs"}, "annotations": {"note": "x", "shared": "theirs"},
                         "ownerReferences": [{"kind": "GrayRelease", "name": "old", "uid": "old"}]},
            "spec": spec, "status": {"observed": 1}}


def _want(kind, owners=True):
    spec = ({"selector": {"app": "a", n.LANE_LABEL: "gray"},
             "ports": [{"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"}]}
            if kind == "Service" else {"replicas": 1, "selector": {"matchLabels": {"app": "a"}}})
    meta = {"name": "a-gray", "namespace": NS, "labels": {"shared": "ours", n.MANAGED_BY_LABEL: n.MANAGED_BY},
            "annotations": {"shared": "ours"}}
    if owners:
        meta["ownerReferences"] = [{"kind": "GrayRelease", "name": "rollout-a", "uid": "uid-rollout-a"}]
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec}


MERGE_ROWS = [
    # (rule, kind, want owners?, what to look at, expected)
    ("the status goes (a replace does not write it)", "Service", True, lambda o: "status" in o, False),
    ("labels merged, ours win", "Service", True, lambda o: o["metadata"]["labels"],
     {"user": "1", "shared": "ours", n.MANAGED_BY_LABEL: n.MANAGED_BY}),
    ("annotations merged, ours win", "Deployment", True, lambda o: o["metadata"]["annotations"],
     {"note": "x", "shared": "ours"}),
    ("ownerReferences are ours", "Deployment", True, lambda o: o["metadata"]["ownerReferences"],
     [{"kind": "GrayRelease", "name": "rollout-a", "uid": "uid-rollout-a"}]),
    ("ownerReferences kept when we have none", "Service", False, lambda o: o["metadata"]["ownerReferences"],
     [{"kind": "GrayRelease", "name": "old", "uid": "old"}]),
    ("resourceVersion and uid stay the ones read (a change in between conflicts)", "Service", True,
     lambda o: (o["metadata"]["resourceVersion"], o["metadata"]["uid"]), ("7", "u-1")),
    ("Service: what the API server or the user set is kept", "Service", True,
     lambda o: {k: o["spec"][k] for k in ("clusterIP", "clusterIPs", "ipFamilies", "sessionAffinity", "type")},
     {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "ipFamilies": ["IPv4"], "sessionAffinity": "ClientIP",
      "type": "ClusterIP"}),
    ("Service: the ports are ours", "Service", True, lambda o: o["spec"]["ports"],
     [{"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"}]),
    ("Service: the selector is ours (a key we do not want is gone)", "Service", True, lambda o: o["spec"]["selector"],
     {"app": "a", n.LANE_LABEL: "gray"}),
    ("any other kind: the whole spec is ours", "Deployment", True, lambda o: o["spec"],
     {"replicas": 1, "selector": {"matchLabels": {"app": "a"}}}),
]


@pytest.mark.parametrize("rule,kind,owners,look,expected", MERGE_ROWS, ids=[r[0] for r in MERGE_ROWS])
def test_merged_for_update(rule, kind, owners, look, expected):
    current, want = _current(kind), _want(kind, owners)
    before = copy.deepcopy((current, want))
    assert look(d.merged_for_update(kind, current, want)) == expected
    assert (current, want) == before        # pure: neither input is changed
