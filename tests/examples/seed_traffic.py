"""The seed (examples/k8s) under real traffic on the test data plane: what the README walk-through test
(tests/controller/test_deploy.py) does between its steps when a data plane is attached.

- ``gateway_chain`` / ``direct_chain``: one request through the gateway, or straight to one pod from the
  node namespace, answered with the served chain (``a[gray] -> b[base] -> c[gray]``).
- ``wait_steady``: waits for events, not time: every pod Ready, every a/b pod answering a tagged request
  with the chain the expected lane members give (so each pod's library holds the new lane table), and
  10 xiaoming requests in a row through the gateway with the expected chain (Traefik's route and
  kube-proxy's rules are live). Then it marks a steady window in the load's timeline.
- ``EndpointSliceWatch``: records any moment a base Service's EndpointSlice lists a gray pod.
- ``analyse``: failed requests, base requests that touched a gray pod (at any time), xiaoming requests in a
  steady window that were not served by exactly the expected chain, per-phase counts, and the requests
  each pod served after it got SIGTERM (from the pods' request logs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tests.k8s.dataplane import _http_get
from tests.k8s.load import SEED_KINDS, Load, Result

SERVICES = ("a", "b", "c")
HOST = "springa.com"
PATH = "/a?format=json"
PORT = 20001


def chain_for(members: set[str], first: str = "a", first_lane: str | None = None) -> str:
    """The chain a request in lane gray gets from service ``first`` on, when the lane table routes the
    services in ``members`` to their gray instances (the first hop's lane may be given: a direct call)."""
    out = []
    for s in SERVICES[SERVICES.index(first):]:
        lane = first_lane if (s == first and first_lane) else ("gray" if s in members else "base")
        out.append(f"{s}[{lane}]")
    return " -> ".join(out)


BASE = chain_for(set())


def _chain(body: bytes) -> str:
    return json.loads(body)["chain"]


class SeedTraffic:
    def __init__(self, cluster, dataplane, namespace: str):
        self.cluster, self.dp, self.ns = cluster, dataplane, namespace
        self.load: Load | None = None
        self.events: list[dict] = []

    # ---------------------------------------------------------------------------------------- requests

    def gateway_chain(self, headers: dict[str, str]) -> str:
        status, body = _http_get(self.dp.gateway_url + PATH, {"Host": HOST, "Accept": "application/json",
                                                              **headers}, 10)
        return _chain(body) if status == 200 else f"HTTP {status}"

    def direct_chain(self, pod_ip: str, service: str, headers: dict[str, str]) -> str:
        status, body = self.dp.node_http(f"http://{pod_ip}:{PORT}/{service}?format=json", headers, timeout=10)
        return _chain(body) if status == 200 else f"HTTP {status}"

    # ---------------------------------------------------------------------------------------- pods

    def pods(self) -> list[dict]:
        items = json.loads(self.cluster.kubectl("get", "pods", "-n", self.ns, "-o", "json").stdout)["items"]
        return [p for p in items if p["metadata"].get("labels", {}).get("app", "").startswith("spring-cloud-")]

    @staticmethod
    def lane_of(pod: dict) -> str:
        return "gray" if pod["metadata"].get("labels", {}).get("alicloud.service.tag") == "gray" else "base"

    @staticmethod
    def service_of(pod: dict) -> str:
        return pod["metadata"]["labels"]["app"].removeprefix("spring-cloud-")

    @staticmethod
    def ready(pod: dict) -> bool:
        return not pod["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])

    def pod_ready_and_following(self, members: set[str], lanes: dict[str, set[str]]) -> bool | str:
        """Every seed pod Ready, the gray pods exactly ``lanes`` ({service: {lane,...}}), and every a/b
        pod answering a tagged request as the lane table ``members`` says."""
        pods = self.pods()
        have: dict[str, set[str]] = {}
        for p in pods:
            if not self.ready(p):
                return f"pod {p['metadata']['name']} not Ready"
            have.setdefault(self.service_of(p), set()).add(self.lane_of(p))
        if have != lanes:
            return f"pods by service/lane {have} != {lanes}"
        for p in pods:
            s = self.service_of(p)
            if s == "c":
                continue
            want = chain_for(members, s, self.lane_of(p))
            got = self.direct_chain(p["status"]["podIP"], s, {"x-mse-tag": "gray"})
            if got != want:
                return f"{p['metadata']['name']}: {got} != {want}"
        return True

    def wait_steady(self, label: str, members: set[str], lanes: dict[str, set[str]], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.pod_ready_and_following(members, lanes)
            if last is True:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"[{label}] pods did not settle: {last}")
        want, streak = chain_for(members), 0
        while streak < 10:
            if time.monotonic() > deadline:
                raise AssertionError(f"[{label}] gateway never served xiaoming {want!r} 10 times in a row: {last}")
            last = self.gateway_chain(SEED_KINDS["xiaoming"])
            streak = streak + 1 if last == want else 0
        for kind in ("other", "forged"):
            got = self.gateway_chain(SEED_KINDS[kind])
            assert got == BASE, f"[{label}] {kind}: {got}"
        t = self.mark(f"steady:{label}", members=sorted(members))
        self.hold(t, deadline)

    HOLD = 30   # xiaoming requests the load must complete inside each steady window before it moves on

    def hold(self, since: float, deadline: float) -> None:
        """Let the load run in the settled state until HOLD xiaoming requests sent after ``since`` came back."""
        if self.load is None:
            return
        while sum(1 for r in list(self.load.results) if r.kind == "xiaoming" and r.t_send >= since) < self.HOLD:
            assert time.monotonic() < deadline and self.load.running, "the load stopped before the window filled"
            time.sleep(0.2)

    def mark(self, label: str, **extra: Any) -> float:
        t = self.load.mark(label) if self.load else time.monotonic()
        self.events.append({"t": t, "label": label, **extra})
        return t

    # ---------------------------------------------------------------------------------------- faults

    def delete_gray_pod(self, service: str) -> str:
        (pod,) = [p for p in self.pods() if self.service_of(p) == service and self.lane_of(p) == "gray"]
        name = pod["metadata"]["name"]
        self.mark(f"perturb:delete {name}")
        self.cluster.kubectl("delete", "pod", name, "-n", self.ns, "--wait=false")
        return name

    def kill_gray_container(self, service: str) -> str:
        (pod,) = [p for p in self.pods() if self.service_of(p) == service and self.lane_of(p) == "gray"]
        cid = pod["status"]["containerStatuses"][0]["containerID"]
        pid = int(cid.rsplit("/", 1)[1])
        self.mark(f"perturb:SIGKILL {pod['metadata']['name']} (pid {pid})")
        os.killpg(pid, signal.SIGKILL)
        return pod["metadata"]["name"]

    # ---------------------------------------------------------------------------------------- load

    def start_load(self, **kw: Any) -> Load:
        self.load = Load(self.dp.gateway_url, host=HOST, path=PATH, kinds=SEED_KINDS, **kw).start()
        for e in self.events:
            self.load.marks.append((e["t"], e["label"]))
        return self.load

    def stop_load(self) -> list[Result]:
        assert self.load is not None
        return self.load.stop()


class EndpointSliceWatch:
    """Watches the namespace's EndpointSlices; ``violations`` lists every moment a base Service's slice
    listed a gray pod (as ready, serving or terminating)."""

    def __init__(self, cluster, namespace: str, base_services: tuple[str, ...]):
        from kubernetes import client, watch
        self.api = client.DiscoveryV1Api(cluster.api_client())
        self.core = client.CoreV1Api(cluster.api_client())
        self.ns, self.base = namespace, set(base_services)
        self.watch = watch.Watch()
        self.violations: list[dict] = []
        self.events = 0
        self.gray_pods_seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="endpointslice-watch")

    def start(self) -> "EndpointSliceWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.watch.stop()
        self._thread.join(10)

    def _gray(self, pod_name: str) -> bool:
        if pod_name in self.gray_pods_seen:
            return True
        try:
            pod = self.core.read_namespaced_pod(pod_name, self.ns)
        except Exception:
            return "-gray-" in pod_name
        gray = (pod.metadata.labels or {}).get("alicloud.service.tag") == "gray"
        if gray:
            self.gray_pods_seen.add(pod_name)
        return gray

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for ev in self.watch.stream(self.api.list_namespaced_endpoint_slice, self.ns, timeout_seconds=60):
                    self.events += 1
                    sl = ev["object"]
                    svc = (sl.metadata.labels or {}).get("kubernetes.io/service-name")
                    if svc not in self.base or ev["type"] == "DELETED":
                        continue
                    for ep in sl.endpoints or []:
                        ref = ep.target_ref
                        if ref is not None and ref.kind == "Pod" and self._gray(ref.name):
                            self.violations.append({"t": time.monotonic(), "service": svc, "pod": ref.name,
                                                    "addresses": ep.addresses})
                    if self._stop.is_set():
                        return
            except Exception:
                if not self._stop.is_set():
                    time.sleep(0.5)


def served_after_sigterm(agent_workdir: Path, namespace: str) -> dict[str, int]:
    """Requests each pod logged after the node agent sent it SIGTERM (werkzeug's request log lines)."""
    out: dict[str, int] = {}
    for log in (agent_workdir / "pods").glob(f"{namespace}_*/*.log"):
        text = log.read_text(errors="replace")
        if "SIGTERM" not in text:
            continue
        after = text.split("SIGTERM", 1)[1]
        pod = log.parent.name.split("_")[1]
        out[pod] = len(re.findall(r'"GET [^"]*" \d{3}', after))
    return out


def analyse(results: list[Result], marks: list[tuple[float, str]],
            expected: dict[str, str]) -> dict[str, Any]:
    """Classify every request. ``expected``: steady-window label -> the chain xiaoming must get there."""
    marks = sorted(marks)
    windows = []
    for i, (t, label) in enumerate(marks):
        if label.startswith("steady:"):
            end = next((t2 for t2, l2 in marks[i + 1:] if l2.startswith("perturb:") or l2 == "load stopped"),
                       float("inf"))
            windows.append((t, end, label[len("steady:"):]))

    def phase_of(t: float) -> str:
        label = "before load"
        for tm, lb in marks:
            if tm <= t:
                label = lb
        return label

    out: dict[str, Any] = {"total": len(results), "failed": [], "base_touched_gray": [], "gray_misroutes": [],
                           "steady_checked": 0, "transitional": {}, "phases": {}}
    for r in results:
        ph = out["phases"].setdefault(phase_of(r.t_send), {"requests": 0, "failed": 0, "by_kind": {}})
        ph["requests"] += 1
        ph["by_kind"].setdefault(r.kind, {}).setdefault(r.chain, 0)
        ph["by_kind"][r.kind][r.chain] += 1
        if not r.ok:
            ph["failed"] += 1
            # when (s from load start, and UTC to set beside the pods' and the node agent's logs)
            sent_utc = time.time() - (time.monotonic() - r.t_send)
            out["failed"].append({"kind": r.kind, "phase": phase_of(r.t_send), "status": r.status, "error": r.error,
                                  "t": round(r.t_send - marks[0][0], 3), "waited_s": round(r.t_recv - r.t_send, 3),
                                  "sent_utc": time.strftime("%H:%M:%S", time.gmtime(sent_utc))
                                  + f".{int(sent_utc % 1 * 1000):03d}"})
            continue
        if r.kind != "xiaoming":
            if any(h["lane"] != "base" for h in r.hops):
                out["base_touched_gray"].append({"kind": r.kind, "chain": r.chain, "phase": phase_of(r.t_send),
                                                 "instances": [h.get("instance") for h in r.hops]})
            continue
        win = next((w for w in windows if w[0] <= r.t_send and r.t_recv <= w[1]), None)
        if win is None:
            out["transitional"][r.chain] = out["transitional"].get(r.chain, 0) + 1
            continue
        out["steady_checked"] += 1
        if r.chain != expected[win[2]]:
            out["gray_misroutes"].append({"window": win[2], "chain": r.chain, "want": expected[win[2]],
                                          "t": round(r.t_send - marks[0][0], 3),
                                          "instances": [h.get("instance") for h in r.hops]})
    return out


class RealLines:
    """Runs the walk-through's `# real cluster only` lines (and its curl lines) on the test data plane.

    - ``GW=$(kubectl ... gateway public-gw ...)`` runs as written and must give the Gateway's status address
      (the node's IP, which Traefik publishes); that address exists only inside the node's network
      namespace, so the curl lines that use ``$GW`` go through the host relay to the same gateway.
    - ``kubectl port-forward svc/S L:P &`` cannot reach the node agent (it has no kubelet API): the curl
      lines to ``localhost:L`` are sent from inside the node namespace to Service S's ClusterIP:P instead.
    - every curl line's output must be the chain its comment names (``# a[gray] -> b[base] -> c[gray]``).
    """

    CHAIN = re.compile(r"[a-z]\[\w+\](?: -> [a-z]\[\w+\])*")

    def __init__(self, cluster, dataplane, namespace: str):
        self.cluster, self.dp, self.ns = cluster, dataplane, namespace
        self.gw: str | None = None
        self.forwards: dict[str, tuple[str, str]] = {}

    @staticmethod
    def handles(line: str) -> bool:
        return line.startswith(("GW=", "curl ")) or " port-forward " in line

    def run(self, line: str, env: dict[str, str]) -> dict:
        import shlex
        import subprocess
        code, _, comment = line.partition("#")
        rec: dict[str, Any] = {"line": line, "rc": 0, "stdout": "", "stderr": "", "as": "admin", "real": True}
        if line.startswith("GW="):
            inner = re.search(r"\$\((.*)\)", code).group(1)
            cp = subprocess.run(shlex.split(inner), env=env, capture_output=True, text=True, timeout=60)
            from tests.k8s.dataplane import NODE_IP
            rec.update(rc=cp.returncode, stdout=cp.stdout, stderr=cp.stderr,
                       note=f"Gateway address {cp.stdout.strip()!r}; reached through {self.dp.gateway_url}")
            if cp.stdout.strip() != NODE_IP:
                rec["rc"] = 1
                rec["stderr"] += f"\nexpected the node IP {NODE_IP} as the Gateway's address"
            self.gw = self.dp.gateway_url.removeprefix("http://")
            return rec
        if " port-forward " in line:
            m = re.search(r"svc/(\S+) (\d+):(\d+)", code)
            self.forwards[m.group(2)] = (m.group(1), m.group(3))
            rec["note"] = f"not run: localhost:{m.group(2)} is served by svc/{m.group(1)} from the node namespace"
            return rec
        want = self.CHAIN.search(comment).group(0)
        argv = shlex.split(code)
        in_node = False
        for i, a in enumerate(argv):
            if "$GW" in a:
                argv[i] = a.replace("$GW", self.gw)
            m = re.match(r"(?:http://)?localhost:(\d+)(/.*)?$", a)
            if m:
                svc, port = self.forwards[m.group(1)]
                ip_ = json.loads(self.cluster.kubectl("get", "svc", svc, "-n", self.ns, "-o", "json").stdout)[
                    "spec"]["clusterIP"]
                argv[i], in_node = f"http://{ip_}:{port}{m.group(2) or ''}", True
        argv = ["curl", "-sS", "--max-time", "20", *argv[1:]]
        if in_node:
            argv = ["ip", "netns", "exec", self.dp.node_ns, *argv]
        cp = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        rec.update(rc=cp.returncode, stdout=cp.stdout, stderr=cp.stderr, ran=argv, want=want)
        if cp.stdout.strip() != want:
            rec["rc"] = rec["rc"] or 1
            rec["stderr"] += f"\nexpected {want!r}, got {cp.stdout.strip()!r}"
        return rec


BAD_INPUTS: dict[str, bytes] = {
    "16KB tag": b"x-mse-tag: " + b"g" * 16384,
    "CRLF in tag": b"x-mse-tag: gray\r\nx-injected: 1",
    "bare CR in tag": b"x-mse-tag: gr\ray",
    "unicode tag": "x-mse-tag: gr\u00e4y".encode(),
    "homoglyph tag": "x-mse-tag: gr\u0430y".encode(),
    "200 baggage members": b"baggage: " + b",".join([b"x-mse-tag=gray"] + [b"k%d=v" % i for i in range(199)]),
    "baggage lane member": b"baggage: x-mse-tag=gray",
    "NUL in tag": b"x-mse-tag: gr\x00ay",
}


def raw_gateway_request(gateway_url: str, extra_header: bytes, user_agent: bytes = b"curl/8.5") -> tuple[int, str]:
    """One request with a header line sent byte for byte (http.client refuses CR/LF/NUL in values)."""
    import socket
    host, port = gateway_url.removeprefix("http://").split(":")
    req = (b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nAccept: application/json\r\n"
           b"User-Agent: " + user_agent + b"\r\n" + extra_header + b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    chain = ""
    if status == 200:
        try:
            chain = json.loads(body)["chain"]
        except ValueError:
            chain = f"unreadable body {body[:100]!r}"
    return status, chain
