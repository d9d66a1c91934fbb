"""A real data plane for the test control plane: one Node whose pods are real processes with real
addresses, kube-proxy (nftables), CoreDNS behind the kube-dns Service, and Traefik as the gateway.

    dp = DataPlane(cluster, ensure_dataplane_binaries()).start()
    dp.gateway_url                      # http://127.0.0.1:<port> on the host, relayed to Traefik
    dp.make_namespace("demo")           # pods created there run on the real node
    dp.node_http("http://spring-cloud-a.demo:20001/a")   # a request from inside the node namespace
    dp.stop()

Layout (everything networked lives in namespaces made here; the host's network is not touched):

    host (test process, control plane on 127.0.0.1)
      |  unix-socket relays (socat): api.sock -> apiserver, gw.sock <- 127.0.0.1:<gateway port>
    node namespace gb<pid>n: NODE_IP on lo, ip_forward, route SERVICE_CIDR via lo
      |  kube-proxy --proxy-mode=nftables   CoreDNS on NODE_IP:53   Traefik :8000   socat 0.0.0.0:6443
      |  routed /32 veth per pod (proxy ARP on the node end)
    pod namespaces gb<pid>p<n>: eth0 = the pod IP, default route on-link

The ``kubernetes`` Service's EndpointSlice points at NODE_IP:6443 (the relay), so pods reach
https://kubernetes.default.svc with their ServiceAccount token, as in any cluster. kube-dns is a
selectorless Service at DNS_IP whose EndpointSlice is NODE_IP:53. CoreDNS and Traefik run as node
processes (like static pods), not as pods.

The real node is tainted ``graybaggage.io/dataplane=real:NoSchedule``; ``make_namespace`` annotates a
namespace so that every pod created in it gets the toleration and the node selector (admission plugins
PodTolerationRestriction and PodNodeSelector, enabled by cluster.py), so manifests stay unchanged. The
kwok node keeps serving every other namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from . import netns
from .cluster import ControlPlaneError, _child_env, _log, _set_pdeathsig, _tail, free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATAPLANE_BUILD_SH = HERE / "dataplane" / "build.sh"
DATAPLANE_BINARIES = ("coredns", "traefik")
NODE_NAME = "gb-node-0"
NODE_IP = "10.255.0.1"            # exists only inside the node namespace
POD_CIDR = "10.244.128.0/24"      # the real node's pods (kwok's fake pods use the rest of 10.244.0.0/16)
CLUSTER_CIDR = "10.244.0.0/16"
DNS_IP = "10.0.0.10"              # in the static (never dynamically allocated) band of 10.0.0.0/24
APISERVER_RELAY_PORT = 6443
GATEWAY_PORT = 8000               # Traefik's entry point "web" in the node namespace
GATEWAY_CLASS = "traefik"
GATEWAY_CONTROLLER = "traefik.io/gateway-controller"
# Traefik v3.7 watches v1 TLSRoutes (standard channel since v1.5); the controller tests install the same
# version (one version per cluster)
GATEWAY_API_VERSION = "v1.6.1"
TOLERATION = {"key": "graybaggage.io/dataplane", "operator": "Equal", "value": "real", "effect": "NoSchedule"}
NODE_SELECTOR = "graybaggage.io/node=real"
MANAGED_BY = "graybaggage-test-dataplane"
REQUIRED_TOOLS = ("ip", "nft", "socat", "mount")


class DataPlaneError(ControlPlaneError):
    pass


def missing_tools() -> list[str]:
    return [t for t in REQUIRED_TOOLS if shutil.which(t) is None]


def ensure_dataplane_binaries(stream: Callable[[str], None] | None = None) -> str:
    """The bin dir with coredns and traefik (``GRAYBAGGAGE_DATAPLANE_BIN`` or dataplane/build.sh)."""
    prebuilt = os.environ.get("GRAYBAGGAGE_DATAPLANE_BIN")
    if prebuilt:
        return prebuilt
    stream = stream or (lambda line: print(line, file=sys.stderr, end="", flush=True))
    proc = subprocess.Popen(["bash", str(DATAPLANE_BUILD_SH)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1)
    tail: list[str] = []
    for line in proc.stderr:
        stream(line)
        tail = (tail + [line])[-60:]
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise DataPlaneError(f"tests/k8s/dataplane/build.sh failed:\n{''.join(tail)}")
    return out.strip().splitlines()[-1]


def gateway_api_crd_dir(version: str = GATEWAY_API_VERSION) -> Path:
    """Standard-channel CRDs from the sigs.k8s.io/gateway-api Go module (same GOMODCACHE as build.sh)."""
    cache = Path(os.environ.get("GRAYBAGGAGE_K8S_CACHE") or Path.home() / ".cache" / "graybaggage" / "k8s")
    env = dict(os.environ, GOMODCACHE=str(cache / "gomod"), GOFLAGS="-modcacherw", GOTOOLCHAIN="local", GOWORK="off")
    cp = subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{version}"],
                        capture_output=True, text=True, env=env, cwd=str(cache), timeout=300)
    info = json.loads(cp.stdout or "{}")
    if cp.returncode != 0 or not info.get("Dir"):
        raise DataPlaneError(f"go mod download sigs.k8s.io/gateway-api@{version} failed: {info.get('Error')} "
                             f"{cp.stderr[-2000:]}")
    return Path(info["Dir"]) / "config" / "crd" / "standard"


def example_images(python: str | None = None) -> dict:
    """The node agent's image table: the example image runs examples/services/app.py under
    ``graybaggage run`` with this project's virtualenv (as examples/Dockerfile's ENTRYPOINT does)."""
    venv_bin = Path(python or sys.executable).parent
    app_dir = str(ROOT / "examples" / "services")
    path = f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def example(version: str) -> dict:
        return {"entrypoint": [str(venv_bin / "graybaggage"), "run", "--", "python", "app.py"],
                "workingDir": app_dir,
                "env": {"PATH": path, "SERVICE_VERSION": version, "PYTHONUNBUFFERED": "1",
                        "PYTHONDONTWRITEBYTECODE": "1"}}
    return {
        "graybaggage-example:0.1.0": example("2.0.0"),
        "graybaggage-example:0.2.0": example("2.0.1"),
        # a tiny HTTP server for the data plane's own self-test
        "graybaggage-probe": {"entrypoint": [str(venv_bin / "python"), "-m", "http.server"],
                              "cmd": ["8080"], "workingDir": str(HERE), "env": {"PATH": path}},
        # this project's interpreter, for pods that bring their own command
        "graybaggage-python": {"entrypoint": [str(venv_bin / "python")], "workingDir": str(ROOT),
                               "env": {"PATH": path, "PYTHONUNBUFFERED": "1"}},
    }


class _Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log_file: Path):
        self.name, self.popen, self.log_file = name, popen, log_file


class DataPlane:
    _instances = 0

    def __init__(self, cluster, dataplane_bin: str, workdir: str | None = None, images: dict | None = None,
                 traefik_args: list[str] | None = None):
        if getattr(cluster, "is_external", False):
            raise DataPlaneError("the real data plane needs the local test control plane (not an external cluster)")
        miss = missing_tools()
        if miss:
            raise DataPlaneError(f"missing tools for the data plane: {', '.join(miss)} "
                                 "(tests/k8s/dataplane/deps.sh installs them)")
        if os.geteuid() != 0:
            raise DataPlaneError("the data plane creates network namespaces: it needs root")
        self.cluster = cluster
        self.k8s_bin = cluster.bin_dir
        self.dp_bin = dataplane_bin
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="graybaggage-dataplane-", dir=cluster.workdir))
        self.logs = self.workdir / "logs"
        self.images = images if images is not None else example_images()
        # more Traefik providers, e.g. ["--providers.kubernetesIngressNGINX=true"] for nginx canary Ingresses
        self.traefik_args = list(traefik_args or [])
        DataPlane._instances += 1
        self.instance = DataPlane._instances   # several data planes (one per control plane) in one process
        self.node_ns = netns.name_for(os.getpid(), "n", self.instance)
        self.gateway_port = 0
        self.procs: list[_Proc] = []
        self.worker: netns.Worker | None = None
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ public

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def make_namespace(self, name: str) -> str:
        """Create (or annotate) a namespace whose pods all run on the real node."""
        self.cluster.kubectl("create", "namespace", name, check=False)
        self.prepare_namespace(name)
        return name

    def prepare_namespace(self, name: str) -> None:
        self.cluster.kubectl("annotate", "--overwrite", "namespace", name,
                             f"scheduler.alpha.kubernetes.io/node-selector={NODE_SELECTOR}",
                             "scheduler.alpha.kubernetes.io/defaultTolerations=" + json.dumps([TOLERATION]))

    def node_http(self, url: str, headers: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
        """GET ``url`` from inside the node namespace (cluster DNS is not used here: give an IP, or a
        name this helper resolves through CoreDNS itself with ``resolve``)."""
        return self.worker.call(_http_get, url, headers or {}, timeout, timeout=timeout + 5)

    def resolve(self, name: str, qtype: str = "A") -> list[str]:
        """Ask cluster DNS (through the kube-dns Service VIP) from the node namespace."""
        return self.worker.call(_dns_query, DNS_IP, name, timeout=15)

    def exec_in_node(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return netns.exec_in(self.node_ns, *cmd, check=check)

    def nft_ruleset(self) -> str:
        return self.exec_in_node("nft", "list", "ruleset").stdout

    # ------------------------------------------------------------------------------------------ start/stop

    def start(self, timeout: float = 180) -> "DataPlane":
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            swept = netns.sweep_stale()
            if swept:
                _log(f"dataplane: swept namespaces left by killed runs: {', '.join(swept)}")
            self._node_namespace()
            self._mark("node namespace", t0)
            self._relays()
            self._cluster_objects()
            self._mark("relays, kubernetes + kube-dns endpoints, Gateway API CRDs", t0)
            self._start_node_agent()
            self._start_kube_proxy()
            self._start_coredns()
            self._start_traefik()
            self.worker = netns.Worker(self.node_ns)
            self._wait("node Ready", deadline, self._node_ready)
            self._mark("node Ready", t0)
            self._wait("kube-proxy healthz", deadline,
                       lambda: self.node_http("http://127.0.0.1:10256/healthz", timeout=2)[0] == 200)
            self._mark("kube-proxy healthy", t0)
            self._wait("CoreDNS (through the kube-dns VIP)", deadline,
                       lambda: self.resolve("kubernetes.default.svc.cluster.local") == ["10.0.0.1"])
            self._mark("cluster DNS answers", t0)
            self._wait("Traefik ping", deadline,
                       lambda: self.node_http("http://127.0.0.1:9000/ping", timeout=2)[0] == 200)
            self._mark("Traefik up", t0)
            self._self_test(deadline)
            self._mark("probe pod reached through Service VIP, DNS and the gateway", t0)
        except BaseException:
            self._dump_logs()
            self.stop()
            raise
        self.startup_seconds = round(time.monotonic() - t0, 2)
        _log(f"dataplane ready in {self.startup_seconds}s: node {NODE_NAME} ({NODE_IP} in {self.node_ns}), "
             f"gateway {self.gateway_url}, logs {self.logs}")
        return self

    def stop(self) -> None:
        t0 = time.monotonic()
        for p in reversed(self.procs):      # the node agent (first started) stops last: it ends the pods
            _stop(p, grace=20 if p.name == "node-agent" else 5)
        self.procs.clear()
        if self.worker:
            self.worker.close()
        pod_prefix = netns.name_for(os.getpid(), "p", f"{self.instance}x")
        for name in netns.ours(os.getpid()):
            if name == self.node_ns or name.startswith(pod_prefix):
                netns.delete(name)
        self.cluster.kubectl("delete", "node", NODE_NAME, "--ignore-not-found", "--wait=false", check=False)
        _log(f"dataplane stopped in {time.monotonic() - t0:.1f}s")

    # ------------------------------------------------------------------------------------------ pieces

    def _mark(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 2)
        _log(f"dataplane: {what} (+{self.timings[what]}s)")

    def _node_namespace(self) -> None:
        netns.create(self.node_ns)
        netns.ip("addr", "add", f"{NODE_IP}/32", "dev", "lo", netns=self.node_ns)
        netns.sysctl(self.node_ns, "net.ipv4.ip_forward", "1")
        # locally originated traffic to a Service VIP needs a route before kube-proxy's DNAT (OUTPUT)
        from .cluster import SERVICE_CIDR
        netns.ip("route", "add", SERVICE_CIDR, "dev", "lo", "src", NODE_IP, netns=self.node_ns)
        # pods mount their ServiceAccount token here, each in its own mount namespace; the empty
        # mount point stays on the host (tmpfs /run) so concurrent runs never race on removing it
        Path("/run/secrets/kubernetes.io/serviceaccount").mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None, in_node: bool = False,
               cwd: str | None = None) -> _Proc:
        log_file = self.logs / f"{name}.log"
        argv = (["ip", "netns", "exec", self.node_ns] if in_node else []) + cmd
        with open(log_file, "ab") as fh:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                     cwd=cwd or str(self.workdir), env=_child_env(env), start_new_session=True,
                                     preexec_fn=_set_pdeathsig)
        p = _Proc(name, popen, log_file)
        self.procs.append(p)
        _log(f"dataplane: started {name} (pid {popen.pid}, log {log_file})")
        return p

    def _relays(self) -> None:
        api_port = self.cluster.ports["apiserver"]
        api_sock, gw_sock = self.workdir / "api.sock", self.workdir / "gw.sock"
        self._spawn("relay-api-host", ["socat", f"UNIX-LISTEN:{api_sock},fork,mode=600",
                                       f"TCP:127.0.0.1:{api_port}"])
        self._spawn("relay-api-node", ["socat", f"TCP-LISTEN:{APISERVER_RELAY_PORT},fork,reuseaddr,backlog=256",
                                       f"UNIX-CONNECT:{api_sock}"], in_node=True)
        self._spawn("relay-gw-node", ["socat", f"UNIX-LISTEN:{gw_sock},fork,mode=600,backlog=256",
                                      f"TCP:127.0.0.1:{GATEWAY_PORT}"], in_node=True)
        self.gateway_port = free_port()
        self._spawn("relay-gw-host", ["socat", f"TCP-LISTEN:{self.gateway_port},bind=127.0.0.1,fork,reuseaddr,"
                                      "backlog=256", f"UNIX-CONNECT:{gw_sock}"])
        # node-namespace processes use this kubeconfig: the relay at 127.0.0.1:6443 (a SAN of the cert)
        cfg = json.loads(Path(self.cluster.kubeconfig).read_text())
        cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{APISERVER_RELAY_PORT}"
        self.node_kubeconfig = self.workdir / "node.kubeconfig"
        self.node_kubeconfig.write_text(json.dumps(cfg))
        self.node_kubeconfig.chmod(0o600)

    def _apply(self, obj: dict) -> None:
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", MANAGED_BY,
                             "-f", "-", input=json.dumps(obj))

    def _endpoint_slice(self, ns: str, service: str, ports: list[dict]) -> dict:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{service}-{NODE_NAME}", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": service,
                                        "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}, "nodeName": NODE_NAME}],
                "ports": ports}

    def _cluster_objects(self) -> None:
        self._apply(self._endpoint_slice("default", "kubernetes",
                                         [{"name": "https", "port": APISERVER_RELAY_PORT, "protocol": "TCP"}]))
        self._apply({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
                     "spec": {"clusterIP": DNS_IP, "ports": [
                         {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                         {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}})
        self._apply(self._endpoint_slice("kube-system", "kube-dns", [
            {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]))
        crds = [f for f in sorted(gateway_api_crd_dir().glob("gateway.networking.k8s.io_*.yaml"))
                if "_vap_" not in f.name]      # CRDs only (not the safe-upgrade admission policy)
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts",
                             *[a for f in crds for a in ("-f", str(f))])
        self.cluster.kubectl("wait", "--for", "condition=Established", "--timeout=60s",
                             "crd/gatewayclasses.gateway.networking.k8s.io", "crd/httproutes.gateway.networking.k8s.io")
        self._wait("Gateway API to be served", time.monotonic() + 30,
                   lambda: self.cluster.kubectl("get", "gatewayclasses", check=False).returncode == 0)
        self._apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                     "metadata": {"name": GATEWAY_CLASS}, "spec": {"controllerName": GATEWAY_CONTROLLER}})

    def _start_node_agent(self) -> None:
        pki = self.cluster.pki
        cfg = {"server": self.cluster.server, "ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "admin.crt"),
               "key_file": str(pki / "admin.key"), "node_name": NODE_NAME, "node_netns": self.node_ns,
               "node_ip": NODE_IP, "pod_cidr": POD_CIDR,
               "pod_netns_prefix": netns.name_for(os.getpid(), "p", f"{self.instance}x"),
               "workdir": str(self.workdir / "agent"), "cluster_dns": DNS_IP, "images": self.images}
        path = self.workdir / "node-agent.json"
        path.write_text(json.dumps(cfg, indent=1))
        self._spawn("node-agent", [sys.executable, "-m", "tests.k8s.node_agent", str(path)], cwd=str(ROOT),
                    env={"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})

    def _start_kube_proxy(self) -> None:
        self._spawn("kube-proxy", [
            os.path.join(self.k8s_bin, "kube-proxy"), f"--kubeconfig={self.node_kubeconfig}",
            "--proxy-mode=nftables", f"--hostname-override={NODE_NAME}", f"--cluster-cidr={CLUSTER_CIDR}",
            "--healthz-bind-address=127.0.0.1:10256", "--metrics-bind-address=127.0.0.1:10249",
            # leave the kernel's conntrack sizing and timeouts alone (no CAP_SYS_RESOURCE here)
            "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0", "--v=1"], in_node=True)

    def _start_coredns(self) -> None:
        corefile = self.workdir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:8081
    ready 127.0.0.1:8182
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.node_kubeconfig}
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
""")
        self._spawn("coredns", [os.path.join(self.dp_bin, "coredns"), "-conf", str(corefile)], in_node=True)

    def _start_traefik(self) -> None:
        self._spawn("traefik", [
            os.path.join(self.dp_bin, "traefik"),
            f"--entryPoints.web.address=:{GATEWAY_PORT}", "--entryPoints.traefik.address=127.0.0.1:9000",
            "--ping=true", "--ping.entryPoint=traefik",
            "--providers.kubernetesgateway=true", "--providers.kubernetesgateway.nativeLBByDefault=true",
            f"--providers.kubernetesgateway.statusAddress.ip={NODE_IP}",
            "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false", "--log.level=INFO",
            *self.traefik_args],
            in_node=True, env={"KUBECONFIG": str(self.node_kubeconfig)})

    def _self_test(self, deadline: float) -> None:
        """A probe pod behind a Service and an HTTPRoute: one request through each layer."""
        ns = "gb-dataplane-probe"
        self.make_namespace(ns)
        self._apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": ns,
                                                                       "labels": {"app": "probe"}},
                     "spec": {"containers": [{"name": "probe", "image": "graybaggage-probe",
                                              "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}],
                              "terminationGracePeriodSeconds": 1}})
        self._apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe", "namespace": ns},
                     "spec": {"selector": {"app": "probe"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        self._apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                     "metadata": {"name": "probe-gw", "namespace": ns},
                     "spec": {"gatewayClassName": GATEWAY_CLASS,
                              "listeners": [{"name": "http", "protocol": "HTTP", "port": GATEWAY_PORT,
                                             "hostname": "probe.dataplane.test"}]}})
        self._apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                     "metadata": {"name": "probe", "namespace": ns},
                     "spec": {"parentRefs": [{"name": "probe-gw"}], "hostnames": ["probe.dataplane.test"],
                              "rules": [{"backendRefs": [{"name": "probe", "port": 80}]}]}})
        ips = self._wait("the probe Service in cluster DNS", deadline,
                         lambda: self.resolve(f"probe.{ns}.svc.cluster.local"))
        self._wait("the probe pod through its Service VIP", deadline,
                   lambda: self.node_http(f"http://{ips[0]}/", timeout=2)[0] == 200)
        self._wait("the probe pod through the gateway", deadline,
                   lambda: _http_get(self.gateway_url + "/", {"Host": "probe.dataplane.test"}, 2)[0] == 200)
        self.cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)

    def _node_ready(self) -> bool:
        cp = self.cluster.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if cp.returncode:
            return False
        conds = json.loads(cp.stdout).get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def _check_alive(self) -> None:
        for p in self.procs:
            rc = p.popen.poll()
            if rc is not None:
                raise DataPlaneError(f"{p.name} exited with code {rc} during start-up; last log lines:\n"
                                     + _tail(p.log_file, 30))

    def _wait(self, what: str, deadline: float, cond: Callable, interval: float = 0.2):
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                got = cond()
                if got:
                    return got
            except Exception as e:
                last = e
            time.sleep(interval)
        raise DataPlaneError(f"timed out waiting for {what} (last error: {last!r})")

    def _dump_logs(self) -> None:
        for p in self.procs:
            _log(f"--- last lines of {p.log_file} ---\n{_tail(p.log_file, 20)}")


def _stop(p: _Proc, grace: float) -> None:
    import signal
    try:
        os.killpg(p.popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.popen.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(p.popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        p.popen.wait(5)
    except subprocess.TimeoutExpired:
        _log(f"WARNING: {p.name} (pid {p.popen.pid}) did not exit after SIGKILL")


def _http_get(url: str, headers: dict, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _dns_query(server: str, name: str) -> list[str]:
    """A minimal DNS A query over UDP (stdlib only): the answer's IPv4 addresses."""
    import random
    import struct
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q, (server, 53))
        data = s.recv(4096)
    rid, flags, qd, an = struct.unpack(">HHHH", data[:8])
    if rid != qid or flags & 0xF:
        return []
    i = 12
    for _ in range(qd):             # skip the question
        while data[i]:
            i += data[i] + 1
        i += 5
    out = []
    for _ in range(an):
        if data[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while data[i]:
                i += data[i] + 1
            i += 1
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[i:i + 4]))
        i += rdlen
    return sorted(out)


def _main() -> None:  # manual use: python -m tests.k8s.dataplane  (Ctrl-C to stop)
    import signal
    from .cluster import ControlPlane, ensure_binaries

    def _term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in the background by a script
    cp = ControlPlane(ensure_binaries())
    cp.start()
    dp = None
    try:
        dp = DataPlane(cp, ensure_dataplane_binaries()).start()
        dp.make_namespace("demo")
        print(f"export KUBECONFIG={cp.kubeconfig}")
        print(f"export PATH={cp.bin_dir}:$PATH")
        print(f"# gateway: {dp.gateway_url}   node namespace: {dp.node_ns} (ip netns exec {dp.node_ns} ...)")
        print(f"# namespace 'demo' runs its pods on the real node; logs: {dp.workdir}")
        pids = [p.popen.pid for p in dp.procs]
        print(f"READY {' '.join(map(str, pids))}", flush=True)
        while True:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if dp is not None:
            dp.stop()
        cp.stop()


if __name__ == "__main__":
    _main()
