"""Fixtures for the controller tests against the real control plane (tests/k8s/plugin.py).

- `gb_crds` (session): the graybaggage CRDs from controller/deploy/crds, applied once and Established.
- `gb_controller` (function): a factory-like handle on a controller subprocess watching the test's
  namespace, with its own webhook port and MutatingWebhookConfiguration (`graybaggage-<ns>`), resync
  0.5 s. `.start()`, `.kill()` (SIGKILL), `.log()`; torn down with finalizers cleared.
- `gb_kube`: `graybaggage_controller.kube.Kube` on the test cluster.
- `wait_for(fn, timeout, what)`: poll with a short interval and a bounded timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.k8s.cluster import _set_pdeathsig

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "controller" / "deploy" / "crds"


def wait_for(fn, timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
        except AssertionError as e:      # let predicates use assert for a good message
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def gb_crds(k8s_cluster):
    k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    k8s_cluster.kubectl("wait", "--for", "condition=Established", "--timeout=60s",
                        "crd/lanes.graybaggage.io", "crd/grayreleases.graybaggage.io")
    # discovery of the new group can lag the Established condition a little
    wait_for(lambda: k8s_cluster.kubectl("get", "grayreleases", "-A", check=False).returncode == 0,
             30, "grayreleases to be served")
    return CRDS


@pytest.fixture
def gb_kube(k8s_cluster):
    from graybaggage_controller.kube import Kube
    return Kube(k8s_cluster.api_client())


class ControllerProcess:
    def __init__(self, cluster, namespace: str, workdir: Path):
        from tests.k8s.cluster import free_port
        self.cluster = cluster
        self.namespace = namespace
        self.workdir = workdir
        self.port = free_port()
        self.webhook_name = f"graybaggage-{namespace}"[:253]
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.extra_args: list[str] = []     # e.g. ["-v"] for the next start
        self.log_path = workdir / "controller.log"

    def start(self, wait: bool = True) -> "ControllerProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = open(self.log_path, "a")
        log.write(f"\n===== start #{self.starts} =====\n")
        log.flush()
        env = dict(self.cluster.env)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graybaggage_controller", "--namespace", self.namespace,
             "--kubeconfig", self.cluster.kubeconfig, "--resync", "0.5",
             "--webhook-port", str(self.port), "--webhook-name", self.webhook_name,
             "--tls-dir", str(self.workdir / "tls"), *self.extra_args, *(["-v"] if os.environ.get("GB_CTL_VERBOSE") else [])],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.workdir), start_new_session=True,
            preexec_fn=_set_pdeathsig)  # dies with the test run, even if pytest itself is killed
        log.close()
        if wait:
            self.wait_ready()
        return self

    PROBE = "gb-webhook-probe"

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the API server actually calls this controller's webhook: a server-side dry-run
        update of a targeted probe Deployment (replicas 0) comes back paused."""
        import json
        if self.cluster.kubectl("get", "deployment", self.PROBE, "-n", self.namespace, check=False).returncode:
            self.cluster.kubectl("create", "-n", self.namespace, "-f", "-", input=json.dumps({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": self.PROBE, "labels": {"graybaggage.io/gray-release": "probe"},
                             "annotations": {"graybaggage.io/stable-revision": "probe"}},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"probe": "1"}},
                         "template": {"metadata": {"labels": {"probe": "1"}},
                                      "spec": {"containers": [{"name": "p", "image": "probe"}]}}}}))

        def ready():
            assert self.proc.poll() is None, f"controller exited:\n{self.log()[-3000:]}"
            cp = self.cluster.kubectl("patch", "deployment", self.PROBE, "-n", self.namespace, "--dry-run=server",
                                      "-o", "json", "--type", "merge", "-p",
                                      '{"metadata":{"annotations":{"probe":"%s"}}}' % time.monotonic(),
                                      check=False)
            return cp.returncode == 0 and json.loads(cp.stdout)["spec"].get("paused") is True
        wait_for(ready, timeout, "the webhook to answer", interval=0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def gb_controller(k8s_cluster, gb_crds, k8s_namespace, tmp_path, request):
    ctl = ControllerProcess(k8s_cluster, k8s_namespace, tmp_path)
    yield ctl
    ctl.kill()
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        sys.stderr.write(f"\n----- controller log ({ctl.log_path}) -----\n{ctl.log()[-6000:]}\n")
    k8s_cluster.kubectl("delete", "mutatingwebhookconfiguration", ctl.webhook_name, "--ignore-not-found",
                        check=False)
    # the namespace is deleted by k8s_namespace; with the controller gone, release our finalizers
    for kind in ("grayreleases.graybaggage.io", "lanes.graybaggage.io"):
        out = k8s_cluster.kubectl("get", kind, "-n", k8s_namespace, "-o", "name", check=False).stdout.split()
        for obj in out:
            k8s_cluster.kubectl("patch", obj, "-n", k8s_namespace, "--type", "merge",
                                "-p", '{"metadata":{"finalizers":null}}', check=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ------------------------------------------------------------------------------ entry routing (issue 7)
from tests.k8s.dataplane import GATEWAY_API_VERSION  # noqa: E402  one Gateway API version per cluster


def gateway_api_crd_dir(version: str = GATEWAY_API_VERSION) -> Path:
    """The standard-channel CRDs shipped in the sigs.k8s.io/gateway-api Go module (downloaded once into the
    same GOMODCACHE that tests/k8s/build.sh uses; a warm cache needs no network)."""
    import json
    cache = Path(os.environ.get("GRAYBAGGAGE_K8S_CACHE") or Path.home() / ".cache" / "graybaggage" / "k8s")
    env = dict(os.environ, GOMODCACHE=str(cache / "gomod"), GOFLAGS="-modcacherw", GOTOOLCHAIN="local",
               GOWORK="off")
    cp = subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{version}"],
                        capture_output=True, text=True, env=env, cwd=str(cache), timeout=300)
    info = json.loads(cp.stdout or "{}")
    if cp.returncode != 0 or not info.get("Dir"):
        raise RuntimeError(f"go mod download sigs.k8s.io/gateway-api@{version} failed: {info.get('Error')} "
                           f"{cp.stderr[-2000:]}")
    return Path(info["Dir"]) / "config" / "crd" / "standard"


@pytest.fixture(scope="session")
def gateway_api_crds(k8s_cluster):
    """Gateway API CRDs (GatewayClass, Gateway, HTTPRoute; standard channel) from the Go module's own YAML."""
    crd_dir = gateway_api_crd_dir()
    kinds = ("gatewayclasses", "gateways", "httproutes")
    for kind in kinds:
        k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                            str(crd_dir / f"gateway.networking.k8s.io_{kind}.yaml"))
    k8s_cluster.kubectl("wait", "--for", "condition=Established", "--timeout=60s",
                        *[f"crd/{k}.gateway.networking.k8s.io" for k in kinds])
    wait_for(lambda: k8s_cluster.kubectl("get", "httproutes", "-A", check=False).returncode == 0,
             30, "httproutes to be served")
    return crd_dir


@pytest.fixture
def gateway_class(k8s_cluster, gateway_api_crds, request):
    """make(features) -> name of a new GatewayClass whose status (written through the status subresource,
    as a gateway controller would) lists `features` in supportedFeatures. Deleted afterwards."""
    import json
    import uuid
    made = []

    def make(features: list[str]) -> str:
        name = f"gb-{uuid.uuid4().hex[:8]}"
        k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": name},
            "spec": {"controllerName": "example.com/gateway-controller"}}))
        made.append(name)
        set_gateway_class_features(k8s_cluster, name, features)
        return name

    yield make
    for name in made:
        k8s_cluster.kubectl("delete", "gatewayclass", name, "--ignore-not-found", "--wait=false", check=False)


def set_gateway_class_features(k8s_cluster, name: str, features: list[str]) -> None:
    import json
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "test",
                              "lastTransitionTime": now, "observedGeneration": 1}],
              "supportedFeatures": [{"name": f} for f in sorted(features)]}
    k8s_cluster.kubectl("patch", "gatewayclass", name, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": status}))


class EntryKit:
    """Small helpers for the entry-routing live tests (tests/controller/test_entry_*.py)."""

    REPO = "registry.example/mse-demo"

    def __init__(self, cluster, namespace: str, kube):
        self.cluster, self.ns, self.kube = cluster, namespace, kube

    def apply(self, *docs: dict) -> None:
        import yaml
        self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", input=yaml.safe_dump_all(list(docs)))

    def app(self, app: str, replicas: int = 1) -> list[dict]:
        return [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app},
             "spec": {"ports": [{"name": "http", "port": 20001, "protocol": "TCP", "targetPort": 20001}],
                      "selector": {"app": app}}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
             "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                      "template": {"metadata": {"labels": {"app": app}},
                                   "spec": {"containers": [{"name": app, "image": f"{self.REPO}/{app}:1"}]}}}}]

    @staticmethod
    def lane(tag: str, entry: dict | None = None, name: str | None = None) -> dict:
        spec = {"tag": tag}
        if entry is not None:
            spec["entry"] = entry
        return {"apiVersion": "graybaggage.io/v1alpha1", "kind": "Lane", "metadata": {"name": name or tag},
                "spec": spec}

    @staticmethod
    def release(name: str, app: str, lane: str) -> dict:
        return {"apiVersion": "graybaggage.io/v1alpha1", "kind": "GrayRelease", "metadata": {"name": name},
                "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                         "lane": lane, "replicas": 1, "steps": [{"pause": {}}]}}

    def set_image(self, app: str, tag: str) -> None:
        self.cluster.kubectl("-n", self.ns, "set", "image", f"deployment/{app}", f"{app}={self.REPO}/{app}:{tag}")

    def phase(self, release: str) -> str | None:
        return ((self.kube.get("GrayRelease", self.ns, release) or {}).get("status") or {}).get("phase")

    def wait_phase(self, release: str, phase: str, timeout: float = 60) -> None:
        wait_for(lambda: self.phase(release) == phase, timeout, f"{release} {phase}")

    def condition(self, lane: str, ctype: str = "EntryRouted") -> dict | None:
        st = (self.kube.get("Lane", self.ns, lane) or {}).get("status") or {}
        return {c["type"]: c for c in st.get("conditions") or []}.get(ctype)

    def wait_condition(self, lane: str, status: str, reason: str, ctype: str = "EntryRouted",
                       timeout: float = 30) -> dict:
        def ok():
            c = self.condition(lane, ctype)
            assert c and c["status"] == status and c["reason"] == reason, c
            return c
        return wait_for(ok, timeout, f"Lane {lane} {ctype}={status}/{reason}")

    def get(self, kind: str, name: str) -> dict | None:
        from graybaggage_controller.entry import base
        return base.get(self.kube, kind, self.ns, name)

    @staticmethod
    def user_view(obj: dict) -> dict:
        """An object as its user wrote it: without the metadata the API server owns (and status)."""
        import copy
        o = copy.deepcopy(obj)
        o.pop("status", None)
        for key in ("managedFields", "resourceVersion", "generation", "uid", "creationTimestamp"):
            o.get("metadata", {}).pop(key, None)
        return o

    def cli(self, *args) -> tuple[int, str]:
        import contextlib
        import io
        from graybaggage_controller import cli
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli.main(["--kubeconfig", self.cluster.kubeconfig, "-n", self.ns, *args])
        return code, out.getvalue()


@pytest.fixture
def entry_kit(k8s_cluster, k8s_namespace, gb_kube):
    return EntryKit(k8s_cluster, k8s_namespace, gb_kube)


# ------------------------------------------------------------------- in-cluster install, RBAC, HA (issue 8)
CONTROLLER_SA_USER = "system:serviceaccount:graybaggage-system:graybaggage-controller"


@pytest.fixture(scope="session")
def gb_install_cluster(tmp_path_factory, k8s_dataplane_bin):
    """A control plane of its own (not the shared `k8s_cluster`): `kubectl delete -k controller/deploy` deletes
    the CRDs, which would pull them from under every other test. Its kube-apiserver also writes an audit log
    (`.audit_log`) of every request the controller's ServiceAccount makes (level Metadata, one record per
    request), which tests/controller/test_rbac.py compares with the Role. It has a real data plane
    (`.dataplane`, tests/k8s/dataplane.py): the walk-through's pods run, and its gateway and curl lines too."""
    if os.environ.get("GRAYBAGGAGE_TEST_KUBECONFIG"):
        pytest.skip("needs its own control plane (it deletes the CRDs) and a local webhook")
    from tests.k8s.cluster import ControlPlane, ensure_binaries

    class AuditedControlPlane(ControlPlane):
        def _spawn(self, name, args, env=None):
            if name == "kube-apiserver":
                policy = self.workdir / "audit-policy.yaml"
                policy.write_text(
                    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
                    f"  - level: Metadata\n    users: [\"{CONTROLLER_SA_USER}\"]\n"
                    "  - level: None\n")
                args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                        "--audit-log-mode=blocking", "--audit-log-format=json", "--audit-log-maxbackup=1"]
            super()._spawn(name, args, env)

    cluster = AuditedControlPlane(ensure_binaries(), workdir=tmp_path_factory.mktemp("install-cluster"))
    cluster.audit_log = cluster.workdir / "audit.log"
    cluster.start()
    try:
        from tests.k8s.dataplane import DataPlane
        cluster.dataplane = DataPlane(cluster, k8s_dataplane_bin).start()
        try:
            yield cluster
        finally:
            cluster.dataplane.stop()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def gb_seed_flow(gb_install_cluster, tmp_path_factory):
    """The README's Kubernetes walk-through run once on `gb_install_cluster`: install with
    `kubectl apply -k controller/deploy`, the controller as a local process with its ServiceAccount's token
    and the Deployment's own arguments, the seed flow, then the uninstall. Returns what happened (see
    tests/controller/test_deploy.py: run_walkthrough)."""
    from tests.controller.test_deploy import run_walkthrough
    return run_walkthrough(gb_install_cluster, tmp_path_factory.mktemp("walkthrough"))
