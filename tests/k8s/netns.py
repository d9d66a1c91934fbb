"""Network namespaces for the test data plane: run code or commands inside one, name them so a
later run can sweep what a killed run left behind.

Every namespace this package creates is named ``gb<owner pid><kind><id>`` (``gb4711n1`` for the
first node of process 4711, ``gb4711p1x3`` for the third pod on it), so ``sweep_stale()`` can delete those whose owner process is gone, together
with their ``/etc/netns/<name>`` directory. Nothing outside such namespaces is configured: the host's
own network is never touched.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2's ``ip``.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
_NAME = re.compile(r"^gb(\d+)([np])([0-9x]*)$")
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def name_for(owner_pid: int, kind: str, n: int | str = "") -> str:
    assert kind in ("n", "p")
    return f"gb{owner_pid}{kind}{n}"


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and cp.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {cp.returncode}: {cp.stderr.strip()}")
    return cp


def exec_in(netns: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    cp = subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise NetnsError(f"in {netns}: {' '.join(cmd)}: exit {cp.returncode}: {cp.stderr.strip()}")
    return cp


def sysctl(netns: str, key: str, value: str) -> None:
    """Write a per-namespace sysctl (net.*) without a subprocess: /proc/sys is read in a thread that
    has joined the namespace."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as f:
            f.write(value)
    run_in(netns, write)


def create(name: str, resolv_conf: str | None = None, hosts: str | None = None) -> None:
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)
    if resolv_conf is not None or hosts is not None:
        d = ETC_NETNS / name
        d.mkdir(parents=True, exist_ok=True)
        if resolv_conf is not None:   # `ip netns exec` bind-mounts these over /etc/<file>
            (d / "resolv.conf").write_text(resolv_conf)
        if hosts is not None:
            (d / "hosts").write_text(hosts)


def delete(name: str) -> None:
    ip("netns", "del", name, check=False)
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ours(owner_pid: int | None = None) -> list[str]:
    """Namespaces named by this package (of ``owner_pid`` if given)."""
    names = [p.name for p in NETNS_DIR.iterdir()] if NETNS_DIR.is_dir() else []
    out = []
    for n in names:
        m = _NAME.match(n)
        if m and (owner_pid is None or int(m.group(1)) == owner_pid):
            out.append(n)
    return sorted(out)


def sweep_stale() -> list[str]:
    """Delete namespaces (and /etc/netns entries) whose owner process no longer runs: what a test run
    killed with SIGKILL left behind. Their processes died with the owner (PR_SET_PDEATHSIG)."""
    swept = []
    for n in ours():
        if not _alive(int(_NAME.match(n).group(1))):
            delete(n)
            swept.append(n)
    for d in (ETC_NETNS.iterdir() if ETC_NETNS.is_dir() else []):
        m = _NAME.match(d.name)
        if m and not _alive(int(m.group(1))) and not exists(d.name):
            shutil.rmtree(d, ignore_errors=True)
    return swept


def _enter(netns: str) -> None:
    """Move the calling THREAD into ``netns`` (network namespaces are per thread)."""
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise NetnsError(f"setns({netns}): {os.strerror(e)}")
    finally:
        os.close(fd)


def run_in(netns: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh thread inside ``netns`` and return its result (or raise)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _enter(netns)
            box["value"] = fn(*args)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e
    t = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Worker:
    """One long-lived thread inside a namespace: ``call(fn, *args)`` runs fn there (serialised) and
    returns its result. Sockets made by fn belong to that namespace."""

    def __init__(self, netns: str):
        self.netns = netns
        self._q: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"netns-worker-{netns}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error

    def _run(self) -> None:
        try:
            _enter(self.netns)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args, done, box = item
            try:
                box["value"] = fn(*args)
            except BaseException as e:
                box["error"] = e
            done.set()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 60) -> Any:
        done, box = threading.Event(), {}
        self._q.put((fn, args, done, box))
        if not done.wait(timeout):
            raise TimeoutError(f"call in {self.netns} did not finish in {timeout}s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def close(self) -> None:
        self._q.put(None)
