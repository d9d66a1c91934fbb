"""All graybaggage configuration, read from the environment in this one module.

Precedence: explicit arguments (to :func:`graybaggage.instrument`) > environment > defaults.
A bad value never stops a service: it is logged once and the default is used.
The README's "Turn it on" table is generated from the same names; keep them in sync.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping

from graybaggage.lane import BASE, check_lane, parse_allow_list

_logger = logging.getLogger(__name__)

GRAYBAGGAGE_HEADER = "GRAYBAGGAGE_HEADER"
"""Lane header name (lowercase on the wire). Also the baggage key. Default ``x-mse-tag``."""
GRAYBAGGAGE_LANES = "GRAYBAGGAGE_LANES"
"""Comma-separated allow-list of lane names. Empty: any valid DNS-1123 label is accepted."""
GRAYBAGGAGE_LANE = "GRAYBAGGAGE_LANE"
"""The lane this instance serves. Falls back to ``MSE_ALICLOUD_SERVICE_TAG``, then ``base``."""
MSE_ALICLOUD_SERVICE_TAG = "MSE_ALICLOUD_SERVICE_TAG"
"""MSE's name for the instance lane; read when ``GRAYBAGGAGE_LANE`` is unset."""
GRAYBAGGAGE_MODE = "GRAYBAGGAGE_MODE"
"""``auto`` (default), ``lanes`` (lean hooks, no spans) or ``tracing`` (compose with OTel contrib)."""
GRAYBAGGAGE_THREADS = "GRAYBAGGAGE_THREADS"
"""Carry the lane into threads and thread pools (OTel threading instrumentation). Default on."""
GRAYBAGGAGE_ROUTING = "GRAYBAGGAGE_ROUTING"
"""Re-route outbound calls by the lane table. Default on (a no-op while the table is empty)."""
GRAYBAGGAGE_DISABLED_INTEGRATIONS = "GRAYBAGGAGE_DISABLED_INTEGRATIONS"
"""Comma-separated graybaggage integrations to skip (e.g. ``aiohttp,django``)."""
GRAYBAGGAGE_CARRIERS = "GRAYBAGGAGE_CARRIERS"
"""Where outbound calls carry the lane: ``header,baggage`` (default: both, what MSE peers and OpenTelemetry
peers each read), ``header`` or ``baggage``. A carrier left out is not added, but corrected if the app itself
sent one with another lane. Every graybaggage service reads either carrier inbound."""
CARRIERS = ("header", "baggage")
GRAYBAGGAGE_MAX_BAGGAGE_BYTES = "GRAYBAGGAGE_MAX_BAGGAGE_BYTES"
"""A ``baggage`` header longer than this is ignored for the lane. Default 8192 (the W3C limit)."""
GRAYBAGGAGE_LANE_TABLE = "GRAYBAGGAGE_LANE_TABLE"
"""The lane table as JSON text (highest-precedence source)."""
GRAYBAGGAGE_LANE_TABLE_FILE = "GRAYBAGGAGE_LANE_TABLE_FILE"
"""Path to a JSON/YAML lane table file, hot-reloaded."""
GRAYBAGGAGE_LANE_TABLE_CONFIGMAP = "GRAYBAGGAGE_LANE_TABLE_CONFIGMAP"
"""ConfigMap name to watch (key ``lanes.json``). In a pod defaults to ``graybaggage-lanes``; ``off`` disables."""
GRAYBAGGAGE_K8S_SERVER = "GRAYBAGGAGE_K8S_SERVER"
"""API server URL for the ConfigMap source. Default: in-cluster ``https://$KUBERNETES_SERVICE_HOST:$PORT``."""
GRAYBAGGAGE_K8S_TOKEN_FILE = "GRAYBAGGAGE_K8S_TOKEN_FILE"
"""Bearer token file for the ConfigMap source. Default: the pod's service-account token."""
GRAYBAGGAGE_K8S_CA_FILE = "GRAYBAGGAGE_K8S_CA_FILE"
"""CA bundle for the API server. Default: the pod's service-account ``ca.crt``."""
GRAYBAGGAGE_NAMESPACE = "GRAYBAGGAGE_NAMESPACE"
"""This service's namespace. Default: ``POD_NAMESPACE``, the service-account namespace file, ``default``."""
GRAYBAGGAGE_FALLBACK_FAILURES = "GRAYBAGGAGE_FALLBACK_FAILURES"
"""Consecutive connect failures after which a lane target is marked down. Default 2."""
GRAYBAGGAGE_FALLBACK_DOWN_SECONDS = "GRAYBAGGAGE_FALLBACK_DOWN_SECONDS"
"""How long a lane target stays marked down (calls go straight to fallback). Default 10."""
GRAYBAGGAGE_PASS_THROUGH = "GRAYBAGGAGE_PASS_THROUGH"
"""Dye untagged requests served by a lane instance with that instance's lane. Default off."""
GRAYBAGGAGE_EDGE = "GRAYBAGGAGE_EDGE"
"""This service is an edge: drop incoming lane tags; only dye rules set the lane. Default off."""
GRAYBAGGAGE_DYE_RULES = "GRAYBAGGAGE_DYE_RULES"
"""Entry dye rules as JSON (a list of rules)."""
GRAYBAGGAGE_DYE_RULES_FILE = "GRAYBAGGAGE_DYE_RULES_FILE"
"""Path to a JSON/YAML dye rules file, hot-reloaded."""

OTEL_PROPAGATORS = "OTEL_PROPAGATORS"
_TRACING_ENV = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)

DEFAULT_HEADER = "x-mse-tag"
DEFAULT_CONFIGMAP = "graybaggage-lanes"
_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MODES = ("auto", "lanes", "tracing")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclasses.dataclass(frozen=True)
class Settings:
    header: str = DEFAULT_HEADER
    allowed_lanes: frozenset[str] | None = None
    instance_lane: str = BASE
    mode: str = "auto"
    threads: bool = True
    routing: bool = True
    disabled_integrations: frozenset[str] = frozenset()
    max_baggage_bytes: int = 8192
    send_header: bool = True
    send_baggage: bool = True
    table_json: str | None = None
    table_file: str | None = None
    table_configmap: str | None = None
    k8s_server: str | None = None
    k8s_token_file: str | None = None
    k8s_ca_file: str | None = None
    namespace: str = "default"
    fallback_failures: int = 2
    fallback_down_seconds: float = 10.0
    pass_through: bool = False
    edge: bool = False
    dye_rules_json: str | None = None
    dye_rules_file: str | None = None
    user_propagators: str | None = None
    tracing_env: bool = False

    @property
    def table_source(self) -> str:
        """Which lane-table source is active: ``env``, ``file``, ``kubernetes`` or ``none``."""
        if self.table_json is not None:
            return "env"
        if self.table_file:
            return "file"
        if self.table_configmap:
            return "kubernetes"
        return "none"


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    _logger.warning("%s=%r is not a boolean (use 1/0, true/false); using %s", name, raw, default)
    return default


def _number(env: Mapping[str, str], name: str, default: float, kind: type = int, minimum: float = 0):
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        _logger.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    if value < minimum:
        _logger.warning("%s=%r is below %s; using %s", name, raw, minimum, default)
        return default
    return value


def _read_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _namespace(env: Mapping[str, str]) -> str:
    for name in (GRAYBAGGAGE_NAMESPACE, "POD_NAMESPACE"):
        if env.get(name):
            return env[name].strip()
    return _read_file(f"{_SA_DIR}/namespace") or "default"


def _in_cluster(env: Mapping[str, str]) -> bool:
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(f"{_SA_DIR}/token")


def _in_cluster_server(env: Mapping[str, str]) -> str | None:
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _carriers(env: Mapping[str, str]) -> tuple[bool, bool]:
    """``(send_header, send_baggage)`` from ``GRAYBAGGAGE_CARRIERS``."""
    raw = env.get(GRAYBAGGAGE_CARRIERS)
    if raw is None or not raw.strip():
        return True, True
    chosen = {x.strip().lower() for x in raw.split(",") if x.strip()}
    if not chosen <= set(CARRIERS):
        _logger.warning("%s=%r: use header, baggage or header,baggage; sending both", GRAYBAGGAGE_CARRIERS, raw)
        return True, True
    return "header" in chosen, "baggage" in chosen


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and explicit ``overrides``."""
    env = os.environ if env is None else env
    header = (env.get(GRAYBAGGAGE_HEADER) or DEFAULT_HEADER).strip().lower()
    if not header or any(c in header for c in " \t\r\n:,;="):
        _logger.warning("%s=%r is not a usable header name; using %s", GRAYBAGGAGE_HEADER, header, DEFAULT_HEADER)
        header = DEFAULT_HEADER

    allowed = parse_allow_list((env.get(GRAYBAGGAGE_LANES) or "").split(","))
    if allowed:
        bad = sorted(x for x in allowed if check_lane(x)[0] is None)
        if bad:
            _logger.warning("%s: ignoring invalid lane names %s", GRAYBAGGAGE_LANES, bad)
            allowed = frozenset(allowed - set(bad)) or None

    instance = BASE
    for name in (GRAYBAGGAGE_LANE, MSE_ALICLOUD_SERVICE_TAG):
        raw = env.get(name)
        if raw:
            lane, problem = check_lane(raw.strip())
            if lane is None:
                _logger.warning("%s=%r is not a valid lane (%s); this instance serves base", name, raw, problem)
            else:
                instance = lane
            break

    mode = (env.get(GRAYBAGGAGE_MODE) or "auto").strip().lower()
    if mode not in MODES:
        _logger.warning("%s=%r is not one of %s; using auto", GRAYBAGGAGE_MODE, mode, MODES)
        mode = "auto"

    configmap = env.get(GRAYBAGGAGE_LANE_TABLE_CONFIGMAP)
    if configmap is None:
        configmap = DEFAULT_CONFIGMAP if _in_cluster(env) else None
    elif configmap.strip().lower() in ("", "off", "none", "0", "false"):
        configmap = None

    tracing_env = any(
        env.get(name) and env.get(name, "").strip().lower() != "none" for name in _TRACING_ENV
    )

    send_header, send_baggage = _carriers(env)
    values: dict[str, object] = dict(
        header=header,
        allowed_lanes=allowed,
        instance_lane=instance,
        mode=mode,
        threads=_flag(env, GRAYBAGGAGE_THREADS, True),
        routing=_flag(env, GRAYBAGGAGE_ROUTING, True),
        disabled_integrations=frozenset(
            x.strip().lower() for x in (env.get(GRAYBAGGAGE_DISABLED_INTEGRATIONS) or "").split(",") if x.strip()
        ),
        max_baggage_bytes=_number(env, GRAYBAGGAGE_MAX_BAGGAGE_BYTES, 8192, int, 64),
        send_header=send_header,
        send_baggage=send_baggage,
        table_json=env.get(GRAYBAGGAGE_LANE_TABLE) or None,
        table_file=env.get(GRAYBAGGAGE_LANE_TABLE_FILE) or None,
        table_configmap=configmap,
        k8s_server=env.get(GRAYBAGGAGE_K8S_SERVER) or _in_cluster_server(env),
        k8s_token_file=env.get(GRAYBAGGAGE_K8S_TOKEN_FILE) or (f"{_SA_DIR}/token" if _in_cluster(env) else None),
        k8s_ca_file=env.get(GRAYBAGGAGE_K8S_CA_FILE) or (f"{_SA_DIR}/ca.crt" if _in_cluster(env) else None),
        namespace=_namespace(env),
        fallback_failures=_number(env, GRAYBAGGAGE_FALLBACK_FAILURES, 2, int, 1),
        fallback_down_seconds=_number(env, GRAYBAGGAGE_FALLBACK_DOWN_SECONDS, 10.0, float, 0),
        pass_through=_flag(env, GRAYBAGGAGE_PASS_THROUGH, False),
        edge=_flag(env, GRAYBAGGAGE_EDGE, False),
        dye_rules_json=env.get(GRAYBAGGAGE_DYE_RULES) or None,
        dye_rules_file=env.get(GRAYBAGGAGE_DYE_RULES_FILE) or None,
        user_propagators=env.get(OTEL_PROPAGATORS) or None,
        tracing_env=tracing_env,
    )
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"unknown graybaggage setting(s): {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings (read from the environment once)."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def set_settings(settings: Settings) -> None:
    """Replace the process-wide settings (used by :func:`graybaggage.instrument` with arguments)."""
    global _settings
    _settings = settings
