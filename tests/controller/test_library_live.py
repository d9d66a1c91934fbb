"""Issue 6, last "Must show": a live graybaggage library instance in a local process reads the lane table
the controller publishes on the real control plane, through the library's Kubernetes source with a
least-privilege service-account token, and sees each step of the seed flow within 1 s.

The library process (`graybaggage.instrument()` configured only by env, as a service would be) prints
its table every time the source swaps it, with the source's own `loaded_at` timestamp and the routing
decisions it now makes for a, b and c. The test watches the same ConfigMap (admin credentials) and
takes the moment its watch delivers a new table as the moment the controller published it; the delay
is library-swap time minus that moment, both on this machine's wall clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from graybaggage_controller import names as n
from tests import support

from .conftest import wait_for
from .test_live import (NEW, OLD, app_manifests, apply, lane_manifest, release_manifest, routes, run_cli,
                        set_image, status)

pytestmark = pytest.mark.k8s_local_webhook

APPS = ["spring-cloud-a", "spring-cloud-b", "spring-cloud-c"]
A, B, C = APPS

LIBRARY_PROCESS = r"""
import json, os, sys, time
import graybaggage
from graybaggage import _runtime

graybaggage.instrument()
src = _runtime.get().table_source
ns, apps = os.environ["GRAYBAGGAGE_NAMESPACE"], sys.argv[1:]
print(json.dumps({"source": src.describe()}), flush=True)
last = -1
while True:
    gen = src.generation
    if gen != last:
        last, table = gen, src.value
        lane = table.lanes.get("gray")
        decide = {}
        for app in apps:
            r = table.decide("gray", app, 20001, ns)
            decide[app] = r.host if r else None
        print(json.dumps({"gen": gen, "loaded_at": src.loaded_at, "seen_at": time.time(),
                          "routes": None if lane is None else dict(lane.raw_routes), "decide": decide}), flush=True)
    time.sleep(0.002)
"""


class Lines:
    """Collects JSON lines from a stream in a thread: [(arrival wall time, parsed line)]."""

    def __init__(self, stream):
        self.items: list[tuple[float, dict]] = []
        threading.Thread(target=self._run, args=(stream,), daemon=True).start()

    def _run(self, stream):
        for line in stream:
            try:
                self.items.append((time.time(), json.loads(line)))
            except ValueError:
                pass


class TableWatch:
    """The test's own watch on the lane-table ConfigMap: [(arrival wall time, gray routes or None)]."""

    def __init__(self, api_client, ns: str):
        from kubernetes import client, watch
        self.seen: list[tuple[float, dict | None]] = []
        self.w = watch.Watch()
        core = client.CoreV1Api(api_client)
        rv = core.list_namespaced_config_map(ns).metadata.resource_version
        threading.Thread(target=self._run, daemon=True, args=(core, ns, rv)).start()

    def _run(self, core, ns, rv):
        try:
            for ev in self.w.stream(core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=90,
                                    field_selector=f"metadata.name={n.TABLE_CONFIGMAP}"):
                now, obj = time.time(), ev["raw_object"]
                if ev["type"] == "DELETED":
                    self.seen.append((now, None))
                    continue
                table = json.loads((obj.get("data") or {}).get(n.TABLE_KEY) or "{}")
                self.seen.append((now, ((table.get("lanes") or {}).get("gray") or {}).get("routes")))
        except Exception:       # the connection goes with the test
            pass

    def first(self, want: dict, after: float) -> float:
        return wait_for(lambda: next((t for t, r in list(self.seen) if r == want and t >= after), None), 10,
                        f"the test's watch to deliver {want}", interval=0.02)


def test_library_follows_the_controllers_lane_table(k8s_cluster, gb_controller, gb_kube, tmp_path):
    ns = gb_controller.namespace
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAYBAGGAGE_", "OTEL_"))}
    env.update(support.lane_reader_env(k8s_cluster, ns, tmp_path, n.TABLE_CONFIGMAP), PYTHONUNBUFFERED="1")
    errlog = tmp_path / "library.log"
    with open(errlog, "wb") as err:
        lib = subprocess.Popen([sys.executable, "-c", LIBRARY_PROCESS, *APPS], env=env, stdout=subprocess.PIPE,
                               stderr=err, text=True, start_new_session=True)
    out = Lines(lib.stdout)
    cm_watch = TableWatch(k8s_cluster.api_client(), ns)
    try:
        assert wait_for(lambda: out.items and out.items[0][1], 20, "the library process to start")["source"] \
            .startswith("kubernetes"), out.items

        def library_sees(want: dict, after: float) -> tuple[float, dict]:
            def seen():
                assert lib.poll() is None, errlog.read_text()[-3000:]
                return next((o for _, o in list(out.items) if "gen" in o and o["routes"] == want
                             and o["loaded_at"] >= after), None)
            try:
                o = wait_for(seen, 60, f"the library to see gray routes {want}", interval=0.02)
            except AssertionError:
                sys.stderr.write(f"\nlibrary saw: {out.items}\ntest watch saw: {cm_watch.seen}\n"
                                 f"table now: {routes(gb_kube, ns)}\nlibrary log: {errlog.read_text()[-3000:]}\n")
                raise
            return o["loaded_at"], o["decide"]

        docs = [x for app in APPS for x in app_manifests(app)]
        docs += [lane_manifest()] + [release_manifest(f"rollout-{app[-1]}", app) for app in APPS]
        apply(k8s_cluster, ns, docs)
        for app in APPS:
            k8s_cluster.kubectl("-n", ns, "rollout", "status", f"deployment/{app}", "--timeout=60s")
        start = time.time()
        gb_controller.start()
        wait_for(lambda: all(status(gb_kube, ns, f"rollout-{x}").get("phase") == "Healthy" for x in "abc"),
                 30, "all releases Healthy")
        _, decide = library_sees({}, start)           # the table appeared: lane gray, no routes yet
        assert decide == {A: None, B: None, C: None}

        results = []

        def step(name: str, action, want: dict, decisions: dict) -> None:
            t_action = time.time()
            action()
            lib_at, decide = library_sees(want, t_action)
            published_at = cm_watch.first(want, t_action)
            assert decide == decisions, (name, decide)
            assert routes(gb_kube, ns) == want
            results.append((name, lib_at - published_at, lib_at - t_action))

        step("set image a and c", lambda: (set_image(k8s_cluster, ns, A, NEW), set_image(k8s_cluster, ns, C, NEW)),
             {A: f"{A}-gray", C: f"{C}-gray"}, {A: f"{A}-gray", B: None, C: f"{C}-gray"})
        # the status is written after the table: wait for Paused before approving
        wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Paused", 20, "rollout-a Paused")

        def approve_a():
            code, text = run_cli(k8s_cluster, ns, "approve", "rollout-a")
            assert code == 0, text
        step("approve a", approve_a,
             {C: f"{C}-gray"}, {A: None, B: None, C: f"{C}-gray"})
        step("roll back c", lambda: set_image(k8s_cluster, ns, C, OLD), {}, {A: None, B: None, C: None})

        report = "; ".join(f"{name}: {lag * 1000:.1f} ms after the ConfigMap changed "
                           f"({total:.2f} s after the action)" for name, lag, total in results)
        print(f"\n[library] {report}")
        for name, lag, _ in results:
            assert lag < 1.0, f"{name}: the library saw the change {lag:.3f}s after it was published"
        log = errlog.read_text()
        assert "HTTP 403" not in log and "Forbidden" not in log, log  # the one-ConfigMap Role was enough
    finally:
        cm_watch.w.stop()
        if lib.poll() is None:
            os.killpg(lib.pid, 9)
            lib.wait(5)
