"""Deployments: register those of ``infra/prefect.yaml`` with a Prefect server, trigger one by name.

    specs = deploy.load(Path("infra/prefect.yaml"))
    deploy.register(Path("infra/prefect.yaml"), api_url="http://127.0.0.1:4200/api")
    run = deploy.trigger("mnist-pipeline", ["epochs=1"], api_url=..., ui_url=...)
    final = deploy.watch(run.id, api_url=..., on_log=print)

Registration runs Prefect's own ``prefect deploy`` from the repository root, so the file means
exactly what Prefect documents (aliases, schedules, pull steps); what visionflow adds is checking
first that the server answers, the pools exist and the flows' files are there, so that a bad
setup is one clear line and nothing half-registered.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from uuid import UUID

from tasks.ops import processes

_ENV_TEMPLATE = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")


class DeployError(RuntimeError):
    """Deployments could not be registered or triggered; the message says what to do."""


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str
    pool: str
    parameters: dict = field(default_factory=dict)
    schedules: tuple[dict, ...] = ()
    env_vars: tuple[str, ...] = ()  # `{{ $VAR }}` templates Prefect fills in at deploy time

    @property
    def flow_file(self) -> str:
        return self.entrypoint.rsplit(":", 1)[0]


@dataclass(frozen=True)
class Triggered:
    id: UUID
    name: str  # flow-name/deployment-name
    flow_run_name: str
    url: str
    parameters: dict


# -- prefect.yaml -----------------------------------------------------------------------------------

def load(prefect_file: Path) -> list[DeploymentSpec]:
    """The deployments of a prefect.yaml (YAML aliases resolved), checked for the keys they need."""
    import yaml

    try:
        doc = yaml.safe_load(Path(prefect_file).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DeployError(f"{prefect_file}: cannot read deployments ({exc})") from None
    specs = []
    for i, entry in enumerate((doc or {}).get("deployments") or []):
        where = f"{prefect_file}: deployments[{i}]"
        missing = [k for k in ("name", "entrypoint", "work_pool") if not entry.get(k)]
        if missing or not entry["work_pool"].get("name"):
            raise DeployError(f"{where} needs {', '.join(missing or ['work_pool.name'])}")
        specs.append(DeploymentSpec(
            name=entry["name"], entrypoint=entry["entrypoint"], pool=entry["work_pool"]["name"],
            parameters=entry.get("parameters") or {}, schedules=tuple(entry.get("schedules") or ()),
            env_vars=tuple(sorted(set(_ENV_TEMPLATE.findall(json.dumps(entry)))))))
    names = [s.name for s in specs]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise DeployError(f"{prefect_file}: deployment names must be unique, repeated: {', '.join(dupes)}")
    return specs


# -- the server ------------------------------------------------------------------------------------

def check_server(api_url: str | None) -> str:
    """The API URL, once its server answers; otherwise a DeployError saying how to get one."""
    if not api_url:
        raise DeployError("no Prefect server is configured (PREFECT_API_URL is unset): start the "
                          "local stack with `visionflow stack up`, or set PREFECT_API_URL")
    if not processes.http_ok(f"{api_url.rstrip('/')}/health", timeout=5):
        raise DeployError(f"the Prefect server at {api_url} does not answer: start it with "
                          f"`visionflow stack up`, or point PREFECT_API_URL at a running one")
    return api_url.rstrip("/")


def _client(api_url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def _pools(api_url: str) -> set[str]:
    with _client(api_url) as client:
        return {pool.name for pool in client.read_work_pools()}


# -- register ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    register: list[DeploymentSpec]
    skipped: dict[str, str]  # deployment name → why it is left out


def plan(specs: list[DeploymentSpec], *, root: Path, pools: set[str], names: list[str] | None,
         environ: dict) -> Plan:
    """Which deployments to register. Named ones must all be registrable; without names, those
    whose flow file or work pool does not exist yet are skipped, each with its reason."""
    known = {s.name: s for s in specs}
    if unknown := [n for n in names or [] if n not in known]:
        raise DeployError(f"unknown deployment {', '.join(unknown)}; infra/prefect.yaml has "
                          f"{', '.join(known)}")
    chosen = [known[n] for n in names] if names else specs
    register, skipped = [], {}
    for spec in chosen:
        if not (root / spec.flow_file).is_file():
            skipped[spec.name] = f"{spec.flow_file} does not exist yet"
        elif spec.pool not in pools:
            skipped[spec.name] = (f"work pool {spec.pool} does not exist on the server (see the "
                                  f"comments in infra/prefect.yaml to create it)")
        elif unset := [v for v in spec.env_vars if not environ.get(v)]:
            skipped[spec.name] = f"set {', '.join(unset)} first"
        else:
            register.append(spec)
    if names and skipped:
        raise DeployError("; ".join(f"{n}: {why}" for n, why in skipped.items()))
    return Plan(register, skipped)


def register(prefect_file: Path, *, api_url: str | None, names: list[str] | None = None,
             root: Path | None = None, environ: dict | None = None, log: Path | None = None) -> Plan:
    """Register deployments with ``prefect deploy``, run from the repository ``root`` (default:
    the parent of the folder holding ``prefect_file``), where the entrypoints' paths start and
    where the worker will load the flows from. Prefect's own output goes to ``log`` if given."""
    environ = dict(os.environ if environ is None else environ)
    prefect_file = Path(prefect_file).resolve()
    root = Path(root).resolve() if root else prefect_file.parent.parent
    api_url = check_server(api_url)
    chosen = plan(load(prefect_file), root=root, pools=_pools(api_url), names=names, environ=environ)
    if not chosen.register:
        return chosen
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    for spec in chosen.register:
        cmd += ["--name", spec.name]
    env = {**environ, "PREFECT_API_URL": api_url}
    done = subprocess.run(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        lines = [ln.strip(" │╭╮╰╯─") for ln in (done.stdout + done.stderr).splitlines()]
        last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
        raise DeployError(f"prefect deploy failed: {last}" + (f" (full output in {log})" if log else ""))
    return chosen


# -- trigger and watch ----------------------------------------------------------------------------

def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=1", "cfg.source=/data"]`` → ``{"epochs": 1, "cfg.source": "/data"}``.

    Values are read as JSON where they parse (numbers, true/false/null, lists), else as text.
    """
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise DeployError(f"--param {pair!r}: expected key=value")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def merge_params(defaults: dict, overrides: dict[str, Any], schema: dict) -> dict:
    """The deployment's parameters with ``overrides`` set at their dotted paths.

    A key that is not a flow parameter goes inside the flow's single parameter (``epochs`` means
    ``cfg.epochs`` for a flow ``f(cfg: Config)``), so the UI's form and the CLI agree.
    """
    merged = json.loads(json.dumps(defaults))
    top = list((schema or {}).get("properties", {}))
    for key, value in overrides.items():
        path = key.split(".")
        if path[0] not in top:
            if len(top) != 1:
                raise DeployError(f"--param {key}: not a parameter of this flow ({', '.join(top) or 'none'})")
            path = [top[0], *path]
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DeployError(f"--param {key}: {part} is not an object")
        node[path[-1]] = value
    return merged


def _find(client, name: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    flow_name, _, dep_name = name.rpartition("/")
    found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[dep_name])))
    if flow_name:
        flows = {f.id: f.name for f in client.read_flows()}
        found = [d for d in found if flows.get(d.flow_id) == flow_name]
    if len(found) == 1:
        return found[0]
    if not found:
        names = sorted({d.name for d in client.read_deployments()})
        known = ", ".join(names) if names else "none yet"
        raise DeployError(f"unknown deployment {name!r} (registered: {known}); "
                          f"register them with `visionflow deploy`")
    raise DeployError(f"deployment name {name!r} is ambiguous: give it as <flow>/{dep_name}")


def _validation_error(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if response is None or response.status_code not in (409, 422):
        return None
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # FastAPI's request validation errors
        detail = "; ".join(str(d.get("msg", d)) for d in detail)
    return str(detail).removeprefix("Error creating flow run: ")


def trigger(name: str, params: list[str], *, api_url: str | None, ui_url: str | None = None) -> Triggered:
    """Create a flow run of deployment ``name`` with ``key=value`` overrides of its parameters.

    The server validates the parameters against the flow's model before it creates anything.
    """
    api_url = check_server(api_url)
    ui_url = (ui_url or api_url.removesuffix("/api")).rstrip("/")
    overrides = parse_params(params)
    with _client(api_url) as client:
        deployment = _find(client, name)
        parameters = merge_params(deployment.parameters or {}, overrides, deployment.parameter_openapi_schema)
        try:
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        except Exception as exc:  # noqa: BLE001 — only a rejected parameter set is the user's to fix
            message = _validation_error(exc)
            if message is None:
                raise
            raise DeployError(f"{name}: parameters rejected: {message}") from None
        flow_name = next((f.name for f in client.read_flows() if f.id == deployment.flow_id), "?")
    return Triggered(run.id, f"{flow_name}/{deployment.name}", run.name,
                     f"{ui_url}/runs/flow-run/{run.id}", parameters)


def watch(run_id: UUID, *, api_url: str, on_state: Callable[[str, str], None] = lambda s, m: None,
          on_log: Callable[[str], None] = lambda line: None, poll: float = 2.0,
          timeout: float | None = None):
    """Follow a flow run to its final state, reporting state changes and its log lines.
    Returns the final state (``state.is_completed()`` tells success)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    deadline = None if timeout is None else time.monotonic() + timeout
    seen_state, seen_logs = None, 0
    with _client(api_url) as client:
        while True:
            run = client.read_flow_run(run_id)
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                    sort=LogSort.TIMESTAMP_ASC, offset=seen_logs, limit=200)
            for entry in logs:
                on_log(f"{entry.timestamp:%H:%M:%S} {entry.message}")
            seen_logs += len(logs)
            state = run.state
            if state is not None and state.name != seen_state:
                seen_state = state.name
                on_state(state.name, state.message or "")
            if state is not None and state.is_final() and len(logs) < 200:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run_id} is still {seen_state} after {timeout:.0f} s")
            time.sleep(poll)
