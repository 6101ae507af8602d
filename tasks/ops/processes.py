"""Long-running helper processes started by visionflow and stopped by PID, never by name.

Each process starts in its own session, so its process group holds everything it forks (uvicorn
workers, gunicorn children). A process is identified by its PID *and* its start time, read from
``/proc``, so a PID the kernel has since handed to an unrelated program is never signalled. Each
also gets a random tag in its environment, which its descendants inherit: that finds a child that
left the group (a Prefect flow run starts its own session) even after its parent was killed.

    proc = spawn(["moto_server", "-H", "127.0.0.1", "-p", "5001"], log=Path("s3.log"), env=env)
    wait_http("http://127.0.0.1:5001/", proc=proc, timeout=60)
    stop(proc)
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    """A started process: ``pid`` leads its own process group (``pgid == pid``)."""

    pid: int
    start_time: int | None  # clock ticks since boot (/proc/<pid>/stat field 22); None without /proc
    tag: str | None = None  # the value of TAG_VAR in the environment of it and its descendants

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Proc:
        return cls(pid=int(data["pid"]), start_time=data.get("start_time"), tag=data.get("tag"))


TAG_VAR = "VISIONFLOW_PROCESS_TAG"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel calls free right now (another program may still take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start_time) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def spawn(cmd: list[str], *, log: Path, env: dict[str, str], cwd: Path) -> Proc:
    """Start ``cmd`` detached in a new session, stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(8)
    with open(log, "ab") as out:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env={**env, TAG_VAR: tag}, cwd=cwd, start_new_session=True,
                                 close_fds=True)
    stat = _stat(child.pid)
    return Proc(pid=child.pid, start_time=stat[3] if stat else None, tag=tag)


def _tagged(pid: int, tag: str) -> bool:
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:  # gone, or another user's
        return False
    return f"{TAG_VAR}={tag}".encode() in environ.split(b"\0")


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(proc: Proc) -> bool:
    """True while the very process we started runs (a zombie or a reused PID counts as dead)."""
    _reap(proc.pid)
    if not _PROC.is_dir():
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = _stat(proc.pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return proc.start_time is None or stat[3] == proc.start_time


def _tree(proc: Proc) -> list[Proc]:
    """The process, its group and its descendants (even those that started their own session)."""
    if not _PROC.is_dir():
        return [proc] if alive(proc) else []
    table = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] not in ("Z", "X"):
            table[int(entry.name)] = stat
    # Members of our group are ours even when the leader has died: the kernel never hands out a
    # PID that is still a process-group id. So if the PID is in use by another program, our group
    # is empty, and any group of that number is the other program's.
    reused = proc.pid in table and not alive(proc)
    found = set() if reused else {pid for pid, (_, _, pgid, _) in table.items() if pgid == proc.pid}
    if proc.tag:
        found |= {pid for pid in table if pid not in found and _tagged(pid, proc.tag)}
    frontier = set(found)
    while frontier:
        children = {pid for pid, (_, ppid, _, _) in table.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return [Proc(pid, table[pid][3], proc.tag) for pid in sorted(found)]


def family(proc: Proc) -> list[Proc]:
    """Everything of ``proc``'s that still runs: itself, its process group, its descendants."""
    return _tree(proc)


def _signal(procs: list[Proc], sig: int) -> None:
    for p in procs:
        if alive(p):
            try:
                os.kill(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop(proc: Proc, *, grace: float = 10.0) -> str:
    """SIGTERM the process and all it started; SIGKILL whatever is left after ``grace`` seconds.

    Returns "stopped", "killed" (needed the fallback) or "not running".
    """
    tree = _tree(proc)
    if not tree:
        return "not running"
    _signal(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        # Re-read the tree: a process may fork while shutting down.
        tree = _merge(tree, _tree(proc))
        if not any(alive(p) for p in tree):
            return "stopped"
        time.sleep(0.1)
    _signal(_merge(tree, _tree(proc)), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "killed"


def _merge(a: list[Proc], b: list[Proc]) -> list[Proc]:
    return list({p.pid: p for p in [*a, *b]}.values())


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET ``url`` directly (never through an HTTP proxy); True on a 2xx answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(check, *, proc: Proc, timeout: float, what: str) -> None:
    """Block until ``check()`` is true; raise if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive(proc):
            raise RuntimeError(f"process {proc.pid} exited before {what}")
        time.sleep(0.5)
    raise TimeoutError(f"no {what} within {timeout:.0f} s")


def wait_http(url: str, *, proc: Proc, timeout: float) -> None:
    """Block until ``url`` answers 2xx; raise if ``proc`` exits first or ``timeout`` passes."""
    wait_until(lambda: http_ok(url), proc=proc, timeout=timeout, what=f"answer from {url}")
