"""The Ray Train launcher: ``visionflow train --launcher ray`` on a Ray head started here on
127.0.0.1 (2 CPUs: 2 workers over gloo), logging to MLflow (SQLite) as torchrun does, and a
worker killed mid-run recovered from visionflow's own checkpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

ray = pytest.importorskip("ray")
pytest.importorskip("ray.train")
psutil = pytest.importorskip("psutil")

from tasks.ops.processes import free_port  # noqa: E402
from tasks.data import shards, storage  # noqa: E402
from tasks.mnist import idx as mnist  # noqa: E402
from tasks import catalog  # noqa: E402
from tasks.config import TrainConfig  # noqa: E402
from tasks.track.tracking import tracking_uri  # noqa: E402
from tasks.train.checkpoint import CHECKPOINT, load_checkpoint  # noqa: E402
from tasks.train.job import Job  # noqa: E402
from tasks.train.launch import TrainingError, prepare, run_to_end  # noqa: E402
from tasks.train.ray_launch import RayUnavailable  # noqa: E402

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_head():
    """``ray start --head --block`` on loopback ports of its own, in a short temp dir (Ray's
    socket paths must fit 107 bytes); killed by its own pid and its processes' (``ray stop``
    would stop every Ray on the machine; its graceful stop takes 30 s here)."""
    temp = tempfile.mkdtemp(prefix="vf-ray-")
    port = free_port()
    ports = {flag: str(free_port()) for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                                 "--dashboard-agent-grpc-port", "--metrics-export-port",
                                                 "--runtime-env-agent-port")}
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
                             *[x for kv in ports.items() for x in kv]],
                            env={**os.environ, **RAY_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not any("raylet" in p.name() for p in head_processes(head)):
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        yield head, f"127.0.0.1:{port}"
    finally:
        started = head_processes(head)
        head.kill()
        head.wait()
        for proc in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(started, timeout=10)  # none of them writes into the temp dir any more
        shutil.rmtree(temp, ignore_errors=True)


def head_processes(head: subprocess.Popen) -> list:
    try:
        return psutil.Process(head.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def train_workers(head) -> list:
    """The head's Ray Train worker processes (their title is ``ray::RayTrainWorker…``)."""
    found = []
    for p in head_processes(head):
        try:
            if " ".join(p.cmdline()).startswith("ray::RayTrainWorker"):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="module")
def dataset(idx_dir, tmp_path_factory):
    url = shards.dataset_url(str(tmp_path_factory.mktemp("data")), "mnist", "v1")
    mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=128)  # 600 train samples in 5 shards
    return url


def _cli_env() -> dict:
    """The CLI as a user runs it: its own temporary Prefect server, not this session's test
    harness (whose URL the harness leaves in os.environ)."""
    env = {**os.environ, **RAY_ENV}
    env.pop("PREFECT_API_URL", None)
    return env


def _train(address, dataset, ckpt, *args):
    return [sys.executable, "-m", "flows.cli", "train", "--launcher", "ray", "--ray-address", address,
            "--data", dataset, "--checkpoint-dir", str(ckpt), "--recipe", "mnist_mlp", "--nproc", "2",
            "--device", "cpu", "--num-workers", "0", *args]


def _metrics(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    names = client.get_run(run_id).data.metrics
    return {name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)] for name in names}


def _epoch_lines(log: list[str]) -> list[str]:
    return [line.split(":")[0] for line in log if line.startswith("epoch ")]


def _line(log: list[str], start: str) -> str:
    return next(line for line in log if line.startswith(start))


def test_visionflow_train_on_ray_logs_what_torchrun_logs(ray_head, dataset, home, tmp_path):
    _, address = ray_head
    ckpt = tmp_path / "ckpt"
    result = subprocess.run(_train(address, dataset, ckpt, "--epochs", "2", "--max-steps-per-epoch", "3",
                                   "--run-name", "ray-mnist"),
                            capture_output=True, text=True, env=_cli_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "step 3/3" in out and "epoch 1/2: loss" in out and "epoch 2/2: loss" in out  # the workers' events
    state = load_checkpoint(storage.join(str(ckpt), CHECKPOINT))  # visionflow's format, weights only
    assert state["epoch"] == 1 and [h["epoch"] for h in state["history"]] == [0, 1]
    assert state["global_step"] == 6 and {"model", "optimizer", "schedule", "history"} <= set(state)
    ray_files = [p for p in (ckpt / "ray").rglob("*") if p.is_file()]  # Ray's bookkeeping, not a second copy
    assert ray_files and all(p.suffix not in (".pt", ".pth", ".safetensors", ".pkl") and p.stat().st_size < 10_000
                             for p in ray_files)

    client = MlflowClient(tracking_uri(home, os.environ))
    ray_run = client.get_run(result.stdout.split("MLflow run ")[-1].split()[0])
    assert ray_run.info.status == "FINISHED" and ray_run.data.params["launcher"] == "ray"
    assert ray_run.data.tags["visionflow.checkpoint_dir"] == str(ckpt)
    assert any(m.source_run_id == ray_run.info.run_id
               for m in client.search_logged_models(experiment_ids=[ray_run.info.experiment_id]))

    # The same job under torchrun: the same metrics at the same steps, with the same values.
    cfg = TrainConfig(data=dataset, recipe="mnist_mlp", epochs=2, max_steps_per_epoch=3, nproc=2, device="cpu",
                      num_workers=0, run_name="torchrun-mnist", checkpoint_dir=str(tmp_path / "torchrun"))
    job = prepare(cfg, home, tracking_uri(home, os.environ))
    torchrun_log: list[str] = []
    run_to_end(job, torchrun_log.append)
    assert _epoch_lines(torchrun_log) == ["epoch 1/2", "epoch 2/2"] and len(torchrun_log) == 8
    for line in torchrun_log:  # each step's loss, each epoch's loss, val top1, lr and batch, as under Ray
        assert line.split("  batch")[0].strip() in out, line
    ray_metrics, torchrun_metrics = _metrics(client, ray_run.info.run_id), _metrics(client, job.mlflow_run_id)
    assert set(ray_metrics) == set(torchrun_metrics) and {"train/loss", "val/top1", "val/loss"} <= set(ray_metrics)
    for name in ("train/loss", "train/lr", "val/loss", "val/top1", "val/top5"):
        assert [s for s, _ in ray_metrics[name]] == [0, 1], name
        assert [v for _, v in ray_metrics[name]] == pytest.approx([v for _, v in torchrun_metrics[name]], rel=1e-5)
    assert [s for s, _ in ray_metrics["train/lr_step"]] == list(range(1, 7))  # one per optimizer step


def test_a_ray_worker_killed_mid_epoch_is_restarted_from_the_checkpoint(ray_head, dataset, home, tmp_path,
                                                                       monkeypatch):
    head, address = ray_head
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    last = storage.join(str(tmp_path / "ckpt"), CHECKPOINT)
    cfg = TrainConfig(data=dataset, recipe="mnist_mlp", epochs=3, nproc=2, device="cpu", num_workers=0,
                      launcher="ray", ray_address=address, max_restarts=1, checkpoint_every_steps=2,
                      run_name="ray-kill", checkpoint_dir=str(tmp_path / "ckpt"))
    job = prepare(cfg, home, tracking_uri(home, os.environ))
    log: list[str] = []
    seen: dict = {}

    def log_and_kill(line: str) -> None:
        """At step 3 of 6 in the second epoch (a checkpoint came at step 2), kill a worker."""
        log.append(line)
        if "workers" not in seen:  # found early: the kill is then immediate
            seen["workers"] = train_workers(head)
        if line.startswith("  step 3/6") and _epoch_lines(log) == ["epoch 1/3"] and "killed" not in seen:
            seen["killed"] = seen["workers"][-1].pid
            seen["workers"][-1].kill()  # SIGKILL
            seen["at"] = load_checkpoint(last)

    state = run_to_end(job, log_and_kill)
    assert len(seen["workers"]) == 2 and "killed" in seen
    assert seen["at"]["epoch"] == 0  # the second epoch was not done when its worker died
    assert _epoch_lines(log) == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]  # Ray restarted the group; each epoch once
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2]
    assert state["global_step"] == 18  # 6 steps an epoch: none trained twice, none skipped
    client = MlflowClient(tracking_uri(home, os.environ))
    assert [m.step for m in client.get_metric_history(job.mlflow_run_id, "train/loss")] == [0, 1, 2]
    # Resumed inside the second epoch from its step-2 checkpoint (step 4 if the kill came late), not
    # from its start: the steps after that checkpoint ran twice, the second time with the same loss
    # (the same weights and data). These need the engine's mid-epoch checkpoints (checkpoint_every_steps).
    resumed = [line for line in log if line.startswith("resumed ")]
    assert len(resumed) == 1 and resumed[0].startswith(("resumed epoch 2 after step 2 ",
                                                        "resumed epoch 2 after step 4 ")), resumed
    second = [line for line in log[log.index(_line(log, "epoch 1/3")) + 1: log.index(_line(log, "epoch 2/3"))]
              if line.startswith("  step ")]
    steps = [int(line.split()[1].split("/")[0]) for line in second]
    assert steps.count(1) == 1 and sorted(set(steps)) == [1, 2, 3, 4, 5, 6], second
    assert len(set(second)) == 6  # a step run twice logged the same loss both times


def _job(dataset, ckpt, **overrides) -> Job:
    cfg = TrainConfig(data=dataset, recipe="mnist_mlp", epochs=1, nproc=2, device="cpu", num_workers=0,
                      launcher="ray", run_name="t", **overrides)
    return Job(cfg, str(ckpt), catalog.reference(cfg.recipe), classes=tuple(str(i) for i in range(10)))


def test_a_failing_worker_on_a_local_ray_instance_surfaces_its_error(dataset, tmp_path, monkeypatch):
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    job = _job(dataset, tmp_path, batch_size=99)  # no ray_address: the launcher starts Ray, and stops it
    with pytest.raises(TrainingError, match=r"training on Ray failed \(max_restarts=0\); rank \d failed: "
                                            r"ValueError: batch size 99 does not split into 2 ranks"):
        run_to_end(job)
    assert not ray.is_initialized()


def test_without_ray_or_its_head_the_launcher_says_what_to_do(dataset, tmp_path, monkeypatch):
    job = _job(dataset, tmp_path, ray_address=f"127.0.0.1:{free_port()}")
    with pytest.raises(TrainingError, match="no Ray cluster answers at 127.0.0.1:"):
        run_to_end(job)  # at once, where ray.init would wait minutes
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(RayUnavailable, match=r"pip install 'visionflow\[cluster\]'"):
        run_to_end(job)
