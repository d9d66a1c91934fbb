"""The real data plane (tests/k8s/dataplane.py): pods are processes with their own addresses, Services work
through kube-proxy's nftables rules, names through CoreDNS, the API through the `kubernetes` Service with
the pod's ServiceAccount token; deletion is graceful and a killed container is restarted."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time
from pathlib import Path

import pytest

from tests.k8s import netns
from tests.k8s.dataplane import NODE_NAME, POD_CIDR

pytestmark = pytest.mark.k8s

# What a pod sees from inside, served on :8080 as JSON.
INTROSPECT = textwrap.dedent("""
    import http.server, json, os, socket, ssl, urllib.request
    SA = "/var/run/secrets/kubernetes.io/serviceaccount"
    def api(path):
        ctx = ssl.create_default_context(cafile=SA + "/ca.crt")
        req = urllib.request.Request("https://kubernetes.default.svc" + path,
                                     headers={"Authorization": "Bearer " + open(SA + "/token").read()})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    ns = open(SA + "/namespace").read()
    seen = {"env": {k: v for k, v in os.environ.items() if k.startswith(("MY_", "KUBERNETES_SERVICE", "WEB_"))},
            "kubernetes.default.svc": socket.gethostbyname("kubernetes.default.svc"),
            "web": socket.gethostbyname("web"),
            "own pod": api(f"/api/v1/namespaces/{ns}/pods/{os.environ['MY_POD']}"),
            "secrets": api(f"/api/v1/namespaces/{ns}/secrets")}
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(seen).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
""")


def _pod(k8s_cluster, ns, name):
    return json.loads(k8s_cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)


def _wait(what, fn, timeout=90):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _ready(pod):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def test_a_pod_is_a_process_with_its_own_address_dns_service_and_api_access(
        k8s_cluster, k8s_dataplane, k8s_dataplane_namespace):
    ns = k8s_dataplane_namespace
    k8s_cluster.kubectl("create", "serviceaccount", "looker", "-n", ns)
    k8s_cluster.kubectl("create", "role", "pod-reader", "--verb=get", "--resource=pods", "-n", ns)
    k8s_cluster.kubectl("create", "rolebinding", "pod-reader", "--role=pod-reader",
                        f"--serviceaccount={ns}:looker", "-n", ns)
    k8s_cluster.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", ns)
    k8s_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "looker", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "looker", "terminationGracePeriodSeconds": 2, "containers": [{
            "name": "main", "image": "graybaggage-python", "command": ["python", "-c", INTROSPECT],
            "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MY_GREETING", "value": "hi $(MY_POD)"}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}}))
    pod = _wait("the pod Ready", lambda: (lambda p: _ready(p) and p)(_pod(k8s_cluster, ns, "looker")))
    assert pod["spec"]["nodeName"] == NODE_NAME                     # the namespace's annotations put it there
    ip = pod["status"]["podIP"]
    assert ip.startswith(POD_CIDR.rsplit(".", 1)[0] + ".")
    svc_ip = json.loads(k8s_cluster.kubectl("get", "svc", "web", "-n", ns, "-o", "json").stdout)["spec"]["clusterIP"]
    status, body = k8s_dataplane.node_http(f"http://{svc_ip}/")      # through kube-proxy's rules
    assert status == 200
    seen = json.loads(body)
    assert seen["env"]["MY_POD"] == "looker" and seen["env"]["MY_IP"] == ip
    assert seen["env"]["MY_GREETING"] == "hi looker"                 # $(VAR) expansion
    assert seen["env"]["WEB_SERVICE_HOST"] == svc_ip                 # service links
    assert seen["kubernetes.default.svc"] == "10.0.0.1" and seen["web"] == svc_ip   # cluster DNS + search path
    assert seen["own pod"] == 200 and seen["secrets"] == 403         # its ServiceAccount's token, its RBAC only
    assert k8s_dataplane.resolve(f"web.{ns}.svc.cluster.local") == [svc_ip]


def test_graceful_delete_and_a_killed_container_restarts(k8s_cluster, k8s_dataplane, k8s_dataplane_namespace):
    ns = k8s_dataplane_namespace
    # takes ~1 s to stop on SIGTERM, and says so
    script = ("import signal, sys, time, http.server, threading\n"
              "def term(*_):\n    print('got SIGTERM', flush=True); time.sleep(1); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, term)\n"
              "s = http.server.HTTPServer(('0.0.0.0', 8080), http.server.SimpleHTTPRequestHandler)\n"
              "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
              "while True: time.sleep(0.1)\n")
    before = set(netns.ours(os.getpid()))
    k8s_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "slow"},
        "spec": {"terminationGracePeriodSeconds": 10, "containers": [{
            "name": "main", "image": "graybaggage-python", "command": ["python", "-c", script],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}))
    pod = _wait("Ready", lambda: (lambda p: _ready(p) and p)(_pod(k8s_cluster, ns, "slow")))
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1])
    os.killpg(pid, signal.SIGKILL)
    pod = _wait("restarted and Ready", lambda: (lambda p: _ready(p) and p["status"]["containerStatuses"][0]
                                                ["restartCount"] == 1 and p)(_pod(k8s_cluster, ns, "slow")))
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 137 and last["signal"] == 9
    (pod_ns,) = set(netns.ours(os.getpid())) - before               # its network namespace
    t0 = time.monotonic()
    k8s_cluster.kubectl("delete", "pod", "slow", "-n", ns, "--wait=true", "--timeout=60s")
    took = time.monotonic() - t0
    log = next((k8s_dataplane.workdir / "agent" / "pods").glob(f"{ns}_slow_*/main.log")).read_text()
    assert "SIGTERM (grace 10s)" in log and log.rstrip().endswith("got SIGTERM")   # it had its second
    assert took >= 1.0
    _wait("its network namespace removed", lambda: not netns.exists(pod_ns))


def test_sweep_removes_namespaces_of_dead_owners():
    """What a SIGKILLed test run leaves behind (its processes die with it) is removed by the next run."""
    import subprocess
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    stale = netns.name_for(proc.pid, "p", "9x1")
    netns.create(stale, resolv_conf="nameserver 10.0.0.10\n")
    try:
        assert netns.exists(stale) and (netns.ETC_NETNS / stale).exists()
        swept = netns.sweep_stale()
        assert stale in swept
        assert not netns.exists(stale) and not (netns.ETC_NETNS / stale).exists()
        mine = netns.name_for(os.getpid(), "p", "9x2")
        netns.create(mine)
        try:
            assert mine not in netns.sweep_stale()                     # a live owner keeps its namespaces
        finally:
            netns.delete(mine)
    finally:
        netns.delete(stale)


def test_a_killed_test_run_leaves_nothing_behind(k8s_dataplane_bin, tmp_path):
    """SIGKILL the process that owns a control plane and a data plane with a pod running: every process it
    started dies with it (PR_SET_PDEATHSIG), the node agent stops its pods and removes their namespaces on the
    way out, and the next run's sweep removes the node namespace."""
    import subprocess
    import sys
    from tests.k8s.cluster import ensure_binaries
    env = dict(os.environ, GRAYBAGGAGE_K8S_BIN=ensure_binaries(), GRAYBAGGAGE_DATAPLANE_BIN=k8s_dataplane_bin)
    log = open(tmp_path / "run.log", "w+")
    owner = subprocess.Popen([sys.executable, "-m", "tests.k8s.dataplane"], cwd=str(Path(__file__).resolve().parents[2]),
                             env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    pids: list[int] = []
    try:
        for line in owner.stdout:
            if line.startswith("export KUBECONFIG="):
                kubeconfig = line.split("=", 1)[1].strip()
            if line.startswith("READY"):
                pids = [int(x) for x in line.split()[1:]]
                break
        assert pids, open(tmp_path / "run.log").read()[-3000:]
        kubectl = os.path.join(env["GRAYBAGGAGE_K8S_BIN"], "kubectl")
        subprocess.run([kubectl, "--kubeconfig", kubeconfig, "run", "p", "-n", "demo", "--image=graybaggage-probe",
                        "--restart=Never"], check=True, capture_output=True)
        mine = lambda: [n for n in netns.ours(owner.pid)]  # noqa: E731

        def p_running():
            return subprocess.run([kubectl, "--kubeconfig", kubeconfig, "get", "pod", "p", "-n", "demo", "-o",
                                   "jsonpath={.status.phase}"], capture_output=True, text=True).stdout == "Running"
        _wait("pod p to run", p_running)
        assert len(mine()) >= 2, mine()     # node + pod(s)
        owner.kill()
        owner.wait(10)

        def gone(pid):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        _wait("every data-plane process to die with its owner", lambda: all(gone(p) for p in pids), timeout=60)
        try:
            _wait("the agent to remove its pods' namespaces", lambda: mine() == [netns.name_for(owner.pid, "n", 1)],
                  timeout=60)
        except AssertionError as e:
            log.seek(0)
            logs = re.findall(r"dataplane ready .* logs (\S+)", log.read())
            agent_log = Path(logs[-1], "node-agent.log").read_text()[-4000:] if logs else "(no log dir)"
            raise AssertionError(f"{e}\nnode agent's log:\n{agent_log}") from None
        assert netns.name_for(owner.pid, "n", 1) in netns.sweep_stale()
        assert mine() == []
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
        for n in netns.ours(owner.pid):
            netns.delete(n)
