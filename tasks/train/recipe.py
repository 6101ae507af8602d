"""The recipe protocol: everything the one training engine needs to know about an experiment.

A recipe is a table of its paper's hyper-parameters plus a few functions: which model, how a
shard sample becomes tensors, how a batch becomes model inputs and targets, the loss, the
evaluator, the optimizer, the LR schedule and its phases. The engine does everything else (DDP,
AMP, channels_last, accumulation, checkpoints, resume, logging). Three shapes fit:

- classification: ``inputs = (images,)``, ``targets = labels``, cross-entropy, top-k;
- dense maps (RF-Pose): ``inputs = (horizontal, vertical)`` 5-D clips, ``targets`` confidence
  maps, per-pixel BCE, AP over OKS from decoded keypoints;
- inpainting (PConv): ``inputs = (image, mask)``, ``targets`` the clean image, a five-term loss
  built once per process with its frozen VGG, PSNR / SSIM.

Recipes live in the experiment packages (``tasks/<experiment>/recipes.py``) and are listed by
name in ``tasks/catalog.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

import torch
from torch import nn

from models.resnet import param_groups as split_decay_groups
from tasks.errors import BadInput
from tasks.train.schedules import Phase, Schedule

Sample = tuple  # what a decoder returns for one shard sample, e.g. (uint8 image, label)
Batch = Any  # what the DataLoader's collate makes of a list of samples


@dataclass(frozen=True)
class EvalContext:
    """What an evaluator is built with."""

    classes: tuple[str, ...]  # the manifest's class names (empty where there are none)
    device: torch.device
    detailed: bool = False  # the evaluate flow: per-class numbers and pictures too


class Evaluator(Protocol):
    """Accumulates over a split; ``compute`` reduces across DDP ranks (every rank calls it)."""

    def update(self, outputs: Any, targets: Any, inputs: tuple) -> None: ...

    def compute(self) -> dict[str, float]: ...  # names without the split prefix: "top1", "ap"

    def artifacts(self) -> dict[str, bytes]: ...  # plots and tables, by file name (rank 0)


@dataclass(frozen=True)
class Optimizer:
    """The optimizer as data: SGD (with momentum, optionally Nesterov), Adam or AdamW."""

    kind: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    no_decay_bn_bias: bool = False  # Goyal et al. / DAWNBench: no weight decay on BN and biases

    def build(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        groups = param_groups(model, self.weight_decay, self.no_decay_bn_bias)
        if self.kind == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=self.momentum, nesterov=self.nesterov)
        if self.kind == "adam":
            return torch.optim.Adam(groups, lr=lr)
        return torch.optim.AdamW(groups, lr=lr)


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """One group with ``weight_decay``, or (where asked) ``models.resnet.param_groups``' split:
    BN parameters and biases without it."""
    if no_decay_bn_bias:
        return split_decay_groups(model, weight_decay)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


@dataclass(frozen=True)
class Recipe:
    name: str
    experiment: str  # MLflow experiment and registry prefix: "<experiment>-<recipe>"
    model: str  # a models registry name
    # (manifest, width) → builder kwargs, e.g. num_classes from the manifest's classes
    model_kwargs: Callable[[dict, float], dict]
    # (phase, train) → a picklable shard-sample decoder (runs in DataLoader workers)
    decoder: Callable[[Phase, bool], Callable[[dict], Sample]]
    # (collated batch, device) → (model inputs tuple, targets), on the device; normalise here
    to_device: Callable[[Batch, torch.device], tuple[tuple, Any]]
    # (device, **options) → loss(outputs, targets); a factory so a loss with a network (PConv's
    # VGG) is built once per process; options are the run's ``TrainConfig.options``
    loss: Callable[..., Callable[[Any, Any], torch.Tensor]]
    evaluator: Callable[[EvalContext], Evaluator]
    # model kwargs → one example input tuple (batch 2), for the logged model's signature
    example_input: Callable[[dict, Phase], tuple[torch.Tensor, ...]]
    optimizer: Optimizer
    lr: float  # peak LR at lr_batch
    epochs: int
    batch_size: int  # global
    schedule: Schedule = Schedule()
    phases: tuple[Phase, ...] = (Phase(0),)
    lr_batch: int | None = None  # LR is given for this global batch and scales linearly with it
    select: str = "top1"  # the evaluator metric that picks the best checkpoint
    select_mode: Literal["max", "min"] = "max"
    train_split: str = "train"
    val_split: str = "val"
    # (phase, train) → a DataLoader collate_fn, or None for torch's default
    collate: Callable[[Phase, bool], Callable | None] = field(default=lambda phase, train: None)
    # phase → (decoder, collate, to_device) for training with decoding on the device
    # (``TrainConfig.gpu_decode``: the DataLoader ships compressed bytes, nvjpeg decodes); None:
    # the recipe has no such path
    device_decode: Callable[[Phase], tuple[Callable, Callable, Callable]] | None = None
    # the ``TrainConfig.options`` this recipe takes, name → what it means (the loss gets them)
    options: dict[str, str] = field(default_factory=dict)
    # (model, phase index, phase) → None: run when a phase starts, and on resume into it, for
    # what a phase changes in the model itself (PConv's fine-tuning freezes the encoder's BN)
    on_phase: Callable[[nn.Module, int, Phase], None] | None = None
    # outputs are images aligned with the (square) inputs, so the evaluation may average the 8
    # flips and quarter turns (``tasks.train.ensemble``, ``EvaluateConfig.self_ensemble``)
    self_ensemble: bool = False

    def check_options(self, options: dict[str, str]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = ", ".join(f"{k} ({v})" for k, v in self.options.items()) or "none"
            raise BadInput(f"recipe {self.name} has no option {', '.join(unknown)}; it takes: {takes}")

    def base_lr(self, global_batch: int, lr: float | None = None) -> float:
        """The peak LR for a global batch: linear scaling (Goyal et al.) where the recipe says so."""
        peak = lr or self.lr
        return peak * global_batch / self.lr_batch if self.lr_batch else peak


def is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def resolve(ref: str) -> Recipe:
    """``"package.module:ATTR"`` → the recipe object (imported where the job runs)."""
    import importlib

    module, _, attribute = ref.partition(":")
    recipe = getattr(importlib.import_module(module), attribute)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"{ref} is a {type(recipe).__name__}, not a Recipe")
    return recipe
