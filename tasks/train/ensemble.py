"""Geometric self-ensemble at test time (Timofte et al., "Seven ways to improve example-based
single image super resolution", CVPR 2016; the "+" models of EDSR, Lim et al. 2017): a dense
image-to-image network runs on the 8 flips and quarter turns of its inputs, each output is turned
back, and the 8 are averaged. It costs 8 forward passes and changes no weight.

    model = SelfEnsemble(trained)          # forward(*inputs): every input (B, C, H, W), square H = W
    output = model(image * mask, mask)     # the mean of the 8 aligned outputs

Only for recipes whose outputs are images aligned with their inputs (``Recipe.self_ensemble``):
a classifier's logits have no orientation to turn back.
"""

from __future__ import annotations

import torch
from torch import nn

TRANSFORMS = 8  # 4 quarter turns, each with and without a horizontal flip


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square, on the last two dimensions."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def undo(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of ``dihedral(·, k)``."""
    x = x.flip(-1) if k >= 4 else x
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


class SelfEnsemble(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        for x in inputs:
            if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
                raise ValueError(f"self-ensemble needs square (B, C, H, W) inputs, got {tuple(x.shape)}")
        total = None
        for k in range(TRANSFORMS):
            out = undo(self.model(*(dihedral(x, k) for x in inputs)), k)
            total = out if total is None else total + out
        return total / TRANSFORMS
