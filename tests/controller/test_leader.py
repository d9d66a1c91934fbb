"""Leader election (controller/graybaggage_controller/leader.py) with real controller processes.

Two controllers with `--leader-elect` against one API server: exactly one reconciles, the other answers the
webhook only. SIGKILL the leader: the standby takes over within the lease time (measured). SIGTERM a leader:
it releases the Lease and a standby takes over at its next retry. No object is ever created twice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from graybaggage_controller import names as n

from .conftest import CRDS, wait_for

VENV_BIN = Path(sys.executable).parent
# seconds; the Deployment uses the defaults 15 / 10 / 2 (GRAYBAGGAGE_TEST_LEASE="15,10,2" to measure those)
LEASE, RENEW, RETRY = (float(x) for x in os.environ.get("GRAYBAGGAGE_TEST_LEASE", "4,3,0.5").split(","))
ACTION = re.compile(r"rollout-\w: (create|update|delete|patch|jsonpatch|patch-release) |lane table ")


def apps(ns: str) -> list[dict]:
    docs: list[dict] = [{"apiVersion": n.API_VERSION, "kind": "Lane", "metadata": {"name": "gray"},
                         "spec": {"tag": "gray"}}]
    for app in ("spring-cloud-a", "spring-cloud-c"):
        docs += [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app},
             "spec": {"selector": {"app": app}, "ports": [{"port": 20001}]}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                      "template": {"metadata": {"labels": {"app": app}},
                                   "spec": {"containers": [{"name": app, "image": "example:1"}]}}}},
            {"apiVersion": n.API_VERSION, "kind": "GrayRelease", "metadata": {"name": f"rollout-{app[-1]}"},
             "spec": {"workloadRef": {"name": app}, "lane": "gray"}},
        ]
    return docs


class Candidate:
    def __init__(self, cluster, ns: str, name: str, workdir: Path):
        from tests.k8s.cluster import free_port
        self.name, self.port = name, free_port()
        self.log_path = workdir / f"{name}.log"
        self.cmd = [str(VENV_BIN / "graybaggage-controller"), "--namespace", ns, "--kubeconfig", cluster.kubeconfig,
                    "--resync", "0.5", "--webhook-port", str(self.port), "--webhook-name", f"graybaggage-{ns}",
                    "--tls-secret", f"{ns}/webhook-tls", "--tls-dir", str(workdir / f"tls-{name}"),
                    "--leader-elect", "--leader-elect-resource-namespace", ns,
                    f"--leader-elect-lease-duration={LEASE}", f"--leader-elect-renew-deadline={RENEW}",
                    f"--leader-elect-retry-period={RETRY}"]
        env = dict(cluster.env, POD_NAME=name, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.identity = f"{name}_{self.proc.pid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def actions(self) -> list[str]:
        return [line for line in self.log().splitlines() if ACTION.search(line)]

    def actions_before_leading(self) -> list[str]:
        text = self.log()
        cut = text.find("became the leader")
        return [line for line in (text if cut < 0 else text[:cut]).splitlines() if ACTION.search(line)]

    def signal(self, sig) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)


@pytest.mark.k8s
@pytest.mark.k8s_local_webhook
def test_one_leader_sigkill_takeover_sigterm_handover(gb_install_cluster, tmp_path):
    cluster = gb_install_cluster
    ns = f"gb-leader-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/lanes.graybaggage.io",
                    "crd/grayreleases.graybaggage.io")
    cluster.kubectl("create", "namespace", ns)
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0, 30, "sa")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(apps(ns)))

    def get(*args):
        cp = cluster.kubectl("get", *args, "-n", ns, "-o", "json", check=False)
        return json.loads(cp.stdout) if cp.returncode == 0 else None

    def holder():
        return ((get("lease", "graybaggage-controller") or {}).get("spec") or {}).get("holderIdentity")

    def routes():
        cm = get("cm", n.TABLE_CONFIGMAP)
        return cm and json.loads(cm["data"][n.TABLE_KEY])["lanes"]["gray"]["routes"]

    def phases():
        return {g["metadata"]["name"]: (g.get("status") or {}).get("phase") for g in get("gr")["items"]}

    def owned():
        return sorted(
            [f"Deployment/{o['metadata']['name']}" for o in get("deploy", "-l", n.OWNER_LABEL)["items"]]
            + [f"Service/{o['metadata']['name']}" for o in get("svc", "-l", n.OWNER_LABEL)["items"]]
            + [f"ReplicaSet/{o['metadata']['ownerReferences'][0]['name']}"
               for o in get("rs", "-l", n.LANE_LABEL)["items"]])

    procs: list[Candidate] = []
    result: dict = {}
    try:
        p1 = Candidate(cluster, ns, "p1", tmp_path)
        procs.append(p1)
        wait_for(lambda: holder() == p1.identity, 30, "p1 to lead")
        wait_for(lambda: set(phases().values()) == {"Healthy"}, 30, "releases Healthy (p1 reconciles)")
        p2 = Candidate(cluster, ns, "p2", tmp_path)
        procs.append(p2)
        # p2 wrote the webhook configuration last, so the API server now calls the standby's webhook
        wait_for(lambda: str(p2.port) in json.loads(cluster.kubectl(
            "get", "mutatingwebhookconfiguration", f"graybaggage-{ns}", "-o", "json").stdout)
            ["webhooks"][0]["clientConfig"]["url"], 30, "p2's webhook registered")

        def standby_webhook_pauses():
            cp = cluster.kubectl("-n", ns, "set", "image", "deploy/spring-cloud-a", "spring-cloud-a=example:2",
                                 "--dry-run=server", "-o", "json", check=False)
            return cp.returncode == 0 and json.loads(cp.stdout)["spec"].get("paused") is True
        wait_for(standby_webhook_pauses, 30, "the standby's webhook to answer")
        time.sleep(2 * RETRY)

        # 1) a release while p1 leads: only p1 acts, p2 (standby) only answered the webhook
        cluster.kubectl("-n", ns, "set", "image", "deploy/spring-cloud-a", "spring-cloud-a=example:2")
        dep = get("deploy", "spring-cloud-a")
        assert dep["spec"]["paused"] is True and dep["metadata"]["annotations"][n.PAUSED_BY_ANN] == "webhook"
        wait_for(lambda: routes() == {"spring-cloud-a": "spring-cloud-a-gray"}, 60, "gray a routed")
        assert holder() == p1.identity
        assert p1.actions() and p2.actions() == [], p2.actions()
        gray_a_uid = get("deploy", "spring-cloud-a-gray")["metadata"]["uid"]

        # 2) SIGKILL the leader: p2 takes over within the lease time
        renewed = get("lease", "graybaggage-controller")["spec"]["renewTime"]
        t_kill = time.monotonic()
        p1.signal(signal.SIGKILL)
        p1.proc.wait(10)
        wait_for(lambda: holder() == p2.identity, LEASE + 10, "p2 to take over", interval=0.05)
        result["sigkill_takeover_s"] = round(time.monotonic() - t_kill, 2)
        lease = get("lease", "graybaggage-controller")["spec"]
        result["lease"] = {k: lease.get(k) for k in ("holderIdentity", "leaseDurationSeconds", "leaseTransitions")}
        result["last_renew_of_p1"], result["acquire_by_p2"] = renewed, lease["acquireTime"]
        assert result["sigkill_takeover_s"] <= LEASE + 2 * RETRY + 1.5, result
        assert lease["leaseTransitions"] == 1 and lease["leaseDurationSeconds"] == int(LEASE)
        assert p2.actions_before_leading() == []

        # 3) p2 carries on: release c; nothing duplicated, gray a is the very same object
        cluster.kubectl("-n", ns, "set", "image", "deploy/spring-cloud-c", "spring-cloud-c=example:2")
        wait_for(lambda: routes() == {"spring-cloud-a": "spring-cloud-a-gray", "spring-cloud-c": "spring-cloud-c-gray"},
                 60, "gray c routed by p2")
        wait_for(lambda: set(phases().values()) == {"Paused"}, 30, "both Paused")
        assert owned() == ["Deployment/spring-cloud-a-gray", "Deployment/spring-cloud-c-gray",
                           "ReplicaSet/spring-cloud-a-gray", "ReplicaSet/spring-cloud-c-gray",
                           "Service/spring-cloud-a-gray", "Service/spring-cloud-c-gray"], owned()
        assert get("deploy", "spring-cloud-a-gray")["metadata"]["uid"] == gray_a_uid
        assert any("spring-cloud-c-gray" in line for line in p2.actions())

        # 4) SIGTERM the leader (rolling update): it releases the Lease, the standby p3 takes over at once
        p3 = Candidate(cluster, ns, "p3", tmp_path)
        procs.append(p3)
        wait_for(lambda: "leader election: lease" in p3.log(), 30, "p3 to run")
        time.sleep(2 * RETRY)
        t_term = time.monotonic()
        p2.signal(signal.SIGTERM)
        wait_for(lambda: holder() == p3.identity, LEASE + 10, "p3 to take over", interval=0.05)
        result["sigterm_handover_s"] = round(time.monotonic() - t_term, 2)
        assert p2.proc.wait(30) == 0 and "released the lease" in p2.log()
        assert result["sigterm_handover_s"] < LEASE, result
        cluster.kubectl("patch", "gr", "rollout-c", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":2}}')
        wait_for(lambda: (get("deploy", "spring-cloud-c-gray")["status"].get("availableReplicas")) == 2, 60,
                 "p3 scales gray c")
        assert p3.actions_before_leading() == [] and p3.actions()
        assert get("deploy", "spring-cloud-a-gray")["metadata"]["uid"] == gray_a_uid
        assert len(get("rs", "-l", n.LANE_LABEL)["items"]) == 2
        sys.stderr.write(f"\n[leader] {json.dumps(result)}\n")
    except Exception:
        for p in procs:
            sys.stderr.write(f"\n----- {p.name} -----\n{p.log()[-5000:]}\n")
        raise
    finally:
        for p in procs:
            p.signal(signal.SIGKILL)
        for kind in ("grayreleases.graybaggage.io", "lanes.graybaggage.io"):
            for obj in cluster.kubectl("get", kind, "-n", ns, "-o", "name", check=False).stdout.split():
                cluster.kubectl("patch", obj, "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                                check=False)
        cluster.kubectl("delete", "mutatingwebhookconfiguration", f"graybaggage-{ns}", "--ignore-not-found",
                        check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# ------------------------------------------------------------------------------- LeaderElector, no cluster

class FakeLeases:
    """Just enough of the API server for one Lease: GET, POST, PUT with resourceVersion (409 on conflict)."""

    def __init__(self):
        self.obj: dict | None = None
        self.rv = 0
        self.fail = False

    def request(self, method, path, body=None, **_):
        from graybaggage_controller.kube import KubeError, error_for
        if self.fail:
            raise KubeError(503, "unavailable")
        if method == "GET":
            if self.obj is None:
                raise error_for(404, "not found")
            return json.loads(json.dumps(self.obj))
        if method == "POST" and self.obj is not None or method == "PUT" and (
                self.obj is None or body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]):
            raise error_for(409, "conflict")
        self.rv += 1
        self.obj = json.loads(json.dumps(body))
        self.obj["metadata"]["resourceVersion"] = str(self.rv)
        return self.obj


def _elector(fake, ident, **kw):
    from graybaggage_controller.leader import LeaderElector
    kw = {"lease_duration": 0.6, "renew_deadline": 0.4, "retry_period": 0.05, **kw}
    return LeaderElector(fake, "ns", "lease", ident, **kw)


def test_elector_one_leader_release_steal_and_outage():
    fake = FakeLeases()
    a, b = _elector(fake, "a").start(), _elector(fake, "b").start()
    try:
        wait_for(lambda: a.is_leader() or b.is_leader(), 5, "a leader")
        for _ in range(20):                             # never two at once
            assert a.is_leader() + b.is_leader() == 1
            time.sleep(0.02)
        leader, standby = (a, b) if a.is_leader() else (b, a)
        t0 = time.monotonic()
        leader.stop(release=True)                       # released: the standby does not wait out the lease
        wait_for(standby.is_leader, 5, "standby takes over")
        assert time.monotonic() - t0 < 0.6 and fake.obj["spec"]["leaseTransitions"] == 1
        # someone else takes the lease: the leader steps down at its next retry, not after the deadline
        obj = fake.obj
        obj["spec"].update(holderIdentity="intruder", renewTime="2099-01-01T00:00:00.000000Z")
        fake.request("PUT", "", body=obj)
        t0 = time.monotonic()
        wait_for(lambda: not standby.is_leader(), 5, "step down")
        assert time.monotonic() - t0 < 0.3
        # the intruder stops renewing: the lease expires and is taken back
        wait_for(standby.is_leader, 5, "taken back after expiry")
        # API outage: the leader keeps leading until the renew deadline, then stops
        fake.fail = True
        t0 = time.monotonic()
        wait_for(lambda: not standby.is_leader(), 5, "step down on outage")
        assert 0.3 <= time.monotonic() - t0 < 1.0
        with pytest.raises(ValueError):
            _elector(fake, "c", renew_deadline=1.0)     # renew deadline must be below the lease duration
    finally:
        a.stop(release=False)
        b.stop(release=False)
