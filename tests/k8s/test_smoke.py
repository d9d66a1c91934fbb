"""Smoke tests: the control plane from tests/k8s really behaves like Kubernetes.

Run:  python -m pytest -p tests.k8s.plugin tests/k8s   (from the repo root)
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import threading
import time
import uuid

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402


IMAGE = os.environ.get("GRAYBAGGAGE_TEST_IMAGE", "registry.k8s.io/pause:3.10")


def wait_for(cond, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def _deployment(name: str, replicas: int, labels: dict) -> client.V1Deployment:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(
                        # kwok never pulls it; on a real cluster (GRAYBAGGAGE_TEST_KUBECONFIG)
                        # the pause image really runs and becomes Ready
                        name="app", image=IMAGE,
                        ports=[client.V1ContainerPort(container_port=8080, name="http")],
                    )],
                ),
            ),
        ),
    )


@pytest.fixture
def api(k8s_cluster):
    c = k8s_cluster.api_client()
    yield c
    c.close()


def _available(apps, ns, name):
    d = apps.read_namespaced_deployment(name, ns)
    conds = {c.type: c.status for c in (d.status.conditions or [])}
    return d.status.available_replicas == d.spec.replicas and conds.get("Available") == "True" and d


def test_deployment_becomes_available_on_kwok_node(k8s_cluster, k8s_namespace, api):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(k8s_namespace, _deployment("web", 2, labels))

    d = wait_for(lambda: _available(apps, k8s_namespace, "web"), 90, what="Deployment web Available")
    assert d.status.ready_replicas == 2

    pods = core.list_namespaced_pod(k8s_namespace, label_selector="app=web").items
    assert len(pods) == 2
    for p in pods:
        assert p.status.phase == "Running"
        assert {c.type: c.status for c in p.status.conditions}["Ready"] == "True"
        assert p.status.pod_ip  # fake address from kwok: never dial it
        assert p.spec.node_name  # bound by kube-scheduler
        if not k8s_cluster.is_external:  # ...to a kwok-managed node (kwok-node-0 unless a test added more)
            node = core.read_node(p.spec.node_name)
            assert node.metadata.annotations.get("kwok.x-k8s.io/node") == "fake"

    # deleting the Deployment garbage-collects its ReplicaSet and Pods
    rs = apps.list_namespaced_replica_set(k8s_namespace).items
    assert len(rs) == 1 and rs[0].metadata.owner_references[0].kind == "Deployment"
    apps.delete_namespaced_deployment("web", k8s_namespace, propagation_policy="Background")
    wait_for(lambda: not apps.list_namespaced_replica_set(k8s_namespace).items, 60,
             what="ReplicaSet garbage-collected")
    wait_for(lambda: not core.list_namespaced_pod(k8s_namespace).items, 60,
             what="Pods garbage-collected")


def test_service_gets_endpointslice_with_ready_pods(k8s_namespace, api):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    disc = client.DiscoveryV1Api(api)
    labels = {"app": "api"}
    apps.create_namespaced_deployment(k8s_namespace, _deployment("api", 2, labels))
    core.create_namespaced_service(k8s_namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="api"),
        spec=client.V1ServiceSpec(selector=labels, ports=[
            client.V1ServicePort(name="http", port=80, target_port="http")]),
    ))
    svc = core.read_namespaced_service("api", k8s_namespace)
    assert svc.spec.cluster_ip and svc.spec.cluster_ip.startswith("10.")

    def ready_endpoints():
        slices = disc.list_namespaced_endpoint_slice(
            k8s_namespace, label_selector="kubernetes.io/service-name=api").items
        eps = [e for s in slices for e in (s.endpoints or [])]
        ready = [e for e in eps if e.conditions and e.conditions.ready]
        return len(ready) == 2 and len(eps) == 2 and (slices, ready)

    slices, ready = wait_for(ready_endpoints, 90, what="EndpointSlice with 2 ready endpoints")
    pods = core.list_namespaced_pod(k8s_namespace, label_selector="app=api").items
    pod_ips = sorted(p.status.pod_ip for p in pods)
    assert sorted(a for e in ready for a in e.addresses) == pod_ips
    assert sorted(e.target_ref.name for e in ready) == sorted(p.metadata.name for p in pods)
    ports = [(p.name, p.port) for s in slices for p in (s.ports or [])]
    assert ("http", 8080) in ports


def test_deleting_owner_garbage_collects_owned_objects(k8s_namespace, api):
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(k8s_namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"}))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                  uid=owner.metadata.uid, block_owner_deletion=True)
    for i in range(3):
        core.create_namespaced_config_map(k8s_namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"owned-{i}", owner_references=[ref])))
    core.create_namespaced_config_map(k8s_namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="bystander")))

    core.delete_namespaced_config_map("owner", k8s_namespace, propagation_policy="Background")

    def names():
        return sorted(c.metadata.name for c in core.list_namespaced_config_map(k8s_namespace).items)

    wait_for(lambda: not any(n.startswith("owned-") for n in names()), 60,
             what="owned ConfigMaps garbage-collected")
    assert "bystander" in names()
    assert "owner" not in names()


def test_crd_schema_rejects_invalid_object(k8s_cluster, api):
    ext = client.ApiextensionsV1Api(api)
    custom = client.CustomObjectsApi(api)
    group = f"t{uuid.uuid4().hex[:8]}.graybaggage.test"
    plural = "widgets"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "color": {"type": "string", "enum": ["red", "blue"]},
                        },
                    }},
                }},
            }],
        },
    }
    ext.create_custom_resource_definition(crd)
    ns = "default"
    try:
        def established():
            c = ext.read_custom_resource_definition(f"{plural}.{group}")
            return any(x.type == "Established" and x.status == "True"
                       for x in (c.status.conditions or []))
        wait_for(established, 60, what="CRD Established")

        def create(name, spec):
            return custom.create_namespaced_custom_object(group, "v1", ns, plural, {
                "apiVersion": f"{group}/v1", "kind": "Widget",
                "metadata": {"name": name}, "spec": spec})

        # discovery of a just-established CRD can lag a moment: retry a valid create on 404
        ok = wait_for(lambda: _try_create(create, "good", {"size": 3, "color": "red"}), 30,
                      what="valid custom object accepted")
        assert ok["spec"] == {"size": 3, "color": "red"}

        for name, spec, needle in [
            ("bad-type", {"size": "three"}, "spec.size"),
            ("bad-range", {"size": 99}, "spec.size"),
            ("bad-enum", {"size": 2, "color": "green"}, "spec.color"),
            ("missing", {"color": "red"}, "spec.size"),
        ]:
            with pytest.raises(ApiException) as ei:
                create(name, spec)
            assert ei.value.status == 422, (name, ei.value.status, ei.value.body)
            body = json.loads(ei.value.body)
            assert body["reason"] == "Invalid"
            assert needle in body["message"], (name, body["message"])
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")


def _try_create(create, name, spec):
    try:
        return create(name, spec)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


class _MutatingWebhook:
    """A tiny HTTPS admission webhook on 127.0.0.1 that adds a label via JSONPatch."""

    def __init__(self, tls, label_key: str):
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(review)
                obj = review["request"]["object"]
                if (obj.get("metadata") or {}).get("labels"):
                    patch = [{"op": "add", "path": "/metadata/labels/" + label_key.replace("/", "~1"),
                              "value": "true"}]
                else:
                    patch = [{"op": "add", "path": "/metadata/labels", "value": {label_key: "true"}}]
                resp = {
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {
                        "uid": review["request"]["uid"], "allowed": True, "patchType": "JSONPatch",
                        "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                    },
                }
                body = json.dumps(resp).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = tls.server_context().wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.k8s_local_webhook
def test_mutating_webhook_on_loopback_is_called_and_patch_applied(k8s_cluster, k8s_namespace, api, tmp_path):
    core = client.CoreV1Api(api)
    adm = client.AdmissionregistrationV1Api(api)
    tls = k8s_cluster.webhook_tls(tmp_path / "tls")
    marker = f"wh-{uuid.uuid4().hex[:8]}"
    label_key = "graybaggage.test/mutated"
    cfg_name = f"graybaggage-smoke-{marker}"

    with _MutatingWebhook(tls, label_key) as server:
        adm.create_mutating_webhook_configuration({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": cfg_name},
            "webhooks": [{
                "name": "mutate.graybaggage.test",
                "clientConfig": {"url": f"https://127.0.0.1:{server.port}/mutate",
                                 "caBundle": tls.ca_bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["configmaps"], "scope": "Namespaced"}],
                # only this test's namespace AND only objects carrying this test's marker
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": k8s_namespace}},
                "objectSelector": {"matchLabels": {"graybaggage.test/webhook": marker}},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
            }],
        })
        try:
            # the apiserver picks up new webhook configurations asynchronously: retry
            attempt = iter(range(1000))

            def create_and_check():
                cm = core.create_namespaced_config_map(k8s_namespace, client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(name=f"cm-{next(attempt)}",
                                                 labels={"graybaggage.test/webhook": marker}),
                    data={"a": "b"}))
                return (cm.metadata.labels or {}).get(label_key) == "true" and cm

            cm = wait_for(create_and_check, 30, interval=0.5, what="webhook patch applied")
            assert cm.metadata.labels["graybaggage.test/webhook"] == marker
            assert cm.data == {"a": "b"}
            stored = core.read_namespaced_config_map(cm.metadata.name, k8s_namespace)
            assert stored.metadata.labels[label_key] == "true"
            assert server.requests, "webhook server saw no AdmissionReview"
            req = server.requests[-1]["request"]
            assert req["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
            assert req["operation"] == "CREATE" and req["namespace"] == k8s_namespace

            # objectSelector scoping: an unmarked ConfigMap is not sent to the webhook
            seen = len(server.requests)
            plain = core.create_namespaced_config_map(k8s_namespace, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="plain")))
            assert label_key not in (plain.metadata.labels or {})
            assert len(server.requests) == seen
        finally:
            adm.delete_mutating_webhook_configuration(cfg_name)


def test_kubectl_against_kubeconfig(k8s_cluster):
    v = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    assert v["clientVersion"]["gitVersion"].startswith("v1.")
    assert v["serverVersion"]["gitVersion"].startswith("v1.")
    nodes = json.loads(k8s_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert nodes
    if not k8s_cluster.is_external:
        assert v["serverVersion"]["gitVersion"] == "v1.37.2"
        # other tests in the session may add nodes of their own
        node = next(n for n in nodes if n["metadata"]["name"] == "kwok-node-0")
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
    out = k8s_cluster.kubectl("get", "nodes").stdout
    assert "Ready" in out
    # env is usable by subprocesses (KUBECONFIG + PATH incl. bin dir)
    cp = subprocess.run(["kubectl", "get", "ns", "default", "-o", "name"], env=k8s_cluster.env,
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and cp.stdout.strip() == "namespace/default", cp.stderr
