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
from cyclopts import App

from flows.stack_cli import deploy, runs_app, stack_app, trigger
from tasks.ops import deploy as deployments, processes, stack

REPO = Path(__file__).resolve().parents[3]
# The commands mounted as the main CLI mounts them.
CLI = App(name="visionflow")
for command in (stack_app, deploy, trigger, runs_app):
    CLI.command(command)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONFLOW_HOME", str(home))  # conftest.py keeps the rest of $HOME clean
        # The commands apply the stack's env file to os.environ; undone when the module ends.
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        yield home
    stack.down(home, grace=2)  # a safety net if a test failed before the last one


@pytest.fixture(scope="module")
def started(home):
    return stack.up(home)


def _cli(*tokens: str) -> int:
    return CLI(list(tokens), result_action="return_value")


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
    assert _cli("stack", "up") == 0


def test_status_command_shows_health_and_masks_secrets(started, capsys):
    assert _cli("stack", "status", "--env") == 0
    out = capsys.readouterr().out
    for name in ("s3", "mlflow", "prefect", "worker"):
        assert f"\n{name} " in out
    assert out.count(" ok ") == 4
    assert f"http://127.0.0.1:{started.services['prefect'].port}" in out
    assert "AWS_SECRET_ACCESS_KEY=****" in out and "AWS_SECRET_ACCESS_KEY=testing" not in out


def _prefect(started):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(stack.load_env_file(started.home)["PREFECT_API_URL"])


def _s3_keys(started, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=started.services["s3"].url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=stack.BUCKET, Prefix=prefix).get("Contents", [])]


def test_deploy_registers_each_flow_with_schedules_and_typed_forms(started, capsys):
    assert _cli("deploy") == 0
    out = capsys.readouterr().out
    assert "skipped train-gpu: work pool visionflow-k8s-gpu does not exist" in out
    local = {s.name for s in deployments.load(REPO / "infra" / "prefect.yaml")
             if s.pool == stack.POOL and (REPO / s.flow_file).exists()}
    with _prefect(started) as client:
        found = {d.name: d for d in client.read_deployments()}
    assert set(found) == local and {"mnist-pipeline", "mnist-ingest", "train", "evaluate"} <= local
    pipeline = found["mnist-pipeline"]
    assert pipeline.work_pool_name == stack.POOL
    assert [(s.schedule.cron, s.active) for s in pipeline.schedules] == [("0 2 * * *", True)]
    assert [(s.schedule.cron, s.active) for s in found["train"].schedules] == [("0 4 * * 6", False)]
    assert pipeline.parameters == {"cfg": {"source": "/usr/share/datasets/fashion-mnist",
                                           "recipe": "mnist_convnet"}}
    form = pipeline.parameter_openapi_schema["definitions"]["MnistPipelineConfig"]["properties"]
    assert form["epochs"]["description"] and form["recipe"]["enum"] == ["mnist_convnet", "mnist_mlp"]
    assert pipeline.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                    {"directory": str(REPO)}}]


def test_trigger_runs_a_deployment_on_the_worker(started, idx_dir, capsys):
    out_url = f"s3://{stack.BUCKET}/datasets"
    assert _cli("trigger", "mnist-ingest", "--param", f"source={idx_dir}", "--param", f"out={out_url}",
                "--watch", "--timeout", "300") == 0
    out = capsys.readouterr().out
    ui = started.services["prefect"].url
    assert f"of mnist-ingest/mnist-ingest: {ui}/runs/flow-run/" in out
    assert "state: Completed" in out and "completed: " in out
    keys = _s3_keys(started, "datasets/mnist/v1/")
    assert "datasets/mnist/v1/manifest.json" in keys
    assert any(k.endswith(".tar") for k in keys)


def test_the_mnist_pipeline_deployment_logs_to_the_mlflow_server_and_s3(started, idx_dir, capsys):
    from mlflow import MlflowClient

    assert _cli("trigger", "mnist-pipeline", "--param", f"source={idx_dir}",
                "--param", f"out=s3://{stack.BUCKET}/pipeline", "--param", "epochs=1",
                "--param", "nproc=1", "--param", "max_steps_per_epoch=2",
                "--param", "run_name=stack-e2e", "--watch", "--timeout", "500") == 0, capsys.readouterr()
    client = MlflowClient(tracking_uri=started.services["mlflow"].url)
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id],
                              filter_string="attributes.run_name = 'stack-e2e'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"train/loss", "val/top1", "val/top5"} <= set(run.data.metrics)
    assert run.data.tags["prefect.flow_run_url"].startswith(started.services["prefect"].url)
    artifacts = _s3_keys(started, f"mlflow/{run.info.experiment_id}/{run.info.run_id}/artifacts/")
    assert artifacts, "the run's artifacts should be in the S3 bucket"
    assert "pipeline/mnist/v1/manifest.json" in _s3_keys(started, "pipeline/")


def test_bad_triggers_fail_in_one_line_and_start_nothing(started, capsys):
    with _prefect(started) as client:
        before = len(client.read_flow_runs())
    assert _cli("trigger", "no-such-deployment") == 1
    assert _cli("trigger", "mnist-pipeline", "--param", "epochs=0") == 1
    assert _cli("trigger", "mnist-pipeline", "--param", "recipe=vgg99") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert err[0].startswith("visionflow: error: unknown deployment 'no-such-deployment'")
    assert "cfg.epochs" in err[1] and "minimum of 1" in err[1]
    assert "cfg.recipe" in err[2]
    with _prefect(started) as client:
        assert len(client.read_flow_runs()) == before


def test_a_watched_run_that_fails_exits_non_zero(started, tmp_path, capsys):
    assert _cli("trigger", "evaluate", "--param", f"checkpoint_dir={tmp_path}", "--watch",
                "--timeout", "300") == 1
    captured = capsys.readouterr()
    assert "state: Failed" in captured.out
    assert "ended Failed" in captured.err and "last.pt" in captured.err


def test_a_short_schedule_fires_a_run_the_worker_executes(started, idx_dir, tmp_path):
    spec = tmp_path / "prefect.yaml"
    spec.write_text(f"""
deployments:
  - name: ingest-every-15s
    entrypoint: flows/mnist.py:mnist_ingest
    work_pool: {{name: {stack.POOL}}}
    schedules: [{{interval: 15}}]
    parameters: {{cfg: {{source: "{idx_dir}", out: "s3://{stack.BUCKET}/scheduled"}}}}
""")
    api_url = stack.load_env_file(started.home)["PREFECT_API_URL"]
    deployments.register(spec, api_url=api_url, root=REPO, names=["ingest-every-15s"])
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    only_this = DeploymentFilter(name=DeploymentFilterName(any_=["ingest-every-15s"]))
    deadline = time.monotonic() + 240
    with _prefect(started) as client:
        while True:
            runs = client.read_flow_runs(deployment_filter=only_this)
            if any(r.state and r.state.is_completed() for r in runs):
                break
            assert time.monotonic() < deadline, [(r.name, r.state_name) for r in runs]
            time.sleep(2)
        assert all(r.auto_scheduled for r in runs)
        client.delete_deployment(runs[0].deployment_id)
    assert "scheduled/mnist/v1/manifest.json" in _s3_keys(started, "scheduled/")


def test_runs_compare_prints_the_differences_and_the_compare_view(started, capsys):
    from mlflow import MlflowClient

    env = stack.load_env_file(started.home)
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment("stack-compare")
    for lr, top1 in (("0.01", 0.9), ("0.001", 0.95)):
        run = client.create_run(experiment, run_name=f"lr-{lr}")
        client.log_param(run.info.run_id, "lr", lr)
        client.log_param(run.info.run_id, "batch_size", "100")
        client.log_metric(run.info.run_id, "val/top1", top1)
        client.set_terminated(run.info.run_id)
    capsys.readouterr()  # MLflow prints a link per finished run
    assert _cli("runs", "compare", "--experiment", "stack-compare") == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["run", "id", "status", "commit", "lr", "val/top1"]
    assert f"compare view: {env['MLFLOW_TRACKING_URI']}/#/compare-runs?runs=" in out


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
    assert _cli("stack", "status") == 1
    capsys.readouterr()

    assert _cli("stack", "down") == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[:4]] == ["worker", "prefect", "mlflow", "s3"]
    # The worker itself is dead; "stopped" when flow-run processes it had started (tagged as
    # the worker's) were still finishing and had to be stopped, "not running" otherwise.
    worker_line = out.splitlines()[0].split(None, 1)
    assert worker_line[0] == "worker" and worker_line[1] in ("not running", "stopped")
    everything = [p for procs in family.values() for p in procs]
    assert len(everything) >= 5
    assert [p for p in everything if processes.alive(p)] == []
    assert all(processes.family(service.proc) == [] for service in s.values())
    assert not (started.home / "stack" / "state.json").exists()
    assert not started.env_file.exists()
    assert stack.load_env_file(started.home) == {}
    assert stack.status(started.home).running is False
    assert stack.down(started.home) == {}
