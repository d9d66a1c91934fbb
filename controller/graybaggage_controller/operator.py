"""The controller process: kopf handlers + the mutating webhook, wired to `reconcile.Reconciler`.

    graybaggage-controller [--namespace NS ...] [--kubeconfig PATH] [--webhook-port 9443]
                           [--webhook-host 127.0.0.1] [--no-webhook] [--resync SECONDS]

Handlers (all level-triggered; every pass re-derives everything from the cluster, and runs dry against the
watch cache first, against the API only when it would write: cache.py):
- GrayRelease: watch events of the GrayRelease, of its base Deployment (label graybaggage.io/gray-release),
  its gray Deployment (graybaggage.io/release), its gray pods (graybaggage.io/lane) and the namespace's
  Services; a later pass when the plan asks for one (Plan.requeue, requeue.py); a timer every --resync
  seconds as a safety net. Deletion goes through our own finalizer (graybaggage.io/finalizer, added by the
  controller before it creates anything) that cleans up before letting go, one requeued pass at a time.
- Lane: a timer and watch events refresh its status and the namespace's lane table; deletion (same
  finalizer) removes it from the table first.
- Webhook: mutating, Deployments UPDATE, objectSelector graybaggage.io/gray-release (so unrelated workloads
  never reach it), failurePolicy Ignore, a self-signed CA made at start-up (or --tls-dir with
  ca.crt/tls.crt/tls.key). If the webhook is down, the update goes through unpaused; the controller sees
  the template change on its next pass, pauses the Deployment and pins base Services to the stable pods
  (a Warning event WebhookBypassed), so base traffic still never reaches the new pods.
- Leader election (--leader-elect, leader.py): every replica runs the handlers and the webhook; the handlers
  reconcile only while this process holds the Lease.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import faulthandler
import logging
import os
import signal
import tempfile
from typing import Any

import kopf

from . import desired as d
from . import names as n
from . import kruise as kr_pure
from .cache import (INDEXED, Indexed, Indexes, Passes, index_value, releases_of_deployment, releases_of_pod,
                    releases_of_service)
from .kube import Kube, api_client_from
from .kruise_io import KruiseMode
from .reconcile import Reconciler
from .requeue import Requeue

log = logging.getLogger(__name__)

#: seconds between Kruise mode's level-triggered passes (and manager probes), unless --resync is shorter
KRUISE_RESYNC = 5.0


@dataclasses.dataclass
class Config:
    namespaces: list[str]
    kubeconfig: str | None = None
    context: str | None = None
    resync: float = 60.0                    # the safety-net timer; passes are driven by watch events
    webhook: bool = True
    webhook_host: str = "127.0.0.1"
    webhook_addr: str | None = None
    webhook_port: int = 9443
    webhook_name: str = "graybaggage"
    webhook_service: str | None = None      # "namespace/name[:port]" for in-cluster
    tls_dir: str | None = None
    tls_secret: str | None = None           # "namespace/name": webhook cert shared by all replicas
    liveness: str | None = None             # kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz
    leader_elect: bool = False              # Lease-based: only the leader reconciles (leader.py)
    leader_namespace: str | None = None
    leader_name: str = "graybaggage-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    stats_interval: float = 60.0            # seconds between the "passes in the last ..." INFO lines


class _ConfiguringWebhookServer(kopf.WebhookServer):
    """kopf's server; each time it (re)starts with a client config, write our webhook configuration
    (with a namespaceSelector and objectSelector kopf's managed mode does not offer)."""

    def __init__(self, *, on_config: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_config = on_config

    async def __call__(self, fn):  # type: ignore[override]
        async for client_config in super().__call__(fn):
            await asyncio.get_running_loop().run_in_executor(None, self._on_config, client_config)
            yield client_config


def _post_event(obj: dict, etype: str, reason: str, message: str) -> None:
    if etype == "Warning":
        kopf.warn(obj, reason=reason, message=message)
    else:
        kopf.info(obj, reason=reason, message=message)


def _register_index(registry: kopf.OperatorRegistry, ix: Indexed) -> None:
    """A kopf index of one kind (cache.INDEXED): a copy of each object, by namespace."""
    filters: dict[str, Any] = {}
    if ix.label is not None:
        filters["labels"] = {ix.label: kopf.PRESENT}
    if ix.name is not None:
        filters["when"] = lambda name, _wanted=ix.name, **_: name == _wanted

    async def _index(body: Any, namespace: str, **_: Any) -> dict:
        return index_value(ix, body, namespace)

    kopf.index(ix.group, ix.version, ix.plural, id=ix.index_id, registry=registry, **filters)(_index)


def build_registry(cfg: Config, leading: Any = None) -> tuple[kopf.OperatorRegistry, Reconciler]:
    """`leading()` gates every reconcile (leader election); the webhook answers in every replica."""
    leading = leading or (lambda: True)
    registry = kopf.OperatorRegistry()
    kube = Kube(api_client_from(cfg.kubeconfig, cfg.context))
    rec = Reconciler(kube, events=_post_event)
    G, V = n.GROUP, n.VERSION
    # Kruise mode's passes read the API (not the cache) and probe the manager: every 5 s, or --resync if shorter
    kruise = KruiseMode(kube, rec, resync=min(cfg.resync, KRUISE_RESYNC), leading=leading)
    rec.table_hook = kruise.merge_table

    # watch-fed reads (cache.py): passes run dry against kopf's indexes first, against the API only to write
    indexes = Indexes()
    passes = Passes(kube, indexes)
    dry_rec = passes.dry(rec)
    dry_kruise = passes.dry(kruise)
    dry_kruise.rec = dry_rec
    for ix in INDEXED:
        _register_index(registry, ix)

    def _release_pass(namespace: str, name: str) -> Any:
        def one(kruise_mode: KruiseMode, reconciler: Reconciler) -> Any:
            if kruise_mode.guard_release(namespace, name):   # a Kruise Rollout manages its Deployment: Failed
                return None
            return reconciler.reconcile_release(namespace, name)
        plan = passes.run(lambda: one(dry_kruise, dry_rec), lambda: one(kruise, rec))
        if plan is not None and plan.requeue is not None:
            requeue.after(("release", namespace, name), plan.requeue)
        elif plan is not None and not plan.done and _deleting("GrayRelease", namespace, name):
            requeue.after(("release", namespace, name), 0.5)     # clean-up goes on without a kopf timer
        return plan

    def _lane_pass(namespace: str, name: str) -> bool:
        return bool(passes.run(lambda: dry_rec.reconcile_lane(namespace, name),
                               lambda: rec.reconcile_lane(namespace, name)))

    def _requeued(key: Any) -> None:
        kind, namespace, name = key
        if not leading():
            return
        if kind == "release":
            _release_pass(namespace, name)
        elif not _lane_pass(namespace, name) and _deleting("Lane", namespace, name):
            requeue.after(key, 0.5)

    requeue = Requeue(_requeued)
    passes.log_counts_every(cfg.stats_interval)

    def _deleting(kind: str, namespace: str, name: str) -> bool:
        obj = passes.kube.get(kind, namespace, name) if indexes.ready else None
        return bool(obj and (obj.get("metadata") or {}).get("deletionTimestamp"))

    def _indexed(kind: str, namespace: str) -> list[dict]:
        return indexes.objects(kind, namespace) if indexes.ready else []

    def _releases_and_deployments(namespace: str) -> tuple[list[dict], list[dict]]:
        return _indexed("GrayRelease", namespace), _indexed("Deployment", namespace)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # graybaggage.io/finalizer is ours (reconcile.py adds and removes it); kopf keeps its own name,
        # so its "no handler needs a finalizer" logic can never strip ours
        settings.persistence.finalizer = "kopf.graybaggage.io/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.graybaggage.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kopf.graybaggage.io", key="last-handled-configuration")
        settings.posting.level = logging.INFO
        settings.execution.max_workers = 8
        settings.watching.server_timeout = 120
        settings.networking.request_timeout = 30
        # a Lane or GrayRelease deleted while its timer's pass runs: kopf removes its own finalizer once the timer
        # has exited, and re-checks a timer that did not exit at once only every `cancellation_polling` seconds
        # (default 60: `kubectl delete lane` then took > 20 s in 3 of ~25 loaded test runs, with every thread idle)
        settings.background.cancellation_polling = 1.0
        for ix in INDEXED:       # filtered on the server: only gray pods, only lane-table ConfigMaps are sent
            if ix.label is not None:
                settings.watching.label_selectors[ix.group, ix.version, ix.plural] = ix.label
            if ix.name is not None:
                settings.watching.field_selectors[ix.group, ix.version, ix.plural] = f"metadata.name={ix.name}"
        if cfg.webhook:
            tls = cfg.tls_dir or tempfile.mkdtemp(prefix="graybaggage-webhook-")
            ca, crt, key = (os.path.join(tls, f) for f in ("ca.crt", "tls.crt", "tls.key"))
            if cfg.tls_secret:
                from .leader import shared_webhook_tls
                secret_ns, _, secret_name = cfg.tls_secret.partition("/")
                shared_webhook_tls(kube, secret_ns, secret_name, tls, [cfg.webhook_host, "localhost"])
            if not all(os.path.exists(p) for p in (ca, crt, key)):
                from .certs import self_signed
                self_signed(tls, [cfg.webhook_host] + (["localhost"] if cfg.webhook_host != "localhost" else []))

            service = None
            if cfg.webhook_service:
                svc_ns, _, rest = cfg.webhook_service.partition("/")
                svc_name, _, svc_port = rest.partition(":")
                service = {"namespace": svc_ns, "name": svc_name, "port": int(svc_port or 443)}

            def on_config(client_config: dict) -> None:
                body = d.webhook_configuration(cfg.webhook_name, client_config, cfg.namespaces, service=service)
                rec.apply_webhook_configuration(body)
                log.info("webhook configuration %s -> %s", cfg.webhook_name, client_config.get("url"))

            settings.admission.server = _ConfiguringWebhookServer(
                on_config=on_config, addr=cfg.webhook_addr or cfg.webhook_host, port=cfg.webhook_port,
                host=cfg.webhook_host, certfile=crt, pkeyfile=key, cafile=ca)
            settings.admission.managed = None

    def _attached(kwargs: dict) -> bool:
        indexes.attach(kwargs)      # kopf hands its indexes to every handler (filled before the first call)
        return bool(leading())

    # ---- GrayRelease: its own events, its base and gray Deployments', its gray pods', the namespace's Services';
    # Plan.requeue (requeue.py) for timed pauses and clean-up steps; a timer every --resync as a safety net
    @kopf.timer(G, V, n.RELEASES, interval=cfg.resync, registry=registry)
    def _release_timer(namespace: str, name: str, **kwargs: Any) -> None:
        if _attached(kwargs):
            _release_pass(namespace, name)

    @kopf.on.event(G, V, n.RELEASES, registry=registry)
    def _release_event(type: str, namespace: str, name: str, **kwargs: Any) -> None:
        if not _attached(kwargs):
            return
        if type == "DELETED":
            rec.sync_table(namespace)
        else:
            _release_pass(namespace, name)    # a deleting one: requeued until clean-up is done (timers stop)

    # Deployments: a base (targeted by name, so one that appears after its release counts), a gray one (its owner)
    @kopf.on.event("apps", "v1", "deployments", registry=registry)
    def _deployment_event(namespace: str, name: str, labels: dict, **kwargs: Any) -> None:
        if _attached(kwargs):
            for release in releases_of_deployment(name, dict(labels), _indexed("GrayRelease", namespace)):
                _release_pass(namespace, release)

    # gray pods: "no gray pod left" is the step before base Services are unpinned
    @kopf.on.event("", "v1", "pods", labels={n.LANE_LABEL: kopf.PRESENT}, registry=registry)
    def _gray_pod_event(namespace: str, labels: dict, **kwargs: Any) -> None:
        if _attached(kwargs):
            for name in releases_of_pod(dict(labels), *_releases_and_deployments(namespace)):
                _release_pass(namespace, name)

    # Services: lane Services follow them, and base Services are pinned
    @kopf.on.event("", "v1", "services", registry=registry)
    def _service_event(namespace: str, body: Any, **kwargs: Any) -> None:
        if _attached(kwargs):
            for name in releases_of_service(dict(body), *_releases_and_deployments(namespace)):
                _release_pass(namespace, name)

    # ---- Lane
    @kopf.timer(G, V, n.LANES, interval=cfg.resync, registry=registry)
    def _lane_timer(namespace: str, name: str, **kwargs: Any) -> None:
        if _attached(kwargs):
            _lane_pass(namespace, name)

    @kopf.on.event(G, V, n.LANES, registry=registry)
    def _lane_event(type: str, namespace: str, name: str, meta: Any, **kwargs: Any) -> None:
        if not _attached(kwargs):
            return
        if type == "DELETED":
            rec.sync_table(namespace)
        elif not _lane_pass(namespace, name) and meta.get("deletionTimestamp"):
            requeue.after(("lane", namespace, name), 0.5)     # released once the table and entries are clean

    # ---- Kruise mode (kruise.py, kruise_io.py): served when the Rollout CRD is (kopf picks the resources up
    # when their CRDs appear); only watch events, so nothing of ours is written on Kruise's objects
    kruise_namespaces: set[str] = set()

    def _kruise_pass(namespace: str) -> None:
        if leading() and namespace:
            kruise_namespaces.add(namespace)
            kruise.poke(namespace)

    @kopf.on.event(kr_pure.GROUP, "v1beta1", "rollouts", registry=registry)
    def _kruise_rollout_event(namespace: str, **kwargs: Any) -> None:
        indexes.attach(kwargs)
        _kruise_pass(namespace)

    @kopf.on.event(kr_pure.GROUP, "v1alpha1", "trafficroutings", registry=registry)
    def _kruise_tr_event(namespace: str, **_: Any) -> None:
        _kruise_pass(namespace)

    @kopf.on.event("apps", "v1", "deployments", labels={kr_pure.CANARY_DEPLOYMENT_LABEL: kopf.PRESENT},
                   registry=registry)
    def _kruise_canary_event(namespace: str, **_: Any) -> None:
        _kruise_pass(namespace)

    # a base Deployment Kruise's webhook just paused on a new template: pin before the canary's first pod
    @kopf.on.event("apps", "v1", "deployments", labels={kr_pure.STABLE_REVISION_LABEL: kopf.PRESENT},
                   registry=registry)
    def _kruise_base_event(namespace: str, **_: Any) -> None:
        _kruise_pass(namespace)

    # base ReplicaSets: the pin follows the newest ready one during promotion
    @kopf.on.event("apps", "v1", "replicasets", registry=registry,
                   when=lambda namespace, **_: namespace in kruise_namespaces)
    def _kruise_rs_event(namespace: str, **_: Any) -> None:
        _kruise_pass(namespace)

    # ---- webhook
    if cfg.webhook:
        @kopf.on.mutate("apps", "v1", "deployments", id=n.WEBHOOK_HANDLER_ID, operations=["UPDATE"],
                        labels={n.RELEASE_LABEL: kopf.PRESENT}, ignore_failures=True, registry=registry)
        async def _pause_base(body: Any, patch: kopf.Patch, **_: Any) -> None:
            # async on purpose: it runs on the event loop and never waits for a worker thread, since
            # every worker may be busy in a reconcile that is itself waiting on this very webhook call
            mutation = d.webhook_patch(dict(body))
            if mutation:      # exactly the tested pure patch (test_desired), nothing written by hand here
                for section, fields in mutation.items():
                    patch.setdefault(section, {}).update(fields)
                log.info("paused Deployment %s/%s (template %s is not the stable one)",
                         body.get("metadata", {}).get("namespace"), body.get("metadata", {}).get("name"),
                         d.template_hash((body.get("spec") or {}).get("template")))

    rec.kruise = kruise      # type: ignore[attr-defined]  (tests and the CLI reach Kruise mode through rec)
    rec.passes = passes      # type: ignore[attr-defined]  (tests count dry and API passes)
    return registry, rec


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="graybaggage-controller", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="watch only this namespace (repeatable); default: cluster-wide")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    p.add_argument("--resync", type=float, default=float(os.environ.get("GRAYBAGGAGE_RESYNC_SECONDS", "60")),
                   help="seconds between safety-net passes per object (default 60; passes are driven by watch "
                        "events and by the plan; Kruise mode passes every 5 s, or this if shorter)")
    p.add_argument("--no-webhook", dest="webhook", action="store_false")
    p.add_argument("--webhook-host", default="127.0.0.1", help="host the API server uses to reach the webhook")
    p.add_argument("--webhook-addr", default=None, help="listen address (default: --webhook-host)")
    p.add_argument("--webhook-port", type=int, default=9443)
    p.add_argument("--webhook-name", default="graybaggage", help="MutatingWebhookConfiguration name")
    p.add_argument("--webhook-service", default=None,
                   help="NAMESPACE/NAME[:PORT] of the Service in front of the webhook (in-cluster); "
                        "default: clientConfig.url https://<webhook-host>:<port>")
    p.add_argument("--tls-dir", default=None, help="dir with ca.crt, tls.crt, tls.key (default: self-signed)")
    p.add_argument("--tls-secret", default=None, metavar="NAMESPACE/NAME",
                   help="keep the webhook certificate in this Secret, so every replica serves the same one")
    p.add_argument("--liveness", default=None, metavar="URL",
                   help="kopf's health endpoint for probes, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--leader-elect", action="store_true",
                   help="Lease-based leader election: only the leader reconciles, every replica serves the webhook")
    p.add_argument("--leader-elect-resource-name", default="graybaggage-controller", help="the Lease's name")
    p.add_argument("--leader-elect-resource-namespace", default=None,
                   help="the Lease's namespace (default: $POD_NAMESPACE, else the service account's)")
    p.add_argument("--leader-elect-lease-duration", type=float, default=15.0,
                   help="seconds a standby waits after the last renewal before taking over (default 15)")
    p.add_argument("--leader-elect-renew-deadline", type=float, default=10.0,
                   help="seconds the leader keeps trying to renew before it stops reconciling (default 10)")
    p.add_argument("--leader-elect-retry-period", type=float, default=2.0,
                   help="seconds between acquire/renew attempts (default 2)")
    p.add_argument("--stats-interval", type=float,
                   default=float(os.environ.get("GRAYBAGGAGE_STATS_SECONDS", "60")),
                   help="seconds between INFO lines counting the passes served from the cache and against the API")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="kopf's debug log, and its line per handler call (otherwise only its warnings and errors)")
    a = p.parse_args(argv)
    kopf.configure(verbose=a.verbose, log_prefix=True)
    if not a.verbose:   # "Handler ... succeeded" per event and timer: 40 lines/s at 200 releases, and their cost
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return Config(namespaces=a.namespace, kubeconfig=a.kubeconfig, context=a.context, resync=a.resync,
                  webhook=a.webhook, webhook_host=a.webhook_host, webhook_addr=a.webhook_addr,
                  webhook_port=a.webhook_port, webhook_name=a.webhook_name, tls_dir=a.tls_dir,
                  webhook_service=a.webhook_service, tls_secret=a.tls_secret, liveness=a.liveness,
                  leader_elect=a.leader_elect, leader_namespace=a.leader_elect_resource_namespace,
                  leader_name=a.leader_elect_resource_name, lease_duration=a.leader_elect_lease_duration,
                  renew_deadline=a.leader_elect_renew_deadline, retry_period=a.leader_elect_retry_period,
                  stats_interval=a.stats_interval)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    faulthandler.register(signal.SIGUSR1)      # `kill -USR1 <pid>`: every thread's stack on stderr
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig   # for kopf's own login
        from kubernetes.config import kube_config   # which read $KUBECONFIG at import, before we parsed it
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = cfg.kubeconfig
    elector = None
    if cfg.leader_elect:
        from .leader import LeaderElector, default_namespace
        elector = LeaderElector(Kube(api_client_from(cfg.kubeconfig, cfg.context), timeout=cfg.renew_deadline / 2),
                                cfg.leader_namespace or default_namespace(), cfg.leader_name,
                                lease_duration=cfg.lease_duration, renew_deadline=cfg.renew_deadline,
                                retry_period=cfg.retry_period)
    registry, _rec = build_registry(cfg, leading=elector.is_leader if elector else None)

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    if elector is not None:
        @kopf.on.probe(id="leader", registry=registry)
        def _leader_probe(**_: Any) -> Any:
            return elector.status()       # raises (liveness fails) if the election thread died

        elector.start()
    try:
        kopf.run(registry=registry, standalone=True, clusterwide=not cfg.namespaces,
                 namespaces=cfg.namespaces or (), liveness_endpoint=cfg.liveness)
    finally:
        if elector is not None:
            elector.stop(release=True)     # a standby takes over at its next retry, not after the lease


if __name__ == "__main__":
    main()
