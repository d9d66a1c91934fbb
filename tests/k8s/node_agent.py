"""A small node agent for the test data plane: it owns one Node and runs that Node's pods as real
processes, each in a network namespace of its own. Test infrastructure, not product.

What it does, as a kubelet would:
- registers the Node (InternalIP = the node namespace's address, a NoSchedule taint so only pods that
  tolerate it land here), renews its Lease, keeps it Ready;
- watches the pods bound to it; for each new pod: a network namespace with a routed /32 veth into the
  node namespace (Calico style: proxy ARP on the host side), resolv.conf pointing at cluster DNS, the
  ServiceAccount token (TokenRequest bound to the pod), ca.crt and namespace bind-mounted at
  /var/run/secrets/kubernetes.io/serviceaccount inside the pod's own mount namespace, and the
  KUBERNETES_SERVICE_* and service-link variables; then each container's command/args with its env
  (values, fieldRefs, configMap/secret keys) as a process in that namespace;
- readiness probes (httpGet, tcpSocket, exec) from the node namespace; Ready, podIP, container states
  and restart counts written to the pod's status; containers restarted per restartPolicy;
- on deletion: SIGTERM to each container's main process, terminationGracePeriodSeconds, SIGKILL to its
  process group, then the pod object is deleted (grace 0), as the kubelet does.

Images are not pulled: an image name maps to a local command by the JSON "images" table of the agent's
config (see tests/k8s/README.md, "Images"). Unknown images leave the container Waiting (ErrImagePull).
Not done: init containers, volumes other than the ServiceAccount token, liveness/startup probes,
preStop hooks, resource limits, kubectl logs/exec (logs are files under the agent's workdir).

Run: python -m tests.k8s.node_agent CONFIG.json  (the DataPlane fixture writes the config).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import http.client
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # python tests/k8s/node_agent.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.k8s import netns  # noqa: E402

log = logging.getLogger("node-agent")
TAINT_KEY = "graybaggage.io/dataplane"
NODE_LABEL = "graybaggage.io/node"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
FIELD_MANAGER = "graybaggage-node-agent"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------ API access

class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any, what: str):
        super().__init__(f"{what}: HTTP {status}: {str(body)[:300]}")
        self.status = status


class Api:
    def __init__(self, server: str, ca_file: str, cert_file: str, key_file: str):
        u = urllib.parse.urlsplit(server)
        self.host, self.port = u.hostname, u.port or 443
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self.ctx.load_cert_chain(cert_file, key_file)

    def _conn(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None, *, ctype: str = "application/json",
             ok: tuple[int, ...] = (200, 201), timeout: float = 15) -> Any:
        conn = self._conn(timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": ctype, "Accept": "application/json"})
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        try:
            obj = json.loads(raw) if raw else None
        except ValueError:
            obj = raw.decode(errors="replace")
        if r.status not in ok:
            raise ApiError(r.status, obj, f"{method} {path}")
        return obj

    def patch_status(self, path: str, status: dict) -> Any:
        return self.call("PATCH", path + "/status", {"status": status}, ctype="application/merge-patch+json",
                         ok=(200,))

    def watch(self, path: str, timeout: float = 330) -> Iterator[dict]:
        conn = self._conn(timeout)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            r = conn.getresponse()
            if r.status != 200:
                raise ApiError(r.status, r.read()[:300], f"watch {path}")
            for line in r:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


# ------------------------------------------------------------------------------------------ configuration

@dataclasses.dataclass
class Config:
    server: str
    ca_file: str
    cert_file: str
    key_file: str
    node_name: str
    node_netns: str
    node_ip: str
    pod_cidr: str
    pod_netns_prefix: str      # pod namespaces are <prefix><n>, e.g. gb4711p1x3 (see netns.py)
    workdir: str
    cluster_dns: str
    cluster_domain: str = "cluster.local"
    kubernetes_service_host: str = "10.0.0.1"
    kubernetes_service_port: int = 443
    images: dict = dataclasses.field(default_factory=dict)
    probe_period_cap: float = 1.0
    kubelet_version: str = "v1.37.2"

    @classmethod
    def load(cls, path: str) -> "Config":
        return cls(**json.loads(Path(path).read_text()))


# ------------------------------------------------------------------------------------------ containers

@dataclasses.dataclass
class Container:
    spec: dict
    proc: subprocess.Popen | None = None
    started_at: str = ""
    restart_count: int = 0
    ready: bool = False
    probe_ok_streak: int = 0
    probe_fail_streak: int = 0
    next_probe: float = 0.0
    last_exit: dict | None = None
    waiting: tuple[str, str] | None = None
    restart_at: float = 0.0
    backoff: float = 1.0

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion ($$(VAR) escapes; unknown names are left as they are)."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = _VAR.match(value, i)
        if m:
            out.append(env.get(m.group(1), m.group(0)))
            i = m.end()
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


def field_ref(pod: dict, path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    return {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip, "status.podIPs": pod_ip, "status.hostIP": host_ip, "status.hostIPs": host_ip,
    }.get(path, "")


def service_links(services: list[dict]) -> dict[str, str]:
    """The variables the kubelet derives from a namespace's Services (enableServiceLinks)."""
    env: dict[str, str] = {}
    for svc in services:
        ip_ = svc["spec"].get("clusterIP")
        ports = svc["spec"].get("ports") or []
        if not ip_ or ip_ == "None" or not ports:
            continue
        p = svc["metadata"]["name"].upper().replace("-", "_")
        env[f"{p}_SERVICE_HOST"], env[f"{p}_SERVICE_PORT"] = ip_, str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{p}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
        proto = ports[0].get("protocol", "TCP").lower()
        env[f"{p}_PORT"] = f"{proto}://{ip_}:{ports[0]['port']}"
        for port in ports:
            pr = port.get("protocol", "TCP")
            k = f"{p}_PORT_{port['port']}_{pr}"
            env[k], env[k + "_PROTO"] = f"{pr.lower()}://{ip_}:{port['port']}", pr.lower()
            env[k + "_PORT"], env[k + "_ADDR"] = str(port["port"]), ip_
    return env


# ------------------------------------------------------------------------------------------ one pod

class PodRuntime:
    """A pod on this node, from its network namespace to its final delete."""

    def __init__(self, agent: "Agent", pod: dict, index: int):
        self.agent, self.pod, self.index = agent, pod, index
        meta = pod["metadata"]
        self.uid, self.ns, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.key = f"{self.ns}/{self.name}"
        self.host_network = bool(pod["spec"].get("hostNetwork"))
        self.netns = agent.cfg.node_netns if self.host_network else f"{agent.cfg.pod_netns_prefix}{index}"
        self.veth = f"gbv{index}"
        self.ip = agent.cfg.node_ip if self.host_network else ""
        self.dir = Path(agent.cfg.workdir) / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.containers = [Container(c) for c in pod["spec"].get("containers", [])]
        self.stop_event = threading.Event()
        self.grace: float = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self.gone = False          # the API object is already deleted (no final delete needed)
        self.thread = threading.Thread(target=self.run, name=f"pod-{self.key}", daemon=True)
        self._last_status: str = ""
        self.started = now()

    # --- lifecycle -----------------------------------------------------------------------------------

    def request_stop(self, grace: float | None, gone: bool = False) -> None:
        if grace is not None:
            self.grace = min(self.grace, grace)
        self.gone = self.gone or gone
        self.stop_event.set()

    def run(self) -> None:
        try:
            self.setup()
            self.write_status()
            while not self.stop_event.is_set():
                self.tick()
                self.stop_event.wait(0.1)
        except Exception as e:
            log.exception("pod %s: %s", self.key, e)
            self.waiting_all("RunContainerError", str(e))
            self.write_status(force=True)
            self.stop_event.wait()
        finally:
            self.terminate()

    def setup(self) -> None:
        cfg = self.agent.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.host_network:
            self.ip = self.agent.allocate_ip(self.uid)
            search = f"{self.ns}.svc.{cfg.cluster_domain} svc.{cfg.cluster_domain} {cfg.cluster_domain}"
            netns.create(self.netns,
                         resolv_conf=f"nameserver {cfg.cluster_dns}\nsearch {search}\noptions ndots:5\n",
                         hosts=f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{self.ip}\t{self.name}\n")
            # the pod end is created straight inside the pod's namespace
            netns.ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns,
                     netns=cfg.node_netns)
            netns.ip("addr", "add", f"{self.ip}/32", "dev", "eth0", netns=self.netns)
            netns.ip("link", "set", "eth0", "up", netns=self.netns)
            netns.ip("route", "add", "default", "dev", "eth0", "scope", "link", netns=self.netns)
            netns.ip("link", "set", self.veth, "up", netns=cfg.node_netns)
            netns.sysctl(cfg.node_netns, f"net.ipv4.conf.{self.veth}.proxy_arp", "1")
            netns.ip("route", "add", f"{self.ip}/32", "dev", self.veth, "src", cfg.node_ip, netns=cfg.node_netns)
        self.sa_dir = self.write_service_account()
        for c in self.containers:
            self.start(c)

    def write_service_account(self) -> str | None:
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        sa = spec.get("serviceAccountName") or "default"
        req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 7200,
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}}}
        tr = self.agent.api.call("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", req)
        d = self.dir / "serviceaccount"
        d.mkdir(exist_ok=True)
        (d / "token").write_text(tr["status"]["token"])
        (d / "ca.crt").write_bytes(Path(self.agent.cfg.ca_file).read_bytes())
        (d / "namespace").write_text(self.ns)
        return str(d)

    # --- containers ----------------------------------------------------------------------------------

    def env_for(self, c: Container) -> dict[str, str]:
        cfg, spec = self.agent.cfg, c.spec
        image = cfg.images.get(spec.get("image", ""), {})
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": self.name,
               "HOME": "/root", "LANG": "C.UTF-8"}
        env.update(image.get("env", {}))
        if self.pod["spec"].get("enableServiceLinks", True):
            env.update(service_links(self.agent.services(self.ns)))
        host, port = cfg.kubernetes_service_host, cfg.kubernetes_service_port
        env.update({"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
                    "KUBERNETES_SERVICE_PORT_HTTPS": str(port), "KUBERNETES_PORT": f"tcp://{host}:{port}",
                    f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
                    f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp", f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
                    f"KUBERNETES_PORT_{port}_TCP_ADDR": host})
        for src in spec.get("envFrom") or []:
            ref = src.get("configMapRef") or src.get("secretRef")
            kind = "configmaps" if "configMapRef" in src else "secrets"
            data = self.agent.object_data(self.ns, kind, ref["name"], optional=ref.get("optional", False))
            env.update({src.get("prefix", "") + k: v for k, v in data.items()})
        for e in spec.get("env") or []:
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            elif "valueFrom" in e:
                env[e["name"]] = self.value_from(e["valueFrom"])
        return env

    def value_from(self, vf: dict) -> str:
        if "fieldRef" in vf:
            return field_ref(self.pod, vf["fieldRef"]["fieldPath"], self.ip, self.agent.cfg.node_ip)
        for key, kind in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
            if key in vf:
                ref = vf[key]
                data = self.agent.object_data(self.ns, kind, ref["name"], optional=ref.get("optional", False))
                return data.get(ref["key"], "")
        return ""   # resourceFieldRef: no resource accounting here

    def argv_for(self, c: Container, env: dict[str, str]) -> tuple[list[str], str] | None:
        image = self.agent.cfg.images.get(c.spec.get("image", ""))
        if image is None:
            c.waiting = ("ErrImagePull", f"image {c.spec.get('image')!r} is not in the node agent's image "
                                         "table (tests/k8s/README.md, Images)")
            return None
        if c.spec.get("command"):
            argv = list(c.spec["command"]) + list(c.spec.get("args") or [])
        else:
            argv = list(image.get("entrypoint", [])) + list(c.spec.get("args") or image.get("cmd", []))
        argv = [expand(a, env) for a in argv]
        cwd = c.spec.get("workingDir") or image.get("workingDir") or str(self.dir)
        if not argv:
            c.waiting = ("CreateContainerError", "no command: neither the container nor the image names one")
            return None
        return argv, cwd

    def start(self, c: Container) -> None:
        env = self.env_for(c)
        got = self.argv_for(c, env)
        if got is None:
            return
        argv, cwd = got
        # `ip netns exec` runs the command in a new mount namespace (where it binds /etc/netns/<ns>/*
        # over /etc); the ServiceAccount directory is bind-mounted there too, visible to this pod only.
        script = ('[ -z "$1" ] || mount --bind "$1" ' + SA_MOUNT + ' || exit 97; cd "$2" || exit 98; '
                  'shift 2; exec "$@"')
        cmd = ["ip", "netns", "exec", self.netns, "sh", "-c", script, "pod", self.sa_dir or "", cwd, *argv]
        logf = open(self.dir / f"{c.name}.log", "ab")
        logf.write(f"===== {now()} start #{c.restart_count}: {argv}\n".encode())
        logf.flush()
        try:
            c.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=_pdeathsig)
        finally:
            logf.close()
        c.started_at, c.waiting, c.ready = now(), None, False
        c.probe_ok_streak = c.probe_fail_streak = 0
        probe = c.spec.get("readinessProbe") or {}
        c.next_probe = time.monotonic() + float(probe.get("initialDelaySeconds", 0))
        log.info("pod %s: container %s started (pid %s): %s", self.key, c.name, c.proc.pid, argv)

    def tick(self) -> None:
        for c in self.containers:
            if c.proc is not None and c.proc.poll() is not None and c.last_exit is None:
                self.container_exited(c)
            if c.proc is None and c.waiting is None and c.restart_at and time.monotonic() >= c.restart_at:
                c.restart_at = 0
                c.restart_count += 1
                self.start(c)
            if c.running:
                self.probe(c)
        self.write_status()

    def container_exited(self, c: Container) -> None:
        rc = c.proc.returncode
        c.last_exit = {"exitCode": rc if rc >= 0 else 128 - rc, "reason": "Completed" if rc == 0 else "Error",
                       "startedAt": c.started_at, "finishedAt": now()}
        if rc < 0:
            c.last_exit["signal"] = -rc
        c.ready = False
        log.info("pod %s: container %s exited (%s)", self.key, c.name, rc)
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and rc != 0):
            c.proc, c.restart_at = None, time.monotonic() + c.backoff
            c.backoff = min(c.backoff * 2, 10.0)
            c.last_exit = dict(c.last_exit, _restarting=True)

    # --- probes --------------------------------------------------------------------------------------

    def probe(self, c: Container) -> None:
        spec = c.spec.get("readinessProbe")
        if not spec:
            c.ready = True
            return
        if time.monotonic() < c.next_probe:
            return
        period = min(float(spec.get("periodSeconds", 10)), self.agent.cfg.probe_period_cap)
        c.next_probe = time.monotonic() + period
        ok = self.agent.run_probe(spec, self)
        if ok:
            c.probe_ok_streak, c.probe_fail_streak = c.probe_ok_streak + 1, 0
            if c.probe_ok_streak >= int(spec.get("successThreshold", 1)):
                c.ready = True
        else:
            c.probe_fail_streak, c.probe_ok_streak = c.probe_fail_streak + 1, 0
            if c.probe_fail_streak >= int(spec.get("failureThreshold", 3)):
                c.ready = False

    # --- status --------------------------------------------------------------------------------------

    def container_status(self, c: Container) -> dict:
        st: dict[str, Any] = {"name": c.name, "image": c.spec.get("image", ""), "imageID": "",
                              "restartCount": c.restart_count, "ready": c.ready and c.running,
                              "started": c.running}
        if c.running:
            st["state"] = {"running": {"startedAt": c.started_at}}
            st["containerID"] = f"graybaggage://{c.proc.pid}"
        elif c.waiting:
            st["state"] = {"waiting": {"reason": c.waiting[0], "message": c.waiting[1]}}
        elif c.last_exit and c.last_exit.get("_restarting"):
            st["state"] = {"waiting": {"reason": "CrashLoopBackOff" if c.restart_count else "ContainerCreating"}}
        elif c.last_exit:
            st["state"] = {"terminated": {k: v for k, v in c.last_exit.items() if not k.startswith("_")}}
        else:
            st["state"] = {"waiting": {"reason": "ContainerCreating"}}
        if c.last_exit and (c.running or c.last_exit.get("_restarting")):
            st["lastState"] = {"terminated": {k: v for k, v in c.last_exit.items() if not k.startswith("_")}}
        return st

    def waiting_all(self, reason: str, message: str) -> None:
        for c in self.containers:
            if not c.running:
                c.waiting = (reason, message[:500])

    def write_status(self, force: bool = False, terminated: bool = False) -> None:
        statuses = [self.container_status(c) for c in self.containers]
        ready = bool(statuses) and all(s["ready"] for s in statuses) and not terminated
        if terminated:
            phase = "Succeeded" if all((c.last_exit or {}).get("exitCode") == 0 for c in self.containers) else "Failed"
        else:
            phase = "Running" if any(s["started"] for s in statuses) else "Pending"
        body = {"phase": phase, "hostIP": self.agent.cfg.node_ip, "hostIPs": [{"ip": self.agent.cfg.node_ip}],
                "startTime": self.started, "containerStatuses": statuses}
        if self.ip:
            body.update(podIP=self.ip, podIPs=[{"ip": self.ip}])
        key = json.dumps([body, ready], sort_keys=True)
        if key == self._last_status and not force:
            return
        t = now()
        body["conditions"] = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
            {"type": "Initialized", "status": "True", "lastTransitionTime": t},
            {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": t},
            {"type": "Ready", "status": str(ready), "lastTransitionTime": t},
        ]
        try:
            self.agent.api.patch_status(f"/api/v1/namespaces/{self.ns}/pods/{self.name}", body)
            self._last_status = key
        except ApiError as e:
            if e.status == 404:
                self.request_stop(0, gone=True)
            else:
                log.warning("pod %s: status update failed: %s", self.key, e)
        except OSError as e:
            log.warning("pod %s: status update failed: %s", self.key, e)

    # --- termination ---------------------------------------------------------------------------------

    def terminate(self) -> None:
        """SIGTERM, grace, SIGKILL (the kubelet's order), then network and API object cleanup."""
        running = [c for c in self.containers if c.running]
        for c in running:
            with open(self.dir / f"{c.name}.log", "ab") as f:   # tests count requests served after this
                f.write(f"===== {now()} SIGTERM (grace {self.grace:g}s)\n".encode())
            _signal(c.proc.pid, signal.SIGTERM, group=False)
        deadline = time.monotonic() + max(0.0, self.grace)
        for c in running:
            while c.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        for c in self.containers:
            if c.proc is not None:
                _signal(c.proc.pid, signal.SIGKILL, group=True)
                try:
                    c.proc.wait(5)
                except subprocess.TimeoutExpired:
                    log.warning("pod %s: %s did not exit after SIGKILL", self.key, c.name)
                if c.last_exit is None or c.last_exit.get("_restarting"):
                    rc = c.proc.returncode if c.proc.returncode is not None else -9
                    c.last_exit = {"exitCode": rc if rc >= 0 else 128 - rc,
                                   "reason": "Completed" if rc == 0 else "Error",
                                   "startedAt": c.started_at, "finishedAt": now()}
                c.proc = None
        if not self.gone:
            self.write_status(force=True, terminated=True)
        if not self.host_network:
            netns.delete(self.netns)
            self.agent.release_ip(self.uid)
        if not self.gone:
            try:
                self.agent.api.call("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                                    {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                     "preconditions": {"uid": self.uid}}, ok=(200, 202, 404, 409))
            except (ApiError, OSError) as e:
                log.warning("pod %s: final delete failed: %s", self.key, e)
        log.info("pod %s: terminated", self.key)
        self.agent.forget(self.uid)


def _pdeathsig() -> None:  # child, before exec: die with the agent
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------------ the agent

class Agent:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.api = Api(cfg.server, cfg.ca_file, cfg.cert_file, cfg.key_file)
        self.pods: dict[str, PodRuntime] = {}
        self.lock = threading.Lock()
        self.next_index = 1
        net = ipaddress.ip_network(cfg.pod_cidr)
        self.free_ips = [str(h) for h in list(net.hosts())[1:]]
        self.used_ips: dict[str, str] = {}
        self.stopping = threading.Event()
        self.prober = netns.Worker(cfg.node_netns)
        self._svc_cache: dict[str, tuple[float, list[dict]]] = {}

    # --- addresses -----------------------------------------------------------------------------------

    def allocate_ip(self, uid: str) -> str:
        with self.lock:
            ip_ = self.free_ips.pop(0)
            self.used_ips[uid] = ip_
            return ip_

    def release_ip(self, uid: str) -> None:
        with self.lock:
            ip_ = self.used_ips.pop(uid, None)
            if ip_:
                self.free_ips.append(ip_)    # reused last: a late packet never reaches a new pod

    def forget(self, uid: str) -> None:
        with self.lock:
            self.pods.pop(uid, None)

    # --- API helpers ---------------------------------------------------------------------------------

    def services(self, ns: str) -> list[dict]:
        t, items = self._svc_cache.get(ns, (0.0, []))
        if time.monotonic() - t > 1.0:
            items = self.api.call("GET", f"/api/v1/namespaces/{ns}/services")["items"]
            self._svc_cache[ns] = (time.monotonic(), items)
        return items

    def object_data(self, ns: str, kind: str, name: str, optional: bool) -> dict[str, str]:
        try:
            obj = self.api.call("GET", f"/api/v1/namespaces/{ns}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404 and optional:
                return {}
            raise
        data = obj.get("data") or {}
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return data

    # --- probes, in the node namespace -------------------------------------------------------------

    def run_probe(self, spec: dict, pod: PodRuntime) -> bool:
        timeout = float(spec.get("timeoutSeconds", 1))
        if "exec" in spec:
            cp = subprocess.run(["ip", "netns", "exec", pod.netns, *spec["exec"]["command"]],
                                capture_output=True, timeout=timeout + 5)
            return cp.returncode == 0
        kind = "httpGet" if "httpGet" in spec else "tcpSocket" if "tcpSocket" in spec else None
        if kind is None:
            return True
        port = self.resolve_port(spec[kind].get("port"), pod)
        host = spec[kind].get("host") or pod.ip
        if kind == "tcpSocket":
            return self.prober.call(_tcp_ok, host, port, timeout)
        path = spec["httpGet"].get("path", "/")
        headers = {h["name"]: h["value"] for h in spec["httpGet"].get("httpHeaders") or []}
        return self.prober.call(_http_ok, host, port, path, headers, timeout)

    @staticmethod
    def resolve_port(port: Any, pod: PodRuntime) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for c in pod.containers:
            for p in c.spec.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise ValueError(f"named port {port!r} not found")

    # --- node ----------------------------------------------------------------------------------------

    def register_node(self) -> None:
        cfg = self.cfg
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": cfg.node_name,
                             "labels": {"kubernetes.io/hostname": cfg.node_name, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64", NODE_LABEL: "real"}},
                "spec": {"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr],
                         "taints": [{"key": TAINT_KEY, "value": "real", "effect": "NoSchedule"}]}}
        self.api.call("POST", "/api/v1/nodes", node, ok=(201, 409))
        self.node_status()

    def node_status(self) -> None:
        cfg, t = self.cfg, now()
        cond = [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "graybaggage node agent",
                 "lastHeartbeatTime": t, "lastTransitionTime": t}]
        for ty in ("MemoryPressure", "DiskPressure", "PIDPressure"):
            cond.append({"type": ty, "status": "False", "reason": "KubeletHasSufficient",
                         "lastHeartbeatTime": t, "lastTransitionTime": t})
        self.api.patch_status(f"/api/v1/nodes/{cfg.node_name}", {
            "addresses": [{"type": "InternalIP", "address": cfg.node_ip}, {"type": "Hostname", "address": cfg.node_name}],
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "conditions": cond,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": cfg.kubelet_version,
                         "kubeProxyVersion": cfg.kubelet_version, "containerRuntimeVersion": "graybaggage://1",
                         "osImage": "graybaggage test node", "kernelVersion": os.uname().release}})

    def heartbeat(self) -> None:
        name, path = self.cfg.node_name, f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.cfg.node_name}"
        last_status = time.monotonic()
        while not self.stopping.is_set():
            micro = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            try:
                try:
                    self.api.call("PATCH", path, {"spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                                                           "renewTime": micro}},
                                  ctype="application/merge-patch+json", ok=(200,))
                except ApiError as e:
                    if e.status != 404:
                        raise
                    self.api.call("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                                  {"metadata": {"name": name}, "spec": {"holderIdentity": name,
                                   "leaseDurationSeconds": 40, "renewTime": micro}}, ok=(201, 409))
                if time.monotonic() - last_status > 30:
                    self.node_status()
                    last_status = time.monotonic()
            except (ApiError, OSError) as e:
                log.warning("heartbeat: %s", e)
            self.stopping.wait(5)

    # --- pods ----------------------------------------------------------------------------------------

    def handle(self, pod: dict, deleted: bool = False) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            rt = self.pods.get(uid)
            if rt is None and not deleted and not pod["metadata"].get("deletionTimestamp") \
                    and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                rt = PodRuntime(self, pod, self.next_index)
                self.next_index += 1
                self.pods[uid] = rt
                rt.thread.start()
                return
        if rt is None:
            if pod["metadata"].get("deletionTimestamp") and not deleted:
                # never started here (or finished): nothing to stop, just finish the delete
                self.api.call("DELETE", f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
                                        f"{pod['metadata']['name']}",
                              {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                               "preconditions": {"uid": uid}}, ok=(200, 202, 404, 409))
            return
        rt.pod = pod if not deleted else rt.pod
        if deleted:
            rt.request_stop(0, gone=True)
        elif pod["metadata"].get("deletionTimestamp"):
            rt.request_stop(float(pod["metadata"].get("deletionGracePeriodSeconds", rt.grace)))

    def watch_pods(self) -> None:
        sel = urllib.parse.quote(f"spec.nodeName={self.cfg.node_name}")
        base = f"/api/v1/pods?fieldSelector={sel}"
        while not self.stopping.is_set():
            try:
                lst = self.api.call("GET", base)
                seen = set()
                for pod in lst["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self.handle(pod)
                with self.lock:
                    vanished = [rt for uid, rt in self.pods.items() if uid not in seen]
                for rt in vanished:
                    rt.request_stop(0, gone=True)
                rv = lst["metadata"]["resourceVersion"]
                for ev in self.api.watch(f"{base}&watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
                                         f"&timeoutSeconds=300"):
                    if self.stopping.is_set():
                        return
                    if ev["type"] == "ERROR":
                        break
                    if ev["type"] == "BOOKMARK":
                        continue
                    self.handle(ev["object"], deleted=ev["type"] == "DELETED")
            except (ApiError, OSError, ValueError) as e:
                if not self.stopping.is_set():
                    log.warning("pod watch: %s (re-listing)", e)
                    self.stopping.wait(0.5)

    def run(self) -> None:
        self.register_node()
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        log.info("node %s registered (%s in %s), watching its pods", self.cfg.node_name, self.cfg.node_ip,
                 self.cfg.node_netns)
        self.watch_pods()

    def shutdown(self) -> None:
        """Stop every pod (grace honoured, capped at 5 s) and clean up their namespaces."""
        self.stopping.set()
        with self.lock:
            pods = list(self.pods.values())
        for rt in pods:
            rt.request_stop(min(rt.grace, 5.0), gone=True)
        for rt in pods:
            rt.thread.join(15)
        for name in netns.ours():
            if name.startswith(self.cfg.pod_netns_prefix):
                netns.delete(name)


def _tcp_ok(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_ok(host: str, port: int, path: str, headers: dict, timeout: float) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "kube-probe/1.37", **headers})
        r = conn.getresponse()
        r.read()
        return 200 <= r.status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    import faulthandler

    faulthandler.enable()  # a crash of the agent leaves its traceback in the agent's log, not silence
    cfg = Config.load(argv[0])
    agent = Agent(cfg)

    def on_term(signum, _frame):
        if agent.stopping.is_set():  # already stopping its pods: a second signal must not cut that short
            return
        log.info("node agent: %s, stopping its pods", signal.Signals(signum).name)
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)
    try:
        agent.run()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        agent.shutdown()
        log.info("node agent stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
