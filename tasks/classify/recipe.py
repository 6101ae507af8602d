"""Pieces every classification recipe shares: class count from the manifest, the loss, the
evaluator, and moving an (images, labels) batch to the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from tasks.classify.evaluator import ClassificationEvaluator
from tasks.train.recipe import EvalContext


def num_classes(manifest: dict) -> int:
    return len(manifest["classes"])


@dataclass(frozen=True)
class CrossEntropy:
    """Cross-entropy on logits, optionally label-smoothed (Szegedy et al., 2016)."""

    label_smoothing: float = 0.0

    def __call__(self, device: torch.device) -> Callable:
        return lambda logits, targets: F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)


def nll(device: torch.device) -> Callable:
    """For models that end in log-softmax."""
    return F.nll_loss


def evaluator(ctx: EvalContext) -> ClassificationEvaluator:
    return ClassificationEvaluator(ctx, top_k=(1, 5), detailed=ctx.detailed)


@dataclass(frozen=True)
class ImagesToDevice:
    """(uint8 images (B, C, H, W), labels) → ((normalised float images,), labels) on the device:
    normalising there moves a quarter of the bytes a float batch would."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, batch, device: torch.device):
        images, labels = batch
        images = images.to(device, non_blocking=True)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1) * 255
        return ((images.float() - mean) / std,), labels.to(device, non_blocking=True)
