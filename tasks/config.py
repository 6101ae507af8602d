"""The one tree of frozen parameter models. The CLI, the Prefect UI and ``prefect.yaml`` all
produce these objects; flows validate them once and pass them down typed.

Where a default depends on the machine (``VISIONFLOW_HOME``), the field is ``None`` here and the
flow resolves it at its boundary with ``resolve_home``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def resolve_home(environ: dict | None = None) -> Path:
    """``VISIONFLOW_HOME``, default ``~/.visionflow``: datasets, checkpoints, the MLflow store."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("VISIONFLOW_HOME") or Path.home() / ".visionflow").expanduser()


class MnistIngestConfig(Frozen):
    source: str = Field("download", description='Directory of MNIST-format IDX files (gzipped or '
                        'raw), or "download" to fetch MNIST with torchvision where the network allows')
    out: str | None = Field(None, description="Dataset root: a local directory or s3://bucket/prefix "
                            "(default: $VISIONFLOW_HOME/datasets)")
    dataset: Literal["auto", "mnist", "fashion-mnist"] = Field(
        "auto", description='Which classes the files hold; "auto" reads "fashion" in the source path')
    version: str = Field("v1", description="Dataset version directory; a committed version is immutable")
    shard_size: int = Field(10_000, ge=1, description="Samples per shard")


class TrainConfig(Frozen):
    recipe: Literal["mnist_convnet", "mnist_mlp"] = Field(
        "mnist_convnet", description="Experiment recipe: model, loss, optimizer and default schedule")
    data: str = Field(description="Dataset URL holding manifest.json ({root}/{dataset}/{version})")
    epochs: int | None = Field(None, ge=1, description="Epochs (default: the recipe's)")
    batch_size: int | None = Field(None, ge=1, description="Global batch size (default: the recipe's)")
    lr: float | None = Field(None, gt=0, description="Learning rate (default: the recipe's)")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step")
    nproc: int = Field(2, ge=1, description="Processes per node (CPU processes or GPUs)")
    nnodes: int = Field(1, ge=1, description="Nodes; more than one needs rdzv_endpoint")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous for multi-node runs")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    num_workers: int = Field(1, ge=0, description="DataLoader workers per process")
    seed: int = Field(0, description="Seed for initialisation and the per-epoch shard order")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap steps per epoch (smoke runs)")
    checkpoint_dir: str | None = Field(None, description="Where checkpoints go, local or s3:// "
                                       "(default: $VISIONFLOW_HOME/runs/{run_name})")
    run_name: str = Field("mnist-convnet", pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
                          description="Run name; a re-run with the same name resumes it")
    experiment: str = Field("mnist", description="MLflow experiment")


class EvaluateConfig(Frozen):
    checkpoint_dir: str = Field(description="The training run's checkpoint directory")
    data: str | None = Field(None, description="Dataset URL (default: the one the run trained on)")
    split: str = Field("test", description="Split to score")
    batch_size: int = Field(500, ge=1, description="Evaluation batch size")


class MnistPipelineConfig(Frozen):
    source: str = Field("download", description=MnistIngestConfig.model_fields["source"].description)
    out: str | None = Field(None, description=MnistIngestConfig.model_fields["out"].description)
    recipe: Literal["mnist_convnet", "mnist_mlp"] = Field("mnist_convnet", description="Recipe to train")
    epochs: int | None = Field(None, ge=1, description="Epochs (default: the recipe's)")
    nproc: int = Field(2, ge=1, description="Training processes")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap steps per epoch (smoke runs)")
    run_name: str | None = Field(None, description="Run name (default: {dataset}-{recipe})")


class ImagenetIngestConfig(Frozen):
    source: str = Field(description="ILSVRC-2012 root holding train/ and val/ (flat val needs "
                        "LOC_val_solution.csv or the devkit beside them), or any ImageFolder-shaped root")
    out: str | None = Field(None, description="Dataset root: a local directory or s3://bucket/prefix "
                            "(default: $VISIONFLOW_HOME/datasets)")
    dataset: str = Field("imagenet", pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
                         description="Dataset name under the root")
    version: str = Field("v1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
                         description="Version of the resized + center-cropped dataset; immutable once committed")
    size: int = Field(256, ge=8, description="Shorter side after resizing, and the center crop's side")
    variants: tuple[int, ...] = Field((), description="Extra shorter-side-only sizes (e.g. 160 352), "
                                      "each written as version {version}-short{N}")
    quality: int = Field(95, ge=1, le=100, description="JPEG quality of the re-encoded images (95: every "
                         "image within 37 dB PSNR of torchvision's pixels on the bench corpus; 90: 42 dB on "
                         "average, 35 dB at worst, for 30% smaller shards)")
    resample: Literal["bilinear", "bicubic", "lanczos"] = Field(
        "bilinear", description="Antialiased resize filter (bilinear is torchvision's Resize default)")
    draft: bool = Field(True, description="Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT "
                        "domain, never below 1.5× the target size")
    max_pixels: int = Field(89_478_485, ge=1, description="Images with more pixels are rejected as "
                            "decompression bombs (default: Pillow's limit)")
    shard_size: int = Field(1000, ge=1, description="Images per shard, and per Prefect task")
    task_runner: Literal["processes", "threads", "dask", "ray"] = Field(
        "threads", description="Where shard tasks run: local threads (Pillow decodes outside the GIL; "
        "no worker start-up) or processes, or a Dask / Ray cluster (needs prefect-dask / prefect-ray)")
    workers: int | None = Field(None, ge=1, description="Local processes or threads (default: CPU count)")
    cluster_address: str | None = Field(None, description="Dask scheduler or Ray head address")
    experiment: str = Field("imagenet-ingest", description="MLflow experiment of the ingest summary")
