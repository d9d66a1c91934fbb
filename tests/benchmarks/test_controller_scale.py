"""Smoke test of benchmarks/controller_scale.py at tiny scale, so the benchmark cannot rot.

Runs the whole benchmark (its own audited control plane, the controller as a process, a moving round,
watchers) with 2 releases in 1 namespace and 10 watchers; asserts counts and structure only, never timings.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.k8s


def _load():
    spec = importlib.util.spec_from_file_location("controller_scale", ROOT / "benchmarks" / "controller_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load()


@pytest.mark.parametrize("releases,namespaces,expect", [
    (1, 1, [("bench-00", "s0-a")]),
    (4, 2, [("bench-00", "s0-a"), ("bench-01", "s0-a"), ("bench-00", "s0-b"), ("bench-01", "s0-b")]),
    (4, 1, [("bench-00", "s0-a"), ("bench-00", "s0-b"), ("bench-00", "s0-c"), ("bench-00", "s1-a")]),
])
def test_layout(bench, releases, namespaces, expect):
    assert bench.layout(releases, namespaces) == expect


@pytest.mark.parametrize("values,p50,p99", [
    ([], None, None),
    ([1.0], 1.0, 1.0),
    ([float(i) for i in range(1, 101)], 50.0, 99.0),
    ([3.0, 1.0, 2.0], 2.0, 3.0),
])
def test_percentiles(bench, values, p50, p99):
    assert (bench.pct(values, 50), bench.pct(values, 99)) == (p50, p99)


def test_audit_counts_window_user_and_dedup(bench, tmp_path):
    log = tmp_path / "audit.log"
    rec = lambda aid, user, verb, res, ts, stage="ResponseComplete": json.dumps({  # noqa: E731
        "auditID": aid, "stage": stage, "user": {"username": user}, "verb": verb,
        "objectRef": {"resource": res}, "requestReceivedTimestamp": ts})
    log.write_text("\n".join([
        rec("1", bench.CTL_USER, "list", "pods", "2026-01-01T00:00:10.000000Z"),
        rec("2", bench.CTL_USER, "watch", "pods", "2026-01-01T00:00:11.000000Z", "ResponseStarted"),
        rec("2", bench.CTL_USER, "watch", "pods", "2026-01-01T00:00:11.000000Z"),   # same request: once
        rec("3", "someone-else", "list", "pods", "2026-01-01T00:00:12.000000Z"),
        rec("4", bench.CTL_USER, "list", "pods", "2026-01-01T00:01:30.000000Z"),    # after the window
        "not json",
    ]) + "\n")
    import datetime
    t = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert dict(bench.audit_counts(log, t, t + 60)) == {("list", "pods"): 1, ("watch", "pods"): 1}


@pytest.mark.skipif(bool(os.environ.get("GRAYBAGGAGE_TEST_KUBECONFIG")),
                    reason="starts its own control plane with an audit log")
def test_tiny_run(bench, tmp_path):
    out = tmp_path / "scale.json"
    assert bench.main(["--releases", "2", "--namespaces", "1", "--watchers", "10", "--watcher-procs", "2",
                       "--watch-rounds", "2", "--moving", "1,2", "--idle-seconds", "6", "--resync", "2", "--settle-seconds", "0",
                       "--timeout", "120", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    idle = r["idle"]          # 6 s > --resync 2: timer passes ran in the window
    # idle passes are served from the watch cache (cache.py): no LIST, and no write
    assert idle["list_per_release_per_min"] == 0, idle["by_verb_resource_per_min"]
    assert set(idle["by_verb_per_min"]) <= {"get", "watch"}, idle["by_verb_resource_per_min"]
    assert idle["passes"]["from_cache"] >= 2, idle       # passes ran in the window, served from the cache
    assert idle["controller_rss_mib"]["end"] > 0
    assert len(idle["requests_per_10s"]) == 1
    assert [m["moving"] for m in r["moving"]] == [1, 2]
    assert [m["seen"] for m in r["moving"]] == [1, 2]          # every moved release reached the table
    assert all(m["set_image_to_table_s"]["n"] == m["moving"] for m in r["moving"])
    # the split: every moved release's gray Deployment was seen available (two watches: no order between them)
    assert all(m["gray_available_to_table_s"]["n"] == m["moving"] for m in r["moving"]), r["moving"]
    w = r["watchers"]
    assert (w["watchers"], w["processes"], w["rounds"]) == (10, 2, 2)
    assert w["latency_s"]["n"] == 20                           # 10 watchers x 2 changes, each seen once
    assert {k: v["seen"] for k, v in w["per_round"].items()} == {"1": 10, "2": 10}
    assert r["controller_alive"] is True
    assert r["loadavg_1m"] is not None
