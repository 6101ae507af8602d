"""The local real stack, for real: moto's S3 server, MLflow, a Prefect server and a worker, all on
127.0.0.1. One stack serves the whole module (starting it takes about a minute on 2 cores); the
last test crashes it on purpose and checks that `down` leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from flows.stack_cli import stack_app
from tasks import processes, stack

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONFLOW_HOME", str(home))
        mp.setenv("PREFECT_HOME", str(home / "prefect-client"))
        mp.setenv("MPLCONFIGDIR", str(home / "mpl"))
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield home
    stack.down(home, grace=2)  # a safety net if a test failed before the last one


@pytest.fixture(scope="module")
def started(home):
    return stack.up(home)


def _cli(*tokens: str) -> int:
    return stack_app(list(tokens), result_action="return_value")


def _family(info: stack.StackInfo) -> dict[str, list[processes.Proc]]:
    return {name: processes.family(s.proc) for name, s in info.services.items()}


def _listening(pids: list[int]) -> set[tuple[str, str]]:
    """(table, local address) of every listening TCP socket the given processes hold."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add((table, fields[1]))
    return found


def test_a_part_that_fails_to_start_stops_the_rest(tmp_path, monkeypatch):
    real_command = stack._command

    def broken_mlflow(name, home, ports):
        if name == "mlflow":
            return [sys.executable, "-c", "print('no mlflow today'); raise SystemExit(3)"]
        return real_command(name, home, ports)

    monkeypatch.setattr(stack, "_command", broken_mlflow)
    with pytest.raises(stack.StackError, match=r"stack mlflow did not start .*mlflow\.log"):
        stack.up(tmp_path, timeout=60)
    assert "no mlflow today" in (tmp_path / "stack" / "logs" / "mlflow.log").read_text()
    assert not (tmp_path / "stack" / "state.json").exists()
    assert not (tmp_path / "stack" / "stack.env").exists()
    assert stack.status(tmp_path).services == []


def test_up_starts_four_healthy_services(started):
    assert started.reused is False
    assert list(started.services) == ["s3", "mlflow", "prefect", "worker"]
    report = stack.status(started.home)
    assert report.healthy, report
    assert [h.name for h in report.services] == ["s3", "mlflow", "prefect", "worker"]
    s = started.services
    for name, path in (("s3", "/"), ("mlflow", "/health"), ("prefect", "/api/health")):
        assert processes.http_ok(f"http://127.0.0.1:{s[name].port}{path}"), name
    assert stack._worker_online(s["prefect"].port)
    assert started.ui()["Prefect UI"] == f"http://127.0.0.1:{s['prefect'].port}"
    for service in s.values():
        assert service.log.parent == started.home / "stack" / "logs" and service.log.exists()


def test_everything_listens_on_loopback_only(started):
    pids = [p.pid for family in _family(started).values() for p in family]
    sockets = _listening(pids)
    assert sockets and all(table == "tcp" and address.startswith("0100007F:")
                           for table, address in sockets), sockets
    ports = {int(address.split(":")[1], 16) for _, address in sockets}
    assert {s.port for s in started.services.values() if s.port} <= ports


def test_env_file_is_private_and_points_at_the_stack(started):
    path = started.env_file
    assert path == started.home / "stack" / "stack.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((started.home / "stack" / "state.json").stat().st_mode) == 0o600
    s = started.services
    assert stack.load_env_file(started.home) == {
        "PREFECT_API_URL": f"http://127.0.0.1:{s['prefect'].port}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{s['mlflow'].port}",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s['s3'].port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_variables_the_user_set_win_over_the_env_file(started):
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    applied = stack.apply_env_file(started.home, environ)
    assert environ["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert "MLFLOW_TRACKING_URI" not in applied
    assert environ["PREFECT_API_URL"] == applied["PREFECT_API_URL"] == stack.load_env_file(started.home)["PREFECT_API_URL"]


def test_mlflow_artifacts_land_in_the_s3_bucket(started, tmp_path):
    import boto3
    from mlflow import MlflowClient

    env = stack.load_env_file(started.home)
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.create_experiment("stack-smoke"))
    client.log_metric(run.info.run_id, "val/top1", 0.5)
    (tmp_path / "note.txt").write_text("proxied")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.BUCKET)["Contents"]]
    key = f"mlflow/{run.info.experiment_id}/{run.info.run_id}/artifacts/note.txt"
    assert keys == [key]
    assert s3.get_object(Bucket=stack.BUCKET, Key=key)["Body"].read() == b"proxied"
    assert client.get_run(run.info.run_id).data.metrics == {"val/top1": 0.5}


def test_up_again_starts_nothing(started):
    before = _family(started)
    again = stack.up(started.home)
    assert again.reused is True
    assert again.services == started.services
    assert _family(started) == before
    assert _cli("up") == 0


def test_status_command_shows_health_and_masks_secrets(started, capsys):
    assert _cli("status", "--env") == 0
    out = capsys.readouterr().out
    for name in ("s3", "mlflow", "prefect", "worker"):
        assert f"\n{name} " in out
    assert out.count(" ok ") == 4
    assert f"http://127.0.0.1:{started.services['prefect'].port}" in out
    assert "AWS_SECRET_ACCESS_KEY=****" in out and "AWS_SECRET_ACCESS_KEY=testing" not in out


def test_down_cleans_a_crashed_stack(started, capsys):
    family = _family(started)
    s = started.services
    # Crash: the MLflow parent and the worker die without a chance to clean up; MLflow's
    # uvicorn child is left running, orphaned.
    for name in ("mlflow", "worker"):
        os.kill(s[name].pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while processes.alive(s["mlflow"].proc) or processes.alive(s["worker"].proc):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert processes.family(s["mlflow"].proc), "MLflow's uvicorn child should outlive its parent"

    report = stack.status(started.home)
    assert not report.healthy
    assert {h.name: h.alive for h in report.services} == {
        "s3": True, "mlflow": False, "prefect": True, "worker": False}
    assert _cli("status") == 1
    capsys.readouterr()

    assert _cli("down") == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[:4]] == ["worker", "prefect", "mlflow", "s3"]
    assert "worker   not running" in out
    everything = [p for procs in family.values() for p in procs]
    assert len(everything) >= 5
    assert [p for p in everything if processes.alive(p)] == []
    assert all(processes.family(service.proc) == [] for service in s.values())
    assert not (started.home / "stack" / "state.json").exists()
    assert not started.env_file.exists()
    assert stack.load_env_file(started.home) == {}
    assert stack.status(started.home).running is False
    assert stack.down(started.home) == {}
