"""The controller against the real control plane (etcd + kube-apiserver + controller-manager + kwok).

One controller subprocess per test (namespace-scoped, its own webhook), one namespace per test.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from graybaggage_controller import cli
from graybaggage_controller import names as n
from graybaggage_controller.kube import read_lane_table

from .conftest import wait_for

#: the controller as deployed: passes driven by watch events and Plan.requeue, the 60 s timer a safety net
CONTROLLER_RESYNC = None

pytestmark = pytest.mark.k8s_local_webhook

OLD, NEW = "mse-2.0.0", "mse-2.0.1"
REPO = "registry.example/mse-demo"


def app_manifests(app: str, replicas: int = 2) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app},
         "spec": {"ports": [{"name": "http", "port": 20001, "protocol": "TCP", "targetPort": 20001}],
                  "selector": {"app": app}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
         "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                  "template": {"metadata": {"annotations": {"msePilotCreateAppName": app}, "labels": {"app": app}},
                               "spec": {"containers": [{
                                   "name": app, "image": f"{REPO}/{app}:{OLD}",
                                   "env": [{"name": "JAVA_HOME", "value": "/usr/lib/jvm/java-1.8-openjdk/jre"}],
                                   "ports": [{"containerPort": 20001}]}]}}}},
    ]


def lane_manifest(tag: str = "gray") -> dict:
    return {"apiVersion": n.API_VERSION, "kind": "Lane", "metadata": {"name": tag},
            "spec": {"tag": tag, "header": "x-mse-tag", "fallback": "base"}}


def release_manifest(name: str, app: str, steps=None) -> dict:
    return {"apiVersion": n.API_VERSION, "kind": "GrayRelease", "metadata": {"name": name},
            "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                     "lane": "gray", "replicas": 1, "steps": steps or [{"pause": {}}],
                     "patchPodTemplateMetadata": {"labels": {"alicloud.service.tag": "gray",
                                                             "opensergo.io/canary-gray": "gray"}}}}


def apply(cluster, ns: str, docs: list[dict]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(docs))


def routes(kube, ns):
    t = read_lane_table(kube, ns)
    return None if t is None else (t.get("lanes", {}).get("gray") or {}).get("routes")


def status(kube, ns, name):
    return (kube.get("GrayRelease", ns, name) or {}).get("status") or {}


def image(dep) -> str:
    return dep["spec"]["template"]["spec"]["containers"][0]["image"]


def base_rs_images(kube, ns, app) -> set[str]:
    """Images of every ReplicaSet the base Deployment ever owned (its revision history)."""
    dep = kube.get("Deployment", ns, app)
    uid = dep["metadata"]["uid"]
    return {rs["spec"]["template"]["spec"]["containers"][0]["image"]
            for rs in kube.list("ReplicaSet", ns, f"app={app}")
            if any(r["uid"] == uid for r in rs["metadata"].get("ownerReferences") or [])}


def set_image(cluster, ns, app, tag):
    cluster.kubectl("-n", ns, "set", "image", f"deployment/{app}", f"{app}={REPO}/{app}:{tag}")


def run_cli(cluster, ns, *args) -> tuple[int, str]:
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--kubeconfig", cluster.kubeconfig, "-n", ns, *args])
    return code, out.getvalue() + err.getvalue()


def owned_objects(kube, ns) -> list[str]:
    """Everything graybaggage created in the namespace (by label), plus the lane table."""
    found = []
    for kind in ("Deployment", "Service"):
        found += [f"{kind}/{o['metadata']['name']}" for o in kube.list(kind, ns, f"{n.OWNER_LABEL}")]
    if kube.get("ConfigMap", ns, n.TABLE_CONFIGMAP):
        found.append(f"ConfigMap/{n.TABLE_CONFIGMAP}")
    return found


# ------------------------------------------------------------------------------------------------ tests

def test_schema_validates_and_defaults(k8s_cluster, gb_crds, k8s_namespace, gb_kube):
    ns = k8s_namespace

    def rejected(doc, *needles):
        cp = k8s_cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc), check=False)
        assert cp.returncode != 0, f"accepted: {doc}"
        for needle in needles:
            assert needle in cp.stderr, cp.stderr

    rejected({**lane_manifest(), "metadata": {"name": "bad"}, "spec": {"tag": "Bad_Tag"}}, "spec.tag")
    rejected({**lane_manifest(), "metadata": {"name": "bad2"}, "spec": {"tag": "gray", "fallback": "random"}},
             "spec.fallback")
    gr = release_manifest("nowl", "x")
    del gr["spec"]["workloadRef"]
    rejected(gr, "spec.workloadRef")
    gr = release_manifest("neg", "x")
    gr["spec"]["replicas"] = -1
    rejected(gr, "spec.replicas")
    gr = release_manifest("kind", "x")
    gr["spec"]["workloadRef"]["kind"] = "StatefulSet"
    rejected(gr, "spec.workloadRef.kind")

    apply(k8s_cluster, ns, [{"apiVersion": n.API_VERSION, "kind": "Lane", "metadata": {"name": "gray"},
                             "spec": {"tag": "gray"}},
                            {"apiVersion": n.API_VERSION, "kind": "GrayRelease", "metadata": {"name": "min"},
                             "spec": {"workloadRef": {"name": "x"}, "lane": "gray"}}])
    lane = gb_kube.get("Lane", ns, "gray")
    assert lane["spec"] == {"tag": "gray", "header": "x-mse-tag", "fallback": "base"}
    gr = gb_kube.get("GrayRelease", ns, "min")
    assert gr["spec"]["replicas"] == 1 and gr["spec"]["steps"] == [{"pause": {}}]
    assert gr["spec"]["workloadRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}
    # printer columns and short names
    out = k8s_cluster.kubectl("get", "gr", "-n", ns).stdout
    assert out.split()[:6] == ["NAME", "STATUS", "LANE", "WORKLOAD", "STEP", "READY"]
    assert "TAG" in k8s_cluster.kubectl("get", "lane", "-n", ns).stdout


def test_missing_deployment_reports_condition(k8s_cluster, gb_controller, gb_kube):
    ns = gb_controller.namespace
    apply(k8s_cluster, ns, [lane_manifest(), release_manifest("rollout-x", "spring-cloud-x")])
    gb_controller.start()

    def failed():
        st = status(gb_kube, ns, "rollout-x")
        cond = {c["type"]: c for c in st.get("conditions") or []}.get("WorkloadFound")
        return st.get("phase") == "Failed" and cond and cond["status"] == "False" and \
            cond["reason"] == "DeploymentNotFound" and "spring-cloud-x" in cond["message"] and st
    st = wait_for(failed, 20, "condition WorkloadFound=False")
    assert "not found" in st["message"]
    code, out = run_cli(k8s_cluster, ns, "approve", "rollout-x")
    assert code == 1 and "Failed" in out
    # the controller did not crash-loop; once the Deployment appears the release becomes Healthy
    apply(k8s_cluster, ns, app_manifests("spring-cloud-x", replicas=1))
    wait_for(lambda: status(gb_kube, ns, "rollout-x").get("phase") == "Healthy", 20, "Healthy")
    assert gb_controller.proc.poll() is None
    # deleting the Lane removes it from the lane table (and the table itself once no lane is left)
    wait_for(lambda: read_lane_table(gb_kube, ns), 10, "lane table")
    k8s_cluster.kubectl("delete", "lane", "gray", "-n", ns, "--wait=true", "--timeout=20s")
    wait_for(lambda: read_lane_table(gb_kube, ns) is None, 10, "lane table gone")


def test_seed_flow_approve_rollback(k8s_cluster, gb_controller, gb_kube):
    ns = gb_controller.namespace
    apps = ["spring-cloud-a", "spring-cloud-b", "spring-cloud-c"]
    docs = [d for app in apps for d in app_manifests(app)]
    docs += [lane_manifest()] + [release_manifest(f"rollout-{app[-1]}", app) for app in apps]
    apply(k8s_cluster, ns, docs)
    for app in apps:
        k8s_cluster.kubectl("-n", ns, "rollout", "status", f"deployment/{app}", "--timeout=60s")
    gb_controller.start()
    wait_for(lambda: all(status(gb_kube, ns, f"rollout-{x}").get("phase") == "Healthy" for x in "abc"),
             30, "all releases Healthy")
    assert routes(gb_kube, ns) == {}
    b_before = gb_kube.get("Deployment", ns, "spring-cloud-b")

    t0 = time.monotonic()
    set_image(k8s_cluster, ns, "spring-cloud-a", NEW)
    set_image(k8s_cluster, ns, "spring-cloud-c", NEW)
    # the webhook paused both at once: the base never creates a ReplicaSet with the new image
    for app in ("spring-cloud-a", "spring-cloud-c"):
        dep = gb_kube.get("Deployment", ns, app)
        assert dep["spec"].get("paused") is True, dep["metadata"].get("annotations")
        assert dep["metadata"]["annotations"].get(n.PAUSED_BY_ANN) == "webhook"
    wait_for(lambda: routes(gb_kube, ns) == {"spring-cloud-a": "spring-cloud-a-gray",
                                             "spring-cloud-c": "spring-cloud-c-gray"},
             60, "lane table {a, c}")
    gray_ready_s = time.monotonic() - t0

    for app in ("spring-cloud-a", "spring-cloud-c"):
        gray = gb_kube.get("Deployment", ns, f"{app}-gray")
        assert gray["status"].get("availableReplicas") == 1 and gray["spec"]["replicas"] == 1
        assert gray["metadata"]["ownerReferences"][0]["kind"] == "GrayRelease"
        labels = gray["spec"]["template"]["metadata"]["labels"]
        assert labels["graybaggage.io/lane"] == "gray" and labels["alicloud.service.tag"] == "gray"
        assert labels["opensergo.io/canary-gray"] == "gray" and labels["app"] == app
        c = gray["spec"]["template"]["spec"]["containers"][0]
        assert c["image"].endswith(NEW)
        assert {"name": "GRAYBAGGAGE_LANE", "value": "gray"} in c["env"]
        pods = gb_kube.list("Pod", ns, f"app={app},graybaggage.io/lane=gray")
        assert len(pods) == 1 and pods[0]["spec"]["containers"][0]["image"].endswith(NEW)
        # lane Service and the pinned base Service
        ls = gb_kube.get("Service", ns, f"{app}-gray")
        assert ls["spec"]["selector"] == {"app": app, "graybaggage.io/lane": "gray"}
        assert ls["spec"]["ports"][0]["port"] == 20001
        svc = gb_kube.get("Service", ns, app)
        assert "pod-template-hash" in svc["spec"]["selector"]
        selected = gb_kube.list("Pod", ns, ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items()))
        assert len(selected) == 2 and all(p["spec"]["containers"][0]["image"].endswith(OLD) for p in selected)
        assert json.loads(svc["metadata"]["annotations"][n.ORIGINAL_SELECTOR_ANN]) == {"app": app}
        # base: new template, paused, still only the stable ReplicaSet
        base = gb_kube.get("Deployment", ns, app)
        assert image(base).endswith(NEW) and base["spec"]["paused"] is True
        assert base_rs_images(gb_kube, ns, app) == {f"{REPO}/{app}:{OLD}"}
        # the controller writes the lane table before the release status: wait for the status to catch up
        st = wait_for(lambda app=app: (s := status(gb_kube, ns, f"rollout-{app[-1]}")).get("phase") == "Paused" and s,
                      30, f"rollout-{app[-1]} Paused")
        assert st["currentStep"] == 0 and st["canaryRevision"] != st["stableRevision"]
    # b untouched
    b = gb_kube.get("Deployment", ns, "spring-cloud-b")
    assert b["spec"] == b_before["spec"] and b["metadata"]["generation"] == b_before["metadata"]["generation"]
    assert gb_kube.get("Deployment", ns, "spring-cloud-b-gray") is None
    assert gb_kube.get("Service", ns, "spring-cloud-b-gray") is None
    assert gb_kube.get("Service", ns, "spring-cloud-b")["spec"]["selector"] == {"app": "spring-cloud-b"}
    assert status(gb_kube, ns, "rollout-b")["phase"] == "Healthy"

    # events and the Lane's member list
    events = json.loads(k8s_cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    assert any(e["involvedObject"]["name"] == "rollout-a" and e["reason"] == "Paused" for e in events)
    wait_for(lambda: (gb_kube.get("Lane", ns, "gray").get("status") or {}).get("routedCount") == 2, 10,
             "Lane status: 2 routed members")
    assert (gb_kube.get("Lane", ns, "gray")["status"]["memberCount"]) == 3

    # CLI: tables and clear errors
    code, out = run_cli(k8s_cluster, ns, "status")
    assert code == 0 and "rollout-a" in out and "Paused" in out and "STATUS" in out
    code, out = run_cli(k8s_cluster, ns, "lanes")
    assert code == 0 and "spring-cloud-c->spring-cloud-c-gray" in out
    code, out = run_cli(k8s_cluster, ns, "approve", "rollout-b")
    assert code == 1 and "Healthy" in out
    code, out = run_cli(k8s_cluster, ns, "approve", "nope")
    assert code == 3 and "not found" in out

    # approve a: table drops a first, base a rolls to the new image, gray a goes, selectors restored
    code, out = run_cli(k8s_cluster, ns, "approve", "rollout-a")
    assert code == 0, out
    wait_for(lambda: routes(gb_kube, ns) == {"spring-cloud-c": "spring-cloud-c-gray"}, 20, "table {c}")

    def settled(app: str):
        """The release is Healthy, its base unpaused, its gray objects gone: returns the base Deployment."""
        base = gb_kube.get("Deployment", ns, app)
        return (status(gb_kube, ns, f"rollout-{app[-1]}").get("phase") == "Healthy"
                and not base["spec"].get("paused")
                and gb_kube.get("Deployment", ns, f"{app}-gray") is None
                and gb_kube.get("Service", ns, f"{app}-gray") is None and base)
    base = wait_for(lambda: settled("spring-cloud-a"), 60, "a promoted")
    assert image(base).endswith(NEW)
    assert gb_kube.get("Service", ns, "spring-cloud-a")["spec"]["selector"] == {"app": "spring-cloud-a"}
    assert n.ORIGINAL_SELECTOR_ANN not in (gb_kube.get("Service", ns, "spring-cloud-a")["metadata"]
                                           .get("annotations") or {})
    pods = gb_kube.list("Pod", ns, "app=spring-cloud-a")
    wait_for(lambda: all(p["spec"]["containers"][0]["image"].endswith(NEW)
                         for p in gb_kube.list("Pod", ns, "app=spring-cloud-a")), 30, "a pods on new image")
    assert pods

    # roll back c the seed's way: put the image back
    c_rs_before = base_rs_images(gb_kube, ns, "spring-cloud-c")
    set_image(k8s_cluster, ns, "spring-cloud-c", OLD)

    base = wait_for(lambda: settled("spring-cloud-c"), 60, "c rolled back")
    assert image(base).endswith(OLD)
    assert routes(gb_kube, ns) == {}
    assert gb_kube.get("Service", ns, "spring-cloud-c")["spec"]["selector"] == {"app": "spring-cloud-c"}
    # base c never rolled: its ReplicaSet history only ever held the old image
    assert base_rs_images(gb_kube, ns, "spring-cloud-c") == c_rs_before == {f"{REPO}/spring-cloud-c:{OLD}"}
    assert all(p["spec"]["containers"][0]["image"].endswith(OLD)
               for p in gb_kube.list("Pod", ns, "app=spring-cloud-c"))

    # clean up: every object the controller created goes away, base Deployments are released
    for x in "abc":
        gr = gb_kube.get("GrayRelease", ns, f"rollout-{x}")
        assert n.FINALIZER in (gr["metadata"].get("finalizers") or []), (
            x, gr["metadata"].get("finalizers"), sorted(gr["metadata"].get("annotations", {})))
    k8s_cluster.kubectl("delete", "grayreleases,lanes", "--all", "-n", ns, "--wait=true", "--timeout=30s")
    wait_for(lambda: owned_objects(gb_kube, ns) == [], 20, "no graybaggage objects left")
    for app in apps:
        dep = gb_kube.get("Deployment", ns, app)
        assert n.RELEASE_LABEL not in (dep["metadata"].get("labels") or {})
        assert n.STABLE_ANN not in (dep["metadata"].get("annotations") or {})
    print(f"\n[seed] set image -> gray pods routed in {gray_ready_s:.2f}s")


def test_restart_safety(k8s_cluster, gb_controller, gb_kube):
    """Kill -9 the controller right after each transition; a fresh one converges with no duplicates."""
    ns = gb_controller.namespace
    app = "spring-cloud-a"
    apply(k8s_cluster, ns, app_manifests(app) + [lane_manifest(), release_manifest("rollout-a", app)])
    k8s_cluster.kubectl("-n", ns, "rollout", "status", f"deployment/{app}", "--timeout=60s")
    gb_controller.start()
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy", 30, "Healthy")

    def restart():
        gb_controller.kill()
        gb_controller.start()

    def no_duplicates():
        deps = gb_kube.list("Deployment", ns, n.OWNER_LABEL)
        svcs = gb_kube.list("Service", ns, n.OWNER_LABEL)
        assert len(deps) <= 1 and len(svcs) <= 1, (deps, svcs)
        assert len(gb_kube.list("ReplicaSet", ns, f"app={app},{n.LANE_LABEL}=gray")) <= 1

    def paused_with_gray():
        st = status(gb_kube, ns, "rollout-a")
        return st.get("phase") == "Paused" and routes(gb_kube, ns) == {app: f"{app}-gray"} and st

    # 1) kill while Progressing (right after set image)
    set_image(k8s_cluster, ns, app, NEW)
    restart()
    wait_for(paused_with_gray, 40, "Paused with gray routed")
    no_duplicates()
    assert base_rs_images(gb_kube, ns, app) == {f"{REPO}/{app}:{OLD}"}

    # 2) kill right after approval (Promoting)
    assert run_cli(k8s_cluster, ns, "approve", "rollout-a")[0] == 0
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") in ("Promoting", "Healthy"), 20, "Promoting")
    restart()
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy"
             and gb_kube.get("Deployment", ns, f"{app}-gray") is None and routes(gb_kube, ns) == {},
             60, "promoted and Healthy")
    assert image(gb_kube.get("Deployment", ns, app)).endswith(NEW)
    assert gb_kube.get("Service", ns, app)["spec"]["selector"] == {"app": app}

    # 3) a new release, rolled back with the CLI; kill right after the rollback
    set_image(k8s_cluster, ns, app, "mse-2.0.2")
    wait_for(paused_with_gray, 40, "Paused again")
    no_duplicates()
    assert run_cli(k8s_cluster, ns, "rollback", "rollout-a")[0] == 0
    restart()
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy"
             and gb_kube.get("Deployment", ns, f"{app}-gray") is None, 60, "rolled back")
    base = gb_kube.get("Deployment", ns, app)
    assert image(base).endswith(NEW) and not base["spec"].get("paused")
    assert f"{REPO}/{app}:mse-2.0.2" not in base_rs_images(gb_kube, ns, app)
    assert gb_kube.get("Service", ns, app)["spec"]["selector"] == {"app": app}

    # 4) delete the GrayRelease mid-flight while the controller is down; a new one finishes the job
    set_image(k8s_cluster, ns, app, "mse-2.0.3")
    wait_for(paused_with_gray, 40, "Paused a third time")
    gb_controller.kill()
    k8s_cluster.kubectl("delete", "grayrelease", "rollout-a", "-n", ns, "--wait=false")
    gb_controller.start()
    wait_for(lambda: gb_kube.get("GrayRelease", ns, "rollout-a") is None, 40, "GrayRelease finalized")
    base = gb_kube.get("Deployment", ns, app)
    assert image(base).endswith(NEW) and not base["spec"].get("paused")     # left on its stable template
    assert f"{REPO}/{app}:mse-2.0.3" not in base_rs_images(gb_kube, ns, app)
    assert gb_kube.get("Service", ns, app)["spec"]["selector"] == {"app": app}
    assert n.RELEASE_LABEL not in (base["metadata"].get("labels") or {})

    # 5) Lane deletion empties the table; nothing we created is left
    k8s_cluster.kubectl("delete", "lane", "gray", "-n", ns, "--wait=true", "--timeout=20s")
    wait_for(lambda: owned_objects(gb_kube, ns) == [], 20, "no graybaggage objects left")
    assert gb_controller.starts == 5


def test_webhook_down_is_repaired(k8s_cluster, gb_controller, gb_kube):
    """failurePolicy Ignore: with the controller (and its webhook) down, `set image` goes through and the
    base starts rolling; the restarted controller pauses it, keeps base traffic on old pods where any are
    left, and approve/rollback still end Healthy."""
    ns = gb_controller.namespace
    app = "spring-cloud-a"
    apply(k8s_cluster, ns, app_manifests(app) + [lane_manifest(), release_manifest("rollout-a", app)])
    k8s_cluster.kubectl("-n", ns, "rollout", "status", f"deployment/{app}", "--timeout=60s")
    gb_controller.start()
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy", 30, "Healthy")
    gb_controller.kill()
    set_image(k8s_cluster, ns, app, NEW)
    assert not gb_kube.get("Deployment", ns, app)["spec"].get("paused")      # nobody paused it
    gb_controller.start()
    st = wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Paused"
                  and routes(gb_kube, ns) == {app: f"{app}-gray"} and status(gb_kube, ns, "rollout-a"),
                  40, "Paused with gray routed")
    base = gb_kube.get("Deployment", ns, app)
    assert base["spec"]["paused"] is True
    assert base["metadata"]["annotations"][n.PAUSED_BY_ANN] == "controller"
    events = json.loads(k8s_cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    assert any(e["reason"] == "WebhookBypassed" for e in events)
    svc = gb_kube.get("Service", ns, app)
    conds = {c["type"]: c for c in st.get("conditions") or []}
    if "pod-template-hash" in svc["spec"]["selector"]:
        pods = gb_kube.list("Pod", ns, ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items()))
        assert pods and all(p["spec"]["containers"][0]["image"].endswith(OLD) for p in pods)
    else:   # the rollout finished before the controller came back: not pinned, and it says so
        assert conds["BasePinned"]["reason"] == "StablePodsMissing"
    assert run_cli(k8s_cluster, ns, "approve", "rollout-a")[0] == 0
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy"
             and gb_kube.get("Deployment", ns, f"{app}-gray") is None, 60, "promoted")
    base = gb_kube.get("Deployment", ns, app)
    assert image(base).endswith(NEW) and not base["spec"].get("paused")
    assert gb_kube.get("Service", ns, app)["spec"]["selector"] == {"app": app}
