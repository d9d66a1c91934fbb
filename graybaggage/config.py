"""All graybaggage configuration, read from the environment in this one module.

Precedence: explicit arguments (to :func:`graybaggage.instrument`) > environment > defaults.
A bad value never stops a service: it is logged once and the default is used.
The README's "Turn it on" table is generated from the same names; keep them in sync.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterable, Mapping

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

GRAYBAGGAGE_ENABLED = "GRAYBAGGAGE_ENABLED"
"""``1`` switches graybaggage on in a process started by another distro (``opentelemetry-instrument`` with
opentelemetry-distro), ``0`` keeps auto-instrumentation from switching it on (an explicit
:func:`graybaggage.instrument` still does). Unset: on under ``graybaggage run``,
``OTEL_PYTHON_DISTRO=graybaggage`` and :func:`graybaggage.instrument`, off otherwise."""
GRAYBAGGAGE_QUIET = "GRAYBAGGAGE_QUIET"
"""``1``: the start-up line is logged at INFO instead of WARNING (so default log levels hide it)."""
GRAYBAGGAGE_STATUS_DIR = "GRAYBAGGAGE_STATUS_DIR"
"""Where each active process writes ``<pid>.json`` (what ``graybaggage routes --pid`` reads). Default
``$TMPDIR/graybaggage-<uid>``; ``off`` writes nothing."""

OTHER_TOOLS = frozenset({
    "GRAYBAGGAGE_K8S_BIN", "GRAYBAGGAGE_K8S_CACHE", "GRAYBAGGAGE_K8S_REBUILD", "GRAYBAGGAGE_K8S_JOBS",
    "GRAYBAGGAGE_K8S_KEEP_WORKDIR", "GRAYBAGGAGE_RESYNC_SECONDS",
})
"""``GRAYBAGGAGE_*`` names read by the test tooling and the controller, not by the library."""

OTEL_PROPAGATORS = "OTEL_PROPAGATORS"
_TRACING_ENV = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)

DEFAULT_HEADER = "x-mse-tag"
INTEGRATIONS = ("flask", "django", "starlette", "uvicorn", "wsgi_servers", "requests", "urllib3", "urllib", "httpx",
                "aiohttp", "grpc", "celery")
"""Names accepted by ``GRAYBAGGAGE_DISABLED_INTEGRATIONS`` (graybaggage.integrations.ALL)."""
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
    enabled: bool | None = None
    quiet: bool = False
    status_dir: str | None = None

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


def _warn(message: str) -> None:
    """A configuration problem: one WARNING line per distinct message per process."""
    from graybaggage._log import warn_once

    warn_once(_logger, "graybaggage: " + message)


def known_names() -> frozenset[str]:
    """Every ``GRAYBAGGAGE_*`` variable the library reads."""
    return frozenset(v for k, v in globals().items() if k.startswith("GRAYBAGGAGE_") and isinstance(v, str))


def _did_you_mean(name: str, choices: "Iterable[str]", prefix: str = "") -> str:
    """``; did you mean X?`` for the closest of ``choices`` (compared without their common ``prefix``)."""
    import difflib

    by_rest = {c[len(prefix):]: c for c in choices}
    close = difflib.get_close_matches(name[len(prefix):], sorted(by_rest), n=1, cutoff=0.6)
    return f"; did you mean {by_rest[close[0]]}?" if close else ""


def environment_problems(env: Mapping[str, str]) -> list[str]:
    """Unknown ``GRAYBAGGAGE_*`` names (with the likely intended one) and settings that contradict each other.
    Pure: the messages, without the ``graybaggage:`` prefix."""
    known = known_names()
    problems = []
    for name in sorted(n for n in env if n.startswith("GRAYBAGGAGE_")):
        if name not in known and name not in OTHER_TOOLS and not name.startswith("GRAYBAGGAGE_TEST_"):
            problems.append(f"unknown variable {name} is ignored{_did_you_mean(name, known, 'GRAYBAGGAGE_')}")
    def given(name: str) -> bool:
        return bool((env.get(name) or "").strip())

    table_sources = [n for n in (GRAYBAGGAGE_LANE_TABLE, GRAYBAGGAGE_LANE_TABLE_FILE) if given(n)]
    cm = (env.get(GRAYBAGGAGE_LANE_TABLE_CONFIGMAP) or "").strip()
    if cm and cm.lower() not in ("off", "none", "0", "false"):
        table_sources.append(GRAYBAGGAGE_LANE_TABLE_CONFIGMAP)
    if len(table_sources) > 1:
        problems.append(f"{' and '.join(table_sources)} are set; the lane table comes from {table_sources[0]} "
                        f"only ({', '.join(table_sources[1:])} ignored; precedence: text, file, ConfigMap)")
    if given(GRAYBAGGAGE_DYE_RULES) and given(GRAYBAGGAGE_DYE_RULES_FILE):
        problems.append(f"{GRAYBAGGAGE_DYE_RULES} and {GRAYBAGGAGE_DYE_RULES_FILE} are both set; the dye rules come "
                        f"from {GRAYBAGGAGE_DYE_RULES} only")
    if given(GRAYBAGGAGE_LANE) and given(MSE_ALICLOUD_SERVICE_TAG) and \
            env[GRAYBAGGAGE_LANE].strip() != env[MSE_ALICLOUD_SERVICE_TAG].strip():
        problems.append(f"{GRAYBAGGAGE_LANE}={env[GRAYBAGGAGE_LANE].strip()!r} and {MSE_ALICLOUD_SERVICE_TAG}="
                        f"{env[MSE_ALICLOUD_SERVICE_TAG].strip()!r} disagree; this instance serves "
                        f"{env[GRAYBAGGAGE_LANE].strip()!r}")
    disabled = [x.strip().lower() for x in (env.get(GRAYBAGGAGE_DISABLED_INTEGRATIONS) or "").split(",") if x.strip()]
    for name in disabled:
        if name not in INTEGRATIONS:
            problems.append(f"{GRAYBAGGAGE_DISABLED_INTEGRATIONS}: unknown integration {name!r} is ignored"
                            f"{_did_you_mean(name, INTEGRATIONS)} (known: {', '.join(INTEGRATIONS)})")
    return problems


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    _warn(f"{name}={raw!r} is not a boolean (use 1/0, true/false); using {'1' if default else '0'}")
    return default


def _number(env: Mapping[str, str], name: str, default: float, kind: type = int, minimum: float = 0):
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        _warn(f"{name}={raw!r} is not a number; using {default}")
        return default
    if value < minimum:
        _warn(f"{name}={raw!r} is below {minimum}; using {default}")
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
        _warn(f"{GRAYBAGGAGE_CARRIERS}={raw!r}: use header, baggage or header,baggage; sending both")
        return True, True
    return "header" in chosen, "baggage" in chosen


def _status_dir(env: Mapping[str, str]) -> str | None:
    raw = (env.get(GRAYBAGGAGE_STATUS_DIR) or "").strip()
    if raw.lower() in ("off", "none", "0", "false"):
        return None
    if raw:
        return raw
    import tempfile

    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"graybaggage-{uid}")


def resolve_mode(settings: Settings, provider: object = None) -> str:
    """``lanes`` or ``tracing``: the setting, or for ``auto``, tracing when OpenTelemetry export is configured
    (and can work: opentelemetry-sdk installed) or an SDK TracerProvider is already set."""
    if settings.mode != "auto":
        return settings.mode
    if provider is not None and hasattr(provider, "add_span_processor"):
        return "tracing"
    if settings.tracing_env:
        import importlib.util

        if importlib.util.find_spec("opentelemetry.sdk") is None:
            _warn("OpenTelemetry export is configured (" + ", ".join(
                f"{n}={os.environ.get(n)}" for n in _TRACING_ENV if os.environ.get(n)) + ") but opentelemetry-sdk is "
                "not installed, so nothing can be exported; running lanes-only (pip install opentelemetry-distro to "
                "export spans)")
            return "lanes"
        return "tracing"
    return "lanes"


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and explicit ``overrides``."""
    env = os.environ if env is None else env
    for problem in environment_problems(env):
        _warn(problem)
    header = (env.get(GRAYBAGGAGE_HEADER) or DEFAULT_HEADER).strip().lower()
    if not header or any(c in header for c in " \t\r\n:,;="):
        _warn(f"{GRAYBAGGAGE_HEADER}={header!r} is not a usable header name; using {DEFAULT_HEADER}")
        header = DEFAULT_HEADER

    allowed = parse_allow_list((env.get(GRAYBAGGAGE_LANES) or "").split(","))
    if allowed:
        bad = sorted(x for x in allowed if check_lane(x)[0] is None)
        if bad:
            _warn(f"{GRAYBAGGAGE_LANES}: ignoring invalid lane names {', '.join(bad)}")
            allowed = frozenset(allowed - set(bad)) or None

    instance = BASE
    for name in (GRAYBAGGAGE_LANE, MSE_ALICLOUD_SERVICE_TAG):
        raw = env.get(name)
        if raw:
            lane, problem = check_lane(raw.strip())
            if lane is None:
                _warn(f"{name}={raw!r} is not a valid lane ({problem}); this instance serves base")
            else:
                instance = lane
            break

    mode = (env.get(GRAYBAGGAGE_MODE) or "auto").strip().lower()
    if mode not in MODES:
        _warn(f"{GRAYBAGGAGE_MODE}={mode!r} is not one of {', '.join(MODES)}; using auto")
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
        enabled=_flag(env, GRAYBAGGAGE_ENABLED, False) if (env.get(GRAYBAGGAGE_ENABLED) or "").strip() else None,
        quiet=_flag(env, GRAYBAGGAGE_QUIET, False),
        status_dir=_status_dir(env),
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
