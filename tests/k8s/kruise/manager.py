"""The real Kruise Rollout manager (github.com/openkruise/rollouts) on the test control plane.

    BIN = tests/k8s/kruise/build.sh | tail -1      # bin/<key>/<version>/{manager,module}
    KruiseManager(cluster, f"{BIN}/v0.6.2").start() ... .stop()

Everything it installs comes from the downloaded module (the repo keeps no copy):
- CRDs from `config/crd/bases`, with the conversion webhook the module's `config/crd/patches/webhook_in_*.yaml`
  asks for (rollouts, batchreleases; storage version v1beta1). The manager then writes the URL clientConfig
  and caBundle itself (pkg/webhook/util/crd).
- Webhook configurations from `config/webhook/manifests.yaml`, with `patch_manifests.yaml`'s objectSelectors
  merged in by webhook name; the manager rewrites their clientConfigs (URL https://WEBHOOK_HOST:WEBHOOK_PORT,
  its own CA).
- `lua_configuration/` copied into the manager's working dir (it reads the traffic-routing scripts from there).

The manager runs with the admin kubeconfig, WEBHOOK_HOST=127.0.0.1, POD_NAMESPACE=kruise-rollout,
WEBHOOK_CERT_DIR in its workdir, a free WEBHOOK_PORT (its server listens on 0.0.0.0) and metrics/health on
127.0.0.1:0. One manager per cluster (the webhook configuration names are fixed). stop() removes what start()
installed (webhook configurations first: the Deployment webhook is failurePolicy Fail), so later tests on the
same control plane see no Kruise CRDs.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from ..cluster import _child_env, _set_pdeathsig, _tail, free_port

NAMESPACE = "kruise-rollout"
PREFIX = "kruise-rollout-"   # config/default/kustomization.yaml namePrefix (the manager looks for these names)
WEBHOOK_CONFIGS = (("mutatingwebhookconfiguration", PREFIX + "mutating-webhook-configuration"),
                   ("validatingwebhookconfiguration", PREFIX + "validating-webhook-configuration"))


def _log(msg: str) -> None:
    import sys
    sys.stderr.write(f"[kruise] {msg}\n")
    sys.stderr.flush()


def kruise_bin_dir(stream=None) -> str:
    """GRAYBAGGAGE_KRUISE_BIN, else tests/k8s/kruise/build.sh's output (builds on first use, cached)."""
    env = os.environ.get("GRAYBAGGAGE_KRUISE_BIN")
    if env:
        return env
    script = Path(__file__).with_name("build.sh")
    proc = subprocess.Popen([str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_lines = []
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        (stream or (lambda s: None))(line)
    out_lines = proc.stdout.read().splitlines()
    if proc.wait() != 0 or not out_lines:
        raise RuntimeError(f"{script} failed (exit {proc.returncode})")
    os.environ["GRAYBAGGAGE_KRUISE_BIN"] = out_lines[-1]
    return out_lines[-1]


def crd_documents(module: Path) -> list[dict]:
    """The module's CRDs, with the conversion webhook its kustomize patches enable."""
    converted = set()
    for patch in sorted((module / "config/crd/patches").glob("webhook_in_*.yaml")):
        doc = yaml.safe_load(patch.read_text())
        converted.add(doc["metadata"]["name"])
    out = []
    for path in sorted((module / "config/crd/bases").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["metadata"]["name"] in converted:
                doc["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                    "conversionReviewVersions": ["v1", "v1beta1"],
                    "clientConfig": {"service": {"namespace": NAMESPACE, "name": "kruise-rollout-webhook-service",
                                                 "path": "/convert"}}}}
            out.append(doc)
    return out


def webhook_documents(module: Path) -> list[dict]:
    """manifests.yaml with patch_manifests.yaml's objectSelectors merged in (by config and webhook name)."""
    patches: dict[tuple[str, str], dict] = {}
    for doc in yaml.safe_load_all((module / "config/webhook/patch_manifests.yaml").read_text()):
        if doc:
            for hook in doc.get("webhooks") or []:
                patches[(doc["kind"], hook["name"])] = hook
    out = []
    for doc in yaml.safe_load_all((module / "config/webhook/manifests.yaml").read_text()):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = PREFIX + doc["metadata"]["name"]
        for hook in doc.get("webhooks") or []:
            extra = patches.get((doc["kind"], hook["name"]), {})
            for k, v in extra.items():
                if k != "name":
                    hook[k] = v
            svc = (hook.get("clientConfig") or {}).get("service")
            if svc:
                svc["namespace"] = NAMESPACE
                svc["name"] = "kruise-rollout-webhook-service"
        out.append(doc)
    return out


class KruiseManager:
    def __init__(self, cluster, version_dir: str | os.PathLike):
        self.cluster = cluster
        self.dir = Path(version_dir)
        self.version = self.dir.name
        self.module = (self.dir / "module").resolve()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"kruise-{self.version}-"))
        self.port = 0
        self.popen: subprocess.Popen | None = None
        self.log_file = self.workdir / "manager.log"

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 180) -> "KruiseManager":
        t0 = time.monotonic()
        k = self.cluster.kubectl
        if k("get", "namespace", NAMESPACE, check=False).returncode != 0:
            k("create", "namespace", NAMESPACE)
        docs = crd_documents(self.module) + webhook_documents(self.module)
        k("apply", "--server-side", "--force-conflicts", "-f", "-",
          input="\n---\n".join(yaml.safe_dump(d) for d in docs))
        # CRDs re-created after a previous manager's stop() must be Established before anything else
        k("wait", "--for", "condition=Established", "--timeout=60s",
          *[f"crd/{d['metadata']['name']}" for d in crd_documents(self.module)])
        # a copy, not a symlink: the manager loads its scripts with filepath.Walk("./lua_configuration"), which does
        # not descend into a symlinked root (with one, every TrafficRouting failed "higress lua script is not found"
        # and Kruise never made its canary Ingress)
        shutil.copytree(self.module / "lua_configuration", self.workdir / "lua_configuration")
        (self.workdir / "certs").mkdir()
        self.start_process()
        deadline = time.monotonic() + timeout
        self.wait(self._webhooks_ready, deadline, "webhook and CRD conversion clientConfigs point at the manager")
        self.wait(self._serving, deadline, "a Rollout round-trips through the conversion webhook")
        _log(f"{self.version} ready in {time.monotonic() - t0:.1f}s (webhook port {self.port}, log {self.log_file})")
        return self

    def start_process(self) -> None:
        self.port = free_port()
        env = _child_env({
            "KUBECONFIG": self.cluster.kubeconfig, "WEBHOOK_HOST": "127.0.0.1", "POD_NAMESPACE": NAMESPACE,
            "WEBHOOK_CERT_DIR": str(self.workdir / "certs"), "WEBHOOK_PORT": str(self.port),
        })
        fh = open(self.log_file, "ab")
        try:
            self.popen = subprocess.Popen(
                [str(self.dir / "manager"), "--metrics-bind-address=127.0.0.1:0",
                 "--health-probe-bind-address=127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                start_new_session=True, preexec_fn=_set_pdeathsig)
        finally:
            fh.close()
        _log(f"started manager {self.version} (pid {self.popen.pid})")

    def stop_process(self, grace: float = 10) -> None:
        p, self.popen = self.popen, None
        if p is None:
            return
        for sig, wait in ((15, grace), (9, 10)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> None:
        self.stop_process()
        k = self.cluster.kubectl
        for kind, name in WEBHOOK_CONFIGS:
            k("delete", kind, name, "--ignore-not-found", check=False)
        docs = crd_documents(self.module)
        for doc in docs:    # no conversion webhook any more: objects stay readable without the manager
            k("patch", "crd", doc["metadata"]["name"], "--type=merge", "-p",
              json.dumps({"spec": {"conversion": {"strategy": "None", "webhook": None}}}), check=False)
        for doc in docs:
            # Kruise's finalizers (rollouts, trafficroutings) would block the CRD deletion with no manager left
            kind = f"{doc['spec']['names']['plural']}.{doc['spec']['group']}"
            r = k("get", kind, "-A", "-o", "json", check=False)
            for item in (json.loads(r.stdout).get("items") or []) if r.returncode == 0 else []:
                if item["metadata"].get("finalizers"):
                    k("patch", kind, item["metadata"]["name"], "-n", item["metadata"].get("namespace", ""),
                      "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        for doc in docs:
            k("delete", "crd", doc["metadata"]["name"], "--ignore-not-found", "--timeout=60s", check=False)
        if os.environ.get("GRAYBAGGAGE_K8S_KEEP_WORKDIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---------------------------------------------------------------- checks
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, cond, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"kruise manager {self.version} exited ({self.popen and self.popen.returncode}) "
                                   f"while waiting for: {what}\n{_tail(self.log_file, 40)}")
            if cond():
                return
            time.sleep(0.3)
        raise RuntimeError(f"kruise manager {self.version}: timed out waiting for: {what}\n"
                           f"{_tail(self.log_file, 40)}")

    def _webhooks_ready(self) -> bool:
        want = f"https://127.0.0.1:{self.port}"
        for kind, name in WEBHOOK_CONFIGS:
            r = self.cluster.kubectl("get", kind, name, "-o", "json", check=False)
            if r.returncode != 0:
                return False
            for hook in json.loads(r.stdout).get("webhooks") or []:
                cc = hook.get("clientConfig") or {}
                if not str(cc.get("url", "")).startswith(want) or not cc.get("caBundle"):
                    return False
        for doc in crd_documents(self.module):
            if (doc["spec"].get("conversion") or {}).get("strategy") != "Webhook":
                continue
            r = self.cluster.kubectl("get", "crd", doc["metadata"]["name"], "-o",
                                     "jsonpath={.spec.conversion.webhook.clientConfig.url}", check=False)
            if not r.stdout.startswith(want):
                return False
        return True

    def _serving(self) -> bool:
        # a server-side dry run of a v1alpha1 Rollout goes through the conversion and validating webhooks
        probe = {"apiVersion": "rollouts.kruise.io/v1alpha1", "kind": "Rollout",
                 "metadata": {"name": "readiness-probe", "namespace": NAMESPACE},
                 "spec": {"objectRef": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                        "name": "readiness-probe"}},
                          "strategy": {"canary": {"steps": [{"replicas": 1}]}}}}
        r = self.cluster.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(probe),
                                 check=False)
        # 0, or a denial that the validating webhook itself wrote (anything else: not there yet)
        return r.returncode == 0 or ('admission webhook "vrollout' in r.stderr and "denied" in r.stderr)

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_file, n)
