"""Score a trained run on a split with its recipe's own evaluator (the loop validation uses),
and log the metrics and the evaluator's plots and tables to the training run in MLflow.

The checkpoint scored is ``best.pt`` (the epoch the recipe's selection metric liked best), or
``last.pt`` where there is no best; data is decoded as the validation of that epoch's phase.
``untrained`` scores the network as the run initialised it instead, a baseline for any recipe;
``self_ensemble`` the trained network averaged over the 8 flips and quarter turns of its inputs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect import get_run_logger, task
from torch.utils.data import DataLoader

from tasks.config import EvaluateConfig
from tasks.data import storage
from tasks.data.reader import ShardStream, shards_of
from tasks.errors import BadInput, retry_unless_bad_input
from tasks.train.engine import BEST, CHECKPOINT, Job, load_checkpoint
from tasks.train.ensemble import SelfEnsemble
from tasks.train.evaluator import run_evaluation
from tasks.train.recipe import EvalContext


def load_trained(checkpoint_dir: str) -> tuple[Job, dict]:
    """The run's job and its best (else last) checkpoint."""
    for name in (BEST, CHECKPOINT):
        state = load_checkpoint(storage.join(checkpoint_dir, name))
        if state is not None:
            return Job.from_json(state["job"]), state
    raise FileNotFoundError(f"{checkpoint_dir}: no {CHECKPOINT}; train the run first")


def score(cfg: EvaluateConfig) -> tuple[Job, dict, dict]:
    """Returns (the training job, metrics named ``<split>/<metric>``, artifacts {file: bytes})."""
    import torch

    job, state = load_trained(cfg.checkpoint_dir)
    recipe = job.recipe
    torch.manual_seed(job.config.seed)  # the initialisation the run started from
    model = job.build_model()
    if not cfg.untrained:
        model.load_state_dict(state["model"])
    phase = job.sized(job.phase(state["epoch"]))
    if recipe.on_phase:  # the model as that epoch trained it (PConv's fine-tuning BN freeze)
        recipe.on_phase(model, job.phases.index(job.phase(state["epoch"])), phase)
    if cfg.self_ensemble:
        if not recipe.self_ensemble:
            raise BadInput(f"recipe {recipe.name} has no self-ensemble: its outputs are not images "
                           "aligned with its inputs")
        model = SelfEnsemble(model)
    split = cfg.split or recipe.val_split
    data = cfg.data or job.data_url(phase)
    stream = ShardStream(shards_of(data, split), recipe.decoder(phase, False), shuffle=False, policy="exact")
    loader = DataLoader(stream, batch_size=cfg.batch_size, collate_fn=recipe.collate(phase, False))
    device = torch.device("cpu")
    # the plain network's evaluation alone draws the pictures and scores the baselines
    evaluator = recipe.evaluator(EvalContext(job.classes, device, detailed=cfg.variant is None))
    metrics = run_evaluation(model, loader, recipe, evaluator, job.build_loss(device), device)
    prefix = f"{split}/{cfg.variant}/" if cfg.variant else f"{split}/"
    metrics = {f"{prefix}{k}": v for k, v in metrics.items()}
    return job, metrics, evaluator.artifacts()


def log_to_run(tracking_uri: str, run_id: str, metrics: dict, artifacts: dict,
               artifact_path: str = "evaluation") -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i: i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in artifacts.items():
            Path(tmp, name).write_bytes(blob)
            client.log_artifact(run_id, str(Path(tmp, name)), artifact_path=artifact_path)


@task(name="evaluate", retries=1, retry_condition_fn=retry_unless_bad_input)
def evaluate_task(cfg: EvaluateConfig) -> dict:
    job, metrics, artifacts = score(cfg)
    if job.mlflow_run_id:
        log_to_run(job.tracking_uri, job.mlflow_run_id, metrics, artifacts,
                   f"evaluation/{cfg.variant}" if cfg.variant else "evaluation")
    get_run_logger().info("%s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/acc/" not in k))
    return {**metrics, "mlflow_run_id": job.mlflow_run_id, "tracking_uri": job.tracking_uri,
            "select": f"{cfg.split or job.recipe.val_split}/{job.recipe.select}"}
