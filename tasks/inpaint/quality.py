"""Per-image inpainting quality: L1 (whole image or holes only), PSNR and SSIM.

    from tasks.inpaint import quality
    composite = mask * image + (1 - mask) * output      # mask: 1 = known pixel
    quality.psnr(composite, image)                       # (B,) dB
    quality.ssim(composite, image)                       # (B,)
    quality.l1(composite, image)                         # (B,) whole image
    quality.l1(composite, image, region=1 - mask)        # (B,) hole pixels only

Conventions (those of the PConv paper's table and of MMagic, checked against scikit-image in
``tests/tasks/inpaint/test_quality.py``):

- Inputs are (B, C, H, W) floats in [0, 1]; the data range is 1.0, always passed explicitly
  (torchmetrics would otherwise infer it from the batch's min and max). Everything is computed
  in float64 (SSIM's filtering may run in float32 where speed matters, see ``ssim``).
- The image scored is the *composite*: the prediction in the holes, the ground truth elsewhere.
  The callers build it; these functions score whatever they are given.
- Every metric is per image; a split's number is the mean of the per-image numbers (not the
  PSNR of a pooled MSE, which is what torchmetrics' PSNR gives with ``dim=None``).
- L1 is the mean absolute error as a fraction of the range (the paper's table shows it x100,
  in %). With ``region`` it is the mean over the region's pixels and all channels; an image
  whose region is empty gets 0, and the caller, which knows ``region.sum()``, leaves it out of
  any average (``InpaintEvaluator`` leaves hole-free samples out of every metric).
- SSIM is Wang et al.'s: an 11-tap Gaussian window with sigma 1.5, K1 0.01, K2 0.03, population
  (co)variances. On RGB it is the mean of the per-channel SSIMs. The mean runs over the *valid*
  region of the SSIM map only, 5 px cropped from every side, as scikit-image and MMagic do:
  torchmetrics >= 1.4.2 averages the whole map, including the ring computed on reflect-padded
  input, which moves the mean by more than 1e-3 on damaged images (research note, inpainting §4).
- PSNR is 10·log10(1 / MSE) per image; an image equal to its target has an infinite PSNR.
  (torchmetrics multiplies by 10/ln 10 in float32: about 1e-6 dB off a float64 formula.)
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

DATA_RANGE = 1.0
SSIM_SIGMA = 1.5
SSIM_CROP = 5  # (11 - 1) // 2: the half-width of the Gaussian window, cropped per side


def _pair(pred: torch.Tensor, target: torch.Tensor,
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    return pred.to(dtype), target.to(dtype)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB, per image, data range 1."""
    pred, target = _pair(pred, target)
    return peak_signal_noise_ratio(pred, target, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))


def ssim(pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B,) SSIM per image: the mean of the map over its valid region (channels included).

    ``dtype`` is the filtering precision; the mean is always float64. float32 is about 6x faster
    on a CPU (float64 convolutions have no fast kernel there: 3.4 s against 0.55 s per 512² RGB
    image on 2 cores) and stays within 1e-5 of float64 on photographs (the tests check it).
    """
    pred, target = _pair(pred, target, dtype)
    if min(pred.shape[-2:]) <= 2 * SSIM_CROP:
        raise ValueError(f"SSIM needs sides of at least {2 * SSIM_CROP + 1} px, got {tuple(pred.shape[-2:])}")
    _, full = structural_similarity_index_measure(pred, target, sigma=SSIM_SIGMA,
                                                  data_range=DATA_RANGE, return_full_image=True)
    c = SSIM_CROP
    return full[..., c:-c, c:-c].to(torch.float64).mean(dim=(1, 2, 3))  # (B, C, H-10, W-10) → (B,)


def l1(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean |pred - target| over the image, or over ``region`` ((B, 1, H, W), 1 = counted,
    e.g. the holes ``1 - mask``) and all channels; 0 where the region is empty."""
    pred, target = _pair(pred, target)
    error = (pred - target).abs()
    if region is None:
        return error.mean(dim=(1, 2, 3))
    region = region.to(torch.float64).expand_as(error)
    return (error * region).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3)).clamp(min=1)
