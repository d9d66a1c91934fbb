"""Controller scale benchmark (issue 15, deliverable 6) on the test control plane (tests/k8s).

    python benchmarks/controller_scale.py --releases 200 --namespaces 20
    python benchmarks/controller_scale.py --releases 2 --namespaces 1 --watchers 10 --moving 1 \\
        --idle-seconds 5 --out /tmp/smoke.json                                   # smoke

Starts its own control plane (etcd, kube-apiserver with an audit log of the controller's requests,
kube-controller-manager, kube-scheduler, kwok: pods become Ready without a kubelet), creates
--releases GrayReleases spread round-robin over --namespaces namespaces (one Lane `gray` per namespace;
release j of a namespace is Deployment + Service `s<j//3>-<a|b|c>`: the seed's a -> b -> c shape, one
Service per Deployment, three per chain), runs the real controller as a separate process
(`python -m graybaggage_controller --kubeconfig ...`, cluster-wide, its default --resync unless given, its own token
user so the audit log holds only its requests), waits until every release is Healthy and measures:

1. idle API requests per minute by verb and resource (audit log, requests received in the idle window),
   and LIST calls per idle release per minute;
2. `set image` -> lane table published (the release's Service appears in ConfigMap graybaggage-lanes,
   seen through a cluster-wide watch) p50/p99 with K releases moving at once, for each K in --moving;
   each round is rolled back (set image back) and waited for before the next;
3. controller CPU seconds and RSS (/proc/<pid>) over the idle window and over each moving round;
4. a lane-table change seen by --watchers concurrent watchers (graybaggage.sources.ConfigMapSource, the
   library's own source; --watcher-procs processes): the benchmark rewrites a ConfigMap of its own
   --watch-rounds times; latency = watcher's on_change time - time the write was sent (CLOCK_MONOTONIC is
   shared by all processes).

Loopback only; every wait is bounded (--timeout); progress lines on stderr; results as JSON (--out,
default benchmarks/results/controller-scale-<UTC date>.json). Timing numbers depend on the machine: the
JSON records the load average sampled during the run.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CTL_USER = "graybaggage-bench-controller"
WATCH_USER = "graybaggage-bench-watcher"
LANE = "gray"
REPO = "registry.example/bench"
TABLE_CM = "graybaggage-lanes"
WATCH_NS, WATCH_CM = "bench-watch", "bench-lanes"
NODE_PODS = 5000
T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"[scale {time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))  # nearest rank
    return round(v[k], 4)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
            "max": round(max(values), 4) if values else None, "values": sorted(round(x, 4) for x in values)}


# ------------------------------------------------------------------------------------- the control plane
def control_plane_class():
    from tests.k8s.cluster import ControlPlane

    class BenchControlPlane(ControlPlane):
        """The test control plane plus two token users (system:masters) and an audit log of one of them."""

        def _make_pki(self) -> None:
            super()._make_pki()
            self.ctl_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
            self.watch_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
            with open(self.pki / "tokens.csv", "a") as f:
                f.write(f'{self.ctl_token},{CTL_USER},{CTL_USER},"system:masters"\n')
                f.write(f'{self.watch_token},{WATCH_USER},{WATCH_USER},"system:masters"\n')
            (self.workdir / "watcher-token").write_text(self.watch_token)

        def _spawn(self, name, args, env=None):
            if name == "kube-apiserver":
                self.audit_log = self.workdir / "audit.log"
                policy = self.workdir / "audit-policy.yaml"
                policy.write_text(
                    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
                    # bodies of the controller's patches (what kopf writes at idle), metadata of the rest
                    f"  - level: Request\n    users: [\"{CTL_USER}\"]\n    verbs: [patch]\n"
                    f"  - level: Metadata\n    users: [\"{CTL_USER}\"]\n  - level: None\n")
                args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                        "--audit-log-mode=batch", "--audit-log-format=json",
                        "--audit-log-batch-max-wait=1s"]
            super()._spawn(name, args, env)

        def _create_node(self) -> None:
            # the fake node takes 110 pods by default; the benchmark runs one per release plus the gray ones
            super()._create_node()
            st, body = Api(self).call("PATCH", "/api/v1/nodes/kwok-node-0/status",
                                      {"status": {"allocatable": {"pods": str(NODE_PODS)},
                                                  "capacity": {"pods": str(NODE_PODS)}}},
                                      "application/merge-patch+json")
            if st != 200:
                raise RuntimeError(f"raising the node's pod capacity failed: HTTP {st}: {body}")

        def controller_kubeconfig(self) -> str:
            ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
            p = self.workdir / "controller.kubeconfig"
            p.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "bench", "cluster": {"server": self.server, "certificate-authority-data": ca}}],
                "users": [{"name": CTL_USER, "user": {"token": self.ctl_token}}],
                "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": CTL_USER}}],
                "current-context": "bench"}))
            p.chmod(0o600)
            return str(p)

    return BenchControlPlane


class Api:
    """A tiny JSON client on one keep-alive HTTPS connection (admin certificate); one per thread."""

    def __init__(self, cp) -> None:
        self.cp = cp
        self.port = int(cp.server.rsplit(":", 1)[1])
        self.conn: http.client.HTTPSConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None,
             ctype: str = "application/json", timeout: float = 30) -> tuple[int, dict]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                                        context=self.cp._ssl_context())
            try:
                data = json.dumps(body).encode() if body is not None else None
                self.conn.request(method, path, body=data,
                                  headers={"Content-Type": ctype, "Accept": "application/json"})
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else {})
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def wait(fn, timeout: float, what: str, interval: float = 1.0, every: float = 10.0):
    """Call fn() until it returns a truthy value; progress every `every` s; bounded by `timeout`."""
    start = last = time.monotonic()
    while True:
        got = fn()
        if got:
            return got
        now = time.monotonic()
        if now - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        if now - last >= every:
            progress(f"  waiting for {what} ({now - start:.0f}s)")
            last = now
        time.sleep(interval)


# ------------------------------------------------------------------------------------- objects
def layout(releases: int, namespaces: int) -> list[tuple[str, str]]:
    """(namespace, app) per release: round-robin over namespaces; a -> b -> c chains inside each."""
    out, per_ns = [], Counter()
    for i in range(releases):
        ns = f"bench-{i % namespaces:02d}"
        j = per_ns[ns]
        per_ns[ns] += 1
        out.append((ns, f"s{j // 3}-{'abc'[j % 3]}"))
    return out


def namespace_objects(ns: str, apps: list[str]) -> list[dict]:
    objs: list[dict] = [{"apiVersion": "graybaggage.io/v1alpha1", "kind": "Lane", "metadata": {"name": LANE},
                         "spec": {"tag": LANE}}]
    for k, app in enumerate(apps):
        nxt = apps[k + 1] if k + 1 < len(apps) and app[-1] != "c" else ""
        objs += [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app},
             "spec": {"ports": [{"name": "http", "port": 20001, "protocol": "TCP", "targetPort": 20001}],
                      "selector": {"app": app}}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                      "template": {"metadata": {"labels": {"app": app}},
                                   "spec": {"containers": [{"name": "app", "image": f"{REPO}/{app}:1",
                                                            "env": [{"name": "NEXT", "value": nxt}]}]}}}},
            {"apiVersion": "graybaggage.io/v1alpha1", "kind": "GrayRelease", "metadata": {"name": f"rollout-{app}"},
             "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                      "lane": LANE, "replicas": 1, "steps": [{"pause": {}}]}},
        ]
    return objs


def release_phases(api: Api) -> dict[tuple[str, str], str | None]:
    st, body = api.call("GET", "/apis/graybaggage.io/v1alpha1/grayreleases")
    assert st == 200, body
    return {(i["metadata"]["namespace"], i["metadata"]["name"]): (i.get("status") or {}).get("phase")
            for i in body.get("items") or []}


# ------------------------------------------------------------------------------------- controller process
class Controller:
    def __init__(self, cp, workdir: Path, resync: float | None) -> None:
        from tests.k8s.cluster import _set_pdeathsig, free_port
        self.cp, self.workdir = cp, workdir
        self.port = free_port()
        self.log_path = workdir / "controller.log"
        env = dict(cp.env, PYTHONUNBUFFERED="1", GRAYBAGGAGE_STATS_SECONDS="5")   # pass counts for the idle window
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "graybaggage_controller", "--kubeconfig", cp.controller_kubeconfig(),
                 *(["--resync", str(resync)] if resync else []), "--webhook-port", str(self.port),
                 "--webhook-name", "graybaggage-bench",
                 "--tls-dir", str(workdir / "tls")],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(workdir), start_new_session=True,
                preexec_fn=_set_pdeathsig)   # dies with the benchmark
        self.tck = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tck     # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def wait_webhook(cp, ctl: Controller, timeout: float) -> None:
    """The API server calls the controller's webhook: a dry-run update of a labelled probe comes back paused."""
    ns = "bench-00"
    cp.kubectl("create", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "gb-webhook-probe", "labels": {"graybaggage.io/gray-release": "probe"},
                     "annotations": {"graybaggage.io/stable-revision": "probe"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"probe": "1"}},
                 "template": {"metadata": {"labels": {"probe": "1"}},
                              "spec": {"containers": [{"name": "p", "image": "probe"}]}}}}))

    def ready():
        assert ctl.alive(), f"controller exited:\n{ctl.log_path.read_text()[-3000:]}"
        r = cp.kubectl("patch", "deployment", "gb-webhook-probe", "-n", ns, "--dry-run=server", "-o", "json",
                       "--type", "merge", "-p", '{"metadata":{"annotations":{"probe":"%s"}}}' % time.monotonic(),
                       check=False)
        return r.returncode == 0 and json.loads(r.stdout)["spec"].get("paused") is True
    wait(ready, timeout, "the controller's webhook", interval=0.5)
    cp.kubectl("delete", "deployment", "gb-webhook-probe", "-n", ns, "--wait=false")


# ------------------------------------------------------------------------------------- audit log
def audit_events(path: Path, start: float, end: float):
    """(received time, event) of each request the controller's user made in [start, end) (by auditID: an
    audit log has one line per stage of a request)."""
    seen: dict[str, tuple[float, dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if (ev.get("user") or {}).get("username") != CTL_USER:
                continue
            ts = datetime.datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if start <= ts < end:
                seen[ev["auditID"]] = (ts, ev)
    return seen.values()


def log_lines(log_path: Path):
    """(epoch seconds, line) for each timestamped line of the controller's log."""
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("["):
            try:
                yield datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp(), line
            except ValueError:
                continue


PASS_COUNTS = re.compile(r"passes in the last \S+: (\d+) from the cache, (\d+) against the API")


def cached_passes(log_path: Path, start: float, end: float) -> dict[str, int]:
    """Passes the controller counted in its "passes in the last Ns: D from the cache, A against the API" lines
    logged between two epoch times: an idle window's request counts mean something only if passes ran in it."""
    out = {"from_cache": 0, "against_api": 0}
    for ts, line in log_lines(log_path):
        m = PASS_COUNTS.search(line)
        if m and start <= ts <= end:
            out["from_cache"] += int(m.group(1))
            out["against_api"] += int(m.group(2))
    return out


def quiet_period(log_path: Path, since: float) -> bool:
    """Has the controller logged, after `since`, a pass-count line with 0 passes against the API?"""
    return any(ts >= since and (m := PASS_COUNTS.search(line)) and m.group(2) == "0"
               for ts, line in log_lines(log_path))


def audit_series(path: Path, start: float, end: float, step: float = 10.0) -> list[int]:
    """The controller's requests received per `step` seconds in [start, end): is the idle rate steady?"""
    out = [0] * max(1, int((end - start + 0.5) // step))
    for ts, _ev in audit_events(path, start, end):
        out[min(int((ts - start) // step), len(out) - 1)] += 1
    return out


def audit_counts(path: Path, start: float, end: float) -> Counter:
    """(verb, resource) -> requests by the controller received in [start, end) (one per auditID)."""
    counts: Counter = Counter()
    for _ts, ev in audit_events(path, start, end):
        ref = ev.get("objectRef") or {}
        res = ref.get("resource") or ev.get("requestURI", "?").split("?")[0]
        if ref.get("subresource"):
            res += "/" + ref["subresource"]
        counts[(ev.get("verb", "?"), res)] += 1
    return counts


# ------------------------------------------------------------------------------------- lane-table watch
class ClusterWatch(threading.Thread):
    """LIST then WATCH one cluster-wide collection (`query`: its selector), calling `_update(namespace, obj|None)`
    for every object listed, added, modified or deleted; re-lists after an error."""
    path = ""
    query = ""

    def __init__(self, cp) -> None:
        super().__init__(daemon=True, name=type(self).__name__)
        self.cp = cp
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.listed = threading.Event()

        self.pending: dict[tuple[str, str], float | None] = {}    # key -> when first seen (monotonic)

    def _update(self, ns: str, obj: dict | None) -> None:
        raise NotImplementedError

    def expect(self, keys: list[tuple[str, str]]) -> None:
        with self.lock:
            self.pending = {k: None for k in keys}

    def seen(self) -> dict[tuple[str, str], float | None]:
        with self.lock:
            return dict(self.pending)

    def run(self) -> None:
        port = int(self.cp.server.rsplit(":", 1)[1])
        rv = ""
        while not self.stopped.is_set():
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=self.cp._ssl_context())
                if not rv:
                    conn.request("GET", f"{self.path}?{self.query}")
                    doc = json.loads(conn.getresponse().read())
                    for obj in doc.get("items") or []:
                        self._update(obj["metadata"]["namespace"], obj)
                    rv = doc["metadata"]["resourceVersion"]
                    self.listed.set()
                conn.request("GET", f"{self.path}?{self.query}&watch=1&allowWatchBookmarks=true"
                                    f"&timeoutSeconds=50&resourceVersion={rv}")
                resp = conn.getresponse()
                while not self.stopped.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        rv = ""
                        break
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._update(obj["metadata"]["namespace"], obj)
                    elif ev["type"] == "DELETED":
                        self._update(obj["metadata"]["namespace"], None)
                conn.close()
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                rv = ""
                self.stopped.wait(0.5)


class TableWatch(ClusterWatch):
    """Cluster-wide watch of the lane-table ConfigMaps; records when a (namespace, service) first appears in
    lane gray's routes (`expect`)."""
    path = "/api/v1/configmaps"
    query = f"fieldSelector={quote(f'metadata.name={TABLE_CM}')}"

    def __init__(self, cp) -> None:
        super().__init__(cp)
        self.routes: dict[str, dict] = {}
        self.events = 0

    def _update(self, ns: str, cm: dict | None) -> None:
        now = time.monotonic()
        try:
            table = json.loads(((cm or {}).get("data") or {}).get("lanes.json") or "{}")
            routes = ((table.get("lanes") or {}).get(LANE) or {}).get("routes") or {}
        except ValueError:
            routes = {}
        with self.lock:
            self.events += 1
            self.routes[ns] = routes
            for (pns, svc), seen in self.pending.items():
                if seen is None and pns == ns and svc in routes:
                    self.pending[(pns, svc)] = now

    def expect(self, keys: list[tuple[str, str]]) -> None:
        with self.lock:
            self.pending = {k: None for k in keys}
            for k in keys:
                if k[1] in self.routes.get(k[0], {}):
                    self.pending[k] = time.monotonic()

    def in_table(self, key: tuple[str, str]) -> bool:
        with self.lock:
            return key[1] in self.routes.get(key[0], {})


class GrayWatch(ClusterWatch):
    """Cluster-wide watch of the gray Deployments (label graybaggage.io/release); records when `<app>-gray` in a
    namespace first reports an available replica (`expect`): where Kubernetes' part of set image -> table ends
    (ReplicaSet, pod, kwok's readiness, the Deployment's status) and the controller's last pass begins."""
    path = "/apis/apps/v1/deployments"
    query = "labelSelector=" + quote("graybaggage.io/release")

    def _update(self, ns: str, obj: dict | None) -> None:
        now = time.monotonic()
        if obj is None or int((obj.get("status") or {}).get("availableReplicas") or 0) < 1:
            return
        name = obj["metadata"]["name"]
        with self.lock:
            for (pns, app), seen in self.pending.items():
                if seen is None and pns == ns and name == f"{app}-{LANE}":
                    self.pending[(pns, app)] = now




# ------------------------------------------------------------------------------------- watchers
def watcher_child(server: str, ca: str, token_file: str, count: int, timeout: float) -> int:
    """Child process: `count` ConfigMapSources on one ConfigMap. Prints READY, then per revision seen by all
    `SEEN <rev>`; on stdin EOF prints `TIMES <json {rev: [monotonic, ...]}>` and exits."""
    from graybaggage.sources import ConfigMapSource
    from graybaggage.table import parse_table

    times: dict[str, list[float]] = {}
    lock = threading.Lock()
    last: dict[int, str | None] = {}

    def hook(src) -> None:
        rev = src.value.revision if src.value is not None else None
        if rev is None or last.get(id(src)) == rev:
            return
        now = time.monotonic()
        last[id(src)] = rev
        with lock:
            lst = times.setdefault(rev, [])
            lst.append(now)
            if len(lst) == count:
                print(f"SEEN {rev}", flush=True)

    sources = []
    for _ in range(count):
        s = ConfigMapSource(WATCH_CM, WATCH_NS, lambda text: parse_table(json.loads(text), WATCH_NS), None,
                            server, token_file, ca)
        s.on_change = hook
        sources.append(s.start())
    deadline = time.monotonic() + timeout
    while not all(s.connected.is_set() for s in sources):
        if time.monotonic() > deadline:
            print(f"FAILED {sum(s.connected.is_set() for s in sources)} of {count} connected", flush=True)
            return 1
        time.sleep(0.2)
    print("READY", flush=True)
    sys.stdin.read()
    for s in sources:
        s.stop()
    with lock:
        print("TIMES " + json.dumps(times), flush=True)
    return 0


def table_doc(rev: int) -> dict:
    return {"version": 1, "namespace": WATCH_NS, "revision": str(rev),
            "lanes": {LANE: {"fallback": "base", "routes": {f"svc-{rev}": f"svc-{rev}-{LANE}"}}}}


def run_watchers(cp, api: Api, n: int, procs: int, rounds: int, timeout: float) -> dict:
    cp.kubectl("create", "namespace", WATCH_NS)
    path = f"/api/v1/namespaces/{WATCH_NS}/configmaps"
    st, body = api.call("POST", path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": WATCH_CM},
                                       "data": {"lanes.json": json.dumps(table_doc(0))}})
    assert st == 201, body
    from tests.k8s.cluster import _set_pdeathsig
    procs = max(1, min(procs, n))
    sizes = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    children = []
    env = dict(cp.env, PYTHONPATH=str(ROOT))
    for size in sizes:
        children.append(subprocess.Popen(
            [sys.executable, __file__, "--_watcher-child", cp.server, str(cp.pki / "ca.crt"),
             str(cp.workdir / "watcher-token"), str(size), str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
            preexec_fn=_set_pdeathsig))
    lines: list[list[str]] = [[] for _ in children]

    def reader(i: int, c) -> None:
        for line in c.stdout:
            lines[i].append(line.strip())
    for i, c in enumerate(children):
        threading.Thread(target=reader, args=(i, c), daemon=True).start()
    try:
        progress(f"watchers: starting {n} ConfigMapSources in {procs} processes")
        wait(lambda: all("READY" in ls for ls in lines) or
             any(line.startswith("FAILED") for ls in lines for line in ls) or
             any(c.poll() is not None for c in children), timeout, f"{n} watchers to connect", interval=0.2)
        assert all("READY" in ls for ls in lines), lines
        progress(f"watchers: {n} connected; {rounds} table changes")
        sent: dict[str, float] = {}
        for rev in range(1, rounds + 1):
            body = {"data": {"lanes.json": json.dumps(table_doc(rev))}}
            sent[str(rev)] = time.monotonic()
            st, resp = api.call("PATCH", f"{path}/{WATCH_CM}", body, "application/merge-patch+json")
            assert st == 200, resp
            wait(lambda rev=rev: all(f"SEEN {rev}" in ls for ls in lines), timeout, f"{n} watchers to see revision {rev}",
                 interval=0.05)
            time.sleep(0.5)
        for c in children:
            c.stdin.close()
        for c in children:
            c.wait(timeout)
        time.sleep(0.2)
        lat: list[float] = []
        per_round: dict[str, dict] = {}
        for ls in lines:
            for line in ls:
                if line.startswith("TIMES "):
                    for rev, ts in json.loads(line[6:]).items():
                        if rev in sent:
                            d = [t - sent[rev] for t in ts]
                            lat += d
                            per_round.setdefault(rev, {"seen": 0, "lat": []})
                            per_round[rev]["seen"] += len(ts)
                            per_round[rev]["lat"] += d
        return {"watchers": n, "processes": procs, "rounds": rounds, "latency_s": summary(lat),
                "per_round": {r: {"seen": v["seen"], **{k: x for k, x in summary(v["lat"]).items() if k != "values"}}
                              for r, v in sorted(per_round.items())}}
    finally:
        for c in children:
            if c.poll() is None:
                os.killpg(c.pid, signal.SIGKILL)
                c.wait(5)


# ------------------------------------------------------------------------------------- moving releases
def set_images(cp, keys: list[tuple[str, str]], tag: str) -> dict[tuple[str, str], float]:
    local = threading.local()

    def one(key):
        ns, app = key
        if not hasattr(local, "api"):
            local.api = Api(cp)
        body = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"{REPO}/{app}:{tag}"}]}}}}
        t = time.monotonic()
        st, resp = local.api.call("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/{app}", body,
                                  "application/strategic-merge-patch+json")
        assert st == 200, resp
        return key, t
    with ThreadPoolExecutor(8) as ex:
        return dict(ex.map(one, keys))


def moving_round(cp, api: Api, ctl: Controller, tw: TableWatch, gw: GrayWatch, keys: list[tuple[str, str]],
                 tag: str, timeout: float) -> dict:
    k = len(keys)
    progress(f"moving {k}: set image on {k} releases")
    tw.expect(keys)
    gw.expect(keys)
    cpu0, w0, la0 = ctl.cpu_seconds(), time.monotonic(), loadavg()
    sent = set_images(cp, keys, tag)
    rss_peak = ctl.rss_mib()

    def all_seen():
        nonlocal rss_peak
        rss_peak = max(rss_peak, ctl.rss_mib())
        return all(v is not None for v in tw.seen().values())
    try:
        wait(all_seen, timeout, f"{k} lanes in the table", interval=0.2)
    except TimeoutError:
        progress(f"  not all seen in {timeout}s")
    seen, available = tw.seen(), gw.seen()
    lat = [seen[key] - sent[key] for key in keys if seen.get(key) is not None]
    # the split: Kubernetes (set image -> gray Deployment available) and the controller's last step (-> table)
    kube_part = [available[key] - sent[key] for key in keys if available.get(key) is not None]
    ctl_part = [seen[key] - available[key] for key in keys
                if seen.get(key) is not None and available.get(key) is not None]
    window = time.monotonic() - w0
    cpu = ctl.cpu_seconds() - cpu0
    progress(f"moving {k}: p50 {pct(lat, 50)} s, p99 {pct(lat, 99)} s (gray available: p50 {pct(kube_part, 50)} s; "
             f"available -> table: p50 {pct(ctl_part, 50)} s, p99 {pct(ctl_part, 99)} s); rolling back")
    set_images(cp, keys, "1")
    rel = {(ns, f"rollout-{app}") for ns, app in keys}

    def back():
        phases = release_phases(api)
        return all(phases.get(r) == "Healthy" for r in rel) and not any(tw.in_table(key) for key in keys)
    wait(back, timeout, f"{k} releases rolled back and Healthy", interval=1.0)
    return {"moving": k, "seen": len(lat), "set_image_to_table_s": summary(lat),
            "set_image_to_gray_available_s": summary(kube_part), "gray_available_to_table_s": summary(ctl_part),
            "controller_cpu_s": round(cpu, 2), "window_s": round(window, 2),
            "controller_cpu_cores": round(cpu / window, 3) if window else None,
            "controller_rss_peak_mib": rss_peak, "loadavg_start": la0, "loadavg_end": loadavg()}


# ------------------------------------------------------------------------------------- the run
def run(args) -> dict:
    from tests.k8s.cluster import ensure_binaries

    result: dict = {"started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "parameters": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform(), "shared": True},
                    "loadavg_samples": []}
    stop_sampler = threading.Event()

    def sampler():
        while not stop_sampler.is_set():
            result["loadavg_samples"].append([round(time.monotonic() - T0, 1), *loadavg()])
            stop_sampler.wait(15)
    threading.Thread(target=sampler, daemon=True).start()

    cp = control_plane_class()(ensure_binaries(), keep_workdir=args.keep)
    ctl = None
    tw = gw = None
    try:
        progress("starting the control plane")
        cp.start()
        api = Api(cp)
        st, node = api.call("GET", "/api/v1/nodes/kwok-node-0")
        q = node["status"]["allocatable"]["pods"]     # a quantity: "110", "5k"
        result["node_allocatable_pods"] = int(q[:-1]) * 1000 if q.endswith("k") else int(q)
        assert result["node_allocatable_pods"] >= 2 * args.releases + 10, node["status"]["allocatable"]
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "controller/deploy/crds"))
        cp.kubectl("wait", "--for", "condition=Established", "--timeout=60s",
                   "crd/lanes.graybaggage.io", "crd/grayreleases.graybaggage.io")
        wait(lambda: cp.kubectl("get", "grayreleases", "-A", check=False).returncode == 0, 60,
             "grayreleases to be served", interval=0.5)

        lay = layout(args.releases, args.namespaces)
        by_ns: dict[str, list[str]] = {}
        for ns, app in lay:
            by_ns.setdefault(ns, []).append(app)
        progress(f"creating {len(lay)} releases (Deployment + Service + GrayRelease) in {len(by_ns)} namespaces")
        for i, (ns, apps) in enumerate(sorted(by_ns.items())):
            cp.kubectl("create", "namespace", ns)
            cp.kubectl("apply", "-n", ns, "-f", "-",
                       input=json.dumps({"apiVersion": "v1", "kind": "List", "items": namespace_objects(ns, apps)}))
            if (i + 1) % 5 == 0:
                progress(f"  {i + 1}/{len(by_ns)} namespaces")

        progress("starting the controller (separate process, cluster-wide, "
                 f"--resync {args.resync})")
        ctl = Controller(cp, cp.workdir, args.resync)
        result["controller_pid"] = ctl.proc.pid
        wait_webhook(cp, ctl, args.timeout)
        want = {(ns, f"rollout-{app}") for ns, app in lay}

        def healthy():
            assert ctl.alive(), f"controller exited:\n{ctl.log_path.read_text()[-3000:]}"
            phases = release_phases(api)
            return sum(phases.get(r) == "Healthy" for r in want) == len(want)
        t = time.monotonic()
        wait(healthy, args.timeout, f"{len(want)} releases Healthy", interval=2.0)
        result["all_healthy_after_s"] = round(time.monotonic() - t, 1)
        progress(f"all {len(want)} releases Healthy after {result['all_healthy_after_s']} s; "
                 f"settling {args.settle_seconds} s")
        time.sleep(args.settle_seconds)
        settled = time.time()
        wait(lambda: quiet_period(ctl.log_path, settled), args.timeout,
             "a pass-count period with no pass against the API (the set-up's events worked off)")

        # 1 + 3: idle
        progress(f"idle window: {args.idle_seconds} s")
        cpu0, rss0, w0, m0 = ctl.cpu_seconds(), ctl.rss_mib(), time.time(), time.monotonic()
        la0 = loadavg()
        end = m0 + args.idle_seconds
        while time.monotonic() < end:
            time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            progress(f"  idle {time.monotonic() - m0:.0f}/{args.idle_seconds} s")
        w1, cpu1, rss1 = time.time(), ctl.cpu_seconds(), ctl.rss_mib()
        time.sleep(3)   # let the audit batch reach the file
        counts = audit_counts(cp.audit_log, w0, w1)
        minutes = (w1 - w0) / 60
        by_verb_res = {f"{v} {r}": round(c / minutes, 1) for (v, r), c in counts.most_common()}
        by_verb = Counter()
        for (v, _r), c in counts.items():
            by_verb[v] += c
        lists = by_verb.get("list", 0) / minutes
        result["idle"] = {
            "window_s": round(w1 - w0, 1), "requests_per_min": round(sum(counts.values()) / minutes, 1),
            "by_verb_per_min": {v: round(c / minutes, 1) for v, c in by_verb.most_common()},
            "by_verb_resource_per_min": by_verb_res,
            "list_per_release_per_min": round(lists / len(want), 3),
            "requests_per_10s": audit_series(cp.audit_log, w0, w1),
            "requests_per_release_per_min": round(sum(counts.values()) / minutes / len(want), 3),
            "controller_cpu_s": round(cpu1 - cpu0, 2),
            "controller_cpu_cores": round((cpu1 - cpu0) / (w1 - w0), 3),
            "controller_rss_mib": {"start": rss0, "end": rss1}, "loadavg_start": la0, "loadavg_end": loadavg(),
            "passes": cached_passes(ctl.log_path, w0, w1)}
        progress(f"idle: {result['idle']['requests_per_min']} requests/min, LIST per release per min "
                 f"{result['idle']['list_per_release_per_min']}, CPU {result['idle']['controller_cpu_cores']} cores, "
                 f"RSS {rss1} MiB")

        # 2 + 3: moving
        tw, gw = TableWatch(cp), GrayWatch(cp)
        for watch in (tw, gw):
            watch.start()
            wait(watch.listed.is_set, 30, f"the {watch.name}", interval=0.1)
        result["moving"] = []
        for k in args.moving:
            k = min(k, len(lay))
            result["moving"].append(moving_round(cp, api, ctl, tw, gw, lay[:k], f"m{k}", args.timeout))
        result["controller_rss_mib_end"] = ctl.rss_mib()

        # 4: watchers
        if args.watchers:
            result["watchers"] = run_watchers(cp, api, args.watchers, args.watcher_procs, args.watch_rounds,
                                              args.timeout)
            progress("watchers: " + str({k: v for k, v in result['watchers']['latency_s'].items() if k != 'values'}))
        result["controller_alive"] = ctl.alive()
    finally:
        stop_sampler.set()
        for watch in (tw, gw):
            if watch is not None:
                watch.stopped.set()
        if ctl is not None:
            ctl.stop()
            result["controller_log_tail"] = ctl.log_path.read_text(errors="replace")[-1500:].splitlines()[-10:]
        cp.stop()
        if args.keep:
            progress(f"kept {cp.workdir} (audit.log, controller.log, logs/)")
    la = [s[1] for s in result["loadavg_samples"]]
    result["loadavg_1m"] = {"min": min(la), "max": max(la), "mean": round(sum(la) / len(la), 2)} if la else None
    result["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return result


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--releases", type=int, default=200)
    p.add_argument("--namespaces", type=int, default=20)
    p.add_argument("--moving", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=[10, 50],
                   help="comma-separated numbers of releases moved at once (default 10,50)")
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--watcher-procs", type=int, default=4)
    p.add_argument("--watch-rounds", type=int, default=5)
    p.add_argument("--idle-seconds", type=float, default=60)
    p.add_argument("--settle-seconds", type=float, default=180,
                   help="wait after all are Healthy before the idle window (default 180: at 200 releases the "
                        "controller works off the set-up's events for ~1-2 min; see idle.requests_per_10s)")
    p.add_argument("--resync", type=float, default=None, help="the controller's --resync (default: its own default)")
    p.add_argument("--timeout", type=float, default=600, help="bound of every wait, seconds")
    p.add_argument("--out", default=None)
    p.add_argument("--keep", action="store_true", help="keep the control plane's workdir (audit and controller logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_watcher-child":
        return watcher_child(argv[1], argv[2], argv[3], int(argv[4]), float(argv[5]))
    args = parse_args(argv)
    out = Path(args.out or ROOT / "benchmarks" / "results" /
               f"controller-scale-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}.json")
    result = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    progress(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
