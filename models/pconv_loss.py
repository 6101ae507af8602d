"""The PConv U-Net training loss (Liu et al. 2018, Eq. 1-7):

    L = L_valid + 6 L_hole + 0.05 L_perceptual + 120 (L_style_out + L_style_comp) + 0.1 L_tv

    from models.pconv_loss import PConvLoss
    loss_fn = PConvLoss("vgg16-397923af.pth")        # or a state dict, e.g. a visionflow vgg16's
    terms = loss_fn(output, target, mask)            # dict of the terms and "total"
    terms["total"].backward()

Perceptual and style terms compare VGG16 pool1, pool2 and pool3 features. Their weights must be
handed in: a path to a VGG16 state dict (torchvision layout, ``features.N.*`` keys) or the
state dict itself. Random VGG weights make those terms meaningless, so they are refused unless
``allow_random_weights=True`` (smoke tests only).

``l1_norm`` says what L_valid and L_hole are averaged over: ``"size"`` (the paper's: every
element of the image, N = C·H·W, so an image with 5 % holes adds a tenth of the hole loss a 50 %
one adds) or ``"mask"`` (MMagic's ``mask_reduce_loss``: each image's own hole or valid elements,
then the mean over images, so every image's holes weigh the same whatever their area).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.vgg import VGG_CFGS, make_layers

VGG16_TO_POOL3 = VGG_CFGS["D"][:10]  # 64, 64, M, 128, 128, M, 256, 256, 256, M
POOL_LAYERS = (4, 9, 16)  # indices of pool1, pool2, pool3 in VGG16's ``features``
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
L1_NORMS = ("size", "mask")


@dataclass(frozen=True)
class PConvLossWeights:
    """The paper's term weights, found by a hyperparameter search on 100 validation images."""

    valid: float = 1.0
    hole: float = 6.0
    perceptual: float = 0.05
    style: float = 120.0
    tv: float = 0.1


def load_vgg16_features(weights: str | os.PathLike | Mapping[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    """The ``features.0`` .. ``features.16`` tensors of a VGG16 state dict, keys made relative."""
    state = (torch.load(weights, map_location="cpu", weights_only=True)
             if isinstance(weights, (str, os.PathLike)) else weights)
    prefix = "features."
    return {key[len(prefix):]: value for key, value in state.items()
            if key.startswith(prefix) and int(key.split(".")[1]) <= POOL_LAYERS[-1]}


def features_config(state: Mapping[str, torch.Tensor]) -> list:
    """VGG16's config D up to pool3 with each conv's width read from ``state`` (``N.weight``)."""
    config, index = [], 0
    for item in VGG16_TO_POOL3:
        if item == "M":
            config.append(item)
            index += 1
            continue
        weight = state.get(f"{index}.weight")
        # a missing or odd tensor keeps the paper's width: load_state_dict then names the problem
        config.append(int(weight.shape[0]) if weight is not None and weight.dim() == 4 else item)
        index += 2  # conv, ReLU
    return config


class VGG16PoolFeatures(nn.Module):
    """Frozen VGG16 up to pool3; ``forward(x)`` returns [pool1, pool2, pool3] features."""

    def __init__(self, weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
                 allow_random_weights: bool = False):
        super().__init__()
        state = None if weights is None else load_vgg16_features(weights)
        # Channel counts come from the weights, so a width-scaled VGG16 (a CPU-sized one the
        # project's ImageNet pipeline trained) serves as well as the paper's.
        self.features = make_layers(features_config(state) if state else VGG16_TO_POOL3)
        if state is not None:
            try:
                self.features.load_state_dict(state)
            except RuntimeError as error:
                source = "state dict" if isinstance(weights, Mapping) else os.fspath(weights)
                raise ValueError(f"VGG16 weights ({source}) do not fit VGG16 features up to "
                                 f"pool3 (config D, no BN): {error}") from None
        elif not allow_random_weights:
            raise ValueError("the PConv perceptual and style losses need trained VGG16 weights: "
                             "pass a path to a VGG16 state dict (e.g. torchvision's "
                             "vgg16-397923af.pth, or a visionflow-trained vgg16) or the state "
                             "dict itself; allow_random_weights=True is for smoke tests only")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16PoolFeatures:
        return super().train(False)  # a fixed feature extractor, whatever the caller's mode

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pools = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in POOL_LAYERS:
                pools.append(x)
        return pools


def masked_l1(error: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image, the mean of ``error`` over the region's elements (0 for an empty region), then
    the mean over the batch."""
    region = region.expand_as(error)
    per_image = (error * region).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3)).clamp(min=1)  # (B,)
    return per_image.mean()


def gram(features: torch.Tensor) -> torch.Tensor:
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w)  # (B, C, HW); float32: HW-long sums overflow fp16
    return f @ f.transpose(1, 2) / (c * h * w)  # (B, C, C), the paper's K_p = 1 / (C H W)


def total_variation(image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Sum of |neighbour differences| over pixel pairs both inside ``region``, / numel(image)."""
    pairs_x = region[..., :, 1:] * region[..., :, :-1]
    pairs_y = region[..., 1:, :] * region[..., :-1, :]
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs() * pairs_x
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs() * pairs_y
    return (dx.sum() + dy.sum()) / image.numel()


class PConvLoss(nn.Module):
    """``forward(output, target, mask)`` -> dict of valid, hole, perceptual, style_out,
    style_comp, tv and the weighted total. ``mask``: (B, 1 or C, H, W), 1 = known pixel.

    ``imagenet_normalize`` maps [0, 1] images to VGG's input statistics before the feature net;
    pass False when the pipeline already feeds ImageNet-normalised images.
    """

    def __init__(self, vgg_weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
                 *, weights: PConvLossWeights = PConvLossWeights(),
                 imagenet_normalize: bool = True, allow_random_weights: bool = False,
                 l1_norm: Literal["size", "mask"] = "size"):
        super().__init__()
        if l1_norm not in L1_NORMS:
            raise ValueError(f"l1_norm must be one of {', '.join(L1_NORMS)}, got {l1_norm!r}")
        self.l1_norm = l1_norm
        self.vgg = VGG16PoolFeatures(vgg_weights, allow_random_weights=allow_random_weights)
        self.weights = weights
        self.imagenet_normalize = imagenet_normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def vgg_input(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std if self.imagenet_normalize else images

    def l1(self, error: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return (region * error).mean() if self.l1_norm == "size" else masked_l1(error, region)

    def forward(self, output: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if output.shape != target.shape or output.dim() != 4:
            raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} "
                             "must be equal (B, C, H, W) shapes")
        mask = mask.to(output.dtype)
        hole = 1 - mask
        # I_comp: the prediction in the holes, the known pixels elsewhere (M ⊙ I_in equals
        # M ⊙ I_gt, since the input is the ground truth outside the holes).
        comp = mask * target + hole * output
        error = (output - target).abs()
        terms = {"valid": self.l1(error, mask), "hole": self.l1(error, hole)}
        # The target's features need no gradient: a pass of their own keeps the backward pass
        # to the output and the composite (a third less of VGG's backward).
        with torch.no_grad():
            gt_feats = self.vgg(self.vgg_input(target))
        perceptual = style_out = style_comp = 0.0
        for feats, f_gt in zip(self.vgg(self.vgg_input(torch.cat([output, comp]))), gt_feats):
            f_out, f_comp = feats.chunk(2)  # (2B, ...) → output's, composite's
            perceptual = perceptual + (f_out - f_gt).abs().mean() + (f_comp - f_gt).abs().mean()
            g_gt = gram(f_gt)
            style_out = style_out + (gram(f_out) - g_gt).abs().mean()
            style_comp = style_comp + (gram(f_comp) - g_gt).abs().mean()
        terms.update(perceptual=perceptual, style_out=style_out, style_comp=style_comp)
        # Smoothing over P, the hole region dilated by one pixel, so the seam is smoothed too.
        hole_pixels = hole.amax(dim=1, keepdim=True)  # (B, 1, H, W)
        region = F.max_pool2d(hole_pixels, kernel_size=3, stride=1, padding=1)
        terms["tv"] = total_variation(comp, region)
        w = self.weights
        terms["total"] = (w.valid * terms["valid"] + w.hole * terms["hole"]
                          + w.perceptual * terms["perceptual"]
                          + w.style * (terms["style_out"] + terms["style_comp"])
                          + w.tv * terms["tv"])
        return terms

