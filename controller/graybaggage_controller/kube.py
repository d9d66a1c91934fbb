"""A thin REST layer over `kubernetes.client.ApiClient` that speaks plain JSON dicts.

Plain dicts keep the pure builders free of generated model classes (and of their renamed fields);
every write carries the field manager `graybaggage`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any, Callable, TypeVar
from urllib.parse import quote

from . import names as n

log = logging.getLogger(__name__)

MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"

GW_GROUP = "gateway.networking.k8s.io"
KRUISE_GROUP = "rollouts.kruise.io"

#: every kind's collection path (`{ns}`: the namespace; cluster-scoped kinds have none). The only place the
#: controller spells a REST path of a kind (API discovery paths aside).
_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Event": "/api/v1/namespaces/{ns}/events",
    "Lease": "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    "GrayRelease": f"/apis/{n.GROUP}/{n.VERSION}/namespaces/{{ns}}/{n.RELEASES}",
    "Lane": f"/apis/{n.GROUP}/{n.VERSION}/namespaces/{{ns}}/{n.LANES}",
    "MutatingWebhookConfiguration": "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    "HTTPRoute": f"/apis/{GW_GROUP}/v1/namespaces/{{ns}}/httproutes",
    "Gateway": f"/apis/{GW_GROUP}/v1/namespaces/{{ns}}/gateways",
    "GatewayClass": f"/apis/{GW_GROUP}/v1/gatewayclasses",
    "Ingress": "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
    # Kruise Rollout serves two versions; kruise_io picks the one discovery says is served
    "Rollout": f"/apis/{KRUISE_GROUP}/v1beta1/namespaces/{{ns}}/rollouts",
    "Rollout/v1alpha1": f"/apis/{KRUISE_GROUP}/v1alpha1/namespaces/{{ns}}/rollouts",
    "TrafficRouting": f"/apis/{KRUISE_GROUP}/v1alpha1/namespaces/{{ns}}/trafficroutings",
}


def path_template(kind: str) -> str:
    """The collection path of `kind` with `{ns}` unfilled (for callers that format it themselves)."""
    return _PATHS[kind]


class KubeError(Exception):
    """An API answer outside 2xx; `.status` is the HTTP status, `.body` the parsed Status object if any."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class NotFound(KubeError):
    """404: the object, or its whole API (a CRD not installed), is not there."""


class Conflict(KubeError):
    """409: a write carried a stale resourceVersion, or a create found the name taken."""


_ERRORS: dict[int, type[KubeError]] = {404: NotFound, 409: Conflict}


def error_for(status: int, message: str, body: Any = None) -> KubeError:
    """The KubeError (subclass) for an HTTP status: NotFound for 404, Conflict for 409, else KubeError."""
    return _ERRORS.get(status, KubeError)(status, message, body)


T = TypeVar("T")


def retry_on_conflict(fn: Callable[[], T], attempts: int = 5, *, delay: float = 0.01, factor: float = 1.0,
                      jitter: float = 0.1, retriable: tuple[type[BaseException], ...] = (Conflict,),
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `fn` (which must read the object afresh, build the change and write it) until it returns without a
    Conflict, at most `attempts` times; return what it returned. Modelled on client-go's
    `retry.RetryOnConflict(retry.DefaultRetry, fn)`: 5 attempts, 10 ms apart (+ up to 10 % jitter, x `factor`
    each time); any other error is raised at once; when every attempt conflicted, the last Conflict is raised.
    `retriable` widens what is retried (like client-go's `retry.OnError`), e.g. `(Conflict, NotFound)` for a
    write racing a delete."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    wait = delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retriable:
            if attempt == attempts:
                raise
        sleep(wait * (1 + jitter * random.random()))
        wait *= factor
    raise AssertionError("unreachable")  # pragma: no cover


class Kube:
    def __init__(self, api_client: Any, timeout: float = 15.0):
        self.api = api_client
        self.timeout = timeout

    # ---- raw
    def request(self, method: str, path: str, body: Any = None, query: dict | None = None,
                content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        q = [(k, v) for k, v in (query or {}).items() if v is not None]
        if method in ("POST", "PUT", "PATCH"):
            q.append(("fieldManager", n.FIELD_MANAGER))
        if hasattr(self.api, "param_serialize"):      # kubernetes >= 33 (new generator)
            args = self.api.param_serialize(method=method, resource_path=path, query_params=q or None,
                                            header_params=headers, body=body, auth_settings=["BearerToken"])
            resp = self.api.call_api(*args, _request_timeout=self.timeout)
            resp.read()
            status, data = resp.status, resp.data
        else:                                         # older generated clients
            from kubernetes.client.rest import ApiException
            try:
                resp = self.api.call_api(path, method, query_params=q, header_params=headers, body=body,
                                         auth_settings=["BearerToken"], _preload_content=False,
                                         _return_http_data_only=True, _request_timeout=self.timeout)
                status, data = resp.status, resp.data
            except ApiException as e:
                status, data = e.status, (e.body or b"")
        if isinstance(data, str):
            data = data.encode()
        parsed: Any = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data.decode(errors="replace")
        if not 200 <= status <= 299:
            message = parsed.get("message") if isinstance(parsed, dict) else str(parsed)
            raise error_for(status, message or "", parsed)
        return parsed

    @staticmethod
    def path(kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        p = _PATHS[kind].format(ns=quote(namespace or ""))
        if name:
            p += "/" + quote(name)
        if sub:
            p += "/" + sub
        return p

    # ---- verbs
    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except NotFound:
            return None

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict]:
        body = self.request("GET", self.path(kind, namespace), query={"labelSelector": label_selector})
        items = body.get("items") or []
        api_version = body.get("apiVersion")
        item_kind = kind
        for it in items:
            it.setdefault("apiVersion", api_version)
            it.setdefault("kind", item_kind)
        return items

    def create(self, kind: str, namespace: str | None, body: dict) -> dict:
        return self.request("POST", self.path(kind, namespace), body=body)

    def replace(self, kind: str, namespace: str | None, name: str, body: dict) -> dict:
        return self.request("PUT", self.path(kind, namespace, name), body=body)

    def patch(self, kind: str, namespace: str | None, name: str, body: Any, content_type: str = MERGE,
              sub: str | None = None) -> dict:
        return self.request("PATCH", self.path(kind, namespace, name, sub), body=body, content_type=content_type)

    def delete(self, kind: str, namespace: str | None, name: str, propagation: str = "Background",
               resource_version: str | None = None) -> bool:
        body: dict = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            self.request("DELETE", self.path(kind, namespace, name), body=body)
            return True
        except NotFound:
            return False


def api_client_from(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient from a kubeconfig path, $KUBECONFIG / ~/.kube/config, or the in-cluster service account."""
    from kubernetes import client, config

    if kubeconfig or context:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def read_lane_table(kube_or_api: Any, namespace: str) -> dict | None:
    """The lane table the controller published in `namespace` (parsed `lanes.json`), or None."""
    kube = kube_or_api if isinstance(kube_or_api, Kube) else Kube(kube_or_api)
    cm = kube.get("ConfigMap", namespace, n.TABLE_CONFIGMAP)
    if not cm:
        return None
    text = (cm.get("data") or {}).get(n.TABLE_KEY)
    return json.loads(text) if text else None
