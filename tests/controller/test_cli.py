"""The kubectl plugin as an operator uses it: the installed `kubectl-graybaggage` script in a subprocess, against
the real test control plane (tests/k8s) where a cluster is needed. Every error is one line on stderr with the
documented exit code; pure parts are tested table-driven."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from graybaggage_controller import cli

from .conftest import wait_for
from .test_live import app_manifests, apply, lane_manifest, release_manifest

SCRIPT = str(Path(sys.executable).parent / "kubectl-graybaggage")


def plugin(*args: str, kubeconfig: str | None = None, env: dict | None = None, timeout: float = 120):
    full = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    full.update(env or {})
    pre = ["--kubeconfig", kubeconfig] if kubeconfig else []
    return subprocess.run([SCRIPT, *pre, *args], capture_output=True, text=True, env=full, timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------- pure

@pytest.mark.parametrize("text,name", [
    ("rollout-a", "rollout-a"), ("rollout/rollout-a", "rollout-a"), ("rollouts/rollout-a", "rollout-a"),
    ("grayrelease/rollout-a", "rollout-a"), ("gr/rollout-a", "rollout-a"),
    ("grayreleases.graybaggage.io/rollout-a", "rollout-a"),
])
def test_release_names(text, name):
    assert cli.release_name(text) == name


@pytest.mark.parametrize("text", ["deployment/spring-cloud-a", "Bad_Name", "rollout/", ""])
def test_release_names_refused(text):
    with pytest.raises(cli.CliError) as e:
        cli.release_name(text)
    assert e.value.code == cli.USAGE


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1h", 3600), ("1m30s", 90),
                                          ("0.5s", 0.5)])
def test_durations(text, seconds):
    assert cli.duration(text) == seconds


@pytest.mark.parametrize("seen,phase,expected", [
    (["Progressing"], "Progressing", None),
    (["Paused"], "Paused", None),
    (["Progressing", "Healthy"], "Healthy", cli.OK),
    (["Healthy"], "Healthy", cli.OK),
    (["Progressing", "Failed"], "Failed", cli.WRONG_STATE),
    (["Paused", "RollingBack", "Healthy"], "Healthy", cli.WRONG_STATE),  # rolled back while watched
    (["Paused", "Promoting", "Healthy"], "Healthy", cli.OK),
])
def test_watch_verdicts(seen, phase, expected):
    verdict = cli.watch_verdict(seen, phase, "m")
    assert (verdict[0] if verdict else None) == expected


def test_release_tree():
    gr = {"metadata": {"name": "rollout-a"}, "spec": {"lane": "gray", "workloadRef": {"name": "a"}},
          "status": {"phase": "Paused", "stepLabel": "1/1", "ready": "1/1", "stableRevision": "s1",
                     "canaryRevision": "c1", "message": "waiting for approval"}}
    base = {"metadata": {"name": "a", "uid": "u-a"}, "spec": {"replicas": 2, "paused": True},
            "status": {"readyReplicas": 2}}
    gray = {"metadata": {"name": "a-gray", "uid": "u-g"}, "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}

    def rs(name, owner, rev, replicas):
        return {"metadata": {"name": name, "uid": "rs-" + name, "labels": {"pod-template-hash": rev},
                             "ownerReferences": [{"uid": owner}]}, "spec": {"replicas": replicas},
                "status": {"readyReplicas": replicas, "replicas": replicas}}

    def pod(name, owner):
        return {"metadata": {"name": name, "ownerReferences": [{"uid": "rs-" + owner}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}

    sets = [rs("a-s1", "u-a", "s1", 2), rs("a-old", "u-a", "o0", 0), rs("a-gray-c1", "u-g", "c1", 1)]
    pods = [pod("a-s1-x", "a-s1"), pod("a-s1-y", "a-s1"), pod("a-gray-c1-z", "a-gray-c1")]
    table = {"revision": "3", "lanes": {"gray": {"routes": {"a": "a-gray", "c": "c-gray"}}}}
    assert cli.release_tree(gr, base, gray, sets, pods, table) == "\n".join([
        "rollout-a  GrayRelease  Paused  lane gray  step 1/1  ready 1/1",
        "│   waiting for approval",
        "├── stable  Deployment/a  rev s1  2/2 ready  paused",
        "│   └── ReplicaSet/a-s1  2/2 ready  rev s1",
        "│       ├── Pod/a-s1-x  Running ready",
        "│       └── Pod/a-s1-y  Running ready",
        "├── canary  Deployment/a-gray  rev c1  1/1 ready",
        "│   └── ReplicaSet/a-gray-c1  1/1 ready  rev c1",
        "│       └── Pod/a-gray-c1-z  Running ready",
        "└── lane table  gray: a -> a-gray  (configmap/graybaggage-lanes revision 3)",
    ])
    assert cli.release_tree(gr, base, None, sets, pods, None).splitlines()[-2:] == [
        "├── canary  none (no release in progress)",
        "└── lane table  not published (no configmap/graybaggage-lanes)"]


# ---------------------------------------------------------------------------------------------- no cluster

def test_help_documents_the_exit_codes():
    res = plugin("--help")
    assert res.returncode == 0
    for code in ("0  done", "1  wrong phase", "2  usage", "3  not found", "4  no usable kubeconfig", "5  --watch"):
        assert code in res.stdout, res.stdout
    assert "exit codes:" in plugin("status", "--help").stdout


def test_no_kubeconfig_is_one_line_exit_4(tmp_path):
    res = plugin("status", env={"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)})
    one_line_error(res, cli.API, "no usable Kubernetes configuration", "KUBECONFIG")


def test_api_server_down_is_one_line_exit_4(tmp_path):
    from tests.k8s.cluster import free_port

    port = free_port()  # nothing listens there
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "demo"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    for args in (["status"], ["approve", "rollout-a"], ["get", "rollout/rollout-a"], ["lanes"]):
        one_line_error(plugin(*args, kubeconfig=str(kc)), cli.API,
                       f"cannot reach the API server at https://127.0.0.1:{port}: connection refused")
    res = plugin("version", kubeconfig=str(kc))
    assert res.returncode == 0 and res.stdout.startswith(f"kubectl-graybaggage {cli.__version__}\n"), res
    assert "controller: unknown (cannot reach the API server" in res.stdout


def test_usage_errors_are_one_line_exit_2():
    one_line_error(plugin("approve", "deployment/spring-cloud-a"), cli.USAGE, "names a deployment")
    one_line_error(plugin("-A", "approve", "rollout-a"), cli.USAGE, "-A (all namespaces) cannot be used with a NAME")
    one_line_error(plugin("status", "--watch"), cli.USAGE, "give its NAME")
    one_line_error(plugin("status", "rollout-a", "--timeout", "5s"), cli.USAGE, "--timeout only applies with --watch")
    assert plugin("status", "rollout-a", "--watch", "--timeout", "soon").returncode == cli.USAGE  # argparse's own
    assert plugin("completion", "bash").stdout.startswith("# kubectl-graybaggage bash completion")


# ---------------------------------------------------------------------------------------------- real cluster

@pytest.fixture
def released(k8s_cluster, gb_crds, k8s_namespace):
    """A Deployment, a Lane and a GrayRelease in a fresh namespace (the controller not yet started)."""
    ns = k8s_namespace
    apply(k8s_cluster, ns, [*app_manifests("spring-cloud-a", 1), lane_manifest("gray"),
                            release_manifest("rollout-a", "spring-cloud-a")])
    return ns


def test_status_watch_returns_when_the_release_goes_healthy(k8s_cluster, released, gb_controller):
    ns, kc = released, k8s_cluster.kubeconfig
    # no controller yet: the release never becomes Healthy, the watch times out (exit 5, one error line)
    res = plugin("-n", ns, "status", "rollout/rollout-a", "--watch", "--timeout", "2s", kubeconfig=kc)
    assert res.returncode == cli.TIMEOUT and "timed out after 2s" in res.stdout, res
    watch = subprocess.Popen([SCRIPT, "--kubeconfig", kc, "-n", ns, "status", "rollout-a", "-w", "--timeout", "120s"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert watch.poll() is None  # still waiting
        gb_controller.start()
        out, err = watch.communicate(timeout=150)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == cli.OK, (out, err)
    assert out.strip().splitlines()[-1].startswith("grayrelease/rollout-a Healthy"), out
    # Healthy already: returns at once
    assert plugin("-n", ns, "status", "rollout-a", "--watch", kubeconfig=kc).returncode == cli.OK


def test_errors_outputs_and_tree_on_the_real_cluster(k8s_cluster, released, gb_controller, gb_kube):
    ns, kc = released, k8s_cluster.kubeconfig
    gb_controller.start()
    wait_for(lambda: ((gb_kube.get("GrayRelease", ns, "rollout-a") or {}).get("status") or {}).get("phase") == "Healthy",
             60, "rollout-a Healthy")
    one_line_error(plugin("-n", ns, "approve", "nope", kubeconfig=kc), cli.NOT_FOUND,
                   'grayrelease "nope" not found in namespace')
    one_line_error(plugin("-n", ns, "status", "gr/nope", kubeconfig=kc), cli.NOT_FOUND)
    one_line_error(plugin("-n", ns, "approve", "rollout/rollout-a", kubeconfig=kc), cli.WRONG_STATE,
                   "is Healthy, not Paused")
    one_line_error(plugin("-n", ns, "abort", "rollout-a", kubeconfig=kc), cli.WRONG_STATE, "is Healthy")

    res = plugin("-n", ns, "status", "-o", "json", kubeconfig=kc)
    items = json.loads(res.stdout)["items"]
    assert [i["metadata"]["name"] for i in items] == ["rollout-a"] and items[0]["status"]["phase"] == "Healthy"
    one = yaml.safe_load(plugin("-n", ns, "status", "rollout/rollout-a", "-o", "yaml", kubeconfig=kc).stdout)
    assert one["kind"] == "GrayRelease" and one["spec"]["workloadRef"]["name"] == "spring-cloud-a"
    lanes = json.loads(plugin("-n", ns, "lanes", "-o", "json", kubeconfig=kc).stdout)
    assert [x["metadata"]["name"] for x in lanes["lanes"]] == ["gray"]

    # -A works where it can (lists), with a NAMESPACE column
    res = plugin("-A", "status", kubeconfig=kc)
    assert res.returncode == 0 and res.stdout.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == [ns, "rollout-a"] for line in res.stdout.splitlines()), res.stdout
    res = plugin("-A", "lanes", kubeconfig=kc)
    assert res.returncode == 0 and any(line.split()[:2] == [ns, "gray"] for line in res.stdout.splitlines())

    # the tree: release -> stable Deployment -> ReplicaSet -> pods (kwok makes them Running), lane table
    def tree_ready():
        res = plugin("-n", ns, "get", "rollout/rollout-a", kubeconfig=kc)
        assert res.returncode == 0, res
        assert "Pod/spring-cloud-a-" in res.stdout and "Running ready" in res.stdout, res.stdout
        return res.stdout
    tree = wait_for(tree_ready, 60, "a pod in the tree")
    lines = tree.splitlines()
    assert lines[0].startswith("rollout-a  GrayRelease  Healthy  lane gray"), tree
    assert any(line.startswith("├── stable  Deployment/spring-cloud-a  rev ") for line in lines), tree
    assert any("ReplicaSet/spring-cloud-a-" in line for line in lines), tree
    assert "├── canary  none (no release in progress)" in lines
    assert lines[-1].startswith("└── lane table  spring-cloud-a is not routed in lane gray"), tree
    doc = json.loads(plugin("-n", ns, "get", "rollout-a", "-o", "json", kubeconfig=kc).stdout)
    assert doc["stable"]["metadata"]["name"] == "spring-cloud-a" and doc["pods"], doc.keys()
    res = plugin("-n", ns, "get", "rollout-a", "--watch", "--timeout", "1s", kubeconfig=kc)
    assert res.returncode == 0 and res.stdout.startswith("rollout-a  GrayRelease  Healthy"), res
