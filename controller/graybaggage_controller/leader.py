"""What the controller's replicas must agree on: who leads (a Lease) and the webhook's certificate (a Secret).

Leader election (`LeaderElector`) follows client-go's `leaderelection` on a `coordination.k8s.io/v1` Lease
in the controller's namespace, holder identity `<pod name or hostname>_<pid>`:

- candidate: every `retry_period` s it GETs the Lease and takes it (a PUT carrying the resourceVersion it
  read, so two candidates can never both win) when it is free (no holder: released) or when its record
  (holder, renewTime) has not changed for the holder's `leaseDurationSeconds`, measured on the
  candidate's own monotonic clock from when it first saw that record (no clock-skew assumptions);
- leader: renews every `retry_period` s; if no renewal succeeded for `renew_deadline` s (< lease
  duration), or it sees another holder, it stops leading at once, before any candidate may take over, and
  becomes a candidate again;
- `stop()` (SIGTERM, rolling update) releases the Lease (holder cleared, duration 1 s) so a standby takes
  over at its next retry instead of waiting out the lease.

A SIGKILLed leader is replaced `lease_duration` s after its last renewal, plus at most one `retry_period`.

Only the leader reconciles (the operator's handlers ask `is_leader()`); every replica serves the mutating
webhook, which is stateless. Why not kopf peering: operators of equal priority both keep processing (kopf
only logs a warning), and a new higher-priority peer starts processing before the old one has seen it and
frozen, so a rolling update has a window with two active controllers. A Lease has at most one holder.

Every replica must present the same webhook certificate, since the webhook configuration holds one
caBundle and the Service spreads calls over the replicas: `shared_webhook_tls` keeps it in a Secret.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import names as n
from .kube import Conflict, Kube, NotFound, retry_on_conflict

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
TLS_FILES = ("ca.crt", "tls.crt", "tls.key")


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


def default_namespace() -> str:
    """The controller's own namespace: $POD_NAMESPACE, the in-cluster service account's, else graybaggage-system."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return Path(SA_NAMESPACE_FILE).read_text().strip() or "graybaggage-system"
    except OSError:
        return "graybaggage-system"


def _micro_time() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str | None = None, *,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry-period < renew-deadline < lease-duration")
        self.kube, self.namespace, self.name = kube, namespace, name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observed: tuple | None = None      # (holder, renewTime) last seen
        self._observed_at = 0.0                  # our clock when that record was first seen
        self._last_renew = 0.0

    # ---- public
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "LeaderElector":
        log.info("leader election: lease %s/%s, identity %s (duration %ss, renew deadline %ss, retry %ss)",
                 self.namespace, self.name, self.identity, self.lease_duration, self.renew_deadline,
                 self.retry_period)
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def wait_leading(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.retry_period + 10)
        was_leading = self._leading.is_set()
        self._leading.clear()
        if release and was_leading:
            self._release()

    def status(self) -> dict[str, Any]:
        if not self.alive() and not self._stop.is_set():
            raise RuntimeError("the leader-election thread is not running")
        return {"identity": self.identity, "leading": self.is_leader()}

    # ---- loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                renewed = self._try_acquire_or_renew()
            except Exception:                   # never let the thread die on an odd response
                log.warning("leader election: lease %s/%s not reachable", self.namespace, self.name, exc_info=True)
                renewed = False
            now = self.clock()
            if renewed:
                self._last_renew = now
                if not self._leading.is_set():
                    log.info("leader election: %s became the leader (lease %s/%s)", self.identity,
                             self.namespace, self.name)
                    self._leading.set()
            elif self._leading.is_set():
                taken = bool(self._observed and self._observed[0] not in ("", self.identity))
                if taken or now - self._last_renew >= self.renew_deadline:
                    log.error("leader election: %s lost the lease %s/%s (%s); stops reconciling", self.identity,
                              self.namespace, self.name, f"now held by {self._observed[0]}" if taken else
                              f"no renewal for {now - self._last_renew:.1f}s")
                    self._leading.clear()
            self._stop.wait(self.retry_period)

    def _try_acquire_or_renew(self) -> bool:
        try:
            lease = self.kube.request("GET", Kube.path("Lease", self.namespace, self.name))
        except NotFound:
            lease = None
        now = _micro_time()
        duration = int(math.ceil(self.lease_duration))
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "labels": {n.MANAGED_BY_LABEL: n.MANAGED_BY}},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self.kube.request("POST", Kube.path("Lease", self.namespace), body=body)
            except Conflict:
                return False
            self._observed, self._observed_at = (self.identity, now), self.clock()
            return True
        spec = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        if holder and holder != self.identity:
            held_for = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if self.clock() < self._observed_at + held_for:
                return False                    # someone else holds a live lease
            log.info("leader election: lease held by %s expired (no renewal seen for %.1fs)", holder,
                     self.clock() - self._observed_at)
        if holder != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=duration, renewTime=now)
        lease["spec"] = spec
        try:
            self.kube.request("PUT", Kube.path("Lease", self.namespace, self.name), body=lease)
        except Conflict:                        # someone else wrote it first: not ours this round
            return False
        self._observed, self._observed_at = (self.identity, now), self.clock()
        return True

    def _release(self) -> None:
        try:
            lease = self.kube.request("GET", Kube.path("Lease", self.namespace, self.name))
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec.pop("holderIdentity", None)
            spec.update(leaseDurationSeconds=1, renewTime=_micro_time())
            lease["spec"] = spec
            self.kube.request("PUT", Kube.path("Lease", self.namespace, self.name), body=lease)
            log.info("leader election: %s released the lease %s/%s", self.identity, self.namespace, self.name)
        except Exception:
            log.warning("leader election: could not release the lease (it expires by itself)", exc_info=True)


# ---------------------------------------------------------------------------------------------- webhook TLS

def _usable(data: dict[str, str], host: str, min_valid_days: float) -> bool:
    if not all(data.get(k) for k in TLS_FILES):
        return False
    try:
        import ipaddress

        from cryptography import x509
        cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
        left = cert.not_valid_after_utc - _dt.datetime.now(_dt.timezone.utc)
        if left < _dt.timedelta(days=min_valid_days):
            return False
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        try:
            return ipaddress.ip_address(host) in sans.get_values_for_type(x509.IPAddress)
        except ValueError:
            return host in sans.get_values_for_type(x509.DNSName)
    except Exception:
        return False


def shared_webhook_tls(kube: Kube, namespace: str, name: str, directory: str, hosts: list[str],
                       min_valid_days: float = 30) -> None:
    """Write ca.crt/tls.crt/tls.key from Secret `namespace/name` into `directory`.

    When the Secret is missing or empty (the kustomization ships it empty), or its certificate expires
    within `min_valid_days` or does not name `hosts[0]`, a new self-signed pair is made and stored (a write
    carrying the resourceVersion read; whoever loses a race reads the winner's). So every replica, and every
    restart, presents the same CA, and a restart in the last month of validity renews it.
    """
    from .certs import self_signed

    def attempt() -> None:
        try:
            secret = kube.request("GET", Kube.path("Secret", namespace, name))
        except NotFound:
            secret = None
        data = (secret or {}).get("data") or {}
        if _usable(data, hosts[0], min_valid_days):
            out = Path(directory)
            out.mkdir(parents=True, exist_ok=True)
            for f in TLS_FILES:
                (out / f).write_bytes(base64.b64decode(data[f]))
            os.chmod(out / "tls.key", 0o600)
            return
        self_signed(directory, hosts)
        fresh = {f: base64.b64encode((Path(directory) / f).read_bytes()).decode() for f in TLS_FILES}
        if secret is None:
            kube.request("POST", Kube.path("Secret", namespace), body={
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": fresh,
                "metadata": {"name": name, "namespace": namespace, "labels": {n.MANAGED_BY_LABEL: n.MANAGED_BY}}})
        else:
            secret["data"] = {**data, **fresh}
            kube.request("PUT", Kube.path("Secret", namespace, name), body=secret)
        log.info("webhook certificate for %s stored in Secret %s/%s", hosts[0], namespace, name)
    try:    # whoever loses a race (409) reads the winner's
        retry_on_conflict(attempt, attempts=5)
    except Conflict as e:
        raise RuntimeError(f"could not store the webhook certificate in Secret {namespace}/{name} (conflicts)") from e
