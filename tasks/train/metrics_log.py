"""Rank 0's MLflow writer: epoch metrics at step = epoch, per-step ones (the LR) at the global
optimizer step. Absent when the job has no MLflow run."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager

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


@contextmanager
def system_metrics(job, node: int, on_gpu: bool):
    """MLflow's system metrics (GPU, CPU, memory, network) for one node's training, logged by
    its local rank 0 as ``system/node<N>/…``; on GPU nodes only (a CPU run's numbers are the
    laptop's). Needs ``psutil`` and ``nvidia-ml-py`` (``pip install 'visionflow[gpu]'``)."""
    if not (on_gpu and job.mlflow_run_id):
        yield
        return
    try:
        import psutil  # noqa: F401
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as exc:
        print(json.dumps({"event": "note", "text": f"system metrics off: {exc} (pip install 'visionflow[gpu]')"}),
              flush=True)
        yield
        return
    monitor = SystemMetricsMonitor(job.mlflow_run_id, resume_logging=True, node_id=f"node{node}",
                                   tracking_uri=job.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
