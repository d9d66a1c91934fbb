"""examples/k8s applies cleanly to a real API server (server-side dry-run of every object, then for real),
and the example image's entrypoint runs as written."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests import support

EXAMPLES = support.ROOT / "examples" / "k8s"
CRDS = support.ROOT / "controller" / "deploy" / "crds"


@pytest.mark.k8s
def test_manifests_dry_run_and_apply(k8s_cluster, k8s_namespace):
    k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    k8s_cluster.kubectl("wait", "--for=condition=Established", "crd/lanes.graybaggage.io",
                        "crd/grayreleases.graybaggage.io", "--timeout=30s")
    rendered = k8s_cluster.kubectl("kustomize", str(EXAMPLES)).stdout
    kinds = re.findall(r"^kind: (\w+)", rendered, re.M)
    assert sorted(set(kinds)) == sorted({"ServiceAccount", "Role", "RoleBinding", "Service", "Deployment", "Lane",
                                         "GrayRelease"})
    dry = k8s_cluster.kubectl("apply", "-k", str(EXAMPLES), "-n", k8s_namespace, "--dry-run=server", "-o", "name")
    assert len(dry.stdout.split()) == len(kinds), dry.stdout
    k8s_cluster.kubectl("apply", "-k", str(EXAMPLES), "-n", k8s_namespace)
    k8s_cluster.kubectl("wait", "-n", k8s_namespace, "--for=condition=Available", "deployment", "--all",
                        "--timeout=90s")
    lane = json.loads(k8s_cluster.kubectl("get", "lane", "gray", "-n", k8s_namespace, "-o", "json").stdout)
    assert lane["spec"]["tag"] == "gray" and lane["spec"]["fallback"] == "base"
    can_read = k8s_cluster.kubectl("auth", "can-i", "watch", "configmaps/graybaggage-lanes", "-n", k8s_namespace,
                                   f"--as=system:serviceaccount:{k8s_namespace}:spring-cloud").stdout.strip()
    cannot = k8s_cluster.kubectl("auth", "can-i", "get", "configmaps/other", "-n", k8s_namespace,
                                 f"--as=system:serviceaccount:{k8s_namespace}:spring-cloud", check=False).stdout.strip()
    assert (can_read, cannot) == ("yes", "no")


def test_example_image_entrypoint_runs():
    """examples/Dockerfile cannot be built here; its ENTRYPOINT runs the same way under this Python."""
    text = (support.ROOT / "examples" / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    assert entry[:3] == ["graybaggage", "run", "--"]
    port = support.free_port()
    cmd = [str(support.BIN / entry[0]), *entry[1:]]
    cmd[cmd.index("python")] = str(support.BIN / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAYBAGGAGE_", "OTEL_"))}
    env.update(PORT=str(port), SERVICE_NAME="c", SERVICE_VERSION="2.0.1", GRAYBAGGAGE_LANE="gray",
               PATH=f"{support.BIN}{os.pathsep}{env.get('PATH', '')}")
    proc = subprocess.Popen(cmd, cwd=support.ROOT / "examples" / "services", env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        support.wait_listening(port, proc)
        body = support.get(f"http://127.0.0.1:{port}/c?format=json")
        assert body["chain"] == "c[gray]" and body["hops"][0]["version"] == "2.0.1"
    finally:
        proc.kill()
        proc.wait(5)
