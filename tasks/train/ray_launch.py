"""Launch the training engine on Ray Train (``--launcher ray``): a ``TorchTrainer`` (Train V2)
runs the same ``tasks.train.engine.run`` in ``nproc × nnodes`` workers::

    visionflow train --data … --launcher ray --nproc 2 --device cpu           # a local Ray instance
    visionflow train --data … --launcher ray --ray-address head:6379 --nproc 8 --nnodes 4

Ray joins the workers' process group (gloo on CPU, nccl on GPU) before the loop runs; the
engine sees it initialised and keeps it. visionflow's own checkpoints stay the one format and
the one copy of the weights: a worker group Ray restarts (``FailureConfig(max_failures=
max_restarts)``) resumes from ``last.pt`` as a torchrun restart does, and Ray's ``report`` gets
metrics only. Its bookkeeping goes to ``<checkpoint_dir>/ray`` (a temp dir for an S3
checkpoint_dir). Rank 0 logs to MLflow itself, as under torchrun. The workers import
visionflow and read storage with their own environment, as torchrun's nodes do: on a cluster,
the image carries ``visionflow[cluster]`` and the S3 settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path

from tasks.data import storage
from tasks.errors import BadInput
from tasks.train.job import Job


class RayUnavailable(BadInput):
    pass


def run_on_ray(job: Job, log=print) -> dict:
    """Run the job to completion on Ray Train; returns the final checkpoint (read once)."""
    from tasks.train.launch import TrainingError, log_event, processes_per_node
    from tasks.train.checkpoint import CHECKPOINT, load_checkpoint

    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Queue
    except ImportError:
        raise RayUnavailable("launcher=ray needs Ray Train: pip install 'visionflow[cluster]'") from None
    cfg = job.config
    workers = processes_per_node(cfg) * cfg.nnodes
    started = not ray.is_initialized()
    if started and cfg.ray_address:
        check_reachable(cfg.ray_address)
        ray.init(address=cfg.ray_address, log_to_driver=False)
    elif started:  # one CPU per worker, on a machine that may have fewer cores than workers
        ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False)
    events = Queue(actor_options={"num_cpus": 0})  # the workers' event lines, on their way to `log`
    try:
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config={"job": job.to_json(), "events": events},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu(cfg)),
            run_config=RunConfig(name=cfg.run_name or "visionflow", storage_path=bookkeeping_dir(job),
                                 failure_config=FailureConfig(max_failures=cfg.max_restarts)))
        with forwarding(events, lambda event: log_event(event, job, log)):
            trainer.fit()
    except TrainingFailedError as exc:
        raise TrainingError(f"training on Ray failed (max_restarts={cfg.max_restarts}); "
                            f"{worker_failure(exc)}") from None
    finally:
        events.shutdown()
        if started:
            ray.shutdown()
    state = load_checkpoint(storage.join(job.checkpoint_dir, CHECKPOINT))
    if state is None:
        raise TrainingError(f"{job.checkpoint_dir}: training finished without a checkpoint")
    return state


def check_reachable(address: str) -> None:
    """A ``host:port`` head that does not answer fails here: ``ray.init`` would wait for it for
    minutes."""
    from tasks.train.launch import TrainingError

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", or a Ray client address
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise TrainingError(f"no Ray cluster answers at {address} ({exc.strerror or exc})") from None


def worker_failure(exc) -> str:
    """The first failing rank's own error, then Ray's snippet of its traceback."""
    failures = getattr(exc, "worker_failures", None) or {}
    if not failures:
        return str(exc)
    rank = min(failures)
    return f"rank {rank} failed: {type(failures[rank]).__name__}: {failures[rank]}\n{exc}"


def use_gpu(cfg) -> bool:
    """A GPU per worker where the config allows it and the place the workers run has GPUs: this
    machine without ``ray_address``, else the cluster."""
    if cfg.device == "cpu":
        return False
    if cfg.ray_address:
        import ray

        return cfg.device == "cuda" or ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def bookkeeping_dir(job: Job) -> str:
    """Where Ray Train keeps its run state: beside the checkpoints when they are local files.
    It holds no weights (nothing reports a Ray checkpoint), so no shared storage is needed."""
    if storage.is_s3(job.checkpoint_dir):
        return str(Path(tempfile.gettempdir(), "visionflow-ray"))
    return str(Path(job.checkpoint_dir, "ray").absolute())


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: torchrun's environment from Ray's context, then the engine."""
    import ray.train

    from tasks.train import engine

    ctx = ray.train.get_context()
    os.environ.update(RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()),
                      LOCAL_RANK=str(ctx.get_local_rank()), LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
                      GROUP_RANK=str(ctx.get_node_rank()))
    with contextlib.redirect_stdout(EventTee(sys.stdout, config["events"].put_nowait)):
        metrics = engine.run(Job.from_json(config["job"]))
    # Every worker reports once (a barrier in Ray): the last epoch's numbers, no checkpoint.
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


class EventTee(io.TextIOBase):
    """stdout that also sends the engine's JSON event lines to the driver."""

    def __init__(self, out, send):
        self.out, self.send, self.pending = out, send, ""

    def write(self, text: str) -> int:
        self.out.write(text)
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.startswith('{"event": '):
                self.send(line)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def forwarding(events, handle):
    """Drain the workers' event lines into ``handle`` while the trainer runs."""
    from ray.util.queue import Empty

    done = threading.Event()

    def drain():
        while not (done.is_set() and events.empty()):
            try:
                handle(json.loads(events.get(timeout=0.5)))
            except Empty:
                continue

    thread = threading.Thread(target=drain, name="ray-events", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
