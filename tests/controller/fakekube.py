"""An in-memory stand-in for the Kubernetes API (same methods as graybaggage_controller.kube.Kube) with a
tiny Deployment controller, garbage collector and the mutating webhook, so the reconcile logic can be
exercised end to end in milliseconds. The real-control-plane tests (test_live.py) prove the same flows
against kube-apiserver + kube-controller-manager + kwok."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from graybaggage_controller import desired as d
from graybaggage_controller import names as n
from graybaggage_controller.kube import KubeError

_uid = itertools.count(1)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(target: dict, ops: list[dict]) -> dict:
    out = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].strip("/").split("/")]
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        if op["op"] in ("add", "replace"):
            cur[parts[-1]] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            cur.pop(parts[-1], None)
    return out


class FakeKube:
    def __init__(self, webhook: bool = True):
        self.objs: dict[tuple[str, str | None, str], dict] = {}
        self.rv = itertools.count(1)
        self.webhook = webhook
        self.rs_history: list[tuple[str, str]] = []     # (deployment, template hash) of every RS created

    # ---- API surface used by the controller
    def get(self, kind, namespace, name):
        o = self.objs.get((kind, namespace, name))
        return copy.deepcopy(o) if o else None

    def list(self, kind, namespace, label_selector=None):
        sel = dict(x.split("=", 1) for x in label_selector.split(",")) if label_selector else {}
        out = []
        for (k, ns, _), o in sorted(self.objs.items(), key=lambda kv: kv[0][2]):
            if k == kind and (namespace is None or ns == namespace) and all(
                    d.labels_of(o).get(a) == b for a, b in sel.items()):
                out.append(copy.deepcopy(o))
        return out

    def create(self, kind, namespace, body):
        body = copy.deepcopy(body)
        name = body["metadata"]["name"]
        if (kind, namespace, name) in self.objs:
            raise KubeError(409, "already exists")
        m = body["metadata"]
        m.update(uid=f"uid-{next(_uid)}", resourceVersion=str(next(self.rv)), generation=1,
                 creationTimestamp=f"2026-01-01T00:00:{len(self.objs):02d}Z", namespace=namespace)
        body.setdefault("kind", kind)
        self.objs[(kind, namespace, name)] = body
        return copy.deepcopy(body)

    def _store(self, kind, namespace, name, new, old):
        if kind == "Deployment" and self.webhook:
            mutation = d.webhook_patch(new)
            if mutation:
                new = merge_patch(new, mutation)
        if (new.get("spec") != old.get("spec")):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = str(next(self.rv))
        self.objs[(kind, namespace, name)] = new
        return copy.deepcopy(new)

    def replace(self, kind, namespace, name, body):
        old = self.objs.get((kind, namespace, name))
        if old is None:
            raise KubeError(404, "not found")
        rv = body["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise KubeError(409, "conflict")
        new = copy.deepcopy(body)
        new["metadata"]["uid"] = old["metadata"]["uid"]
        new["status"] = old.get("status", {})
        return self._store(kind, namespace, name, new, old)

    def patch(self, kind, namespace, name, body, content_type="application/merge-patch+json", sub=None):
        old = self.objs.get((kind, namespace, name))
        if old is None:
            raise KubeError(404, "not found")
        if sub == "status":
            new = copy.deepcopy(old)
            new["status"] = merge_patch(old.get("status") or {}, body.get("status") or {})
            self.objs[(kind, namespace, name)] = new
            return copy.deepcopy(new)
        rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise KubeError(409, "conflict")
        if isinstance(body, list):
            new = json_patch(old, body)
        else:
            new = merge_patch(old, body)
        new["status"] = old.get("status", {})
        out = self._store(kind, namespace, name, new, old)
        self._maybe_finalize(kind, namespace, name)
        return out

    def delete(self, kind, namespace, name, propagation="Background", resource_version=None):
        o = self.objs.get((kind, namespace, name))
        if o is None:
            return False
        if o["metadata"].get("finalizers"):
            o["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
            return True
        del self.objs[(kind, namespace, name)]
        self._gc()
        return True

    # ---- helpers for tests
    def remove_finalizer(self, kind, namespace, name):
        o = self.objs[(kind, namespace, name)]
        o["metadata"]["finalizers"] = []
        self._maybe_finalize(kind, namespace, name)

    def _maybe_finalize(self, kind, namespace, name):
        o = self.objs.get((kind, namespace, name))
        if o and o["metadata"].get("deletionTimestamp") and not o["metadata"].get("finalizers"):
            del self.objs[(kind, namespace, name)]
            self._gc()

    def _gc(self):
        while True:
            uids = {o["metadata"]["uid"] for o in self.objs.values()}
            dead = [key for key, o in self.objs.items()
                    if o["metadata"].get("ownerReferences")
                    and not any(r["uid"] in uids for r in o["metadata"]["ownerReferences"])]
            if not dead:
                return
            for key in dead:
                del self.objs[key]

    def simulate(self):
        """One pass of a Deployment controller + ReplicaSet controller + kubelet (pods ready at once)."""
        for (kind, ns, name), dep in list(self.objs.items()):
            if kind != "Deployment":
                continue
            spec = dep["spec"]
            h = d.template_hash(spec["template"])
            rss = [o for (k, _, _), o in self.objs.items() if k == "ReplicaSet"
                   and any(r["uid"] == dep["metadata"]["uid"] for r in o["metadata"].get("ownerReferences") or [])]
            current = next((rs for rs in rss if d.template_hash(d.replicaset_template(rs)) == h), None)
            if current is None and (not spec.get("paused") or not rss):
                tmpl = copy.deepcopy(spec["template"])
                tmpl.setdefault("metadata", {}).setdefault("labels", {})[n.POD_TEMPLATE_HASH] = h
                rs = {"kind": "ReplicaSet", "metadata": {
                    "name": f"{name}-{h}", "labels": dict(tmpl["metadata"]["labels"]),
                    "annotations": {"deployment.kubernetes.io/revision": str(len(rss) + 1)},
                    "ownerReferences": [{"uid": dep["metadata"]["uid"], "kind": "Deployment", "name": name}]},
                    "spec": {"replicas": 0, "selector": {"matchLabels": {**spec["selector"]["matchLabels"],
                                                                         n.POD_TEMPLATE_HASH: h}},
                             "template": tmpl}}
                current = self.create("ReplicaSet", ns, rs)
                self.rs_history.append((name, h))
                rss.append(current)
            if not spec.get("paused"):
                # a rolling update with maxSurge 1, maxUnavailable 0, one pod per pass
                cur = self.objs[("ReplicaSet", ns, current["metadata"]["name"])]
                olds = [self.objs[("ReplicaSet", ns, rs["metadata"]["name"])] for rs in rss
                        if rs["metadata"]["name"] != current["metadata"]["name"]]
                total = cur["spec"]["replicas"] + sum(o["spec"]["replicas"] for o in olds)
                if total > spec["replicas"] and any(o["spec"]["replicas"] for o in olds):
                    next(o for o in olds if o["spec"]["replicas"])["spec"]["replicas"] -= 1
                elif cur["spec"]["replicas"] < spec["replicas"]:
                    cur["spec"]["replicas"] += 1
                elif cur["spec"]["replicas"] > spec["replicas"]:
                    cur["spec"]["replicas"] = spec["replicas"]
            elif current is not None and all(
                    self.objs[("ReplicaSet", ns, rs["metadata"]["name"])]["spec"]["replicas"] == 0 for rs in rss):
                self.objs[("ReplicaSet", ns, current["metadata"]["name"])]["spec"]["replicas"] = spec["replicas"]
            total = updated = 0
            for rs in rss:
                rso = self.objs[("ReplicaSet", ns, rs["metadata"]["name"])]
                pods = [o for (k, _, _), o in self.objs.items() if k == "Pod" and any(
                    r["uid"] == rso["metadata"]["uid"] for r in o["metadata"].get("ownerReferences") or [])]
                for i in range(len(pods), rso["spec"]["replicas"]):
                    self.create("Pod", ns, {"metadata": {
                        "name": f"{rso['metadata']['name']}-{i}-{next(_uid)}",
                        "labels": dict(rso["spec"]["template"]["metadata"]["labels"]),
                        "ownerReferences": [{"uid": rso["metadata"]["uid"], "kind": "ReplicaSet"}]},
                        "spec": rso["spec"]["template"]["spec"]})
                for p in pods[rso["spec"]["replicas"]:]:
                    del self.objs[("Pod", ns, p["metadata"]["name"])]
                count = rso["spec"]["replicas"]
                total += count
                if current is not None and rso["metadata"]["name"] == current["metadata"]["name"]:
                    updated = count
            dep["status"] = {"observedGeneration": dep["metadata"]["generation"], "replicas": total,
                             "updatedReplicas": updated,
                             "availableReplicas": total, "readyReplicas": total}

    def pods(self, ns, **labels):
        return self.list("Pod", ns, ",".join(f"{k}={v}" for k, v in labels.items()) or None)
