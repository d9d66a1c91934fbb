"""Process-wide runtime: the settings, the lane-table and dye-rule sources, the router and the inbound
policy, built once by :func:`graybaggage.instrument` and read by the integrations on each request."""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

from graybaggage import config
from graybaggage.inbound import Inbound
from graybaggage.propagator import log_problem
from graybaggage.routing import Router
from graybaggage.sources import ConfigMapSource, FileSource, Source, StaticSource
from graybaggage.table import EMPTY, LaneTable, TableError, load_table_text

_logger = logging.getLogger(__name__)


def _load_rules_text(text: str) -> Any:
    from graybaggage import dye

    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    return dye.parse_rules(data)


def table_source(settings: config.Settings) -> Source[LaneTable]:
    """The one active lane-table source, chosen by precedence (see docs/lane-table.md)."""
    def parse(text: str) -> LaneTable:
        table = load_table_text(text, settings.namespace)
        if table.ignored:
            from graybaggage._log import log_once

            log_once(_logger, "table-ignored:" + ",".join(table.ignored),
                     "graybaggage: lane table fields this version does not know are ignored: %s",
                     ", ".join(table.ignored))
        return table

    kind = settings.table_source
    if kind == "env":
        return StaticSource(settings.table_json or "", parse, EMPTY, config.GRAYBAGGAGE_LANE_TABLE)
    if kind == "file":
        return FileSource(settings.table_file or "", parse, EMPTY)
    if kind == "kubernetes":
        if not settings.k8s_server:
            _logger.warning("graybaggage: %s is set but no API server is known (set %s); lane table is empty",
                            config.GRAYBAGGAGE_LANE_TABLE_CONFIGMAP, config.GRAYBAGGAGE_K8S_SERVER)
            return Source(EMPTY, "kubernetes (no API server)")
        return ConfigMapSource(settings.table_configmap or config.DEFAULT_CONFIGMAP, settings.namespace, parse, EMPTY,
                               settings.k8s_server, settings.k8s_token_file, settings.k8s_ca_file)
    return Source(EMPTY, "(no lane table configured: every call stays on base)")


def rules_source(settings: config.Settings) -> Source[Any] | None:
    from graybaggage import dye

    if settings.dye_rules_json:
        return StaticSource(settings.dye_rules_json, _load_rules_text, dye.DyeRules.EMPTY, config.GRAYBAGGAGE_DYE_RULES)
    if settings.dye_rules_file:
        return FileSource(settings.dye_rules_file, _load_rules_text, dye.DyeRules.EMPTY)
    return None


class Runtime:
    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.table_source = table_source(settings)
        self.rules_source = rules_source(settings)
        self.router = Router(lambda: self.table_source.value, settings.namespace,
                             settings.fallback_failures, settings.fallback_down_seconds)
        self._rules_key: tuple[int, int, int] | None = None
        self._rules: Any = None
        self.inbound = Inbound(settings.header, settings.allowed_lanes, settings.max_baggage_bytes, settings.edge,
                               settings.instance_lane if settings.pass_through else None, self.rules, log_problem)

    def rules(self) -> Any:
        """Dye rules in force: the configured rules first, then entry rules carried by the lane table.

        Entry rules from the table apply only at edges (the controller distributes them for entries)."""
        rs, ts = self.rules_source, self.table_source
        key = (id(ts.value), rs.generation if rs else -1, id(rs.value) if rs else 0)
        if key != self._rules_key:
            self._rules = self._build_rules()
            self._rules_key = key
        return self._rules

    def _build_rules(self) -> Any:
        from graybaggage import dye

        rules = self.rules_source.value if self.rules_source else dye.DyeRules.EMPTY
        if self.settings.edge:
            for lane, entry in self.table_source.value.entry_rules():
                try:
                    rules = rules.merged(dye.parse_rules(entry.get("rules") or [], lane=lane))
                except (dye.RuleError, TableError) as exc:
                    log_problem(f"table-entry-rules:{lane}", "lane table")
                    _logger.warning("graybaggage: lane %r entry rules in the lane table are invalid: %s", lane, exc)
        return rules

    def start(self) -> "Runtime":
        self.table_source.start()
        if self.rules_source:
            self.rules_source.start()
        return self

    def stop(self) -> None:
        self.table_source.stop()
        if self.rules_source:
            self.rules_source.stop()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get() -> Runtime:
    """The active runtime (built from the environment on first use)."""
    rt = _runtime
    if rt is None:
        with _lock:
            rt = _runtime
            if rt is None:
                rt = install(config.get_settings())
    return rt


def install(settings: config.Settings) -> Runtime:
    global _runtime
    old, _runtime = _runtime, Runtime(settings).start()
    if old is not None:
        old.stop()
    return _runtime


def uninstall() -> None:
    global _runtime
    old, _runtime = _runtime, None
    if old is not None:
        old.stop()
