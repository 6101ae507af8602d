"""Launch the training engine under torchrun, as a subprocess of a Prefect task.

The task never joins a process group itself: it resolves the job, makes (or finds again) the
MLflow run, and starts ``torchrun … -m tasks.engine`` (or, with ``launcher="ray"``, Ray Train's
``TorchTrainer``: ``tasks/train/ray_launch.py``). A retry launches the same job, which resumes
from the last checkpoint, so a retry is never a restart from step 0.

The tracking server may go away meanwhile: the engine buffers its metrics
(``tasks/train/metrics_log.py``), and the task's own MLflow calls at the end (the unsent metrics,
the model, the run's status) wait up to ``TRACKING_WAIT`` seconds for it, then fail in one line
(not retried by Prefect: the wait was the retry).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from prefect import get_run_logger, task

from tasks.data import shards, storage
from tasks.track import tracking
from tasks.errors import Transient, retry_unless_bad_input
from tasks import catalog
from tasks.config import TrainConfig
from tasks.train.engine import BEST, CHECKPOINT, Job, load_checkpoint
from tasks.train.metrics_log import send_unsent
from tasks.train.recipe import resolve

RUN_RECORD = "run.json"
TRACKING_WAIT = 120.0  # seconds the task waits for an unreachable tracking server, per call


class TrainingError(Transient):
    pass


def prepare(cfg: TrainConfig, home: Path, uri: str) -> Job:
    """Resolve defaults and the MLflow run. A run directory that already has a run record keeps
    its MLflow run, so a resumed training logs into the run it started."""
    manifest = shards.read_manifest(cfg.data)
    if cfg.run_name is None:
        cfg = cfg.model_copy(update={"run_name": f"{manifest['dataset']}-{cfg.recipe}".replace("_", "-")})
    ref = catalog.reference(cfg.recipe)
    recipe = resolve(ref)
    recipe.check_options(cfg.options)
    checkpoint_dir = cfg.checkpoint_dir or str(Path(home) / "runs" / cfg.run_name)
    record_url = storage.join(checkpoint_dir, RUN_RECORD)
    experiment = cfg.experiment or recipe.experiment
    if not storage.exists(record_url):
        _create_run(cfg, manifest, recipe, experiment, checkpoint_dir, home, uri)
    record = json.loads(storage.read_bytes(record_url))
    _check_same_run(cfg, TrainConfig(**record["config"]), checkpoint_dir)
    run_id = record["mlflow_run_id"]
    tracking.retrying(lambda: tracking.client(uri).update_run(run_id, status="RUNNING"),  # (re)started: it runs
                      uri, "marking the run RUNNING", wait=TRACKING_WAIT, timeout=30)
    variants = tuple(v for v in variant_names(recipe) if storage.exists(storage.join(f"{cfg.data.rstrip('/')}-{v}",
                                                                                      "manifest.json")))
    return Job(cfg, checkpoint_dir, ref, tuple(shards.class_names(manifest)), uri, run_id, variants)


def _create_run(cfg: TrainConfig, manifest: dict, recipe, experiment: str, checkpoint_dir: str, home: Path,
                uri: str) -> None:
    """The MLflow run and the run record. The nodes of a multi-node job each start the same
    task at once: the record is created only if absent, and a node that lost the race deletes
    the MLflow run it made and joins the winner's."""
    record_url = storage.join(checkpoint_dir, RUN_RECORD)
    if cfg.nnodes == 1:
        _delete_unrecorded_runs(uri, experiment, cfg.run_name, checkpoint_dir)
    params = tracking.flatten(cfg)
    params.update({"data.dataset": manifest["dataset"], "data.version": manifest["version"],
                   "experiment": experiment,
                   **{f"data.{split}_samples": str(s["samples"]) for split, s in manifest["splits"].items()}})
    tags = {"dataset.url": cfg.data, "dataset.manifest_sha256": shards.manifest_checksum(manifest),
            "visionflow.checkpoint_dir": checkpoint_dir, "visionflow.recipe": cfg.recipe,
            "visionflow.select": f"val/{recipe.select}"}
    run_id = tracking.start_run(uri, experiment, home, cfg.run_name, params, tags)
    record = {"mlflow_run_id": run_id, "tracking_uri": uri, "config": cfg.model_dump()}
    if not storage.create(record_url, json.dumps(record).encode()):
        tracking.client(uri).delete_run(run_id)
        return
    tracking.log_dataset(uri, run_id, cfg.data, manifest)


def _delete_unrecorded_runs(uri: str, experiment: str, run_name: str, checkpoint_dir: str) -> None:
    """Delete the MLflow runs of launchers killed between making their run and its record:
    RUNNING, this run's name and checkpoint dir, no dataset logged (that follows the record).
    Left alone they stay RUNNING beside the run that trains. One node only: on several, another
    node may be making its run at this moment."""
    client = tracking.client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return
    for run in client.search_runs([found.experiment_id],
                                  filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'"):
        if run.data.tags.get("visionflow.checkpoint_dir") == checkpoint_dir and not run.inputs.dataset_inputs:
            client.delete_run(run.info.run_id)


def variant_names(recipe) -> list[str]:
    return sorted({p.variant for p in recipe.phases if p.variant})


# What may change when a run is resumed: its length and where and how wide it runs.
RESUMABLE_CHANGES = {"epochs", "nproc", "nnodes", "rdzv_endpoint", "device", "num_workers",
                     "max_steps_per_epoch", "checkpoint_dir", "gpu_decode", "launcher", "ray_address",
                     "max_restarts", "checkpoint_every_steps", "ddp_bucket_mb", "ddp_compression"}


def _check_same_run(new: TrainConfig, old: TrainConfig, checkpoint_dir: str) -> None:
    changed = {k for k, v in new.model_dump().items() if v != getattr(old, k)} - RESUMABLE_CHANGES
    if changed:
        detail = ", ".join(f"{k} {getattr(old, k)!r} → {getattr(new, k)!r}" for k in sorted(changed))
        raise TrainingError(f"{checkpoint_dir} holds run {old.run_name!r} started with other parameters "
                            f"({detail}); resume it unchanged or choose another --run-name")


def processes_per_node(cfg: TrainConfig) -> int:
    """``nproc``, or where it is left open: one per GPU on a GPU node, and one on a CPU node,
    using every core. More CPU processes on one machine only split the same cores and add an
    all-reduce per step: on this project's 2-core machine 2 gloo ranks trained an MNIST epoch
    in 78 s, one process in 73 s (bench/mnist_train.py)."""
    import torch

    if cfg.nproc:
        return cfg.nproc
    if cfg.device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def torchrun_command(job: Job, job_file: Path) -> list[str]:
    """torchrun for several processes or nodes; one process on one node runs the engine
    directly (torchrun's agent would only add its own start-up, ~2 s)."""
    cfg = job.config
    nproc = processes_per_node(cfg)
    engine = ["-m", "tasks.train.engine", "--job", str(job_file)]
    if nproc == 1 and cfg.nnodes == 1 and not cfg.max_restarts:
        return [sys.executable, *engine]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--max-restarts={cfg.max_restarts}"]
    if cfg.nnodes > 1:
        if not cfg.rdzv_endpoint:
            raise TrainingError(f"nnodes={cfg.nnodes} needs rdzv_endpoint (host:port of node 0)")
        cmd += [f"--nnodes={cfg.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rdzv_endpoint}",
                f"--rdzv-id={cfg.run_name}"]
    else:
        cmd += ["--standalone"]
    return cmd + engine


def launch(job: Job, log=print) -> dict:
    """Run the job to completion; returns the last epoch's metrics from the checkpoint."""
    return run_to_end(job, log)["history"][-1]


def run_to_end(job: Job, log=print) -> dict:
    """Run the job to completion under torchrun (or Ray Train, ``launcher="ray"``: see
    ``tasks/train/ray_launch.py``); returns the final checkpoint (read once)."""
    if job.config.launcher == "ray":
        from tasks.train.ray_launch import run_on_ray

        return run_on_ray(job, log)
    with tempfile.TemporaryDirectory(prefix="vf-job-") as tmp:
        job_file = Path(tmp, "job.json")
        job_file.write_text(job.to_json())
        cmd = torchrun_command(job, job_file)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=Path(__file__).resolve().parents[2])
        output: list[str] = []
        for line in proc.stdout:
            line = line.rstrip()
            output = (output + [line])[-400:]
            if line.startswith('{"event": '):
                log_event(json.loads(line), job, log)
        if proc.wait() != 0:
            raise TrainingError(f"training exited with code {proc.returncode}; {_rank_failure(output)}")
    state = load_checkpoint(storage.join(job.checkpoint_dir, CHECKPOINT))
    if state is None:
        raise TrainingError(f"{job.checkpoint_dir}: training finished without a checkpoint")
    return state


def _rank_failure(lines: list[str], limit: int = 40) -> str:
    """The first failing rank's own error (torchrun prefixes its lines with ``[rankN]:``), then
    its traceback; torchrun's report about the failure says nothing more."""
    for i, line in enumerate(lines):
        match = re.match(r"^(\[rank(\d+)\]): Traceback", line)
        if match:
            prefix = match.group(1)
            trace = [l[len(prefix) + 2:] for l in lines[i:] if l.startswith(prefix + ":")]
            return f"rank {match.group(2)} failed: {trace[-1]}\n" + "\n".join(trace[-limit:])
    if "Traceback (most recent call last):" in lines:  # one process, launched without torchrun
        trace = lines[len(lines) - 1 - lines[::-1].index("Traceback (most recent call last):"):]
        return f"{trace[-1]}\n" + "\n".join(trace[-limit:])
    return "\n".join(lines[-limit:])


def log_event(event: dict, job: Job, log) -> None:
    """The engine's epoch, progress and resume events as log lines (checkpoints are not logged)."""
    if event["event"] == "epoch":
        log(_epoch_line(event, job))
    elif event["event"] == "progress":
        log(f"  step {event['step']}/{event['steps']}  loss {event['loss']:.4f}")
    elif event["event"] == "note":  # the tracking server away or back, system metrics off
        log(event["text"])
    elif event["event"] == "resume":
        how = f"re-planned for {event['world_size']} ranks" if event["replanned"] else "same plan"
        padding = f", {event['padding']} padding samples" if event["padding"] else ""
        log(f"resumed epoch {event['epoch'] + 1} after step {event['step']} ({event['samples']} samples "
            f"trained; {how}{padding})")


def _epoch_line(m: dict, job: Job) -> str:
    select = job.recipe.select
    size = f"  {m['train/image_size']:.0f}px" if m.get("train/image_size") else ""
    return (f"epoch {m['epoch'] + 1}/{job.epochs}: loss {m['train/loss']:.4f}  val {select} {m[f'val/{select}']:.4f}"
            f"  lr {m['train/lr']:.3g}{size}  batch {m['train/batch_size']:.0f}"
            f"  {m['perf/images_per_s']:.0f} img/s  ({m['perf/epoch_s']:.0f} s)"
            + ("  LR decayed" if m.get("lr_decayed") else ""))


def log_model(job: Job, state: dict, log=print) -> None:
    """Log the run's best network (else its last) to the run as an MLflow PyTorch model and
    register it as ``<experiment>-<recipe>``, once per trained state, and end the run FINISHED.
    ``state`` is the final checkpoint; ``models:/<name>@latest`` then resolves to this version.
    Of a multi-node run's nodes the first to claim the state logs it (should that node fail while
    logging, log it again from one node with ``--nnodes 1``). An unreachable tracking server is
    waited for (``TRACKING_WAIT``); an attempt cut short is redone whole."""
    tracking.retrying(lambda: _log_model_once(job, state), job.tracking_uri, "logging the model",
                      wait=TRACKING_WAIT, log=log)


def _log_model_once(job: Job, state: dict) -> None:
    import mlflow
    import mlflow.pytorch
    from mlflow.entities import LoggedModelStatus

    best = load_checkpoint(storage.join(job.checkpoint_dir, BEST)) or state
    epoch = str(state["epoch"])
    claim = storage.join(job.checkpoint_dir, f"model-epoch-{epoch}.claim")
    if job.config.nnodes > 1 and not storage.create(claim, job.mlflow_run_id.encode()):
        return  # every node's task ends here; the first to claim the trained state logs it
    client = tracking.client(job.tracking_uri)
    experiment_id = client.get_run(job.mlflow_run_id).info.experiment_id
    experiment = client.get_experiment(experiment_id).name
    name = f"{experiment}-{job.config.recipe}"
    logged = [m for m in client.search_logged_models(experiment_ids=[experiment_id])  # not one cut short
              if m.source_run_id == job.mlflow_run_id and m.tags.get("visionflow.epoch") == epoch
              and m.status == LoggedModelStatus.READY]
    if logged:  # a re-run of a finished run, or a retry after the registry failed
        if not client.search_model_versions(f"name='{name}' and run_id='{job.mlflow_run_id}'"):
            mlflow.set_tracking_uri(job.tracking_uri)
            mlflow.register_model(logged[0].model_uri, name)
        client.set_terminated(job.mlflow_run_id)
        return
    model = job.build_model()
    model.load_state_dict(best["model"])
    example = tuple(x.numpy() for x in job.recipe.example_input(job.model_kwargs(), job.sized(job.phase(best["epoch"]))))
    mlflow.set_tracking_uri(job.tracking_uri)
    with mlflow.start_run(run_id=job.mlflow_run_id):
        # MLflow 3 stores a torch.export graph (no pickle), traced on an example input (batch 2:
        # keep it dynamic); explicit requirements, as inferring them would re-import the world.
        mlflow.pytorch.log_model(model.eval(), name="model", input_example=example[0] if len(example) == 1 else example,
                                 signature=signature(example), pip_requirements=["torch", "torchvision", "visionflow"],
                                 registered_model_name=name,
                                 tags={"visionflow.epoch": epoch, "visionflow.best_epoch": str(best["epoch"])})


def signature(example: tuple):
    """Tensor specs with a free batch dimension; MLflow infers a one-input model's itself, but its
    torch.export format needs them spelled out for several inputs (PConv's image and mask)."""
    if len(example) == 1:
        return None
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(x.dtype, (-1, *x.shape[1:]), f"input{i}")
                                         for i, x in enumerate(example)]))


def _mark_failed(job: Job, log) -> None:
    """Best effort, one attempt each: the failure that brought us here is the one to report, and
    metrics still unsent stay in their file for the resume."""
    uri, run_id = job.tracking_uri, job.mlflow_run_id
    try:
        with contextlib.suppress(tracking.TrackingUnreachable):
            send_unsent(job, log, wait=0)
        tracking.retrying(lambda: tracking.client(uri).set_terminated(run_id, status="FAILED"), uri,
                          "marking the run FAILED", wait=0, timeout=10)
    except Exception as exc:  # noqa: BLE001
        log(f"MLflow run {run_id} not marked FAILED: {exc}")


def retry_unless_bad_input_or_tracked(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: a tracking server already waited for is not retried."""
    try:
        state.result()
    except tracking.TrackingUnreachable:
        return False
    except Exception:  # noqa: BLE001 — judged below
        pass
    return retry_unless_bad_input(task, task_run, state)


@task(name="train", retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_unless_bad_input_or_tracked)
def train_task(cfg: TrainConfig, home: Path, uri: str) -> dict:
    logger = get_run_logger()
    try:
        job = prepare(cfg, home, uri)
    except Exception as exc:  # MLflow's client has retried for minutes already
        if tracking.unreachable(exc):
            raise tracking.TrackingUnreachable(f"tracking server {uri} unreachable while starting the run "
                                               f"({tracking.reason(exc)})") from exc
        raise
    logger.info("training %s on %s (%d × %s), checkpoints in %s, MLflow run %s", cfg.recipe, cfg.data,
                processes_per_node(cfg) * cfg.nnodes, cfg.device, job.checkpoint_dir, job.mlflow_run_id)
    try:
        state = run_to_end(job, logger.info)
        send_unsent(job, logger.info, wait=TRACKING_WAIT)  # what the engine could not log
        log_model(job, state, logger.warning)  # its MLflow run context closes the run as FINISHED
    except BaseException:
        _mark_failed(job, logger.warning)
        raise
    return {"checkpoint_dir": job.checkpoint_dir, "mlflow_run_id": job.mlflow_run_id,
            "select": f"val/{job.recipe.select}", **state["history"][-1]}
