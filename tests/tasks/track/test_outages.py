"""Tracking and orchestration outages, against the real servers of `visionflow stack`: the MLflow
server killed mid-training and restarted on its port, killed for good, and the Prefect server
killed and restarted under a deployment's flow run on the stack's worker. One stack serves the
module (its start takes about 40 s on 2 cores); the trainings run the `train` flow in-process
against the stack's Prefect API and MLflow server.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

import psutil
import pytest

from tasks.config import TrainConfig
from tasks.data import shards
from tasks.mnist import idx as mnist
from tasks.ops import processes, stack
from tasks.track import tracking
from tasks.track.tracking import TrackingUnreachable
from tasks.train import launch, metrics_log

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(600)
STEPS = 3  # optimizer steps per epoch; the LR is logged at each


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("stack-home")
    try:
        info = stack.up(home)
        env = stack.load_env_file(home)
        with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
            yield info
    finally:
        stack.down(home, grace=2)


@pytest.fixture(scope="module")
def dataset(idx_dir, tmp_path_factory):
    url = shards.dataset_url(str(tmp_path_factory.mktemp("data")), "mnist", "v1")
    mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=128)
    return url


def _config(dataset, ckpt: Path, run_name: str, epochs: int) -> TrainConfig:
    return TrainConfig(recipe="mnist_mlp", data=dataset, epochs=epochs, batch_size=20, max_steps_per_epoch=STEPS,
                       nproc=1, num_workers=0, device="cpu", run_name=run_name, experiment="outages",
                       checkpoint_dir=str(ckpt))


def _train(cfg: TrainConfig, monkeypatch, on_event=lambda event: None) -> tuple[dict | BaseException, list[str]]:
    """The train flow, run here; ``on_event`` sees each engine event as the task reads it (what
    it raises is re-raised here, not by the task, which Prefect would retry). Returns the flow's
    result (or what it raised) and the task's log lines."""
    from flows.train import train

    real, hook_errors = launch.log_event, []

    def spy(event, job, log):
        try:
            on_event(event)
        except Exception as exc:  # noqa: BLE001 — re-raised below
            hook_errors.append(exc)
        real(event, job, log)

    monkeypatch.setattr(launch, "log_event", spy)
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    task_logger = logging.getLogger("prefect.task_runs")
    task_logger.addHandler(handler)
    try:
        outcome = train(cfg)
    except Exception as exc:  # noqa: BLE001 — the test judges it
        outcome = exc
    finally:
        task_logger.removeHandler(handler)
    if hook_errors:
        raise hook_errors[0]
    return outcome, lines


def _client(servers):
    from mlflow import MlflowClient

    return MlflowClient(servers.services["mlflow"].url)


def _history(client, run_id: str, key: str) -> list:
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def _assert_every_epoch_logged_once(client, run_id: str, epochs: int) -> None:
    for key in ("train/loss", "val/top1", "val/loss"):
        assert [m.step for m in _history(client, run_id, key)] == list(range(epochs)), key
    assert [m.step for m in _history(client, run_id, "train/lr_step")] == list(range(1, epochs * STEPS + 1))


def _engine() -> psutil.Process:
    """The training engine, a child of this test's process (the train task runs it here)."""
    found = []
    for proc in psutil.Process().children(recursive=True):  # the stack's servers are children too
        try:
            if "tasks.train.engine" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:  # gone, or a zombie (a server just killed)
            continue
    assert len(found) == 1, found
    return found[0]


def test_metrics_logged_while_mlflow_is_down_reach_it_when_it_returns(servers, dataset, tmp_path, monkeypatch):
    home, epochs = servers.home, 5
    stack.start_one(home, "mlflow")  # up, whatever an earlier test left
    times: dict[str, float] = {}
    restart_errors: list[BaseException] = []

    def restart(engine: psutil.Process):
        # The engine is paused while MLflow restarts (10-30 s on 2 shared cores), as a long epoch
        # would keep it busy: it goes on, and should flush, only once the server is back.
        engine.suspend()
        try:
            time.sleep(2)
            stack.start_one(home, "mlflow")
            times["back"] = time.time()
        except BaseException as exc:  # noqa: BLE001 — reported by the test
            restart_errors.append(exc)
        finally:
            engine.resume()

    restarter, noticed = None, []

    def on_event(event):
        nonlocal restarter
        if event["event"] == "epoch" and event["epoch"] == 1 and "down" not in times:
            times["down"] = time.time()
            assert stack.stop_one(home, "mlflow", grace=0) in ("stopped", "killed")
        elif event["event"] == "note" and "unreachable" in event["text"]:
            noticed.append(event)
        elif event["event"] == "epoch" and noticed and restarter is None:  # an epoch's metrics buffered too
            restarter = threading.Thread(target=restart, args=(_engine(),))
            restarter.start()

    result, lines = _train(_config(dataset, tmp_path, "mlflow-restarted", epochs), monkeypatch, on_event)
    assert restarter is not None, "the engine never reported the server unreachable"
    restarter.join(240)
    assert not restart_errors and "back" in times, restart_errors
    assert isinstance(result, dict), result
    uri = servers.services["mlflow"].url
    away = [i for i, line in enumerate(lines) if line.startswith(f"tracking server {uri} unreachable (")]
    back = [i for i, line in enumerate(lines) if re.fullmatch(rf"tracking server {uri} is back: flushed \d+ buffered "
                                                              r"batch(es)?", line)]
    last_epoch = max(i for i, line in enumerate(lines) if line.startswith(f"epoch {epochs}/{epochs}:"))
    assert len(away) == 1 and len(back) == 1, lines
    assert away[0] < back[0] < last_epoch, "the engine itself should flush once the server is back"
    assert "1 metric batch buffered" in lines[away[0]]

    client = _client(servers)
    run_id = result["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    _assert_every_epoch_logged_once(client, run_id, epochs)
    # Buffered metrics keep the time they were measured, not the time they were sent.
    for key in ("train/loss", "train/lr_step"):
        stamps = [m.timestamp / 1000 for m in _history(client, run_id, key)]
        assert stamps == sorted(stamps)
        assert any(times["down"] < t < times["back"] for t in stamps), (key, times, stamps)
    assert not (tmp_path / metrics_log.UNSENT).exists()


def test_mlflow_down_until_the_end_fails_the_task_in_one_line_and_keeps_the_metrics(
        servers, dataset, tmp_path, monkeypatch):
    home, epochs = servers.home, 4
    stack.start_one(home, "mlflow")  # up, whatever an earlier test left
    monkeypatch.setattr(launch, "TRACKING_WAIT", 6.0)

    def on_event(event):
        if event["event"] == "epoch" and event["epoch"] == 0:
            stack.stop_one(home, "mlflow", grace=0)

    cfg = _config(dataset, tmp_path, "mlflow-gone", epochs)
    try:
        failure, lines = _train(cfg, monkeypatch, on_event)
    finally:
        stack.start_one(home, "mlflow")  # for the tests after this one, whatever happened
    uri = servers.services["mlflow"].url
    run_id = json.loads((tmp_path / launch.RUN_RECORD).read_text())["mlflow_run_id"]
    unsent = tmp_path / metrics_log.UNSENT
    assert isinstance(failure, TrackingUnreachable), failure
    match = re.fullmatch(rf"tracking server {uri} unreachable for 6 s after training: (\d+) metrics \((\d+) "
                         rf"metric batches\) of MLflow run {run_id} not logged; saved in {unsent} and sent when the "
                         r"run is resumed \(run the same command again\)", str(failure))
    assert match, str(failure)
    entries = [json.loads(line) for line in unsent.read_text().splitlines()]
    # Epoch 0 reached MLflow; epochs 1-3 and their LR steps wait in the file, nothing else.
    assert len(entries) == int(match.group(2)) == (epochs - 1) * (STEPS + 1)
    assert sum(len(e["metrics"]) for e in entries) == int(match.group(1))
    assert sorted(e["step"] for e in entries if "train/loss" in e["metrics"]) == [1, 2, 3]
    assert (f"tracking server {uri} unreachable: {len(entries)} metric batches of training wait in {unsent}; "
            "waiting up to 6 s for it") in lines
    assert sum(line.startswith("training mnist_mlp on ") for line in lines) == 1, "waited for, so not retried"

    again, lines = _train(cfg, monkeypatch)  # the same command, with MLflow back: a resume
    assert isinstance(again, dict), again
    assert f"tracking server {uri} is back: flushed {len(entries)} buffered batches" in lines
    client = _client(servers)
    assert client.get_run(run_id).info.status == "FINISHED"
    _assert_every_epoch_logged_once(client, run_id, epochs)
    logged = {(m.step, m.timestamp) for m in _history(client, run_id, "train/loss")}
    assert {(e["step"], e["timestamp"]) for e in entries if "train/loss" in e["metrics"]} <= logged
    assert not unsent.exists()


def test_a_logger_past_its_memory_cap_keeps_the_rest_in_the_file(servers, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log, "MAX_BUFFERED", 20)
    client = _client(servers)
    run_id = client.create_run(client.create_experiment("outages-cap")).info.run_id
    unsent = tmp_path / metrics_log.UNSENT
    notes: list[str] = []
    nowhere = f"http://127.0.0.1:{processes.free_port()}"
    away = metrics_log.MetricLogger(nowhere, run_id, unsent, note=notes.append)
    for step in range(30):
        away.log_step({"a": step, "b": -step}, step)
    assert away.in_file_only and away.kept == [] and away.waiting == 30
    assert notes[0].startswith(f"tracking server {nowhere} unreachable (Connection refused): 1 metric batch buffered")
    assert notes[1] == f"over 20 metrics unsent: they wait in {unsent} alone"
    assert len(unsent.read_text().splitlines()) == 30

    resumed = metrics_log.MetricLogger(servers.services["mlflow"].url, run_id, unsent, note=notes.append)
    assert resumed.waiting == 30 and resumed.metrics_waiting() == 60
    assert resumed.flush() and notes[-1].endswith("is back: flushed 30 buffered batches")
    assert not unsent.exists()
    history = _history(client, run_id, "b")
    assert [(m.step, m.value) for m in history] == [(s, -float(s)) for s in range(30)]


@pytest.mark.parametrize("cap", [1000, 3], ids=["in-memory", "file-only"])
def test_a_flush_cut_short_keeps_the_rest_in_order(servers, tmp_path, monkeypatch, cap):
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    monkeypatch.setattr(metrics_log, "MAX_BUFFERED", cap)
    monkeypatch.setattr(metrics_log, "BATCH", 2)  # one entry a request
    client = _client(servers)
    run_id = client.create_run(client.create_experiment(f"outages-cut-{cap}")).info.run_id
    try:
        with tracking.quick_requests():  # one attempt, not MLflow's four minutes of retries
            MlflowClient(f"http://127.0.0.1:{processes.free_port()}").log_batch(run_id, metrics=[Metric("x", 0, 0, 0)])
    except Exception as exc:  # noqa: BLE001 — a real refused connection, raised on cue below
        refused = exc
    logger = metrics_log.MetricLogger(servers.services["mlflow"].url, run_id, tmp_path / metrics_log.UNSENT,
                                      note=lambda text: None)
    real_send, calls = logger._send, []

    def send(entries):  # the server goes away for the 1st call and again at the 3rd of the flush
        calls.append(entries)
        if len(calls) in (1, 4):
            raise refused
        real_send(entries)

    monkeypatch.setattr(logger, "_send", send)
    for step in range(5):  # the first fails, the rest queue behind it
        logger.log_step({"a": step, "b": 10 + step}, step)
        logger.next_try = float("inf")  # no flush yet, however slow the machine
    logger.next_try = 0
    assert logger.flush() is False
    left = [json.loads(line) for line in logger.unsent.read_text().splitlines()]
    assert [e["step"] for e in left] == [2, 3, 4] and logger.waiting == 3
    assert logger.in_file_only is (cap == 3) and [e["step"] for e in logger.kept] == ([] if cap == 3 else [2, 3, 4])
    assert logger.flush() is True and not logger.unsent.exists()
    assert [(m.step, m.value) for m in _history(client, run_id, "b")] == [(s, 10.0 + s) for s in range(5)]


def test_a_flow_run_survives_a_prefect_server_restart_on_the_worker(servers, tmp_path):
    """The flow run's own state goes through Prefect's REST client, which retries a refused
    connection (PREFECT_CLIENT_MAX_RETRIES, default 5: about a minute of back-off). Its task
    runs' states travel as events, whose websocket client gives up after about ten seconds of
    reconnecting (fixed in Prefect 3.9.1): a restart longer than that loses the task-run records
    of the outage, so this test judges the flow run, the dataset and the worker, not them."""
    from prefect.client.orchestration import SyncPrefectClient

    home = servers.home
    out = tmp_path / "masks"
    api_url = stack.load_env_file(home)["PREFECT_API_URL"]
    with SyncPrefectClient(api_url) as client:
        # What `visionflow deploy` registers, without its `prefect deploy` subprocess (20 s here).
        deployment = client.create_deployment(
            client.create_flow_from_name("inpaint-masks"), "masks-outage", entrypoint="flows/inpaint.py:inpaint_masks",
            work_pool_name=stack.POOL,
            # 5,000 masks take ~15 s here: long enough that the run is mid-flight at the kill
            # (200 took under a second, and a run that ends first proves nothing).
            parameters={"cfg": {"out": str(out), "size": 64, "train": 5000, "test_per_bucket": 4}},
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}])
        run_id = client.create_flow_run_from_deployment(deployment).id
        _wait(lambda: client.read_flow_run(run_id).state.is_running(), 180, "the flow run to start")
    worker = servers.services["worker"]
    assert [p for p in processes.family(worker.proc) if p.pid != worker.pid], \
        "the flow run's process should be running when the server is killed"
    killed_at = time.time()
    assert stack.stop_one(home, "prefect", grace=0) in ("stopped", "killed")
    time.sleep(2)
    stack.start_one(home, "prefect")

    with SyncPrefectClient(api_url) as client:
        _wait(lambda: client.read_flow_run(run_id).state.is_final(), 240, "the flow run to end")
        run = client.read_flow_run(run_id)
        assert run.state.is_completed(), (run.state.type, run.state.message)
        assert run.end_time.timestamp() > killed_at
    manifest = shards.read_manifest(str(out / "irregular-masks-64" / "seed0-train5000-test4"))
    assert {split: s["samples"] for split, s in manifest["splits"].items()} == {"train": 5000, "test": 48}
    assert stack.status(home).healthy, "the worker should poll the restarted server again"


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 — a server restarting answers nothing for a while
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
