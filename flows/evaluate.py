"""Flow ``evaluate``: score a trained run's checkpoint and log the results to its MLflow run.

    visionflow evaluate --checkpoint-dir ~/.visionflow/runs/fashion-mnist-mnist_convnet
"""

from __future__ import annotations

from prefect import flow

from tasks.config import EvaluateConfig
from tasks.train.evaluation import evaluate_task


@flow(name="evaluate")
def evaluate(cfg: EvaluateConfig) -> dict:
    return evaluate_task(cfg)
