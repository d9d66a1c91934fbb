"""Where the lane table (and dye rules) come from: env text, a hot-reloaded file, or a Kubernetes ConfigMap.

Every source keeps the last good value when a new one is broken or the connection is lost, logs each
kind of problem once, and swaps the value atomically (a single attribute assignment), so readers on
the request path never lock.
"""
from __future__ import annotations

import json
import logging
import os
import random
import ssl
import threading
import time
import http.client
from typing import Any, Callable, Generic, TypeVar
from urllib.parse import quote, urlsplit

from graybaggage._log import log_once

_logger = logging.getLogger(__name__)
T = TypeVar("T")

CONFIGMAP_KEY = "lanes.json"
POLL_SECONDS = 0.25


class Source(Generic[T]):
    """A value that may change over time. ``value`` is always the last good one."""

    kind = "none"
    on_change: Callable[["Source[Any]"], None] | None = None
    """Called after the value or the error changed (graybaggage's status file); must not raise."""

    def __init__(self, initial: T, detail: str = "") -> None:
        self.value: T = initial
        self.detail = detail
        self.error: str | None = None
        self.loaded_at: float | None = None
        self.generation = 0

    def _set(self, value: T) -> None:
        self.value = value
        self.error = None
        self.loaded_at = time.time()
        self.generation += 1
        self._changed()

    def _changed(self) -> None:
        hook = self.on_change
        if hook is not None:
            try:
                hook(self)
            except Exception:  # noqa: BLE001 - a diagnostic hook never breaks a source
                pass

    def _fail(self, message: str) -> None:
        if message != self.error:
            kept = "keeping the last good value" if self.loaded_at is not None else "nothing loaded yet: empty"
            _logger.warning("graybaggage: %s source %s: %s; %s", self.kind, self.detail, message, kept)
            self.error = message
            self._changed()

    def start(self) -> "Source[T]":
        return self

    def stop(self) -> None:
        pass

    def describe(self) -> str:
        state = f"error: {self.error}" if self.error else "ok"
        return f"{self.kind} {self.detail} ({state}, generation {self.generation})".replace("  ", " ")


class StaticSource(Source[T]):
    """A value parsed once from text (an env var)."""

    kind = "env"

    def __init__(self, text: str, parse: Callable[[str], T], initial: T, detail: str = "") -> None:
        super().__init__(initial, detail)
        try:
            self._set(parse(text))
        except Exception as exc:
            self._fail(str(exc))


class FileSource(Source[T]):
    """A file polled every :data:`POLL_SECONDS`; re-parsed when its identity, size or mtime changes.

    Works with Kubernetes ConfigMap volumes, whose updates swap a symlink (the stat follows it).
    """

    kind = "file"

    def __init__(self, path: str, parse: Callable[[str], T], initial: T, poll: float = POLL_SECONDS) -> None:
        super().__init__(initial, path)
        self.path = path
        self._initial = initial
        self._parse = parse
        self._poll = poll
        self._stamp: tuple[int, int, int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.check()

    def check(self) -> bool:
        """Reload if the file changed; True when a new value was loaded."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._stamp != (0, 0, 0, 0):
                self._stamp = (0, 0, 0, 0)
                if isinstance(exc, FileNotFoundError):  # deleted (or not there yet): empty, like a deleted ConfigMap
                    self._set(self._initial)
                    self.error = "file does not exist: empty"
                    _logger.warning("graybaggage: file source %s does not exist: empty (every call stays on base) "
                                    "until it appears", self.path)
                    self._changed()
                else:
                    self._fail(f"cannot read file ({exc.strerror})")
            return False
        stamp = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            value = self._parse(text)
        except Exception as exc:
            self._fail(str(exc))
            return False
        self._set(value)
        _logger.info("graybaggage: loaded %s (generation %d)", self.path, self.generation)
        return True

    def start(self) -> "FileSource[T]":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="graybaggage-file-source", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.check()
            except Exception:  # never let the poller die
                _logger.exception("graybaggage: file source %s poll failed", self.path)

    def stop(self) -> None:
        self._stop.set()


class ConfigMapSource(Source[T]):
    """Watches one ConfigMap through the Kubernetes API with a plain HTTP watch (no client library).

    LIST (by field selector) -> WATCH from its resourceVersion; reconnects with exponential backoff
    (0.5 s to 30 s, jittered); 410 Gone relists. A missing ConfigMap means an empty value; a lost
    connection keeps the last good one.
    """

    kind = "kubernetes"

    def __init__(
        self,
        name: str,
        namespace: str,
        parse: Callable[[str], T],
        initial: T,
        server: str,
        token_file: str | None,
        ca_file: str | None,
        key: str = CONFIGMAP_KEY,
    ) -> None:
        super().__init__(initial, f"configmap {namespace}/{name} at {server}")
        self.name, self.namespace, self.key = name, namespace, key
        self._parse, self._initial = parse, initial
        u = urlsplit(server)
        self._https = u.scheme == "https"
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or (443 if self._https else 80)
        self._token_file = token_file
        self._ca_file = ca_file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: http.client.HTTPConnection | None = None
        self.connected = threading.Event()
        self._base = f"/api/v1/namespaces/{quote(namespace)}/configmaps"
        self._selector = quote(f"metadata.name={name}")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            ctx = ssl.create_default_context(cafile=self._ca_file) if self._ca_file else ssl.create_default_context()
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "graybaggage-lane-source"}
        if self._token_file:
            try:
                with open(self._token_file, encoding="utf-8") as f:
                    headers["Authorization"] = f"Bearer {f.read().strip()}"
            except OSError as exc:
                raise ConnectionError(f"cannot read token file {self._token_file}: {exc.strerror}") from None
        return headers

    def _apply(self, obj: dict[str, Any] | None) -> None:
        if obj is None:
            self._set(self._initial)
            return
        text = (obj.get("data") or {}).get(self.key)
        if text is None:
            self._fail(f"ConfigMap has no key {self.key!r}")
            return
        try:
            value = self._parse(text)
        except Exception as exc:
            self._fail(str(exc))
            return
        self._set(value)

    def _request(self, path: str, timeout: float) -> http.client.HTTPResponse:
        conn = self._connection(timeout)
        self._conn = conn
        conn.request("GET", path, headers=self._headers())
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read(2048).decode("utf-8", "replace")
            conn.close()
            raise ConnectionError(f"HTTP {resp.status} for {path.split('?')[0]}: {body.strip()[:300]}")
        return resp

    def _list(self) -> str:
        resp = self._request(f"{self._base}?fieldSelector={self._selector}", 10)
        doc = json.loads(resp.read())
        self._conn.close() if self._conn else None
        items = doc.get("items") or []
        self._apply(items[0] if items else None)
        return doc.get("metadata", {}).get("resourceVersion", "")

    def _watch(self, rv: str) -> str | None:
        """Stream events; returns the last resourceVersion, or None when a relist is needed."""
        path = (f"{self._base}?fieldSelector={self._selector}&watch=1&allowWatchBookmarks=true"
                f"&timeoutSeconds=240&resourceVersion={quote(rv)}")
        resp = self._request(path, 270)
        self.connected.set()
        try:
            while not self._stop.is_set():
                line = resp.readline()
                if not line:
                    return rv  # server closed the watch (timeout): resume from rv
                event = json.loads(line)
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise ConnectionError(f"watch error: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                if etype in ("ADDED", "MODIFIED"):
                    self._apply(obj)
                elif etype == "DELETED":
                    self._apply(None)
            return rv
        finally:
            self.connected.clear()
            resp.close()

    def run_once(self) -> None:
        """List and apply once (used by the CLI, and by start() before the watch)."""
        self._list()

    def _run(self) -> None:
        backoff = 0.5
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                rv = self._watch(rv)
                backoff = 0.5
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.error = f"{exc.__class__.__name__}: {exc}"
                log_once(_logger, f"k8s-source:{exc.__class__.__name__}",
                         "graybaggage: ConfigMap source %s lost (%s); keeping the last good table, retrying with backoff",
                         self.detail, self.error)
                rv = None
                self._stop.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 30.0)

    def start(self) -> "ConfigMapSource[T]":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="graybaggage-configmap-source", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(2)
            except OSError:
                pass
            conn.close()

