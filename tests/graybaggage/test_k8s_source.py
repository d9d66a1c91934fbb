"""The Kubernetes lane-table source against a real API server: a live service watches the ConfigMap with a
least-privilege service-account token, follows every change within 1 s, and keeps its last good table
while the API server is unreachable."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import support

pytestmark = pytest.mark.k8s


class Cuttable:
    """A TCP forwarder on 127.0.0.1 in front of the API server, whose connections can be cut."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.open.is_set():
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.open.clear()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.sock.close()


def _configmap(ns: str, routes: dict[str, str]) -> str:
    table = {"version": 1, "namespace": ns, "lanes": {"gray": {"fallback": "base", "routes": routes}}}
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "graybaggage-lanes", "namespace": ns},
                       "data": {"lanes.json": json.dumps(table)}})


def _wait(cond, what: str, limit: float) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"{what} not within {limit}s")
        time.sleep(0.02)
    return time.monotonic() - t0


def test_live_service_follows_configmap(k8s_cluster, k8s_namespace, tmp_path: Path):
    ns = k8s_namespace
    env = support.lane_reader_env(k8s_cluster, ns, tmp_path)
    server = urlsplit(env["GRAYBAGGAGE_K8S_SERVER"])
    proxy = Cuttable(server.hostname or "127.0.0.1", server.port or 443)

    c = support.start("c", {"HOP_KIND": "wsgi"})
    cg = support.start("c", {"HOP_KIND": "wsgi", "GRAYBAGGAGE_LANE": "gray"})
    # the library reaches the API server through the cuttable proxy
    b = support.start("b", {"HOP_KIND": "flask", "HOP_NEXT": c.url, **env,
                            "GRAYBAGGAGE_K8S_SERVER": f"https://localhost:{proxy.port}"})
    served = lambda: support.chain_of(support.get(b.url + "/k", {"x-mse-tag": "gray"}))[-1]["served"]  # noqa: E731
    try:
        assert served() == "c[base]"  # no ConfigMap yet: everything on base
        k8s_cluster.kubectl("apply", "-f", "-", input=_configmap(ns, {f"127.0.0.1:{c.port}": f"127.0.0.1:{cg.port}"}))
        took = [_wait(lambda: served() == "c[gray]", "ConfigMap create", 1.0)]
        k8s_cluster.kubectl("apply", "-f", "-", input=_configmap(ns, {}))
        took.append(_wait(lambda: served() == "c[base]", "ConfigMap update", 1.0))
        k8s_cluster.kubectl("apply", "-f", "-", input=_configmap(ns, {f"127.0.0.1:{c.port}": f"127.0.0.1:{cg.port}"}))
        took.append(_wait(lambda: served() == "c[gray]", "ConfigMap update back", 1.0))
        # the API server becomes unreachable: the last good table stays in force
        proxy.cut()
        time.sleep(1.5)
        assert served() == "c[gray]"
        assert "keeping the last good table" in b.log
        # while disconnected the ConfigMap changes; after reconnecting (backoff) the service catches up
        k8s_cluster.kubectl("apply", "-f", "-", input=_configmap(ns, {}))
        proxy.restore()
        took_reconnect = _wait(lambda: served() == "c[base]", "catch-up after reconnect", 35.0)
        k8s_cluster.kubectl("delete", "configmap", "graybaggage-lanes", "-n", ns)
        print(f"\nConfigMap changes seen after {[f'{t * 1000:.0f} ms' for t in took]}; "
              f"caught up {took_reconnect:.1f}s after the API server came back")
        assert "HTTP 403" not in b.log and "Forbidden" not in b.log  # the least-privilege Role was enough
    finally:
        for s in (b, c, cg):
            s.kill()
        proxy.close()
