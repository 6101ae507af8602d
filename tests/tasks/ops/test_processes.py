"""Process groups started and stopped by PID: real child processes, no servers."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tasks.ops import processes
from tasks.ops.processes import Proc

# A parent that forks a child in its own group and a grandchild in a new session (as Prefect's
# worker does for flow runs), then sleeps; each writes its PID so the test can watch it.
FAMILY = """
import os, subprocess, sys, time
out = sys.argv[1]
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open(out, "w").write("ready")
time.sleep(600)
"""
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open(__import__('sys').argv[1], 'w').write('ready'); time.sleep(600)"


def _spawn(tmp_path: Path, code: str) -> Proc:
    ready = tmp_path / "ready"
    proc = processes.spawn([sys.executable, "-c", code, str(ready)], log=tmp_path / "log",
                           env=dict(os.environ), cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.05)
    return proc


def test_stop_ends_the_whole_family(tmp_path):
    proc = _spawn(tmp_path, FAMILY)
    family = processes.family(proc)
    assert proc in family and len(family) == 3
    assert processes.stop(proc, grace=5) == "stopped"
    assert processes.family(proc) == []
    assert not any(processes.alive(p) for p in family)


def test_stop_falls_back_to_sigkill(tmp_path):
    proc = _spawn(tmp_path, STUBBORN)
    assert processes.stop(proc, grace=0.5) == "killed"
    assert not processes.alive(proc)


def test_orphans_of_a_killed_leader_are_still_found(tmp_path):
    proc = _spawn(tmp_path, FAMILY)
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes.alive(proc):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The child in the leader's group and the grandchild in its own session survive the crash;
    # both are still found (by group and by the inherited tag) and stopped.
    orphans = processes.family(proc)
    assert len(orphans) == 2
    assert processes.stop(proc, grace=5) == "stopped"
    assert processes.family(proc) == []


def test_a_reused_pid_is_never_signalled(tmp_path):
    proc = _spawn(tmp_path, STUBBORN)
    impostor = Proc(proc.pid, proc.start_time + 1)  # same PID, another process's start time
    assert not processes.alive(impostor)
    assert processes.family(impostor) == []
    assert processes.stop(impostor, grace=0.5) == "not running"
    assert processes.alive(proc)
    processes.stop(proc, grace=0.5)


def test_wait_http_reports_an_early_exit(tmp_path):
    proc = processes.spawn([sys.executable, "-c", "raise SystemExit(3)"], log=tmp_path / "log",
                           env=dict(os.environ), cwd=tmp_path)
    port = processes.free_port()
    with pytest.raises(RuntimeError, match="exited before"):
        processes.wait_http(f"http://127.0.0.1:{port}/", proc=proc, timeout=30)
