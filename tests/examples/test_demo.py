"""The local demo, as CI runs it (non-interactive) and as a user stops it (Ctrl-C): right chains, no orphans."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import support

DEMO = support.ROOT / "examples" / "demo.py"
APP = str(support.ROOT / "examples" / "services" / "app.py")


def app_processes() -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if APP in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAYBAGGAGE_", "OTEL_"))}
    env["PATH"] = f"{support.BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_demo_non_interactive_output_and_no_survivors():
    before = app_processes()
    res = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120, env=_env(),
                         stdin=subprocess.DEVNULL)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    xiaoming = next(ln for ln in lines if ln.strip().startswith("xiaoming"))
    others = [ln for ln in lines if ln.strip().startswith(("anyone else", "forged tag"))]
    assert xiaoming.endswith("a[gray] -> b[base] -> c[gray]")
    assert len(others) == 2 and all(ln.endswith("a[base] -> b[base] -> c[base]") for ln in others)
    assert "[6/6] starting edge" in res.stdout  # progress while starting
    assert "all demo processes stopped." in res.stdout
    assert app_processes() - before == set()


def _interrupt_and_check(sig: int, wait_for: str) -> str:
    before = app_processes()
    proc = subprocess.Popen([sys.executable, str(DEMO), "--serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(), stdin=subprocess.DEVNULL, start_new_session=True)
    out = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        if wait_for in line:
            break
    assert app_processes() - before, "the demo's services should be running now"
    os.kill(proc.pid, sig)
    rest, _ = proc.communicate(timeout=30)
    text = "".join(out) + rest
    assert app_processes() - before == set(), text
    return text


def test_ctrl_c_while_serving_leaves_no_orphans():
    text = _interrupt_and_check(signal.SIGINT, "Press Ctrl-C to stop.")
    assert "curl -H 'User-Agent: xiaoming'" in text  # the URLs were printed for the user
    assert "all demo processes stopped." in text


def test_terminated_while_starting_leaves_no_orphans():
    text = _interrupt_and_check(signal.SIGTERM, "[3/6] starting")
    assert "all demo processes stopped." in text


def test_demo_services_can_be_stopped_gracefully():
    """The demo's services do not inherit a blocked SIGTERM (it is held only while each one starts)."""
    proc = subprocess.Popen([sys.executable, str(DEMO), "--serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env(), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Press Ctrl-C" not in proc.stdout.readline():
            pass
        for pid in app_processes():
            status = Path(f"/proc/{pid}/status").read_text()
            blocked = int(next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1], 16)
            assert not blocked & (1 << (signal.SIGTERM - 1)), f"pid {pid} blocks SIGTERM"
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)
