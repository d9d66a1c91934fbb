"""The seed flow against an in-memory API (fakekube): fast checks of the reconcile logic and ordering."""

import copy
import json

import pytest

from graybaggage_controller import desired as d
from graybaggage_controller import names as n
from graybaggage_controller.reconcile import Reconciler

from .fakekube import FakeKube

NS = "demo"
APPS = ["spring-cloud-a", "spring-cloud-b", "spring-cloud-c"]


class Clock:
    def __init__(self):
        self.t = 1_800_000_000.0

    def __call__(self):
        return self.t


def seed(fake, steps=None, webhook=True):
    fake.webhook = webhook
    for app in APPS:
        fake.create("Deployment", NS, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app}, "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}, "annotations": {"msePilotCreateAppName": app}},
                         "spec": {"containers": [{"name": app, "image": f"{app}:mse-2.0.0"}]}}}})
        fake.create("Service", NS, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app}, "spec": {
            "selector": {"app": app}, "ports": [{"name": "http", "port": 20001, "targetPort": 20001}]}})
    fake.create("Lane", NS, {"apiVersion": n.API_VERSION, "kind": "Lane", "metadata": {"name": "gray"},
                             "spec": {"tag": "gray", "header": "x-mse-tag", "fallback": "base"}})
    for app in APPS:
        fake.create("GrayRelease", NS, {"apiVersion": n.API_VERSION, "kind": "GrayRelease",
                                        "metadata": {"name": f"rollout-{app[-1]}"},
                                        "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                                 "name": app},
                                                 "lane": "gray", "replicas": 1,
                                                 "steps": steps or [{"pause": {}}],
                                                 "patchPodTemplateMetadata": {"labels": {
                                                     "alicloud.service.tag": "gray",
                                                     "opensergo.io/canary-gray": "gray"}}}})


def converge(fake, rec, passes=30):
    last = None
    for _ in range(passes):
        fake.simulate()
        for gr in fake.list("GrayRelease", NS):
            rec.reconcile_release(NS, gr["metadata"]["name"])
        for lane in fake.list("Lane", NS):
            rec.reconcile_lane(NS, lane["metadata"]["name"])
        snap = json.dumps({str(k): v for k, v in fake.objs.items()}, sort_keys=True, default=str)
        if snap == last:
            return
        last = snap
    raise AssertionError("did not converge")


def set_image(fake, app, image):
    dep = fake.get("Deployment", NS, app)
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = image
    fake.replace("Deployment", NS, app, dep)


def table(fake):
    cm = fake.get("ConfigMap", NS, n.TABLE_CONFIGMAP)
    return json.loads(cm["data"][n.TABLE_KEY]) if cm else None


def phase(fake, name):
    return (fake.get("GrayRelease", NS, name).get("status") or {}).get("phase")


@pytest.fixture
def env():
    fake, clock = FakeKube(), Clock()
    rec = Reconciler(fake, clock=clock)
    return fake, rec, clock


def test_seed_flow_approve_and_rollback(env):
    fake, rec, clock = env
    seed(fake)
    converge(fake, rec)
    assert all(phase(fake, f"rollout-{x}") == "Healthy" for x in "abc")
    assert table(fake)["lanes"] == {"gray": {"fallback": "base", "routes": {}}}
    b_before = fake.get("Deployment", NS, "spring-cloud-b")

    set_image(fake, "spring-cloud-a", "spring-cloud-a:mse-2.0.1")
    set_image(fake, "spring-cloud-c", "spring-cloud-c:mse-2.0.1")
    converge(fake, rec)

    for app in ("spring-cloud-a", "spring-cloud-c"):
        base = fake.get("Deployment", NS, app)
        assert base["spec"]["paused"] is True
        gray = fake.get("Deployment", NS, f"{app}-gray")
        tl = gray["spec"]["template"]["metadata"]["labels"]
        assert tl[n.LANE_LABEL] == "gray" and tl["alicloud.service.tag"] == "gray"
        assert tl["opensergo.io/canary-gray"] == "gray"
        c = gray["spec"]["template"]["spec"]["containers"][0]
        assert c["image"].endswith("mse-2.0.1") and {"name": "GRAYBAGGAGE_LANE", "value": "gray"} in c["env"]
        assert gray["spec"]["replicas"] == 1
        svc = fake.get("Service", NS, app)
        assert n.POD_TEMPLATE_HASH in svc["spec"]["selector"]
        # base pods (the only ones the base Service selects) run the old image
        pods = fake.pods(NS, **svc["spec"]["selector"])
        assert pods and all(p["spec"]["containers"][0]["image"].endswith("mse-2.0.0") for p in pods)
        ls = fake.get("Service", NS, f"{app}-gray")
        assert ls["spec"]["selector"] == {"app": app, n.LANE_LABEL: "gray"}
    assert table(fake)["lanes"]["gray"]["routes"] == {"spring-cloud-a": "spring-cloud-a-gray",
                                                      "spring-cloud-c": "spring-cloud-c-gray"}
    assert fake.get("Deployment", NS, "spring-cloud-b")["spec"] == b_before["spec"]
    assert fake.get("Deployment", NS, "spring-cloud-b-gray") is None
    assert phase(fake, "rollout-a") == "Paused" and phase(fake, "rollout-b") == "Healthy"
    # never rolled early: no ReplicaSet with the new template for the base Deployments
    new_a = d.template_hash(fake.get("Deployment", NS, "spring-cloud-a")["spec"]["template"])
    assert ("spring-cloud-a", new_a) not in fake.rs_history

    # approve a
    st = fake.get("GrayRelease", NS, "rollout-a")["status"]
    fake.patch("GrayRelease", NS, "rollout-a",
               {"metadata": {"annotations": {n.APPROVE_ANN: f"{st['canaryRevision']}/{st['currentStep']}"}}})
    converge(fake, rec)
    a = fake.get("Deployment", NS, "spring-cloud-a")
    assert not a["spec"].get("paused")
    assert a["spec"]["template"]["spec"]["containers"][0]["image"].endswith("mse-2.0.1")
    assert all(p["spec"]["containers"][0]["image"].endswith("mse-2.0.1")
               for p in fake.pods(NS, app="spring-cloud-a"))
    assert fake.get("Deployment", NS, "spring-cloud-a-gray") is None
    assert fake.get("Service", NS, "spring-cloud-a-gray") is None
    assert fake.get("Service", NS, "spring-cloud-a")["spec"]["selector"] == {"app": "spring-cloud-a"}
    assert table(fake)["lanes"]["gray"]["routes"] == {"spring-cloud-c": "spring-cloud-c-gray"}
    assert phase(fake, "rollout-a") == "Healthy"
    assert n.APPROVE_ANN not in d.annotations_of(fake.get("GrayRelease", NS, "rollout-a"))

    # roll back c by putting the image back
    c_stable_template = copy.deepcopy(fake.get("Deployment", NS, "spring-cloud-c")["spec"]["template"])
    set_image(fake, "spring-cloud-c", "spring-cloud-c:mse-2.0.0")
    converge(fake, rec)
    c = fake.get("Deployment", NS, "spring-cloud-c")
    assert not c["spec"].get("paused")
    assert c["spec"]["template"]["spec"]["containers"][0]["image"].endswith("mse-2.0.0")
    assert fake.get("Deployment", NS, "spring-cloud-c-gray") is None
    assert fake.get("Service", NS, "spring-cloud-c")["spec"]["selector"] == {"app": "spring-cloud-c"}
    assert table(fake)["lanes"]["gray"]["routes"] == {}
    assert phase(fake, "rollout-c") == "Healthy"
    assert c_stable_template != c["spec"]["template"]


def test_cli_rollback_restores_stable_template(env):
    fake, rec, clock = env
    seed(fake)
    converge(fake, rec)
    stable = copy.deepcopy(fake.get("Deployment", NS, "spring-cloud-c")["spec"]["template"])
    set_image(fake, "spring-cloud-c", "spring-cloud-c:mse-2.0.1")
    converge(fake, rec)
    st = fake.get("GrayRelease", NS, "rollout-c")["status"]
    fake.patch("GrayRelease", NS, "rollout-c", {"metadata": {"annotations": {n.ROLLBACK_ANN: st["canaryRevision"]}}})
    converge(fake, rec)
    c = fake.get("Deployment", NS, "spring-cloud-c")
    assert d.template_hash(c["spec"]["template"]) == d.template_hash(stable)
    assert not c["spec"].get("paused")
    assert fake.get("Deployment", NS, "spring-cloud-c-gray") is None
    assert phase(fake, "rollout-c") == "Healthy"
    assert len([h for app, h in fake.rs_history if app == "spring-cloud-c"]) == 1


def test_webhook_down_is_repaired(env):
    fake, rec, clock = env
    seed(fake, webhook=False)
    converge(fake, rec)
    set_image(fake, "spring-cloud-a", "spring-cloud-a:mse-2.0.1")
    fake.simulate()       # the Deployment controller starts rolling before the controller notices
    converge(fake, rec)
    a = fake.get("Deployment", NS, "spring-cloud-a")
    assert a["spec"]["paused"] is True
    svc = fake.get("Service", NS, "spring-cloud-a")
    pods = fake.pods(NS, **svc["spec"]["selector"])
    assert pods and all(p["spec"]["containers"][0]["image"].endswith("mse-2.0.0") for p in pods)


def test_duration_steps_auto_advance(env):
    fake, rec, clock = env
    seed(fake, steps=[{"pause": {"duration": 30}}, {"replicas": 2, "pause": {"duration": 30}}])
    converge(fake, rec)
    set_image(fake, "spring-cloud-a", "spring-cloud-a:mse-2.0.1")
    converge(fake, rec)
    st = fake.get("GrayRelease", NS, "rollout-a")["status"]
    assert st["phase"] == "Paused" and st["currentStep"] == 0
    clock.t += 31
    converge(fake, rec)
    st = fake.get("GrayRelease", NS, "rollout-a")["status"]
    assert st["currentStep"] == 1 and fake.get("Deployment", NS, "spring-cloud-a-gray")["spec"]["replicas"] == 2
    clock.t += 31
    converge(fake, rec)
    assert phase(fake, "rollout-a") == "Healthy"
    assert fake.get("Deployment", NS, "spring-cloud-a-gray") is None
    assert fake.get("Deployment", NS, "spring-cloud-a")["spec"]["template"]["spec"]["containers"][0][
        "image"].endswith("mse-2.0.1")


def test_delete_mid_flight_leaves_base_stable(env):
    fake, rec, clock = env
    seed(fake)
    converge(fake, rec)
    stable = d.template_hash(fake.get("Deployment", NS, "spring-cloud-a")["spec"]["template"])
    set_image(fake, "spring-cloud-a", "spring-cloud-a:mse-2.0.1")
    converge(fake, rec)
    fake.delete("GrayRelease", NS, "rollout-a")
    converge(fake, rec)
    assert fake.get("GrayRelease", NS, "rollout-a") is None
    a = fake.get("Deployment", NS, "spring-cloud-a")
    assert d.template_hash(a["spec"]["template"]) == stable and not a["spec"].get("paused")
    assert n.RELEASE_LABEL not in d.labels_of(a) and n.STABLE_ANN not in d.annotations_of(a)
    assert fake.get("Deployment", NS, "spring-cloud-a-gray") is None
    assert fake.get("Service", NS, "spring-cloud-a")["spec"]["selector"] == {"app": "spring-cloud-a"}
    # everything created is gone once the Lane and the other releases are deleted
    for x in "bc":
        fake.delete("GrayRelease", NS, f"rollout-{x}")
    fake.delete("Lane", NS, "gray")
    converge(fake, rec)
    rec.sync_table(NS)
    assert fake.get("ConfigMap", NS, n.TABLE_CONFIGMAP) is None


def test_missing_deployment_condition(env):
    fake, rec, clock = env
    fake.create("GrayRelease", NS, {"apiVersion": n.API_VERSION, "kind": "GrayRelease", "metadata": {"name": "x"},
                                    "spec": {"workloadRef": {"name": "nope"}, "lane": "gray", "replicas": 1}})
    rec.reconcile_release(NS, "x")
    rec.reconcile_release(NS, "x")
    st = fake.get("GrayRelease", NS, "x")["status"]
    assert st["phase"] == "Failed"
    cond = next(c for c in st["conditions"] if c["type"] == "WorkloadFound")
    assert cond["status"] == "False" and cond["reason"] == "DeploymentNotFound" and "nope" in cond["message"]


def test_shared_service_is_not_pinned(env):
    fake, rec, clock = env
    seed(fake)
    fake.create("Service", NS, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shared"}, "spec": {
        "selector": {"msePilotCreateAppName": "x"}, "ports": [{"port": 1}]}})
    # a Service selecting a and b (label on both templates)
    for app in ("spring-cloud-a", "spring-cloud-b"):
        dep = fake.get("Deployment", NS, app)
        dep["spec"]["template"]["metadata"]["labels"]["tier"] = "java"
        fake.replace("Deployment", NS, app, dep)
    fake.create("Service", NS, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "java"}, "spec": {
        "selector": {"tier": "java"}, "ports": [{"port": 1}]}})
    converge(fake, rec)
    set_image(fake, "spring-cloud-a", "spring-cloud-a:mse-2.0.1")
    converge(fake, rec)
    assert fake.get("Service", NS, "java")["spec"]["selector"] == {"tier": "java"}
    assert n.POD_TEMPLATE_HASH in fake.get("Service", NS, "spring-cloud-a")["spec"]["selector"]
    conds = {c["type"]: c for c in fake.get("GrayRelease", NS, "rollout-a")["status"]["conditions"]}
    assert conds["BasePinned"]["reason"] == "SharedService"


def test_ordering_table_first_on_promote_and_rollback(env):
    fake, rec, clock = env
    seed(fake)
    converge(fake, rec)
    for app in ("spring-cloud-a", "spring-cloud-c"):
        set_image(fake, app, f"{app}:mse-2.0.1")
    converge(fake, rec)
    st = fake.get("GrayRelease", NS, "rollout-a")["status"]
    fake.patch("GrayRelease", NS, "rollout-a",
               {"metadata": {"annotations": {n.APPROVE_ANN: f"{st['canaryRevision']}/0"}}})
    plan = rec.reconcile_release(NS, "rollout-a")
    verbs = [(a.verb, a.kind) for a in plan.actions]
    assert verbs[0] == ("table", "") and ("patch", "Deployment") in verbs[1:]
    assert plan.status["phase"] == "Promoting" and plan.routes == {}
    # the table no longer lists a, even before the base has rolled
    assert table(fake)["lanes"]["gray"]["routes"] == {"spring-cloud-c": "spring-cloud-c-gray"}

    set_image(fake, "spring-cloud-c", "spring-cloud-c:mse-2.0.0")
    plan = rec.reconcile_release(NS, "rollout-c")
    assert plan.actions[0].verb == "table" and plan.status["phase"] == "RollingBack"
    assert table(fake)["lanes"]["gray"]["routes"] == {}
    # the gray pods are still there: the base Service stays pinned until they are gone
    assert n.POD_TEMPLATE_HASH in fake.get("Service", NS, "spring-cloud-c")["spec"]["selector"]


def test_cli_against_fake(env):
    from graybaggage_controller import cli
    fake, rec, clock = env
    seed(fake)
    converge(fake, rec)
    set_image(fake, "spring-cloud-a", "spring-cloud-a:mse-2.0.1")
    converge(fake, rec)
    out = cli.cmd_status(fake, NS, None)
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "WORKLOAD", "LANE", "STATUS"]
    assert any(line.startswith("rollout-a") and "Paused" in line and "1/1" in line for line in lines)
    assert "Routes:     spring-cloud-a -> spring-cloud-a-gray" in cli.cmd_status(fake, NS, "rollout-a")
    assert "spring-cloud-a->spring-cloud-a-gray" in cli.cmd_lanes(fake, NS)
    with pytest.raises(cli.CliError) as e:
        cli.cmd_approve(fake, NS, "rollout-b")
    assert e.value.code == 1 and "Healthy" in str(e.value)
    with pytest.raises(cli.CliError) as e:
        cli.cmd_rollback(fake, NS, "rollout-b")
    assert e.value.code == 1
    with pytest.raises(cli.CliError) as e:
        cli.cmd_approve(fake, NS, "missing")
    assert e.value.code == 3 and "not found" in str(e.value)
    assert "approved" in cli.cmd_approve(fake, NS, "rollout-a")
    converge(fake, rec)
    assert phase(fake, "rollout-a") == "Healthy"


def test_lane_change_mid_flight_removes_old_gray_objects(env):
    fake, rec, clock = env
    seed(fake)
    fake.create("Lane", NS, {"apiVersion": n.API_VERSION, "kind": "Lane", "metadata": {"name": "blue"},
                             "spec": {"tag": "blue"}})
    converge(fake, rec)
    set_image(fake, "spring-cloud-a", "spring-cloud-a:mse-2.0.1")
    converge(fake, rec)
    assert fake.get("Deployment", NS, "spring-cloud-a-gray") is not None
    fake.patch("GrayRelease", NS, "rollout-a", {"spec": {"lane": "blue"}})
    converge(fake, rec)
    assert fake.get("Deployment", NS, "spring-cloud-a-gray") is None
    assert fake.get("Service", NS, "spring-cloud-a-gray") is None
    assert fake.get("Deployment", NS, "spring-cloud-a-blue") is not None
    assert table(fake)["lanes"]["blue"]["routes"] == {"spring-cloud-a": "spring-cloud-a-blue"}
    assert table(fake)["lanes"]["gray"]["routes"] == {}


def test_second_release_on_same_deployment_fails_clearly(env):
    fake, rec, clock = env
    seed(fake)
    converge(fake, rec)
    fake.create("GrayRelease", NS, {"apiVersion": n.API_VERSION, "kind": "GrayRelease", "metadata": {"name": "dup"},
                                    "spec": {"workloadRef": {"name": "spring-cloud-a"}, "lane": "gray"}})
    converge(fake, rec)
    st = fake.get("GrayRelease", NS, "dup")["status"]
    assert st["phase"] == "Failed" and "rollout-a" in st["message"]
    assert phase(fake, "rollout-a") == "Healthy"
