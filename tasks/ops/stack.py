"""The local real stack: an S3 endpoint, an MLflow server, a Prefect server and a worker on 127.0.0.1.

``up`` starts, on free loopback ports, moto's S3 server (bucket created), MLflow (SQLite backend,
artifacts proxied to the bucket), a Prefect server and a worker for the ``visionflow-local``
process pool, and writes ``<home>/stack/stack.env`` (mode 0600), which every visionflow command
applies at startup (variables the user already set win). ``down`` stops them by PID, worker
first; ``status`` checks each over HTTP. ``stop_one`` and ``start_one`` stop and restart a single
service on its recorded port (a server restarted under its clients, as the outage tests do).

    from tasks.ops import stack
    info = stack.up(Path("~/.visionflow").expanduser())
    print(info.services["prefect"].url)
    stack.down(info.home)

Everything lives under ``<home>/stack``: ``state.json`` (PIDs and ports), ``stack.env``, the
SQLite stores, and ``logs/<service>.log``. moto keeps the bucket in memory: it is empty again
after a restart of the stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks.ops import processes
from tasks.ops.processes import Proc

HOST = "127.0.0.1"
BUCKET = "visionflow"
POOL = "visionflow-local"
WORKER_NAME = "visionflow-stack-worker"
START_ORDER = ("s3", "mlflow", "prefect", "worker")  # stopped in reverse: the worker first
# moto accepts any credentials; these are its documented test values, not secrets.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
# Never handed to the stack's processes: a cloud credential has no business on a local server.
_DROPPED = ("PREFECT_API_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
_SECRET_KEY = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_KEY|AUTH", re.IGNORECASE)


class StackError(RuntimeError):
    """The stack could not be started, stopped or read; the message says what to do."""


@dataclass(frozen=True)
class Service:
    name: str
    pid: int
    start_time: int | None
    port: int | None  # None for the worker, which serves nothing
    log: Path
    tag: str | None = None  # see tasks/processes.py: finds its descendants after a crash

    @property
    def url(self) -> str | None:
        return f"http://{HOST}:{self.port}" if self.port else None

    @property
    def proc(self) -> Proc:
        return Proc(self.pid, self.start_time, self.tag)


@dataclass(frozen=True)
class StackInfo:
    home: Path
    services: dict[str, Service]
    env_file: Path
    bucket: str
    reused: bool  # True when ``up`` found this stack already running and started nothing

    def ui(self) -> dict[str, str]:
        """The addresses a person opens: the two UIs and the S3 endpoint (moto's dashboard)."""
        s = self.services
        return {"Prefect UI": s["prefect"].url, "MLflow UI": s["mlflow"].url,
                "S3 endpoint": f"{s['s3'].url}  (bucket {self.bucket}, dashboard {s['s3'].url}/moto-api/)"}


@dataclass(frozen=True)
class Health:
    name: str
    pid: int
    url: str | None
    alive: bool
    healthy: bool
    detail: str


@dataclass(frozen=True)
class StackStatus:
    home: Path
    services: list[Health]  # empty when no stack is recorded

    @property
    def running(self) -> bool:
        return bool(self.services)

    @property
    def healthy(self) -> bool:
        return self.running and all(h.healthy for h in self.services)


# -- files -------------------------------------------------------------------------------------

def stack_dir(home: Path) -> Path:
    return Path(home) / "stack"


def env_file(home: Path) -> Path:
    return stack_dir(home) / "stack.env"


def _state_file(home: Path) -> Path:
    return stack_dir(home) / "state.json"


def _read_state(home: Path) -> dict | None:
    path = _state_file(home)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"{path}: unreadable stack state ({exc}); stop its processes by hand "
                         f"and delete the file") from None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, readable by the owner alone (mode 0600 from the first byte)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)
    os.replace(tmp, path)


def _write_state(home: Path, state: dict) -> None:
    _write_private(_state_file(home), json.dumps(state, indent=2))


def _services(home: Path, state: dict) -> dict[str, Service]:
    return {name: Service(name=name, pid=s["pid"], start_time=s.get("start_time"), port=s.get("port"),
                          log=Path(s["log"]), tag=s.get("tag"))
            for name, s in state.get("services", {}).items()}


@contextlib.contextmanager
def _lock(home: Path):
    """One ``up`` or ``down`` at a time per home."""
    stack_dir(home).mkdir(parents=True, exist_ok=True)
    with open(stack_dir(home) / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# -- the env file --------------------------------------------------------------------------------

def _client_env(ports: dict[str, int]) -> dict[str, str]:
    return {"PREFECT_API_URL": f"http://{HOST}:{ports['prefect']}/api",
            "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
            "AWS_ENDPOINT_URL": f"http://{HOST}:{ports['s3']}",
            **TEST_CREDENTIALS}


def _write_env_file(home: Path, env: dict[str, str]) -> None:
    lines = ["# Written by `visionflow stack up`; removed by `visionflow stack down`.",
             "# Other shells: set -a; . ./stack.env; set +a"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in env.items()]
    _write_private(env_file(home), "\n".join(lines) + "\n")


def load_env_file(home: Path) -> dict[str, str]:
    """The variables of ``<home>/stack/stack.env``; empty when no stack is up."""
    path = env_file(home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    env = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.isidentifier():
            raise StackError(f"{path}:{number}: not a KEY=value line; run `visionflow stack down` "
                             f"and `up` again to rewrite it")
        words = shlex.split(value)
        if len(words) > 1:
            raise StackError(f"{path}:{number}: {key} has an unquoted space; run `visionflow stack "
                             f"down` and `up` again to rewrite the file")
        env[key] = words[0] if words else ""
    return env


def apply_env_file(home: Path, environ: dict | None = None) -> dict[str, str]:
    """Put the stack's variables into ``environ`` (default ``os.environ``) where not already set.

    Returns the variables applied, so a caller may report where its servers came from.
    """
    environ = os.environ if environ is None else environ
    applied = {k: v for k, v in load_env_file(home).items() if k not in environ}
    environ.update(applied)
    return applied


def mask(key: str, value: str) -> str:
    """``value`` fit to print: secrets starred out, passwords removed from URLs."""
    if _SECRET_KEY.search(key):
        return "****"
    return re.sub(r"(?<=://)([^/@:\s]+):[^/@\s]*@", r"\1:****@", value)


def format_env(env: dict[str, str]) -> str:
    return "\n".join(f"{key}={mask(key, value)}" for key, value in env.items())


# -- processes -------------------------------------------------------------------------------------

def _process_env(home: Path, client_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    # A schedule registered by `visionflow deploy` gets its runs within seconds, not a minute.
    env.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "10")
    bindir = str(Path(sys.executable).parent)
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY") or env.get("no_proxy"), HOST, "localhost"]))
    env.update(client_env)
    env.update({
        "PATH": os.pathsep.join([bindir, env.get("PATH", "")]),
        "NO_PROXY": no_proxy, "no_proxy": no_proxy,
        "VISIONFLOW_HOME": str(home),
        "PREFECT_HOME": str(stack_dir(home) / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        # MLflow's GenAI job runner forks eight huey consumers that visionflow never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # MLflow's S3 artifact store honours its own variable before boto3's.
        "MLFLOW_S3_ENDPOINT_URL": client_env["AWS_ENDPOINT_URL"],
    })
    return env


def _command(name: str, home: Path, ports: dict[str, int]) -> list[str]:
    py = sys.executable
    if name == "s3":
        return [py, "-m", "moto.server", "-H", HOST, "-p", str(ports["s3"])]
    if name == "mlflow":
        db = stack_dir(home) / "mlflow.db"
        return [py, "-m", "mlflow", "server", "--host", HOST, "--port", str(ports["mlflow"]),
                "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
                "--artifacts-destination", f"s3://{BUCKET}/mlflow"]
    if name == "prefect":
        return [py, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(ports["prefect"]),
                "--analytics-off"]
    if name == "worker":
        return [py, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process",
                "--name", WORKER_NAME]
    raise ValueError(name)


_HEALTH_PATH = {"s3": "/", "mlflow": "/health", "prefect": "/api/health"}


def _worker_online(prefect_port: int) -> bool:
    """The Prefect server lists our worker as ONLINE in the pool (it has polled recently)."""
    url = f"http://{HOST}:{prefect_port}/api/work_pools/{POOL}/workers/filter"
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=3) as response:
            workers = json.load(response)
    except (OSError, ValueError):
        return False
    return any(w.get("name") == WORKER_NAME and w.get("status") == "ONLINE" for w in workers)


def _wait_healthy(name: str, proc: Proc, ports: dict[str, int], timeout: float) -> None:
    if name != "worker":
        processes.wait_http(f"http://{HOST}:{ports[name]}{_HEALTH_PATH[name]}", proc=proc, timeout=timeout)
        return
    processes.wait_until(lambda: _worker_online(ports["prefect"]), proc=proc, timeout=timeout,
                         what=f"worker {WORKER_NAME} online in pool {POOL}")


def _create_bucket(endpoint: str) -> None:
    import boto3

    creds = TEST_CREDENTIALS
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=creds["AWS_DEFAULT_REGION"],
                      aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=BUCKET)


# -- up / down / status --------------------------------------------------------------------------

def up(home: Path, *, timeout: float = 240.0) -> StackInfo:
    """Start the stack under ``home``, or report the one already running there.

    A stack left half-dead by a crash is cleaned first. If any part fails to start, everything
    started so far is stopped again and ``StackError`` names the part and its log.
    """
    home = Path(home)
    with _lock(home):
        state = _read_state(home)
        if state is not None:
            services = _services(home, state)
            if services and all(processes.alive(s.proc) for s in services.values()) \
                    and set(services) == set(START_ORDER):
                return StackInfo(home, services, env_file(home), state["bucket"], reused=True)
            _stop_recorded(home, state)
        return _start(home, timeout)


def _start(home: Path, timeout: float) -> StackInfo:
    logs = stack_dir(home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ports = {name: processes.free_port(HOST) for name in ("s3", "mlflow", "prefect")}
    client_env = _client_env(ports)
    env = _process_env(home, client_env)
    state = {"bucket": BUCKET, "services": {}}
    name = START_ORDER[0]
    try:
        for name in START_ORDER:
            log = logs / f"{name}.log"
            proc = processes.spawn(_command(name, home, ports), log=log, env=env, cwd=stack_dir(home))
            # Recorded before waiting, so that `down` can clean up even if this call is killed.
            state["services"][name] = {**proc.to_json(), "port": ports.get(name), "log": str(log)}
            _write_state(home, state)
            _wait_healthy(name, proc, ports, timeout)
            if name == "s3":
                _create_bucket(client_env["AWS_ENDPOINT_URL"])
        _write_env_file(home, client_env)
    except BaseException as exc:
        _stop_recorded(home, state)
        if not isinstance(exc, Exception):
            raise
        raise StackError(f"stack {name} did not start ({exc}); see {logs / (name + '.log')}") from None
    return StackInfo(home, _services(home, state), env_file(home), BUCKET, reused=False)


def _stop_recorded(home: Path, state: dict, grace: float = 10.0) -> dict[str, str]:
    services = _services(home, state)
    result = {}
    for name in reversed(START_ORDER):
        if name in services:
            result[name] = processes.stop(services[name].proc, grace=grace)
    for path in (env_file(home), _state_file(home)):
        path.unlink(missing_ok=True)
    return result


def down(home: Path, *, grace: float = 10.0) -> dict[str, str]:
    """Stop the stack under ``home``: worker, Prefect, MLflow, S3; SIGTERM, then SIGKILL after
    ``grace`` seconds. Returns each service's outcome ("stopped", "killed", "not running"); an
    empty dict when no stack was recorded. The state and env files are removed either way.
    """
    home = Path(home)
    with _lock(home):
        state = _read_state(home)
        if state is None:
            env_file(home).unlink(missing_ok=True)
            return {}
        return _stop_recorded(home, state, grace)


def stop_one(home: Path, name: str, *, grace: float = 10.0) -> str:
    """Stop one service's process tree and leave it recorded, so ``start_one`` brings it back
    on the same port (its clients' addresses stay right) and ``status`` reports it down."""
    home = Path(home)
    with _lock(home):
        return processes.stop(_recorded(home, name).proc, grace=grace)


def start_one(home: Path, name: str, *, timeout: float = 240.0) -> Service:
    """Start one recorded service again on its port, if it is not running; waits until healthy."""
    home = Path(home)
    with _lock(home):
        service = _recorded(home, name)
        if processes.alive(service.proc):
            return service
        processes.stop(service.proc, grace=5)  # children that outlived it would hold the port
        state = _read_state(home)
        ports = {n: s["port"] for n, s in state["services"].items() if s.get("port")}
        proc = processes.spawn(_command(name, home, ports), log=service.log,
                               env=_process_env(home, _client_env(ports)), cwd=stack_dir(home))
        state["services"][name] = {**proc.to_json(), "port": service.port, "log": str(service.log)}
        _write_state(home, state)
        try:
            _wait_healthy(name, proc, ports, timeout)
        except Exception as exc:
            raise StackError(f"stack {name} did not restart ({exc}); see {service.log}") from None
        return _services(home, state)[name]


def _recorded(home: Path, name: str) -> Service:
    state = _read_state(home)
    services = _services(home, state) if state else {}
    if name not in services:
        raise StackError(f"no {name} service recorded under {stack_dir(home)}; start the stack with "
                         f"`visionflow stack up`")
    return services[name]


def status(home: Path) -> StackStatus:
    """Each recorded service: is its process alive, and does it answer its health check."""
    home = Path(home)
    state = _read_state(home)
    if state is None:
        return StackStatus(home, [])
    services = _services(home, state)
    ports = {name: s.port for name, s in services.items()}
    report = []
    for name in START_ORDER:
        if name not in services:
            continue
        s = services[name]
        alive = processes.alive(s.proc)
        if not alive:
            healthy, detail = False, f"process {s.pid} is gone; run `visionflow stack down`, then `up`"
        elif name == "worker":
            healthy = bool(ports.get("prefect")) and _worker_online(ports["prefect"])
            detail = f"polling pool {POOL}" if healthy else f"not online in pool {POOL}; see {s.log}"
        else:
            healthy = processes.http_ok(f"{s.url}{_HEALTH_PATH[name]}")
            detail = "answers" if healthy else f"does not answer {s.url}{_HEALTH_PATH[name]}; see {s.log}"
        report.append(Health(name, s.pid, s.url, alive, healthy, detail))
    return StackStatus(home, report)
