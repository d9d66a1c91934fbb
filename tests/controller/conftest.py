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
             "--tls-dir", str(self.workdir / "tls")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.workdir), start_new_session=True)
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
