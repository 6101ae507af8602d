"""The one tree of frozen parameter models. The CLI, the Prefect UI and ``prefect.yaml`` all
produce these objects; flows validate them once and pass them down typed.

Where a default depends on the machine (``VISIONFLOW_HOME``), the field is ``None`` here and the
flow resolves it at its boundary with ``resolve_home``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.catalog import RECIPES

RecipeName = Literal[tuple(RECIPES)]  # a drop-down in the Prefect form, a choice list in the CLI


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def resolve_home(environ: dict | None = None) -> Path:
    """``VISIONFLOW_HOME``, default ``~/.visionflow``: datasets, checkpoints, the MLflow store."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("VISIONFLOW_HOME") or Path.home() / ".visionflow").expanduser()


class TrainConfig(Frozen):
    recipe: RecipeName = Field(
        "mnist_convnet", description="Experiment recipe: model, data transforms, loss, optimizer, "
        "LR schedule and phases, evaluator (the recipes are listed in tasks/catalog.py)")
    data: str = Field(description="Dataset URL holding manifest.json ({root}/{dataset}/{version})")
    epochs: int | None = Field(None, ge=1, description="Epochs (default: the recipe's)")
    batch_size: int | None = Field(None, ge=1, description="Global batch size (default: the recipe's)")
    lr: float | None = Field(None, gt=0, description="Peak learning rate at the recipe's reference batch "
                             "(default: the recipe's; scaled to the global batch where the recipe says so)")
    width: float = Field(1.0, gt=0, le=4, description="Channel width multiplier (1: the paper's network; "
                         "e.g. 0.25 for CPU-sized runs)")
    image_scale: float = Field(1.0, gt=0, le=2, description="Multiplies every phase's train and "
                               "validation image size (rounded to a multiple of 8), for CPU-sized runs")
    gpu_decode: bool = Field(False, description="Decode training JPEGs on the device (nvjpeg on CUDA) "
                             "instead of in DataLoader workers, for recipes that offer it (the ResNet-50 ones)")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step")
    nproc: int | None = Field(None, ge=1, description="Processes per node (default: one per GPU on a GPU "
                              "node, one using every core on a CPU node)")
    nnodes: int = Field(1, ge=1, description="Nodes; more than one needs rdzv_endpoint")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous for multi-node runs")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers per process "
                                    "(default: chosen for the machine, see tasks/train/engine.py)")
    seed: int = Field(0, description="Seed for initialisation and the per-epoch shard order")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap steps per epoch (smoke runs)")
    checkpoint_dir: str | None = Field(None, description="Where checkpoints go, local or s3:// "
                                       "(default: $VISIONFLOW_HOME/runs/{run_name})")
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
                                 description="Run name; a re-run with the same name resumes it "
                                 "(default: {dataset}-{recipe}, e.g. fashion-mnist-mnist-convnet)")
    experiment: str | None = Field(None, description="MLflow experiment (default: the recipe's family, "
                                   "e.g. mnist, imagenet)")
    options: dict[str, str] = Field({}, description="Recipe options, name: value (e.g. perceptual: "
                                    "models:/imagenet-vgg16@latest for pconv_unet); each recipe lists its own")
    launcher: Literal["torchrun", "ray"] = Field("torchrun", description="What starts the training "
                                                  "processes: torchrun (elastic agents, one per node) or Ray "
                                                  "Train's TorchTrainer (nproc × nnodes workers)")
    ray_address: str | None = Field(None, description="Ray cluster to run on with launcher=ray (e.g. auto, "
                                    "ray://head:10001); default: start a local Ray instance")
    max_restarts: int = Field(0, ge=0, description="Times a failed worker group is restarted from the last "
                              "checkpoint (torchrun --max-restarts; Ray FailureConfig(max_failures))")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="Also checkpoint every N optimizer "
                                               "steps inside an epoch, with the data position, so a restart "
                                               "loses at most N steps (default: at epoch ends only)")
    sample_ledger: bool = Field(False, description="Write the keys each rank trained on to "
                                "<checkpoint_dir>/ledger/epoch-<E>/rank-<R>.txt, cut back to the checkpoint "
                                "on resume (an exactly-once audit; needs a local checkpoint_dir)")
    ddp_bucket_mb: int = Field(25, ge=1, description="DDP gradient bucket size in MiB (PyTorch's default 25)")
    ddp_compression: Literal["none", "fp16", "bf16"] = Field("none", description="All-reduce gradients "
                                                             "in fp16 or bf16 (a DDP comm hook): half the bytes "
                                                             "on the wire; see bench/scaling_model.py for when it pays")


class EvaluateConfig(Frozen):
    checkpoint_dir: str = Field(description="The training run's checkpoint directory")
    data: str | None = Field(None, description="Dataset URL (default: the one the run trained on)")
    split: str | None = Field(None, description="Split to score (default: the recipe's validation split)")
    batch_size: int = Field(500, ge=1, description="Evaluation batch size")
    untrained: bool = Field(False, description="Score a freshly initialised network of the run's recipe "
                            "(seeded as the run was) instead of its checkpoint: what training added; "
                            "metrics named <split>/untrained/<metric>")
    self_ensemble: bool = Field(False, description="Average the outputs of the 8 flips and quarter turns "
                                "of each input (recipes with image outputs, e.g. pconv_unet; 8× the "
                                "inference): metrics named <split>/self_ensemble/<metric>")

    @model_validator(mode="after")
    def _one_variant(self):
        if self.untrained and self.self_ensemble:
            raise ValueError("untrained and self_ensemble score different things: ask for one at a time")
        return self

    @property
    def variant(self) -> str | None:
        """What is scored besides the trained network as it is: the name its metrics carry."""
        return "untrained" if self.untrained else "self_ensemble" if self.self_ensemble else None


