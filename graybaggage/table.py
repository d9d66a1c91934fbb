"""The lane table: pure data and pure, fast route decisions. No I/O, no env, no globals.

Format: docs/lane-table.md (schema: graybaggage/schema/lane-table.schema.json).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any, Mapping, NamedTuple

from graybaggage import _memo
from graybaggage.lane import is_valid_lane

FORMAT_VERSION = 1
FALLBACK_MODES = ("base", "strict")
CLUSTER_DOMAIN = "cluster.local"
_ALLOWED_TOP = {"version", "namespace", "revision", "lanes"}
_ALLOWED_LANE = {"fallback", "routes", "entry", "queues"}
QUEUES_VERSION = 1
"""The version of ``lanes.<tag>.queues`` this reader understands; a field of another version is ignored."""


_MISS = object()


class TableError(ValueError):
    """The lane table is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Route:
    """Where one outbound call goes. ``host``/``port`` are the lane target, in the caller's form."""

    lane: str
    destination: str
    host: str
    port: int | None
    fallback: str

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}" if self.port is not None else self.host


class _Target(NamedTuple):  # a tuple: built 10,000 times for a 1,000 x 10 table, cheaper than a frozen dataclass
    svc: tuple[str, str] | None  # (service, namespace) when the target is a Kubernetes Service name
    literal: str  # the host as written
    port: int | None


_BAD_HOST_CHARS = re.compile(r"[/?#@ \t\r\n\\]")


_SIMPLE_HOSTPORT = re.compile(r"([a-z0-9][a-z0-9.\-]*)(?::([0-9]{1,5}))?")


def _split(value: str) -> tuple[str, int | None]:
    m = _SIMPLE_HOSTPORT.fullmatch(value)  # the usual form (lowercase name or IPv4, optional port): one match
    if m is not None:
        host, port_s = m.groups()
        if port_s is None:
            return host, None
        number = int(port_s)
        if 0 < number < 65536:
            return host, number
    value = value.strip()
    if not value:
        raise TableError("empty host")
    if value.startswith("["):  # [::1]:8080
        host, _, rest = value[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise TableError(f"{value!r} is not host or host:port")
    elif value.count(":") == 1:
        host, _, port_s = value.partition(":")
    else:
        host, port_s = value, ""
    port: int | None = None
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise TableError(f"port {port_s!r} is not a number in 1..65535")
        port = int(port_s)
    host = host.lower()
    if not host or _BAD_HOST_CHARS.search(host):
        raise TableError(f"{value!r} is not host or host:port")
    return host, port


def _is_ip(host: str) -> bool:
    # cheap pre-check: an IPv4 address has only digits and dots, an IPv6 one has a colon; Service names (the
    # common case) are rejected here without ipaddress raising and catching an exception
    if ":" not in host and not host.replace(".", "").isdigit():
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def service_name(host: str, namespace: str) -> tuple[str, str] | None:
    """``(service, namespace)`` if ``host`` is a Kubernetes Service name in one of its forms, else None."""
    if _is_ip(host) or host == "localhost":
        return None
    parts = host.split(".")
    n = len(parts)
    if n == 1:
        return (parts[0], namespace)
    if n == 2:
        return (parts[0], parts[1])
    if n == 3 and parts[2] == "svc":
        return (parts[0], parts[1])
    if n >= 4 and parts[2] == "svc" and ".".join(parts[3:]) == CLUSTER_DOMAIN:
        return (parts[0], parts[1])
    return None


def _caller_form(target: _Target, caller_host: str, caller_ns: str) -> str:
    """Render a Service target in the same form the caller used for the destination."""
    if target.svc is None:
        return target.literal
    svc, ns = target.svc
    n = caller_host.count(".") + 1
    if n == 1:
        return svc if ns == caller_ns else f"{svc}.{ns}"
    if n == 2:
        return f"{svc}.{ns}"
    if n == 3:
        return f"{svc}.{ns}.svc"
    return f"{svc}.{ns}.svc.{CLUSTER_DOMAIN}"


@dataclasses.dataclass(frozen=True)
class Lane:
    name: str
    fallback: str
    routes: Mapping[tuple[object, int | None], _Target]
    raw_routes: Mapping[str, str]
    entry: Any = None
    queues: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)


class LaneTable:
    """An immutable, validated lane table with O(1) route decisions."""

    def __init__(self, lanes: Mapping[str, Lane], namespace: str | None, revision: str | None, raw: Mapping[str, Any],
                 ignored: tuple[str, ...] = ()):
        self.lanes = dict(lanes)
        self.ignored = ignored
        """Fields this reader does not know (newer optional fields), ignored; the source logs them once."""
        self.namespace = namespace
        self.revision = revision
        # ``raw`` (the decoded document) is not kept: ``raw_routes`` has what describe() shows
        self._host_cache: dict[tuple[str, str], object] = {}
        self._decisions: dict[tuple[str, str, int | None, str], Route | None] = {}

    def __bool__(self) -> bool:
        return any(lane.routes for lane in self.lanes.values())

    def __repr__(self) -> str:
        return f"LaneTable(lanes={sorted(self.lanes)}, revision={self.revision!r})"

    # -- decisions --------------------------------------------------------
    def _dest_key(self, host: str, caller_ns: str) -> object:
        cache_key = (host, caller_ns)
        key = self._host_cache.get(cache_key)
        if key is None:
            h = host.lower().rstrip(".")
            key = service_name(h, caller_ns) or h
            _memo.put(self._host_cache, cache_key, key, 4096)
        return key

    def routes_lane(self, lane: str) -> bool:
        """True when ``lane`` routes anything (else every call in it stays on its destination)."""
        entry = self.lanes.get(lane)
        return entry is not None and bool(entry.routes)

    def decide(self, lane: str | None, host: str, port: int | None, caller_ns: str = "default") -> Route | None:
        """Where a call in ``lane`` to ``host:port`` goes; ``None`` means stay on the destination (base).

        ``caller_ns`` is the caller's namespace (what a one-label name means for the caller).
        Decisions are memoised per table (bounded), so repeated calls cost one dict lookup.
        """
        if lane is None:
            return None
        k = (lane, host, port, caller_ns)
        cached = self._decisions.get(k, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        if not self.routes_lane(lane):
            return None
        entry = self.lanes[lane]
        route = self._decide(entry, lane, host, port, caller_ns)
        _memo.put(self._decisions, k, route, 8192)
        return route

    def _decide(self, entry: Lane, lane: str, host: str, port: int | None, caller_ns: str) -> Route | None:
        key = self._dest_key(host, caller_ns)
        target = entry.routes.get((key, port)) if port is not None else None
        if target is None:
            target = entry.routes.get((key, None))
            if target is None:
                return None
        t_host = _caller_form(target, host, caller_ns)
        return Route(lane, f"{host}:{port}" if port is not None else host, t_host,
                     target.port if target.port is not None else port, entry.fallback)

    def has_queues(self, lane: str) -> bool:
        """True when ``lane`` names any task queue its workers consume (``lanes.<tag>.queues``)."""
        entry = self.lanes.get(lane)
        return entry is not None and bool(entry.queues)

    def lane_has_queue(self, lane: str, queue: str, kind: str = "celery") -> bool:
        """True when ``lane`` has a ``kind`` worker consuming the lane twin of ``queue``."""
        entry = self.lanes.get(lane)
        return entry is not None and queue in entry.queues.get(kind, ())

    def entry_rules(self) -> list[tuple[str, Any]]:
        """``(lane, entry)`` pairs for lanes that carry entry dye rules, in lane-name order."""
        return [(name, lane.entry) for name, lane in sorted(self.lanes.items()) if lane.entry]

    def describe(self) -> list[tuple[str, str, str, str]]:
        """Rows ``(lane, fallback, destination, target)`` for display."""
        rows = []
        for name in sorted(self.lanes):
            lane = self.lanes[name]
            for dest, target in sorted(lane.raw_routes.items()):
                rows.append((name, lane.fallback, dest, target))
        return rows


EMPTY = LaneTable({}, None, None, {"version": FORMAT_VERSION, "lanes": {}})


def parse_table(data: Any, default_namespace: str = "default") -> LaneTable:
    """Validate lane-table data (already decoded from JSON/YAML) and build a :class:`LaneTable`.

    Raises :class:`TableError` naming the first bad field.
    """
    if not isinstance(data, Mapping):
        raise TableError(f"table: expected an object, got {type(data).__name__}")
    unknown = set(data) - _ALLOWED_TOP
    if unknown:
        raise TableError(f"table: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    version = data.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise TableError(f"version: expected {FORMAT_VERSION}, got {version!r}")
    namespace = data.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not is_valid_lane(namespace)):
        raise TableError(f"namespace: {namespace!r} is not a valid namespace name")
    revision = data.get("revision")
    if revision is not None and not isinstance(revision, (str, int)):
        raise TableError("revision: expected a string")
    lanes_in = data.get("lanes")
    if not isinstance(lanes_in, Mapping):
        raise TableError("lanes: expected an object mapping lane name -> lane")
    table_ns = namespace or default_namespace
    lanes: dict[str, Lane] = {}
    dest_keys: dict[str, tuple[object, int | None]] = {}
    ignored: list[str] = []
    for name, spec in lanes_in.items():
        where = f"lanes.{name}"
        if not is_valid_lane(name):
            raise TableError(f"{where}: {name!r} is not a valid lane (DNS-1123 label, at most 63 characters)")
        if not isinstance(spec, Mapping):
            raise TableError(f"{where}: expected an object")
        # Unknown lane fields are optional fields added by a newer format revision: ignored (and reported),
        # so a controller can publish them before every reader knows them.
        ignored += [f"{where}.{f}" for f in sorted(map(str, set(spec) - _ALLOWED_LANE))]
        fallback = spec.get("fallback", "base")
        if fallback not in FALLBACK_MODES:
            raise TableError(f"{where}.fallback: {fallback!r} is not one of {', '.join(FALLBACK_MODES)}")
        routes_in = spec.get("routes")
        if not isinstance(routes_in, Mapping):
            raise TableError(f"{where}.routes: expected an object mapping destination -> target")
        routes: dict[tuple[object, int | None], _Target] = {}
        for dest, target in routes_in.items():
            if not isinstance(dest, str) or not isinstance(target, str):
                raise TableError(f"{where}.routes[{dest!r}]: destination and target must be strings")
            key = dest_keys.get(dest)  # every lane names the same destinations: each parsed once per table
            try:  # (the error's field name is only built for a bad value)
                if key is None:
                    d_host, d_port = _split(dest)
                    key = dest_keys[dest] = (service_name(d_host, table_ns) or d_host, d_port)
                t_host, t_port = _split(target)
            except TableError as exc:
                side = " target" if key is not None else ""
                raise TableError(f"{where}.routes[{dest!r}]{side}: {exc}") from None
            if key in routes:
                raise TableError(f"{where}.routes[{dest!r}]: duplicates another destination for the same service")
            routes[key] = _Target(service_name(t_host, table_ns), t_host, t_port)
        entry = spec.get("entry")
        if entry is not None and not isinstance(entry, Mapping):
            raise TableError(f"{where}.entry: expected an object")
        queues = _parse_queues(spec.get("queues"), f"{where}.queues", ignored)
        lanes[name] = Lane(name, fallback, routes, dict(routes_in), entry, queues)
    return LaneTable(lanes, namespace, None if revision is None else str(revision), data, tuple(ignored))


def _parse_queues(value: Any, where: str, ignored: list[str]) -> dict[str, frozenset[str]]:
    """``lanes.<tag>.queues``: ``{"version": 1, "celery": ["<queue>", ...]}``: the lane has workers consuming
    ``<queue>-<tag>``. Another version is ignored (and reported): producers then keep the base queues."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TableError(f"{where}: expected an object")
    version = value.get("version")
    if version != QUEUES_VERSION or isinstance(version, bool):
        ignored.append(f"{where} (version {version!r}; this reader knows {QUEUES_VERSION})")
        return {}
    out: dict[str, frozenset[str]] = {}
    for kind, names in value.items():
        if kind == "version":
            continue
        if kind != "celery":
            ignored.append(f"{where}.{kind}")
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) and n and len(n) <= 255 for n in names):
            raise TableError(f"{where}.{kind}: expected a list of queue names")
        out[kind] = frozenset(names)
    return out


def load_table_text(text: str, default_namespace: str = "default") -> LaneTable:
    """Parse JSON (or YAML, when PyYAML is installed) lane-table text."""
    import json

    stripped = text.lstrip()
    try:
        if stripped.startswith("{"):
            data = json.loads(text)
        else:
            try:
                import yaml
            except ImportError as exc:  # pragma: no cover - PyYAML is a dependency
                raise TableError("table: YAML needs PyYAML installed (or write the table as JSON)") from exc
            data = yaml.safe_load(text)
    except TableError:
        raise
    except Exception as exc:
        raise TableError(f"table: cannot parse ({exc.__class__.__name__}: {exc})") from None
    return parse_table(data, default_namespace)
