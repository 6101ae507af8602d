"""`visionflow stack up | down | status`: the local real stack on 127.0.0.1 (see tasks/stack.py).

    visionflow stack up        # S3 (moto), MLflow, Prefect server and a worker; writes stack.env
    visionflow stack status    # health and UI addresses; --env prints the variables (secrets masked)
    visionflow stack down      # stops them by PID, the worker first

The home is ``VISIONFLOW_HOME`` (default ``~/.visionflow``); the stack lives in ``<home>/stack``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cyclopts import App

from tasks import stack
from tasks.config import resolve_home

stack_app = App(name="stack", help="Start, stop and check the local real stack on 127.0.0.1.")


def _home() -> Path:
    return resolve_home(os.environ)


def _fail(message: str) -> int:
    print(f"visionflow: error: {message}", file=sys.stderr)
    return 1


@stack_app.command
def up(*, timeout: float = 240.0) -> int:
    """Start an S3 endpoint, an MLflow server, a Prefect server and a worker on free ports.

    Parameters
    ----------
    timeout
        Seconds to wait for each service to answer before giving up (and stopping the rest).
    """
    home = _home()
    try:
        if not stack.status(home).running:
            print(f"Starting the stack under {stack.stack_dir(home)} (about a minute) ...", flush=True)
        info = stack.up(home, timeout=timeout)
    except stack.StackError as exc:
        return _fail(str(exc))
    verb = "already running" if info.reused else "started"
    print(f"Stack {verb} under {stack.stack_dir(home)}")
    for label, address in info.ui().items():
        print(f"  {label:<12} {address}")
    print(f"  {'worker':<12} pool {stack.POOL} (pid {info.services['worker'].pid})")
    print(f"Env file {info.env_file} (mode 0600): visionflow commands read it; "
          f"other shells: set -a; . {info.env_file}; set +a")
    print("Stop it with: visionflow stack down")
    return 0


@stack_app.command
def down(*, grace: float = 10.0) -> int:
    """Stop the stack: worker, Prefect, MLflow, S3 (SIGTERM, then SIGKILL after --grace seconds).

    Parameters
    ----------
    grace
        Seconds each service gets to exit after SIGTERM before it is killed.
    """
    home = _home()
    try:
        outcome = stack.down(home, grace=grace)
    except stack.StackError as exc:
        return _fail(str(exc))
    if not outcome:
        print(f"No stack recorded under {stack.stack_dir(home)}; nothing to stop.")
        return 0
    for name, result in outcome.items():
        print(f"  {name:<8} {result}")
    print("Stack stopped; visionflow commands use the embedded defaults again.")
    return 0


@stack_app.command
def status(*, env: bool = False) -> int:
    """Show each service's process and health check, and the UI addresses. Exit 1 unless healthy.

    Parameters
    ----------
    env
        Also print the variables of the env file (secrets masked).
    """
    home = _home()
    try:
        report = stack.status(home)
    except stack.StackError as exc:
        return _fail(str(exc))
    if not report.running:
        print(f"No stack running under {stack.stack_dir(home)}; start one with: visionflow stack up")
        return 1
    print(f"{'service':<8} {'pid':>7}  {'health':<7} {'address':<24} detail")
    for h in report.services:
        state = "ok" if h.healthy else ("down" if not h.alive else "failing")
        print(f"{h.name:<8} {h.pid:>7}  {state:<7} {h.url or '-':<24} {h.detail}")
    if env:
        print(stack.format_env(stack.load_env_file(home)))
    if not report.healthy:
        print("The stack is not healthy: run `visionflow stack down`, then `visionflow stack up`.")
        return 1
    return 0
