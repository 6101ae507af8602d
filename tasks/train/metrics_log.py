"""Rank 0's MLflow writer: epoch metrics at step = epoch, per-step ones (the LR) at the global
optimizer step. Absent when the job has no MLflow run.

A tracking server that goes away (stopped, restarted, answering 5xx) does not stop training.
Each batch it could not take is kept, with its original step and timestamp: appended at once to
``<checkpoint_dir>/mlflow-unsent.jsonl`` (so neither the engine's exit nor a crash loses it) and
held in memory up to ``MAX_BUFFERED`` metrics (past that, the file alone holds them and is read
back). Later log calls try to send them all, after ``RETRY_EVERY`` seconds, then after twice as
long each time up to ``RETRY_MAX``; a request makes one attempt with a ``REQUEST_TIMEOUT``
(MLflow's client would retry for minutes), so a server that hangs costs training little.
What is still unsent when the engine exits, the train task sends (``send_unsent``) or fails
naming the file; a resumed run sends a file left behind by its last process first.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from tasks.data import storage
from tasks.track import tracking

SKIP = {"epoch"}
UNSENT = "mlflow-unsent.jsonl"
MAX_BUFFERED = 100_000  # metrics held in memory during an outage (a few MB); the file holds all
RETRY_EVERY, RETRY_MAX = 2.0, 16.0  # seconds between attempts to send while the server is away
REQUEST_TIMEOUT = 10  # seconds a metrics request may take before the server counts as away
BATCH = 1000  # MLflow takes at most 1,000 metrics per request


def unsent_path(job) -> Path:
    """Where a job's unsent metrics wait: its checkpoint directory; for one on S3 (which cannot
    be appended to, and may be as unreachable as MLflow) the local temp directory."""
    if storage.is_s3(job.checkpoint_dir):
        return Path(tempfile.gettempdir()) / f"visionflow-{job.mlflow_run_id}-{UNSENT}"
    return Path(job.checkpoint_dir) / UNSENT


def _note(text: str) -> None:
    print(json.dumps({"event": "note", "text": text}), flush=True)  # the train task logs it


class MetricLogger:
    def __init__(self, tracking_uri: str, run_id: str, unsent: Path, note=_note):
        from mlflow import MlflowClient

        self.client, self.uri, self.run_id = MlflowClient(tracking_uri), tracking_uri, run_id
        self.unsent, self.note = Path(unsent), note
        self.kept: list[dict] = []  # the unsent entries, oldest first, unless in_file_only
        self.kept_metrics = 0
        self.waiting = sum(1 for _ in _read(self.unsent))  # unsent entries (one per log call)
        self.in_file_only = self.waiting > 0  # left by an earlier process, or past MAX_BUFFERED
        self.next_try, self.every = 0.0, RETRY_EVERY

    @classmethod
    def for_job(cls, job) -> "MetricLogger | None":
        return cls(job.tracking_uri, job.mlflow_run_id, unsent_path(job)) if job.mlflow_run_id else None

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        self._log(metrics, epoch)

    def log_step(self, metrics: dict, step: int) -> None:
        self._log(metrics, step)

    def _log(self, metrics: dict, step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()
                  if k not in SKIP and isinstance(v, (int, float)) and math.isfinite(float(v))}
        if not values:
            return
        entry = {"step": step, "timestamp": int(time.time() * 1000), "metrics": values}
        if not self.waiting:
            try:
                return self._send([entry])
            except Exception as exc:  # noqa: BLE001 — sorted by unreachable()
                if not tracking.unreachable(exc):
                    raise
                self._keep(entry)
                self._back_off()
                self.note(f"tracking server {self.uri} unreachable ({tracking.reason(exc)}): {batches(self.waiting)} "
                          f"buffered (and in {self.unsent}); training goes on")
                return
        self._keep(entry)
        if time.monotonic() >= self.next_try:
            self.flush()

    def flush(self) -> bool:
        """Try once to send every kept entry, oldest first; True when none is left."""
        if not self.waiting:
            return True
        sent = 0
        try:
            for chunk in _chunks(self._pending()):
                self._send(chunk)
                sent += len(chunk)
        except Exception as exc:  # noqa: BLE001 — sorted by unreachable()
            if not tracking.unreachable(exc):
                raise
            self._forget(sent)
            self._back_off()
            return False
        count = self.waiting
        self._forget(count)
        self.every = RETRY_EVERY
        self.note(f"tracking server {self.uri} is back: flushed {batches(count, 'buffered')}")
        return True

    def _back_off(self) -> None:
        self.next_try = time.monotonic() + self.every
        self.every = min(2 * self.every, RETRY_MAX)

    def metrics_waiting(self) -> int:
        return sum(len(e["metrics"]) for e in self._pending())

    def _send(self, entries: list[dict]) -> None:
        from mlflow.entities import Metric

        batch = [Metric(k, v, e["timestamp"], e["step"]) for e in entries for k, v in e["metrics"].items()]
        with tracking.quick_requests(REQUEST_TIMEOUT):
            for i in range(0, len(batch), BATCH):
                self.client.log_batch(self.run_id, metrics=batch[i: i + BATCH])

    def _keep(self, entry: dict) -> None:
        self.unsent.parent.mkdir(parents=True, exist_ok=True)
        with open(self.unsent, "a") as out:
            out.write(json.dumps(entry) + "\n")
        self.waiting += 1
        if self.in_file_only:
            return
        self.kept.append(entry)
        self.kept_metrics += len(entry["metrics"])
        if self.kept_metrics > MAX_BUFFERED:
            self.kept, self.kept_metrics, self.in_file_only = [], 0, True
            self.note(f"over {MAX_BUFFERED} metrics unsent: they wait in {self.unsent} alone")

    def _pending(self):
        return iter(self.kept) if not self.in_file_only else _read(self.unsent)

    def _forget(self, count: int) -> None:
        """The first ``count`` waiting entries were sent: drop them from memory and the file."""
        if not count:
            return
        self.waiting -= count
        if not self.waiting:
            self.kept, self.kept_metrics, self.in_file_only = [], 0, False
            self.unsent.unlink(missing_ok=True)
            return
        if self.in_file_only:
            rest = _read(self.unsent)
            for _ in range(count):
                next(rest)
        else:
            rest = self.kept = self.kept[count:]
            self.kept_metrics = sum(len(e["metrics"]) for e in rest)
        tmp = self.unsent.with_name(f".{self.unsent.name}.tmp")
        with open(tmp, "w") as out:
            out.writelines(json.dumps(e) + "\n" for e in rest)
        os.replace(tmp, self.unsent)


def batches(count: int, kind: str = "metric") -> str:
    return f"{count} {kind} batch" + ("" if count == 1 else "es")


def _read(path: Path):
    """The entries of an unsent file; a line cut short by a crash mid-write is skipped."""
    try:
        lines = open(path)
    except FileNotFoundError:
        return
    with lines:
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _chunks(entries):
    """Whole entries, grouped up to ``BATCH`` metrics a request (a larger entry goes alone)."""
    chunk, size = [], 0
    for entry in entries:
        if chunk and size + len(entry["metrics"]) > BATCH:
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += len(entry["metrics"])
    if chunk:
        yield chunk


def send_unsent(job, log=print, wait: float = 120.0) -> None:
    """After the engine exited: send the metrics it could not, waiting at most ``wait`` seconds
    for the tracking server; else ``TrackingUnreachable`` says how many wait, and where."""
    path = unsent_path(job)
    if not job.mlflow_run_id or not path.exists():
        return
    logger = MetricLogger(job.tracking_uri, job.mlflow_run_id, path, note=log)
    deadline, tries = time.monotonic() + wait, 0
    while not logger.flush():
        if time.monotonic() + RETRY_EVERY > deadline:
            raise tracking.TrackingUnreachable(
                f"tracking server {job.tracking_uri} unreachable for {wait:.0f} s after training: "
                f"{logger.metrics_waiting()} metrics ({batches(logger.waiting)}) of MLflow run {job.mlflow_run_id} "
                f"not logged; saved in {path} and sent when the run is resumed (run the same command again)")
        if not tries:
            log(f"tracking server {job.tracking_uri} unreachable: {batches(logger.waiting)} of training wait in "
                f"{path}; waiting up to {wait:.0f} s for it")
        tries += 1
        time.sleep(RETRY_EVERY)


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
