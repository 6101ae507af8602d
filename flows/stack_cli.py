"""Operating visionflow: the local real stack, deployments, triggers and run comparison.

    visionflow stack up        # S3 (moto), MLflow, Prefect server and a worker; writes stack.env
    visionflow stack status    # health and UI addresses; --env prints the variables (secrets masked)
    visionflow stack down      # stops them by PID, the worker first
    visionflow deploy          # register infra/prefect.yaml's deployments
    visionflow trigger mnist-pipeline --param epochs=1 --watch
    visionflow runs compare --experiment mnist

The home is ``VISIONFLOW_HOME`` (default ``~/.visionflow``); the stack lives in ``<home>/stack``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cyclopts import App

from tasks.ops import compare as comparing, deploy as deployments, stack
from tasks.track import tracking
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


# -- deployments and runs (mounted by the main CLI as `deploy`, `trigger`, `runs`) ---------------

PREFECT_FILE = Path(__file__).resolve().parents[1] / "infra" / "prefect.yaml"


def _prefect_urls(home: Path) -> tuple[str | None, str | None]:
    stack.apply_env_file(home)  # idempotent: the main CLI has usually done it already
    return os.environ.get("PREFECT_API_URL"), os.environ.get("PREFECT_UI_URL")


def deploy(*names: str, prefect_file: Path = PREFECT_FILE) -> int:
    """Register the deployments of infra/prefect.yaml with the configured Prefect server.

    Parameters
    ----------
    names
        Deployments to register (default: all whose flow file and work pool exist).
    prefect_file
        The prefect.yaml to read.
    """
    home = _home()
    api_url, ui_url = _prefect_urls(home)
    try:
        plan = deployments.register(prefect_file, api_url=api_url, names=list(names) or None,
                                    log=home / "logs" / "deploy.log")
    except deployments.DeployError as exc:
        return _fail(str(exc))
    print(f"Registered {len(plan.register)} deployment(s) on {api_url}:")
    for spec in plan.register:
        crons = ", ".join(f"{s['cron']} {'active' if s.get('active', True) else 'inactive'}"
                          for s in spec.schedules) or "no schedule"
        print(f"  {spec.name:<16} {spec.entrypoint:<36} pool {spec.pool}; {crons}")
    for name, why in plan.skipped.items():
        print(f"  skipped {name}: {why}")
    ui = (ui_url or api_url.removesuffix("/api")).rstrip("/")
    print(f"See them at {ui}/deployments; start one with: visionflow trigger <name> --watch")
    return 0


def trigger(deployment: str, /, *, param: list[str] | None = None, watch: bool = False,
            timeout: float | None = None) -> int:
    """Start a run of a deployment; with --watch, follow it and exit non-zero unless it completes.

    Parameters
    ----------
    deployment
        Deployment name (e.g. mnist-pipeline), or FLOW/DEPLOYMENT where names repeat.
    param
        key=value overrides of the deployment's parameters; "epochs=1" sets cfg.epochs.
    watch
        Follow the run's states and logs to its final state.
    timeout
        With --watch, stop watching after this many seconds (the run goes on).
    """
    api_url, ui_url = _prefect_urls(_home())
    try:
        run = deployments.trigger(deployment, param or [], api_url=api_url, ui_url=ui_url)
    except deployments.DeployError as exc:
        return _fail(str(exc))
    print(f"Flow run {run.flow_run_name} of {run.name}: {run.url}", flush=True)
    if not watch:
        return 0
    try:
        state = deployments.watch(run.id, api_url=api_url, timeout=timeout,
                                  on_state=lambda name, _: print(f"  state: {name}", flush=True),
                                  on_log=lambda line: print(f"  | {line.splitlines()[0]}", flush=True))
    except (TimeoutError, KeyboardInterrupt) as exc:
        return _fail(f"stopped watching ({exc or 'interrupted'}); the run goes on: {run.url}")
    if state.is_completed():
        print(f"Flow run {run.flow_run_name} completed: {run.url}")
        return 0
    return _fail(f"flow run {run.flow_run_name} ended {state.name}: {state.message or ''} ({run.url})")


runs_app = App(name="runs", help="Look at MLflow runs.")


@runs_app.command
def compare(*, experiment: str = "mnist", max_runs: int = 20) -> int:
    """Print a table of an experiment's runs (params that differ, key metrics) and the compare view.

    Parameters
    ----------
    experiment
        MLflow experiment name.
    max_runs
        How many of the latest runs to show.
    """
    home = _home()
    stack.apply_env_file(home)
    uri = tracking.tracking_uri(home, os.environ)
    try:
        table = comparing.runs_table(experiment, tracking_uri=uri, max_runs=max_runs)
    except comparing.CompareError as exc:
        return _fail(str(exc))
    print(comparing.render(table))
    return 0
