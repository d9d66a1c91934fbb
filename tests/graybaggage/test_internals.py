"""A library version graybaggage does not support, or an internal it needs that moved, never breaks a
request: real server and real client on 127.0.0.1, in-process.

One row per (integration, what breaks):
- ``version``: the installed version is outside the integration's ``_instruments``: the integration stays
  off (one log line naming the library, its version and what is lost), every request is served (on base).
- ``missing``: a declared internal is absent when graybaggage patches (removed by monkeypatch, then put back
  so the library itself works): same outcome.
- ``request-path``: an internal the hook uses per request fails after patching: the hook steps aside (logged
  once), each call goes out unchanged (no lane), no exception reaches the application.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest

import graybaggage
from graybaggage import _log, integrations


def _table(base_port: int, target_port: int) -> str:
    return json.dumps({"version": 1, "lanes": {"gray": {"fallback": "base", "routes": {
        f"127.0.0.1:{base_port}": f"127.0.0.1:{target_port}"}}}})


def _call(client: str, url: str) -> dict:
    if client == "requests":
        import requests

        r = requests.get(url, timeout=10)
        r.raise_for_status()
        return r.json()
    if client == "urllib3":
        import urllib3

        r = urllib3.PoolManager().request("GET", url, timeout=10.0)
        assert r.status == 200
        return json.loads(r.data)
    if client == "urllib":
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    if client == "httpx":
        import httpx

        r = httpx.get(url, timeout=10)
        r.raise_for_status()
        return r.json()
    if client == "aiohttp":
        import aiohttp

        async def go() -> dict:
            async with aiohttp.ClientSession() as s:
                async with s.get(url) as r:
                    assert r.status == 200
                    return json.loads(await r.read())

        return asyncio.run(go())
    raise ValueError(client)


class _Raising:
    def __init__(self, *a: object, **k: object) -> None:
        raise TypeError("internal moved (test)")


def _break_request_path(client: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the internal the client's hook uses on each request fail, as if the library had changed it."""
    if client == "urllib3":
        from graybaggage.integrations import urllib3 as hook

        monkeypatch.setattr(hook, "_HTTPHeaderDict", _Raising)
    elif client == "aiohttp":
        from graybaggage.integrations import aiohttp as hook

        monkeypatch.setattr(hook, "_CIMultiDict", _Raising)
    elif client == "httpx":
        import httpx

        monkeypatch.setattr(httpx.URL, "copy_with", _Raising)
    elif client == "urllib":
        import urllib.request

        monkeypatch.setattr(urllib.request.Request, "get_header", _Raising)
    elif client == "requests":
        from graybaggage.integrations import requests as hook

        monkeypatch.setattr(hook, "_lane_headers", _Raising)  # the CaseInsensitiveDict._store fast path


MISSING = {  # one declared internal per client, removed while graybaggage patches
    "requests": ("requests.adapters", "HTTPAdapter", "send"),
    "urllib3": ("urllib3.connectionpool", None, "HTTPHeaderDict"),
    "urllib": ("urllib.request", "Request", "remove_header"),
    "httpx": ("httpx", "URL", "copy_with"),
    "aiohttp": ("aiohttp.client", None, "CIMultiDict"),
}
DIST = {"requests": "requests", "urllib3": "urllib3", "httpx": "httpx", "aiohttp": "aiohttp"}

ROWS = [(c, "version") for c in DIST] + [(c, "missing") for c in MISSING] + [(c, "request-path") for c in MISSING]


@pytest.mark.parametrize("client,breakage", ROWS)
def test_a_moved_internal_never_breaks_a_request(client, breakage, base_server, monkeypatch, caplog, refused_port):
    import importlib

    importlib.import_module({"urllib": "urllib.request", "aiohttp": "aiohttp.client"}.get(client, client))
    if client in ("urllib3", "requests"):
        importlib.import_module("urllib3.poolmanager")
        importlib.import_module("requests.adapters")
    _log._reset_for_tests()
    caplog.set_level(logging.INFO)
    target = refused_port  # nothing listens there: only a working hook would try it
    table = _table(base_server.server_port, target)
    undo: list = []
    if breakage == "version":
        real = integrations.installed_version
        monkeypatch.setattr(integrations, "installed_version",
                            lambda dist: "0.1" if dist.lower() == DIST[client] else real(dist))
    elif breakage == "missing":
        mod, cls, attr = MISSING[client]
        owner = importlib.import_module(mod)
        owner = getattr(owner, cls) if cls else owner
        saved = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        delattr(owner, attr)
        undo.append(lambda: setattr(owner, attr, saved))
    try:
        graybaggage.instrument(table_json=table, fallback_down_seconds=0.0)
    finally:
        for u in undo:
            u()
    try:
        if breakage == "request-path":
            _break_request_path(client, monkeypatch)
        url = f"http://127.0.0.1:{base_server.server_port}/x"
        with graybaggage.lane("gray"):
            answers = [_call(client, url) for _ in range(3)]
        # served by base (never re-routed), without a lane: lost, never broken. requests' own hook is off but
        # the urllib3 hook underneath still carries the lane; httpx's hook had set the lane headers before the
        # re-routing step failed.
        lane = "gray" if client == "requests" or (client, breakage) == ("httpx", "request-path") else None
        assert answers == [{"lane": lane}] * 3
        assert base_server.seen == [("GET", lane)] * 3
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("graybaggage")
                 and ("stays off" in r.getMessage() or "failed before the call" in r.getMessage())]
        assert len(lines) == 1, lines
        if breakage == "version":
            assert f"{DIST[client]} 0.1 is not a supported version" in lines[0] and "stays off" in lines[0]
        elif breakage == "missing":
            assert MISSING[client][2] in lines[0] and "lane" in lines[0]
        else:
            assert f"the {client} integration's hook" in lines[0]
    finally:
        graybaggage.uninstrument()


def test_checks_read_every_declared_internal():
    """Each integration declares versions, internals and what is lost; every declared internal exists in the
    installed libraries (an internal that moved fails here first, naming it)."""
    import importlib

    for name in integrations.ALL:
        mod = importlib.import_module(f"graybaggage.integrations.{name}")
        assert isinstance(mod._instruments, tuple) and isinstance(mod._lost, str)
        assert set(mod._internals) == set(mod.MODULES), name
        for target in mod.MODULES:
            try:
                lib = importlib.import_module(target)
            except ImportError:
                continue
            assert integrations.check(mod, target, lib) is None, (name, target)


def test_a_server_whose_framework_moved_still_serves(monkeypatch, caplog):
    """Flask reported at an unsupported version: the Flask hook stays off, the werkzeug server hook still
    gives requests their lane; every request is served."""
    import flask
    import requests
    from werkzeug.serving import make_server

    _log._reset_for_tests()
    caplog.set_level(logging.INFO)
    real = integrations.installed_version
    monkeypatch.setattr(integrations, "installed_version", lambda d: "0.1" if d.lower() == "flask" else real(d))
    graybaggage.instrument(table_json='{"version": 1, "lanes": {}}')
    try:
        app = flask.Flask("t")
        app.add_url_rule("/", "lane", lambda: {"lane": graybaggage.current_lane()})
        srv = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{srv.server_port}/"
            got = [requests.get(url, headers={"x-mse-tag": "gray"}, timeout=10).json() for _ in range(3)]
        finally:
            srv.shutdown()
        assert got == [{"lane": "gray"}] * 3
        lines = [r.getMessage() for r in caplog.records if "flask 0.1" in r.getMessage().lower()]
        assert len(lines) == 1 and "stays off" in lines[0], lines
    finally:
        graybaggage.uninstrument()


@pytest.mark.parametrize("name,target,dist", [
    ("grpc", "grpc", "grpcio"),            # module named otherwise than its distribution (_distribution)
    ("celery", "celery.app.amqp", "celery"),
    ("celery", "celery.worker.worker", "celery"),
    ("requests", "requests.adapters", "requests"),
])
def test_the_version_check_names_the_distribution(name, target, dist, monkeypatch):
    """An unsupported installed version turns the integration off, naming the distribution that was checked
    (grpc's is grpcio: without the mapping the check would silently pass)."""
    import importlib

    mod = importlib.import_module(f"graybaggage.integrations.{name}")
    lib = importlib.import_module(target)
    assert integrations.check(mod, target, lib) is None
    real = integrations.installed_version
    monkeypatch.setattr(integrations, "installed_version", lambda d: "0.1" if d == dist else real(d))
    problem = integrations.check(mod, target, lib)
    assert problem is not None and f"{dist} 0.1 is not a supported version" in problem, problem
    assert f"the {name} integration stays off" in problem
