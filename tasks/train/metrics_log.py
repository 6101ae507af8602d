"""Rank 0's MLflow writer: epoch metrics at step = epoch, per-step ones (the LR) at the global
optimizer step. Absent when the job has no MLflow run."""

from __future__ import annotations

import math
import time

SKIP = {"epoch"}


class MetricLogger:
    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id

    @classmethod
    def for_job(cls, job) -> "MetricLogger | None":
        return cls(job.tracking_uri, job.mlflow_run_id) if job.mlflow_run_id else None

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        self._log(metrics, epoch)

    def log_step(self, metrics: dict, step: int) -> None:
        self._log(metrics, step)

    def _log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if k not in SKIP and isinstance(v, (int, float)) and math.isfinite(float(v))]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1,000 metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[i: i + 1000])
