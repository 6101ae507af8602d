"""Score a trained checkpoint on a split: top-1/top-5, per-class accuracy, a confusion matrix
plot and a grid of misclassified samples, all logged to the training run in MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from prefect import get_run_logger, task
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

import models
from tasks import shards, storage
from tasks.errors import retry_unless_bad_input
from tasks.config import EvaluateConfig
from tasks.engine import CHECKPOINT, Job, load_checkpoint
from tasks.reader import ShardStream, shards_of

GRID = 36  # misclassified samples shown


@torch.no_grad()
def score(cfg: EvaluateConfig) -> tuple[Job, dict, dict]:
    """Returns (the training job, metrics, artifacts as {file name: bytes})."""
    state = load_checkpoint(storage.join(cfg.checkpoint_dir, CHECKPOINT))
    if state is None:
        raise FileNotFoundError(f"{cfg.checkpoint_dir}: no {CHECKPOINT}; train the run first")
    job = Job.from_json(state["job"])
    data = cfg.data or job.config.data
    classes = shards.read_manifest(data)["classes"]
    recipe = job.recipe
    model = models.build(recipe.model, num_classes=job.num_classes, **recipe.model_kwargs)
    model.load_state_dict(state["model"])
    model.eval()
    stream = ShardStream(shards_of(data, cfg.split), recipe.decode, shuffle=False, policy="exact")
    top = {k: MulticlassAccuracy(len(classes), top_k=k, average="micro") for k in recipe.top_k
           if k <= len(classes)}
    per_class = MulticlassAccuracy(len(classes), average=None)
    confusion = MulticlassConfusionMatrix(len(classes))
    wrong: list[tuple[torch.Tensor, int, int]] = []
    for images, targets in DataLoader(stream, batch_size=cfg.batch_size):
        logits = model(recipe.prepare(images))
        for metric in (*top.values(), per_class, confusion):
            metric.update(logits, targets)
        predicted = logits.argmax(1)
        for i in torch.nonzero(predicted != targets).flatten().tolist()[: GRID - len(wrong)]:
            wrong.append((images[i], int(targets[i]), int(predicted[i])))
    metrics = {f"{cfg.split}/top{k}": m.compute().item() for k, m in top.items()}
    metrics.update({f"{cfg.split}/acc/{_metric_safe(c)}": v
                    for c, v in zip(classes, per_class.compute().tolist())})
    artifacts = {"confusion_matrix.png": _confusion_png(confusion.compute(), classes),
                 "misclassified.png": _misclassified_png(wrong, classes)}
    return job, metrics, artifacts


def _metric_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-. " else "_" for ch in name).replace(" ", "_")


def _pyplot():
    """pyplot on the file-only Agg backend (workers have no display); imported when first used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_png(fig) -> bytes:
    import io

    plt = _pyplot()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out.getvalue()


def _confusion_png(matrix: torch.Tensor, classes: list[str]) -> bytes:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), n in zip(torch.cartesian_prod(torch.arange(len(classes)), torch.arange(len(classes))).tolist(),
                         matrix.flatten().tolist()):
        ax.text(c, r, str(n), ha="center", va="center", fontsize=7,
                color="white" if n > matrix.max().item() / 2 else "black")
    return _figure_png(fig)


def _misclassified_png(wrong: list, classes: list[str]) -> bytes:
    plt = _pyplot()

    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, true, predicted) in zip(axes.flat, wrong):
        ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")  # (C, H, W) → (H, W[, C])
        ax.set_title(f"{classes[true]} → {classes[predicted]}", fontsize=7)
    return _figure_png(fig)


def log_to_run(tracking_uri: str, run_id: str, metrics: dict, artifacts: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for name, value in metrics.items():
        client.log_metric(run_id, name, value)
    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in artifacts.items():
            Path(tmp, name).write_bytes(blob)
            client.log_artifact(run_id, str(Path(tmp, name)), artifact_path="evaluation")


@task(name="evaluate", retries=1, retry_condition_fn=retry_unless_bad_input)
def evaluate_task(cfg: EvaluateConfig) -> dict:
    job, metrics, artifacts = score(cfg)
    if job.mlflow_run_id:
        log_to_run(job.tracking_uri, job.mlflow_run_id, metrics, artifacts)
    get_run_logger().info("%s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/acc/" not in k))
    return {**metrics, "mlflow_run_id": job.mlflow_run_id, "tracking_uri": job.tracking_uri}
