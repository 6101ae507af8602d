"""The one training engine: a plain ``torch.distributed`` DDP loop for every experiment.

Run it under torchrun (what the Prefect ``train`` task does)::

    torchrun --standalone --nproc-per-node 2 -m tasks.engine --job job.json

``job.json`` holds the validated ``TrainConfig`` plus where checkpoints and the MLflow run live.
Rank 0 alone writes checkpoints (atomically, every epoch) and logs metrics; a re-run with the
same checkpoint directory resumes after the last finished epoch with the optimizer state.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

import models
from tasks import recipes, storage
from tasks.config import TrainConfig
from tasks.reader import ShardStream, shards_of
from tasks.recipes import Recipe

CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class Job:
    """A training config resolved for one launch: concrete defaults and side-effect targets."""

    config: TrainConfig
    checkpoint_dir: str
    num_classes: int
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None

    @property
    def recipe(self) -> Recipe:
        return recipes.get(self.config.recipe)

    @property
    def epochs(self) -> int:
        return self.config.epochs or self.recipe.epochs

    @property
    def batch_size(self) -> int:
        return self.config.batch_size or self.recipe.batch_size

    @property
    def lr(self) -> float:
        return self.config.lr or self.recipe.lr

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "config": self.config.model_dump()})

    @classmethod
    def from_json(cls, text: str) -> "Job":
        raw = json.loads(text)
        return cls(**{**raw, "config": TrainConfig(**raw["config"])})


# --- process group ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_pref: str = "auto") -> Dist:
    """Join the process group torchrun (or Ray Train) described in the environment."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank, device)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(url: str, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(url, buffer.getvalue())  # temp + rename, or a single PUT


def load_checkpoint(url: str, map_location="cpu") -> dict | None:
    if not storage.exists(url):
        return None
    return torch.load(io.BytesIO(storage.read_bytes(url)), map_location=map_location, weights_only=True)


# --- the loop --------------------------------------------------------------------------------


def make_loader(job: Job, split: str, d: Dist, train: bool) -> tuple[ShardStream, DataLoader]:
    cfg = job.config
    stream = ShardStream(shards_of(cfg.data, split), job.recipe.decode, rank=d.rank,
                         world_size=d.world_size, seed=cfg.seed, shuffle=train,
                         policy="pad" if train else "exact")
    per_rank = job.batch_size // (d.world_size * cfg.grad_accum)
    if per_rank < 1 or per_rank * d.world_size * cfg.grad_accum != job.batch_size:
        raise ValueError(f"batch size {job.batch_size} does not split into {d.world_size} ranks × "
                         f"{cfg.grad_accum} accumulation steps")
    loader = DataLoader(stream, batch_size=per_rank, num_workers=cfg.num_workers,
                        pin_memory=d.device.type == "cuda")
    return stream, loader


def autocast(d: Dist):
    return torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else nullcontext()


def to_device(images: torch.Tensor, d: Dist) -> torch.Tensor:
    images = images.to(d.device, non_blocking=True)
    if d.device.type == "cuda" and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def train_one_epoch(model, loader, optimizer, job: Job, d: Dist) -> dict:
    model.train()
    recipe, accum = job.recipe, job.config.grad_accum
    total_loss = torch.zeros((), device=d.device)
    seen, steps, start = 0, 0, time.perf_counter()
    total_steps = len(loader.dataset) // (loader.batch_size * accum)
    if job.config.max_steps_per_epoch:
        total_steps = min(total_steps, job.config.max_steps_per_epoch)
    progress_every = max(1, total_steps // 10)
    optimizer.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(loader):
        inputs, targets = recipe.prepare(to_device(images, d)), targets.to(d.device)
        last_micro = (i + 1) % accum == 0
        # Gradients are all-reduced only on the micro-batch that ends an accumulation window.
        sync = nullcontext() if last_micro or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with sync, autocast(d):
            loss = recipe.loss(model(inputs), targets)
            (loss / accum).backward()
        total_loss += loss.detach() * len(targets)
        seen += len(targets)
        if last_micro:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if d.is_main and steps % progress_every == 0:
                print(json.dumps({"event": "progress", "step": steps, "steps": total_steps,
                                  "loss": loss.item()}), flush=True)
            if job.config.max_steps_per_epoch and steps >= job.config.max_steps_per_epoch:
                break
    stats = torch.tensor([total_loss.item(), seen], dtype=torch.float64)
    if d.world_size > 1:
        dist.all_reduce(stats)
    elapsed = time.perf_counter() - start
    return {"train/loss": stats[0].item() / max(stats[1].item(), 1),
            "perf/images_per_s": stats[1].item() / elapsed, "perf/epoch_s": elapsed}


@torch.no_grad()
def evaluate(model, loader, job: Job, d: Dist) -> dict:
    """Loss and top-k accuracy over the split, each sample counted once across all ranks."""
    model.eval()
    recipe = job.recipe
    metrics = {k: MulticlassAccuracy(job.num_classes, top_k=k, average="micro").to(d.device)
               for k in recipe.top_k if k <= job.num_classes}
    loss_sum = torch.zeros(2, dtype=torch.float64, device=d.device)
    for images, targets in loader:
        inputs, targets = recipe.prepare(to_device(images, d)), targets.to(d.device)
        with autocast(d):
            logits = model(inputs)
        loss_sum += torch.tensor([recipe.loss(logits.float(), targets).item() * len(targets),
                                  len(targets)], dtype=torch.float64, device=d.device)
        for metric in metrics.values():
            metric.update(logits.float(), targets)
    if d.world_size > 1:
        dist.all_reduce(loss_sum)
    out = {f"val/top{k}": m.compute().item() for k, m in metrics.items()}  # compute() syncs ranks
    out["val/loss"] = (loss_sum[0] / loss_sum[1].clamp(min=1)).item()
    return out


def build_model(job: Job, d: Dist) -> torch.nn.Module:
    torch.manual_seed(job.config.seed)
    model = models.build(job.recipe.model, num_classes=job.num_classes, **job.recipe.model_kwargs)
    model = model.to(d.device)
    if d.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def run(job: Job) -> dict:
    """Train until ``job.epochs`` are done, resuming from the last checkpoint; returns the last
    epoch's metrics. Called in every rank."""
    d = setup(job.config.device)
    try:
        model = build_model(job, d)
        optimizer = job.recipe.optimizer(model.parameters(), job.lr)
        ckpt_url = storage.join(job.checkpoint_dir, CHECKPOINT)
        state = load_checkpoint(ckpt_url, map_location=d.device)
        start_epoch, history = 0, []
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, history = state["epoch"] + 1, state["history"]
        ddp = DistributedDataParallel(model) if d.world_size > 1 else model
        train_stream, train_loader = make_loader(job, job.recipe.train_split, d, train=True)
        _, val_loader = make_loader(job, job.recipe.val_split, d, train=False)
        logger = _MetricLogger(job) if d.is_main else None
        for epoch in range(start_epoch, job.epochs):
            train_stream.set_epoch(epoch)
            metrics = {**train_one_epoch(ddp, train_loader, optimizer, job, d),
                       # the bare module: evaluation needs no gradient sync, and ranks may
                       # hold one sample more or less here
                       **evaluate(model, val_loader, job, d), "epoch": epoch}
            history.append(metrics)
            if d.is_main:
                save_checkpoint(ckpt_url, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                           "epoch": epoch, "history": history, "job": job.to_json()})
                logger.log(metrics, epoch)
                print(json.dumps({"event": "epoch", **metrics}), flush=True)
        return history[-1] if history else {}
    finally:
        cleanup()


class _MetricLogger:
    """Rank 0's MLflow writer; absent when the job has no MLflow run."""

    def __init__(self, job: Job):
        self.client = None
        if job.mlflow_run_id:
            from mlflow import MlflowClient

            self.client, self.run_id = MlflowClient(job.tracking_uri), job.mlflow_run_id

    def log(self, metrics: dict, epoch: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), now, epoch) for k, v in metrics.items()
            if k != "epoch" and math.isfinite(float(v))])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="job JSON written by the train task")
    args = parser.parse_args(argv)
    with open(args.job) as f:
        run(Job.from_json(f.read()))


if __name__ == "__main__":
    main()
