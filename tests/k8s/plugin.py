"""pytest plugin: a live Kubernetes control plane for tests.

Enable with ``pytest_plugins = ["tests.k8s.plugin"]`` in the root tests/conftest.py.

Fixtures
  k8s_cluster    (session)  ControlPlane | ExternalCluster, see tests/k8s/cluster.py:
                            .kubeconfig .bin_dir .env .is_external
                            .kubectl(*args, check=True, input=None) -> CompletedProcess (text)
                            .api_client() -> kubernetes.client.ApiClient
                            .webhook_tls(dir=None) -> WebhookTLS
  k8s_namespace  (function) name of a fresh namespace, deleted afterwards (not awaited)
  k8s_dataplane  (session)  DataPlane, see tests/k8s/dataplane.py: a real node (pods are processes in
                            network namespaces), kube-proxy, CoreDNS, Traefik; .gateway_url,
                            .make_namespace(name), .node_http(url), .resolve(name)
  k8s_dataplane_namespace (function) a fresh namespace whose pods run on the real node

Markers
  k8s                             added to every test that uses k8s_cluster
  k8s_dataplane                   added to every test that uses k8s_dataplane
  @pytest.mark.k8s_local_webhook  skip in GRAYBAGGAGE_TEST_KUBECONFIG mode, where a remote
                                  API server cannot reach https://127.0.0.1:<port>.

On a fresh machine the binaries are built by tests/k8s/build.sh (~10 min on 2 cores,
progress streamed to the terminal) right after collection, when any selected test uses
k8s_cluster; later runs reuse the cache in well under 1 s.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import pytest

from .cluster import ControlPlane, ExternalCluster, ensure_binaries

_BUILD_KEY = pytest.StashKey[dict]()
_DP_BUILD_KEY = pytest.StashKey[dict]()


def pytest_configure(config):
    config.addinivalue_line("markers", "k8s: uses the k8s_cluster fixture (a live control plane)")
    config.addinivalue_line("markers", "k8s_dataplane: uses the k8s_dataplane fixture (real pods, kube-proxy, "
                            "CoreDNS, Traefik)")
    config.addinivalue_line(
        "markers",
        "k8s_local_webhook: needs the API server to call a webhook served by the test "
        "process at https://127.0.0.1 (skipped with GRAYBAGGAGE_TEST_KUBECONFIG)",
    )


class _Uncaptured:
    """Write straight to the terminal even while pytest captures output."""

    def __init__(self, config):
        self.capman = config.pluginmanager.getplugin("capturemanager")

    def __call__(self, line: str) -> None:
        if self.capman is not None:
            with self.capman.global_and_fixture_disabled():
                sys.stderr.write(line)
                sys.stderr.flush()
        else:
            sys.stderr.write(line)


def _uses_cluster(item) -> bool:
    return "k8s_cluster" in getattr(item, "fixturenames", ())


def _uses_dataplane(item) -> bool:
    return any(f.startswith("k8s_dataplane") for f in getattr(item, "fixturenames", ()))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Mark every test that uses ``k8s_cluster`` with ``k8s`` (before ``-m`` deselection)."""
    for it in items:
        if _uses_cluster(it):
            it.add_marker("k8s")
        if _uses_dataplane(it):
            it.add_marker("k8s_dataplane")


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Build (or find) the binaries once the selected tests are known.

    The build (<1 s warm, ~10 min cold) happens here, after collection and before the
    first test, so it is not counted against any per-test timeout (pytest-timeout counts
    session-fixture setup in the first test that uses it).  A failure is remembered and
    raised by the fixture, so tests that do not need Kubernetes still run.
    """
    config = session.config
    state = config.stash.setdefault(_BUILD_KEY, {})
    if (not any(_uses_cluster(it) for it in session.items)
            or os.environ.get("GRAYBAGGAGE_TEST_KUBECONFIG") or config.option.collectonly):
        return
    t0 = time.monotonic()
    try:
        state["bin_dir"] = ensure_binaries(stream=_Uncaptured(config))
    except Exception as e:  # reported by the fixture
        state["error"] = e
    state["seconds"] = time.monotonic() - t0
    if any(_uses_dataplane(it) for it in session.items):
        dp_state = config.stash.setdefault(_DP_BUILD_KEY, {})
        t0 = time.monotonic()
        try:
            from .dataplane import ensure_dataplane_binaries
            dp_state["bin_dir"] = ensure_dataplane_binaries(stream=_Uncaptured(config))
        except Exception as e:  # reported by the fixture
            dp_state["error"] = e
        dp_state["seconds"] = time.monotonic() - t0


@pytest.fixture(scope="session")
def k8s_cluster(request):
    """A running cluster for the whole session (built/started on first use)."""
    out = _Uncaptured(request.config)
    ext = os.environ.get("GRAYBAGGAGE_TEST_KUBECONFIG")
    if ext:
        cluster = ExternalCluster(ext)
        out(f"[k8s] using existing cluster from GRAYBAGGAGE_TEST_KUBECONFIG={ext}\n")
    else:
        state = request.config.stash.get(_BUILD_KEY, {})
        if "error" in state:
            raise state["error"]
        t0 = time.monotonic()
        bin_dir = state.get("bin_dir") or ensure_binaries(stream=out)
        took = state.get("seconds", time.monotonic() - t0)
        out(f"[k8s] binaries ready in {took:.1f}s: {bin_dir}\n")
        keep = os.environ.get("GRAYBAGGAGE_K8S_KEEP_WORKDIR") == "1"
        cluster = ControlPlane(bin_dir, keep_workdir=keep)
        capman = request.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            with capman.global_and_fixture_disabled():
                cluster.start()
        else:
            cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def k8s_namespace(k8s_cluster, request):
    """A fresh namespace ``gb-<test>-<random>``; deleted (without waiting) afterwards."""
    base = "".join(c if c.isascii() and c.isalnum() else "-" for c in request.node.name.lower())
    name = f"gb-{base.strip('-')[:40].strip('-')}-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", name)
    # the namespace's default ServiceAccount appears asynchronously; pods need it
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if k8s_cluster.kubectl("get", "serviceaccount", "default", "-n", name,
                               check=False).returncode == 0:
            break
        time.sleep(0.1)
    try:
        yield name
    finally:
        k8s_cluster.kubectl("delete", "namespace", name, "--wait=false",
                            "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def k8s_dataplane_bin(request):
    """The bin dir with the data plane's own programs (CoreDNS, Traefik), built after collection."""
    from .dataplane import ensure_dataplane_binaries
    if os.environ.get("GRAYBAGGAGE_TEST_KUBECONFIG"):
        pytest.skip("GRAYBAGGAGE_TEST_KUBECONFIG: the real data plane runs only on the local control plane")
    state = request.config.stash.get(_DP_BUILD_KEY, {})
    if "error" in state:
        raise state["error"]
    return state.get("bin_dir") or ensure_dataplane_binaries(stream=_Uncaptured(request.config))


@pytest.fixture(scope="session")
def k8s_dataplane(k8s_cluster, k8s_dataplane_bin, request):
    """The real data plane on the session's control plane (started on first use, stopped at the end)."""
    from .dataplane import DataPlane
    dp = DataPlane(k8s_cluster, k8s_dataplane_bin)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            dp.start()
    else:
        dp.start()
    try:
        yield dp
    finally:
        dp.stop()


@pytest.fixture
def k8s_dataplane_namespace(k8s_dataplane, k8s_namespace):
    """A fresh namespace (as k8s_namespace) whose pods run on the real node."""
    k8s_dataplane.prepare_namespace(k8s_namespace)
    return k8s_namespace


def pytest_runtest_setup(item):
    if item.get_closest_marker("k8s_local_webhook") and os.environ.get("GRAYBAGGAGE_TEST_KUBECONFIG"):
        pytest.skip("GRAYBAGGAGE_TEST_KUBECONFIG points at an external cluster: its API server "
                    "cannot reach a webhook served at https://127.0.0.1 by the test process")


# ---- the real Kruise Rollout manager (tests/k8s/kruise/)
KRUISE_DEFAULT_VERSION = "v0.6.2"


@pytest.fixture(scope="session")
def _kruise_holder(k8s_cluster, request):
    """At most one manager per control plane (Kruise's webhook configuration names are fixed)."""
    holder: dict = {}
    try:
        yield holder
    finally:
        if holder.get("manager") is not None:
            holder["manager"].stop()


@pytest.fixture
def kruise_manager(_kruise_holder, k8s_cluster, request):
    """The real Kruise Rollout manager (KruiseManager, tests/k8s/kruise/manager.py), v0.6.2 unless a test asks
    for another with ``@pytest.mark.parametrize("kruise_manager", ["v0.5.0"], indirect=True)``. Built by
    tests/k8s/kruise/build.sh (or taken from GRAYBAGGAGE_KRUISE_BIN); kept running across tests of one version."""
    from .kruise.manager import KruiseManager, kruise_bin_dir
    if os.environ.get("GRAYBAGGAGE_TEST_KUBECONFIG"):
        pytest.skip("GRAYBAGGAGE_TEST_KUBECONFIG: the Kruise manager runs only against the local control plane")
    version = getattr(request, "param", None) or KRUISE_DEFAULT_VERSION
    current = _kruise_holder.get("manager")
    if current is not None and (current.version != version or not current.alive()):
        current.stop()
        _kruise_holder["manager"] = current = None
    if current is None:
        out = _Uncaptured(request.config)
        bin_dir = kruise_bin_dir(stream=out)
        mgr = KruiseManager(k8s_cluster, os.path.join(bin_dir, version))
        _kruise_holder["manager"] = mgr
        mgr.start()
        current = mgr
    return current
