"""The in-cluster install (controller/deploy, controller/Dockerfile) and the walk-through
(README.md, "On Kubernetes: the seed, step by step"), on a control plane of their own (`gb_install_cluster`).

`run_walkthrough` (run once per session by the `gb_seed_flow` fixture) executes every `kubectl` line of the
walk-through in order: `kubectl apply -k controller/deploy`, examples/k8s, set image on a and c, approve a,
roll back c, the uninstall. In between it runs the controller the way the Deployment does, as a local
process: the Dockerfile's ENTRYPOINT with the Deployment's own args (only listen addresses, ports, the TLS
dir and the resync are overridden, since there is no pod network), with a token of the controller's
ServiceAccount, so it has exactly the RBAC of controller/deploy. `kubectl graybaggage` lines for `-n demo`
run as a user bound to the `graybaggage-release-operator` ClusterRole.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from graybaggage_controller import desired as d
from graybaggage_controller import names as n
from graybaggage_controller.operator import parse_args

from tests.examples import seed_traffic

from .conftest import wait_for


ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "controller" / "deploy"
DOCKERFILE = ROOT / "controller" / "Dockerfile"
WALKTHROUGH = ROOT / "README.md"
WALKTHROUGH_SECTION = "## On Kubernetes: the seed, step by step"
VENV_BIN = Path(sys.executable).parent
REAL_ONLY = "# real cluster only"
NS = "demo"
SYSTEM = "graybaggage-system"


# ------------------------------------------------------------------------------------------------ helpers

def deploy_docs() -> list[dict]:
    """controller/deploy as kustomize renders it (its resources are plain files, no transformers)."""
    kz = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert set(kz) <= {"apiVersion", "kind", "resources"}, "a transformer would make this reading wrong"
    docs: list[dict] = []
    for res in kz["resources"]:
        docs += [x for x in yaml.safe_load_all((DEPLOY / res).read_text()) if x]
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [x for x in docs if x["kind"] == kind and (name is None or x["metadata"]["name"] == name)]
    assert len(hits) == 1, (kind, name, len(hits))
    return hits[0]


def entrypoint() -> list[str]:
    return json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE.read_text(), re.M).group(1))


def controller_args() -> list[str]:
    dep = find(deploy_docs(), "Deployment", "graybaggage-controller")
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def walkthrough_steps(real: bool = False) -> list[tuple[str, list[str]]]:
    """[(step title, [command lines])] from the ```sh blocks of the README's walk-through section: the
    `kubectl` lines, minus `# real cluster only` ones; with ``real`` (a data plane is attached) those too,
    and the `GW=` and `curl` lines (tests/examples/seed_traffic.py: RealLines)."""
    steps: list[tuple[str, list[str]]] = []
    in_sh = in_section = False
    for line in WALKTHROUGH.read_text().splitlines():
        if line.startswith("## "):
            in_section = line.strip() == WALKTHROUGH_SECTION
            continue
        if not in_section:
            continue
        if line.startswith("### "):
            steps.append((line[4:].strip(), []))
        elif line.startswith("```"):
            in_sh = not in_sh and line.strip() == "```sh"
        elif in_sh and steps and line.startswith("kubectl ") and (real or REAL_ONLY not in line):
            steps[-1][1].append(line)
        elif in_sh and steps and real and line.startswith(("GW=", "curl ")):
            steps[-1][1].append(line)
    return steps


def token_kubeconfig(cluster, sa_ns: str, sa: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", sa, "-n", sa_ns, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": admin["clusters"][0]["name"], "user": sa}}],
        "current-context": sa}))
    return path


def get_json(cluster, *args) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def lane_routes(cluster, ns=NS):
    cp = cluster.kubectl("get", "cm", n.TABLE_CONFIGMAP, "-n", ns, "-o", "json", check=False)
    if cp.returncode:
        return None
    table = json.loads(json.loads(cp.stdout)["data"][n.TABLE_KEY])
    return table["lanes"]["gray"]["routes"]


def workloads(cluster, ns=NS) -> dict:
    """What an uninstall must not change: Deployments (spec, generation, labels, annotations), their
    ReplicaSets and pods (by uid), Services (spec)."""
    out = {}
    for dep in get_json(cluster, "deploy", "-n", ns)["items"]:
        m = dep["metadata"]
        out[f"deploy/{m['name']}"] = (m["generation"], dep["spec"], m.get("labels"), m.get("annotations"))
    for kind in ("rs", "pods"):
        for o in get_json(cluster, kind, "-n", ns)["items"]:
            out[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["uid"]
    for svc in get_json(cluster, "svc", "-n", ns)["items"]:
        out[f"svc/{svc['metadata']['name']}"] = {k: svc["spec"].get(k) for k in ("selector", "ports", "type")}
    return out


class LocalController:
    """The Deployment's container, as a local process: ENTRYPOINT + args from the manifests."""

    def __init__(self, cluster, kubeconfig: Path, workdir: Path, local_webhook: bool = True):
        from tests.k8s.cluster import free_port
        self.port, self.health_port = free_port(), free_port()
        self.identity_prefix = "graybaggage-controller-" + ("local" if local_webhook else "incluster")
        entry = entrypoint()
        # the Deployment's args; only what a pod has and this machine has not is overridden: listen on
        # loopback on free ports, and (local_webhook) register the webhook by URL, as there is no pod network
        self.cmd = [str(VENV_BIN / entry[0]), *entry[1:], *controller_args(),
                    "--webhook-addr=127.0.0.1", f"--webhook-port={self.port}",
                    f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
                    f"--tls-dir={workdir / self.identity_prefix}", f"--kubeconfig={kubeconfig}", "--resync=1"]
        if local_webhook:
            self.cmd += ["--webhook-host=127.0.0.1", "--webhook-service="]
        self.env = {k: v for k, v in cluster.env.items() if k != "KUBECONFIG"}
        self.env.update(POD_NAME=self.identity_prefix, POD_NAMESPACE=SYSTEM, PYTHONUNBUFFERED="1")
        self.log_path = workdir / "controller.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LocalController":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return self

    @property
    def identity(self) -> str:
        return f"{self.identity_prefix}_{self.proc.pid}"

    def health(self) -> dict:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as r:
            return json.loads(r.read())

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def webhook_answers(cluster, probe_ns: str) -> bool:
    """A server-side dry-run update of a targeted probe Deployment comes back paused: the API server
    called the webhook and trusted its certificate (the caBundle the controller wrote)."""
    cp = cluster.kubectl("patch", "deployment", "probe", "-n", probe_ns, "--dry-run=server", "-o", "json",
                         "--type", "merge", "-p", '{"spec":{"template":{"metadata":{"labels":{"v":"%s"}}}}}'
                         % int(time.monotonic() * 1000), check=False)
    return cp.returncode == 0 and json.loads(cp.stdout)["spec"].get("paused") is True


# ------------------------------------------------------------------------------------------------ the run

def run_walkthrough(cluster, workdir: Path) -> dict:
    r: dict = {"commands": [], "checks": {}, "t": {}, "real": getattr(cluster, "dataplane", None) is not None}
    t_start = time.monotonic()
    admin_env = dict(cluster.env)
    admin_env["PATH"] = f"{cluster.bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    operator_env = dict(admin_env)
    ctl: LocalController | None = None
    dp = getattr(cluster, "dataplane", None)
    traffic = seed_traffic.SeedTraffic(cluster, dp, NS) if dp else None
    real_lines = seed_traffic.RealLines(cluster, dp, NS) if dp else None
    slices: seed_traffic.EndpointSliceWatch | None = None

    def run(line: str) -> str:
        if real_lines is not None and real_lines.handles(line):
            rec = real_lines.run(line, admin_env)
            r["commands"].append(rec)
            assert rec["rc"] == 0, f"walk-through line failed on the data plane: {line}\n{rec}"
            return rec["stdout"]
        argv = shlex.split(line, comments=True)
        env = operator_env if argv[1] == "graybaggage" and f"-n {NS}" in line else admin_env
        t0 = time.monotonic()
        cp = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        r["commands"].append({"line": line, "rc": cp.returncode, "seconds": round(time.monotonic() - t0, 2),
                              "stdout": cp.stdout, "stderr": cp.stderr[-2000:],
                              "as": "release-operator" if env is operator_env else "admin"})
        assert cp.returncode == 0, f"walk-through command failed: {line}\n{cp.stdout}\n{cp.stderr}\n" + (
            ctl.log()[-4000:] if ctl else "")
        if dp is not None and argv[:3] == ["kubectl", "create", "namespace"]:
            dp.prepare_namespace(argv[3])        # its pods run on the data plane's real node
        return cp.stdout

    def after_install() -> None:
        nonlocal ctl
        c = r["checks"]
        c["dry_run"] = cluster.kubectl("apply", "-k", str(DEPLOY), "--dry-run=server", "-o", "name").stdout.split()
        c["diff_rc"] = cluster.kubectl("diff", "-k", str(DEPLOY), check=False).returncode
        c["controller_pods"] = len(get_json(cluster, "pods", "-n", SYSTEM)["items"])
        # the controller with exactly its ServiceAccount's RBAC
        kubeconfig = token_kubeconfig(cluster, SYSTEM, "graybaggage-controller", workdir / "sa.kubeconfig")
        # first exactly as in the pod (webhook registered through the Service, which is unreachable here):
        # it takes the Lease, makes the certificate for the Service's name, registers Service + caBundle
        incluster = LocalController(cluster, kubeconfig, workdir, local_webhook=False).start()
        try:
            def runtime_state():
                mwc = get_json(cluster, "mutatingwebhookconfiguration", "graybaggage")
                return (mwc["webhooks"][0]["clientConfig"],
                        get_json(cluster, "secret", "graybaggage-webhook-tls", "-n", SYSTEM).get("data"),
                        get_json(cluster, "lease", "graybaggage-controller", "-n", SYSTEM)["spec"].get("holderIdentity"))
            state = wait_for(lambda: (lambda st: st[0].get("caBundle") and st[1] and st[2] == incluster.identity
                                      and st)(runtime_state()), 30, "the in-cluster-mode controller to start")
            c["incluster_client_config"] = {k: v for k, v in state[0].items() if k != "caBundle"}
            # an upgrade re-applies the kustomization: what the controller filled in must survive it
            cluster.kubectl("apply", "-k", str(DEPLOY))
            c["reapply_keeps_runtime_state"] = runtime_state() == state
        finally:
            c["incluster_exit"] = incluster.stop()     # SIGTERM: releases the Lease
        # then with the webhook on loopback (the API server can call it) for the rest of the walk-through
        ctl = LocalController(cluster, kubeconfig, workdir).start()
        r["controller_cmd"] = ctl.cmd
        t0 = time.monotonic()
        wait_for(lambda: get_json(cluster, "lease", "graybaggage-controller", "-n", SYSTEM)["spec"]
                 .get("holderIdentity") == ctl.identity, 30, "the local controller to take the Lease")
        r["t"]["lease_acquired_s"] = round(time.monotonic() - t0, 2)

        def webhook_config():
            mwc = get_json(cluster, "mutatingwebhookconfiguration", "graybaggage")
            cc = mwc["webhooks"][0]["clientConfig"]
            return cc.get("caBundle") and str(ctl.port) in cc.get("url", "") and mwc
        mwc = wait_for(webhook_config, 30, "the controller to write clientConfig + caBundle")
        secret = get_json(cluster, "secret", "graybaggage-webhook-tls", "-n", SYSTEM)
        c["secret_keys"] = sorted(secret.get("data") or {})
        c["ca_matches_secret"] = mwc["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        # a probe Deployment only the webhook can pause (targeted label, a stable hash that never matches)
        cluster.kubectl("create", "namespace", "gb-probe")
        cluster.kubectl("create", "-n", "gb-probe", "-f", "-", input=json.dumps({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "probe", "labels": {n.RELEASE_LABEL: "probe"},
                         "annotations": {n.STABLE_ANN: "never"}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"p": "1"}},
                     "template": {"metadata": {"labels": {"p": "1"}},
                                  "spec": {"containers": [{"name": "p", "image": "p"}]}}}}))
        wait_for(lambda: webhook_answers(cluster, "gb-probe"), 30, "the webhook to answer")
        cluster.kubectl("delete", "namespace", "gb-probe", "--wait=false")
        c["health"] = ctl.health()

    def after_seed() -> None:
        # the CLI user: the shipped ClusterRole, bound in demo only
        cluster.kubectl("create", "serviceaccount", "release-operator", "-n", NS)
        cluster.kubectl("create", "rolebinding", "release-operator", "-n", NS,
                        "--clusterrole=graybaggage-release-operator", f"--serviceaccount={NS}:release-operator")
        operator_env["KUBECONFIG"] = str(token_kubeconfig(cluster, NS, "release-operator",
                                                          workdir / "operator.kubeconfig"))
        r["checks"]["healthy"] = {g["metadata"]["name"]: g["status"]["phase"]
                                  for g in get_json(cluster, "gr", "-n", NS)["items"]}
        r["checks"]["b_before"] = get_json(cluster, "deploy", "spring-cloud-b", "-n", NS)
        if traffic is not None:             # the release from here on runs under load through the gateway
            nonlocal slices
            slices = seed_traffic.EndpointSliceWatch(cluster, NS, tuple(f"spring-cloud-{x}" for x in "abc")).start()
            traffic.start_load(rate=30, workers=3, max_requests=40000, max_seconds=1500)
            traffic.wait_steady("baseline", set(), {x: {"base"} for x in "abc"})

    def after_release() -> None:
        c = r["checks"]
        c["routes_released"] = lane_routes(cluster)
        deps = {x["metadata"]["name"]: x for x in get_json(cluster, "deploy", "-n", NS)["items"]}
        c["paused_by"] = {a: deps[a]["metadata"].get("annotations", {}).get(n.PAUSED_BY_ANN)
                          for a in ("spring-cloud-a", "spring-cloud-c")}
        c["gray_deployments"] = sorted(x for x in deps if x.endswith("-gray"))
        c["gray_services"] = sorted(s["metadata"]["name"] for s in get_json(cluster, "svc", "-n", NS)["items"]
                                    if s["metadata"]["name"].endswith("-gray"))
        b = deps["spring-cloud-b"]
        c["b_untouched"] = (b["spec"] == c["b_before"]["spec"]
                            and b["metadata"]["generation"] == c["b_before"]["metadata"]["generation"])
        c["base_pinned"] = {a: "pod-template-hash" in get_json(cluster, "svc", a, "-n", NS)["spec"]["selector"]
                            for a in ("spring-cloud-a", "spring-cloud-c")}
        c["base_rs_images"] = sorted({rs["spec"]["template"]["spec"]["containers"][0]["image"]
                                      for rs in get_json(cluster, "rs", "-n", NS, "-l", "app=spring-cloud-c")["items"]
                                      if not rs["metadata"]["name"].startswith("spring-cloud-c-gray")})
        if traffic is not None:
            paused = {"a": {"base", "gray"}, "b": {"base"}, "c": {"base", "gray"}}
            traffic.wait_steady("paused", {"a", "c"}, paused)
            c["bad_input"] = {name: seed_traffic.raw_gateway_request(dp.gateway_url, header)
                              for name, header in seed_traffic.BAD_INPUTS.items()}
            c["deleted_gray_pod"] = traffic.delete_gray_pod("c")            # graceful: SIGTERM, then grace
            traffic.wait_steady("paused, c[gray] pod replaced", {"a", "c"}, paused)
            c["killed_gray_pod"] = traffic.kill_gray_container("c")        # SIGKILL: the node restarts it
            traffic.wait_steady("paused, c[gray] container restarted", {"a", "c"}, paused)
            traffic.mark("perturb:2 gray c replicas, lane Service edited by hand")
        # beyond the walk-through, two things an operator does that take other code paths (and verbs):
        # more gray replicas (the gray Deployment is replaced: update) ...
        cluster.kubectl("patch", "gr", "rollout-c", "-n", NS, "--type=merge", "-p", '{"spec":{"replicas":2}}')
        wait_for(lambda: get_json(cluster, "deploy", "spring-cloud-c-gray", "-n", NS)["status"]
                 .get("availableReplicas") == 2, 60, "two gray c replicas")
        # ... and a lane Service edited by hand is put back (update)
        cluster.kubectl("patch", "svc", "spring-cloud-c-gray", "-n", NS, "--type=merge",
                        "-p", '{"spec":{"selector":{"oops":"1"}}}')
        wait_for(lambda: "oops" not in get_json(cluster, "svc", "spring-cloud-c-gray", "-n", NS)["spec"]["selector"],
                 30, "the lane Service repaired")
        c["routes_after_extras"] = lane_routes(cluster)
        if traffic is not None:
            traffic.wait_steady("paused, 2 gray c replicas", {"a", "c"},
                                {"a": {"base", "gray"}, "b": {"base"}, "c": {"base", "gray"}})

    def after_approve() -> None:
        c = r["checks"]
        c["routes_approved"] = lane_routes(cluster)
        wait_for(lambda: cluster.kubectl("get", "deploy", "spring-cloud-a-gray", "-n", NS,
                                         check=False).returncode != 0, 60, "gray a deleted")
        a = get_json(cluster, "deploy", "spring-cloud-a", "-n", NS)
        c["a_image"] = a["spec"]["template"]["spec"]["containers"][0]["image"]
        c["a_paused"] = bool(a["spec"].get("paused"))
        if traffic is not None:
            traffic.wait_steady("approved", {"c"}, {"a": {"base"}, "b": {"base"}, "c": {"base", "gray"}})

    def after_rollback() -> None:
        c = r["checks"]
        wait_for(lambda: cluster.kubectl("get", "deploy,svc", "spring-cloud-c-gray", "-n", NS,
                                         check=False).stdout.strip() == "", 60, "gray c deleted")
        c["routes_rolled_back"] = lane_routes(cluster)
        cdep = get_json(cluster, "deploy", "spring-cloud-c", "-n", NS)
        c["c_image"] = cdep["spec"]["template"]["spec"]["containers"][0]["image"]
        c["c_rs_images_after"] = sorted({rs["spec"]["template"]["spec"]["containers"][0]["image"]
                                         for rs in get_json(cluster, "rs", "-n", NS, "-l", "app=spring-cloud-c")["items"]})
        if traffic is not None:
            traffic.wait_steady("rolled back", set(), {x: {"base"} for x in "abc"})
            finish_traffic()
        r["workloads_before_uninstall"] = workloads(cluster)

    def finish_traffic() -> None:
        results = traffic.stop_load()
        slices.stop()
        expected = {e["label"][len("steady:"):]: seed_traffic.chain_for(set(e["members"]))
                    for e in traffic.events if e["label"].startswith("steady:")}
        r["traffic"] = seed_traffic.analyse(results, traffic.load.marks, expected)
        r["traffic"]["endpointslice_violations"] = slices.violations
        r["traffic"]["endpointslice_events"] = slices.events
        r["traffic"]["served_after_sigterm"] = seed_traffic.served_after_sigterm(dp.workdir / "agent", NS)
        r["traffic"]["marks"] = [(round(t - traffic.load.t0, 2), label) for t, label in traffic.load.marks]

    def after_remove() -> None:
        c = r["checks"]
        wait_for(lambda: lane_routes(cluster) is None, 30, "lane table deleted")
        c["labels_left"] = {x["metadata"]["name"]: sorted(k for k in {**x["metadata"].get("labels", {}),
                                                                     **x["metadata"].get("annotations", {})}
                                                         if k.startswith("graybaggage.io/"))
                            for x in get_json(cluster, "deploy", "-n", NS)["items"]}
        c["rss_mib"] = round(ctl.rss_mib(), 1)
        # the controller's pods go with `kubectl delete -k`; here the local process gets the same SIGTERM
        c["controller_exit"] = ctl.stop()
        c["lease_after_stop"] = get_json(cluster, "lease", "graybaggage-controller", "-n", SYSTEM)["spec"]
        r["workloads_before_delete"] = workloads(cluster)

    def after_uninstall() -> None:
        c = r["checks"]
        names = cluster.kubectl("get", "crd,mutatingwebhookconfigurations,validatingwebhookconfigurations,"
                                "clusterroles,clusterrolebindings,namespaces", "-o", "name").stdout.split()
        c["left_behind"] = [x for x in names if "graybaggage" in x]
        r["workloads_after_delete"] = workloads(cluster)

    hooks = {"1": after_install, "2": after_seed, "3": after_release, "5": after_approve, "6": after_rollback,
             "7": after_remove, "8": after_uninstall}
    perturbations = {"3": "release a and c (set image)", "5": "approve a", "6": "roll back c"}
    try:
        for title, lines in walkthrough_steps(real=dp is not None):
            num = title.split(".")[0]
            t0 = time.monotonic()
            if traffic is not None and num in perturbations and traffic.load is not None:
                traffic.mark(f"perturb:{perturbations[num]}")
            for line in lines:
                run(line)
            if num in hooks:
                hooks[num]()
            r["t"][f"step {title}"] = round(time.monotonic() - t0, 2)
        r["t"]["total_s"] = round(time.monotonic() - t_start, 2)
    except BaseException:
        if ctl is not None:
            sys.stderr.write(f"\n----- controller log -----\n{ctl.log()[-8000:]}\n")
        raise
    finally:
        if traffic is not None and traffic.load is not None and traffic.load.running:
            finish_traffic()             # a failed step: keep what the load saw for the post-mortem
        if ctl is not None:
            ctl.stop(signal.SIGKILL)
            r["controller_log"] = ctl.log()
        (workdir / "result.json").write_text(json.dumps(r, indent=1, default=str))
    return r


# ------------------------------------------------------------------------------------------------ tests

def test_dockerfile_entrypoint_and_deployment_args_run_here():
    """The image cannot be built here: its ENTRYPOINT exists in this environment and accepts the Deployment's
    args (parsed by the real parser); the process itself runs with them in test_walkthrough."""
    entry = entrypoint()
    assert entry == ["graybaggage-controller"]
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001", text, re.M) and "FROM python:3.11" in text
    cp = subprocess.run([str(VENV_BIN / entry[0]), "--help"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and "--leader-elect" in cp.stdout and "--liveness" in cp.stdout
    cfg = parse_args(controller_args())
    assert cfg.leader_elect and cfg.namespaces == [] and cfg.webhook_name == "graybaggage"
    assert cfg.webhook_service == "graybaggage-system/graybaggage-controller:443"
    assert cfg.tls_secret == "graybaggage-system/graybaggage-webhook-tls"
    assert cfg.liveness == "http://0.0.0.0:8080/healthz" and cfg.tls_dir.startswith("/tmp/")


def test_manifests_are_what_the_controller_expects():
    docs = deploy_docs()
    kinds = sorted({x["kind"] for x in docs})
    assert kinds == sorted(["CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole",
                            "ClusterRoleBinding", "Role", "RoleBinding", "Lease", "Service", "Secret",
                            "MutatingWebhookConfiguration", "Deployment", "PodDisruptionBudget"])
    dep = find(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert dep["spec"]["replicas"] == 2 and "--leader-elect" in c["args"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["tcpSocket"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert {v["name"] for v in c["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    # the shipped webhook configuration is the one the controller writes in cluster, minus the caBundle
    # (so neither re-applying the kustomization nor a controller start changes anything but caBundle)
    cfg = parse_args(c["args"])
    svc_ns, _, rest = cfg.webhook_service.partition("/")
    svc_name, _, port = rest.partition(":")
    want = d.webhook_configuration(cfg.webhook_name, {}, cfg.namespaces,
                                   service={"namespace": svc_ns, "name": svc_name, "port": int(port)})
    assert find(docs, "MutatingWebhookConfiguration") == want
    svc = find(docs, "Service", svc_name)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["port"] == int(port)
    assert find(docs, "Lease")["metadata"]["name"] == "graybaggage-controller" and "spec" not in find(docs, "Lease")
    assert "data" not in find(docs, "Secret")


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_install_is_accepted(gb_seed_flow):
    c = gb_seed_flow["checks"]
    n_docs = len(deploy_docs())
    assert len(c["dry_run"]) == n_docs, c["dry_run"]      # server-side dry-run of every object
    assert c["diff_rc"] == 0                              # and the live objects are what the files say
    assert c["controller_pods"] == 2                      # restricted Pod Security admitted both replicas
    assert c["secret_keys"] == ["ca.crt", "tls.crt", "tls.key"] and c["ca_matches_secret"]
    assert c["health"]["leader"]["leading"] is True, c["health"]
    # the Deployment's args, run as they are: the webhook registered through the Service, with a caBundle
    assert c["incluster_client_config"] == {"service": {"namespace": SYSTEM, "name": "graybaggage-controller",
                                                        "port": 443, "path": "/pause-base"}}
    assert c["incluster_exit"] == 0
    assert c["reapply_keeps_runtime_state"]               # caBundle, certificate and Lease holder survive


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_seed_flow_with_the_service_accounts_rbac(gb_seed_flow):
    c = gb_seed_flow["checks"]
    assert set(c["healthy"].values()) == {"Healthy"} and len(c["healthy"]) == 3
    assert c["routes_released"] == {"spring-cloud-a": "spring-cloud-a-gray", "spring-cloud-c": "spring-cloud-c-gray"}
    assert c["paused_by"] == {"spring-cloud-a": "webhook", "spring-cloud-c": "webhook"}
    assert c["gray_deployments"] == c["gray_services"] == ["spring-cloud-a-gray", "spring-cloud-c-gray"]
    assert c["b_untouched"] and c["base_pinned"] == {"spring-cloud-a": True, "spring-cloud-c": True}
    assert c["base_rs_images"] == ["graybaggage-example:0.1.0"]
    assert c["routes_after_extras"] == c["routes_released"]
    assert c["routes_approved"] == {"spring-cloud-c": "spring-cloud-c-gray"}
    assert c["a_image"] == "graybaggage-example:0.2.0" and not c["a_paused"]
    assert c["routes_rolled_back"] == {}
    assert c["c_image"] == "graybaggage-example:0.1.0"
    assert c["c_rs_images_after"] == ["graybaggage-example:0.1.0"]   # base c never rolled
    assert "Forbidden" not in gb_seed_flow["controller_log"] and " 403" not in gb_seed_flow["controller_log"]


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_walkthrough_commands_work(gb_seed_flow):
    cmds = gb_seed_flow["commands"]
    assert all(x["rc"] == 0 for x in cmds)
    assert len(cmds) == sum(len(lines) for _, lines in walkthrough_steps(real=gb_seed_flow["real"])) >= 25
    as_operator = [x["line"] for x in cmds if x["as"] == "release-operator"]
    assert any("approve rollout-a" in x for x in as_operator) and len(as_operator) >= 3
    out = {x["line"]: x["stdout"] for x in cmds}
    assert "Paused" in out["kubectl -n demo get gr,lane"] or any("Paused" in x["stdout"] for x in cmds)
    sys.stderr.write("\n[walkthrough] " + json.dumps(gb_seed_flow["t"]) + "\n")


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_uninstall_leaves_nothing_and_no_workload_changed(gb_seed_flow):
    c = gb_seed_flow["checks"]
    assert c["left_behind"] == []
    assert c["labels_left"] == {"spring-cloud-a": [], "spring-cloud-b": [], "spring-cloud-c": []}
    assert c["controller_exit"] == 0
    assert "holderIdentity" not in c["lease_after_stop"]          # released on SIGTERM
    before, after = gb_seed_flow["workloads_before_delete"], gb_seed_flow["workloads_after_delete"]
    assert before == after                                        # kubectl delete -k touched no workload
    # and removing the releases (step 7) took off only our label and annotations: same specs, same
    # ReplicaSets and pods (the API server bumps a Deployment's generation on annotation changes, since they
    # are copied to ReplicaSets; no ReplicaSet was made)
    pre = gb_seed_flow["workloads_before_uninstall"]
    assert {k: v for k, v in pre.items() if not k.startswith("deploy/")} == \
        {k: v for k, v in after.items() if not k.startswith("deploy/")}

    def ours_removed(meta: dict | None) -> dict:
        return {k: v for k, v in (meta or {}).items() if not k.startswith("graybaggage.io/")}
    for k, v in pre.items():
        if k.startswith("deploy/"):
            _gen, spec, labels, annotations = v
            assert after[k][1] == spec, k
            assert (after[k][2] or {}) == ours_removed(labels) and (after[k][3] or {}) == ours_removed(annotations)


# ------------------------------------------------------------------------------------------------ real traffic

def _needs_data_plane(flow: dict) -> None:
    if not flow["real"]:
        pytest.skip("no data plane attached to the walk-through's cluster")


def _phase_table(traffic: dict) -> str:
    lines = [f"{'phase':58} {'requests':>8} {'failed':>6}  served (kind: chain x count)"]
    for phase, ph in traffic["phases"].items():
        served = "; ".join(f"{k}: " + ", ".join(f"{c} x{n}" for c, n in chains.items())
                           for k, chains in sorted(ph["by_kind"].items()))
        lines.append(f"{phase[:58]:58} {ph['requests']:>8} {ph['failed']:>6}  {served}")
    return "\n".join(lines)


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_release_under_load_loses_and_misroutes_nothing(gb_seed_flow):
    """The whole release (set image, a gray pod deleted, a gray container SIGKILLed, more gray replicas, a lane
    Service edited, approve, roll back) under a steady load through the gateway: no request fails, no base or
    forged request ever reaches a gray pod, and every xiaoming request sent while the release was settled got
    exactly the chain the lane table names."""
    _needs_data_plane(gb_seed_flow)
    t = gb_seed_flow["traffic"]
    sys.stderr.write(f"\n[release under load] {t['total']} requests; phases:\n{_phase_table(t)}\n"
                     f"xiaoming outside settled windows: {t['transitional']}\n"
                     f"requests served after SIGTERM, per pod: {t['served_after_sigterm']}\n"
                     f"marks (s from load start): {t['marks']}\n")
    assert t["failed"] == []
    # base requests never reach a gray pod, approve included (promote keeps the base pinned until no gray pod
    # is left, issue 15)
    assert t["base_touched_gray"] == []
    assert t["gray_misroutes"] == []
    assert t["steady_checked"] >= 7 * seed_traffic.SeedTraffic.HOLD, t["steady_checked"]
    windows = [label for _, label in t["marks"] if label.startswith("steady:")]
    assert len(windows) == 7, windows
    assert all(ph["requests"] > 0 for label, ph in t["phases"].items() if label.startswith("steady:"))


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_release_under_load_base_requests_never_touch_a_gray_pod(gb_seed_flow):
    _needs_data_plane(gb_seed_flow)
    t = gb_seed_flow["traffic"]
    assert t["base_touched_gray"] == []


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_base_endpoints_never_list_a_gray_pod(gb_seed_flow):
    _needs_data_plane(gb_seed_flow)
    t = gb_seed_flow["traffic"]
    assert t["endpointslice_events"] > 0
    assert t["endpointslice_violations"] == []


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_bad_input_through_the_gateway_stays_base(gb_seed_flow):
    """Hostile lane tags from outside (oversized, CR/LF, NUL, unicode, a W3C baggage member, 200 baggage
    members), while lane gray is live: never a 5xx, never a gray pod."""
    _needs_data_plane(gb_seed_flow)
    bad = gb_seed_flow["checks"]["bad_input"]
    sys.stderr.write(f"\n[bad input through the gateway] {bad}\n")
    assert set(bad) == set(seed_traffic.BAD_INPUTS)
    for name, (status, chain) in bad.items():
        assert status < 500, (name, status)
        assert status != 200 or chain == seed_traffic.BASE, (name, chain)


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_real_cluster_lines_ran_with_the_outputs_the_readme_names(gb_seed_flow):
    _needs_data_plane(gb_seed_flow)
    real = [x for x in gb_seed_flow["commands"] if x.get("real")]
    curls = [x for x in real if x["line"].startswith("curl ")]
    assert len(curls) == 5 and all(x["stdout"].strip() == x["want"] for x in curls), curls
    assert any(x["line"].startswith("GW=") for x in real)
    applied = [x["line"] for x in gb_seed_flow["commands"] if "examples/k8s/gateway" in x["line"]]
    assert len(applied) == 2, applied
