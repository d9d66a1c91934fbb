"""Kruise mode with real traffic: the real Kruise Rollout manager (v0.6.2) and the real data plane (pods as
processes, kube-proxy, CoreDNS, Traefik as the Gateway API gateway) on one control plane.

The seed's apps a -> b -> c (examples/k8s/apps.yaml, graybaggage switched on by env vars; one env var added,
`MSE_ALICLOUD_SERVICE_TAG` from the pod's `alicloud.service.tag` label, so a Kruise canary reports its lane),
the seed's Rollouts and TrafficRouting as in test_kruise_live (unchanged), the entry as the README documents
it for Kruise mode: examples/k8s/gateway (Gateway `public-gw`, HTTPRoute `spring-cloud-a`) and the Lane `gray`
of examples/k8s/release.yaml with its entry section (no GrayRelease). `kubectl set image` a and c; once Kruise's
canaries are ready and the lane table lists them, a paced load through Traefik; then approve a (from
StepPaused) and roll back c under that load. Every request's chain (service, lane, instance per hop) is counted.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from graybaggage_controller import names as n

from tests.examples import seed_traffic
from tests.k8s.load import SEED_KINDS

from .conftest import wait_for
from .test_kruise_live import RV1B1, SEED_INGRESS, SEED_TRAFFIC_ROUTING, rollout, routes, seed_rollout

pytestmark = pytest.mark.k8s_local_webhook

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "k8s"
OLD, NEW = "graybaggage-example:0.1.0", "graybaggage-example:0.2.0"
LANE_ENV = {"name": "MSE_ALICLOUD_SERVICE_TAG",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['alicloud.service.tag']"}}}
ALL_BASE = {"a": {"base"}, "b": {"base"}, "c": {"base"}}


def seed_docs() -> list[dict]:
    """examples/k8s/apps.yaml (+ the lane env var), the gateway, the HTTPRoute and the Lane (no GrayRelease)."""
    apps = [x for x in yaml.safe_load_all((EXAMPLES / "apps.yaml").read_text()) if x]
    for x in apps:
        if x["kind"] == "Deployment":
            x["spec"]["template"]["spec"]["containers"][0]["env"].append(LANE_ENV)
    lane = [x for x in yaml.safe_load_all((EXAMPLES / "release.yaml").read_text()) if x and x["kind"] == "Lane"]
    gw = [yaml.safe_load((EXAMPLES / "gateway" / "traefik" / "gateway.yaml").read_text()),
          yaml.safe_load((EXAMPLES / "gateway" / "httproute.yaml").read_text())]
    return apps + gw + lane


class TableWatch:
    """The lane table's routes over time, on the load's clock (time.monotonic at receipt of each watch event)."""

    def __init__(self, cluster, ns):
        from kubernetes import client, watch
        self.core = client.CoreV1Api(cluster.api_client())
        self.ns, self.watch = ns, watch.Watch()
        self.events: list[tuple[float, dict]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for ev in self.watch.stream(self.core.list_namespaced_config_map, self.ns,
                                        field_selector=f"metadata.name={n.TABLE_CONFIGMAP}", _request_timeout=900):
                cm = ev["object"]
                table = {} if ev["type"] == "DELETED" else json.loads((cm.data or {}).get(n.TABLE_KEY) or "{}")
                self.events.append((time.monotonic(),
                                    ((table.get("lanes") or {}).get("gray") or {}).get("routes") or {}))
        except Exception:       # stopped
            pass

    def stop(self):
        self.watch.stop()

    def in_table(self, t: float) -> set[str]:
        """Services (a, b, c) lane gray routed at time t."""
        now: dict = {}
        for te, r in self.events:
            if te > t:
                break
            now = r
        return {s.removeprefix("spring-cloud-") for s in now}


@pytest.mark.parametrize("kruise_manager", ["v0.6.2"], indirect=True)
def test_seed_traffic_with_real_kruise(kruise_manager, k8s_cluster, k8s_dataplane, k8s_dataplane_namespace,
                                       gb_controller, gb_kube):
    ns = gb_controller.namespace
    assert ns == k8s_dataplane_namespace
    kc = k8s_cluster.kubectl
    kc("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(seed_docs() + [SEED_INGRESS]))
    for x in "abc":
        kc("-n", ns, "rollout", "status", f"deployment/spring-cloud-{x}", "--timeout=120s")
    kc("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([seed_rollout(x) for x in "abc"] + [SEED_TRAFFIC_ROUTING]))
    wait_for(lambda: all(rollout(k8s_cluster, ns, f"rollout-{x}").get("status", {}).get("phase") == "Healthy"
                         for x in "abc"), 120, "the seed's Rollouts Healthy")
    gb_controller.start()
    traffic = seed_traffic.SeedTraffic(k8s_cluster, k8s_dataplane, ns)
    traffic.wait_steady("baseline", set(), ALL_BASE)
    tw = TableWatch(k8s_cluster, ns)
    t0 = time.monotonic()
    try:
        traffic.mark("perturb:release a and c (set image)")
        for x in "ac":
            kc("-n", ns, "set", "image", f"deployment/spring-cloud-{x}", f"spring-cloud-{x}={NEW}")
        wait_for(lambda: routes(gb_kube, ns) == {"spring-cloud-a": "spring-cloud-a-gray",
                                                 "spring-cloud-c": "spring-cloud-c-gray"}, 180, "lane table {a, c}")
        for x in "ac":
            wait_for(lambda x=x: rollout(k8s_cluster, ns, f"rollout-{x}")["status"]["canaryStatus"]
                     .get("currentStepState") == "StepPaused", 120, f"rollout-{x} StepPaused")
        paused = {"a": {"base", "gray"}, "b": {"base"}, "c": {"base", "gray"}}
        try:
            traffic.wait_steady("canaries settled", {"a", "c"}, paused, timeout=120)  # no load yet
        except AssertionError:
            sys.stderr.write(f"\n[diag] table {gb_kube.get('ConfigMap', ns, n.TABLE_CONFIGMAP)}\n")
            for p in traffic.pods():
                sys.stderr.write(f"[diag] {p['metadata']['name']} {p['metadata']['labels']} {p['status'].get('podIP')} "
                                 f"{traffic.direct_chain(p['status']['podIP'], traffic.service_of(p), {'x-mse-tag': 'gray'})}\n")
            for s in gb_kube.list("Service", ns):
                sys.stderr.write(f"[diag] svc {s['metadata']['name']} {s['spec'].get('selector')}\n")
            raise
        t_released = time.monotonic() - t0

        # ---- a paced, bounded load through Traefik from here on
        traffic.start_load(rate=20, workers=3, max_requests=8000, max_seconds=600)
        traffic.hold(traffic.mark("steady:canaries", members=["a", "c"]), time.monotonic() + 120)

        # ---- approve a (what `kubectl-kruise rollout approve` does: from StepPaused)
        traffic.mark("perturb:approve a")
        kc("patch", RV1B1, "rollout-a", "-n", ns, "--subresource=status", "--type=merge",
           "-p", '{"status":{"canaryStatus":{"currentStepState":"StepReady"}}}')
        wait_for(lambda: routes(gb_kube, ns) == {"spring-cloud-c": "spring-cloud-c-gray"}, 120, "lane table {c}")
        wait_for(lambda: rollout(k8s_cluster, ns, "rollout-a")["status"].get("phase") == "Healthy", 180,
                 "rollout-a Healthy again")
        traffic.wait_steady("approved", {"c"}, {"a": {"base"}, "b": {"base"}, "c": {"base", "gray"}})

        # ---- roll back c
        traffic.mark("perturb:roll back c")
        kc("-n", ns, "set", "image", "deployment/spring-cloud-c", f"spring-cloud-c={OLD}")
        wait_for(lambda: not routes(gb_kube, ns), 120, "lane table {}")
        wait_for(lambda: rollout(k8s_cluster, ns, "rollout-c")["status"].get("phase") == "Healthy", 180,
                 "rollout-c Healthy again")
        traffic.wait_steady("rolled back", set(), ALL_BASE)
        results = traffic.stop_load()
    finally:
        if traffic.load is not None and traffic.load.running:
            traffic.stop_load()
        tw.stop()
    t_total = time.monotonic() - t0

    expected = {e["label"][len("steady:"):]: seed_traffic.chain_for(set(e["members"]))
                for e in traffic.events if e["label"].startswith("steady:")}
    t = seed_traffic.analyse(results, traffic.load.marks, expected)
    # a non-xiaoming request on a gray pod: a violation if that service's lane was in the table when it was sent;
    # else it is a's canary after the approval (running the promoted version, README), counted apart
    in_lane, promoted = [], {}
    for r in results:
        if r.kind == "xiaoming" or not r.ok:
            continue
        for h in r.hops:
            if h["lane"] != "base":
                if h["service"] in tw.in_table(r.t_send):
                    in_lane.append((r.kind, r.chain, h.get("instance"), round(r.t_send - t0, 2)))
                else:
                    promoted[h["service"]] = promoted.get(h["service"], 0) + 1
    canaries = t["phases"]["steady:canaries"]["by_kind"]
    sys.stderr.write(
        f"\n[kruise + data plane] {t['total']} requests, {len(t['failed'])} failed; released and settled at "
        f"{t_released:.0f} s, total {t_total:.0f} s; steady xiaoming checked {t['steady_checked']}; "
        f"untagged/forged on a gray pod while its lane was in the table: {len(in_lane)}; "
        f"on a's promoted canary after approval: {promoted}\n{json.dumps(t['phases'], indent=1)}\n")

    assert t["failed"] == [], t["failed"][:10]
    assert t["gray_misroutes"] == [], t["gray_misroutes"][:10]
    assert in_lane == [], in_lane[:10]
    assert set(promoted) <= {"a"}, promoted
    # while both canaries were up: xiaoming a[gray] -> b[base] -> c[gray], everyone else base
    assert set(canaries) == set(SEED_KINDS), canaries
    assert canaries["xiaoming"] == {"a[gray] -> b[base] -> c[gray]": sum(canaries["xiaoming"].values())}
    for kind in ("other", "forged", "forged-baggage"):
        assert set(canaries[kind]) == {seed_traffic.BASE}, (kind, canaries[kind])
    windows = [label for _, label in traffic.load.marks if label.startswith("steady:")]
    assert windows == ["steady:baseline", "steady:canaries settled", "steady:canaries", "steady:approved",
                       "steady:rolled back"], windows
    assert t["steady_checked"] >= 3 * seed_traffic.SeedTraffic.HOLD, t["steady_checked"]
