"""What evaluators share: reductions across DDP ranks, and the one evaluation loop.

An evaluator keeps sufficient statistics (sums, counts, confusion matrices) as tensors and
reduces them with ``sum_across_ranks``; one whose metric is not a sum (AP over OKS needs every
detection) gathers its records with ``gather_across_ranks``. The engine's validation and the
``evaluate`` flow both run ``run_evaluation``: one loop, one evaluator.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from tasks.train.recipe import Evaluator, Recipe


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum over every rank (a copy; float64 keeps large counts exact)."""
    total = tensor.detach().to(torch.float64).clone()
    if distributed():
        # gloo and NCCL both reduce float64; the result lands on the tensor's own device
        dist.all_reduce(total)
    return total


def gather_across_ranks(records: list) -> list:
    """Every rank's picklable records, concatenated in rank order (for non-additive metrics)."""
    if not distributed():
        return list(records)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return [record for part in parts for record in part]


def batch_size_of(inputs: tuple) -> int:
    return int(inputs[0].shape[0])


def floats(outputs: Any) -> Any:
    """Outputs of an autocast forward as float32, whatever their nesting."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(floats(o) for o in outputs)
    return outputs


@torch.no_grad()
def run_evaluation(model: torch.nn.Module, batches: Iterable, recipe: Recipe, evaluator: Evaluator,
                   loss_fn: Callable, device: torch.device, autocast=nullcontext) -> dict[str, float]:
    """Loss and the evaluator's metrics over a split (every rank calls it; each sample once).
    The loss is the batch losses weighted by batch size: exact for a loss that is a mean over
    samples, batching-dependent for one that is not (PConv's Gram-matrix style terms)."""
    model.eval()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in batches:
        inputs, targets = recipe.to_device(batch, device)
        with autocast():
            outputs = model(*inputs)
        outputs = floats(outputs)
        n = batch_size_of(inputs)
        loss_sum += torch.tensor([float(loss_fn(outputs, targets)) * n, n], dtype=torch.float64, device=device)
        evaluator.update(outputs, targets, inputs)
    loss_sum = sum_across_ranks(loss_sum)
    metrics = dict(evaluator.compute())
    metrics["loss"] = (loss_sum[0] / loss_sum[1].clamp(min=1)).item()
    return metrics
