"""Classical inpainting baselines, scored next to PConv by ``InpaintEvaluator`` (detailed mode).

    from tasks.inpaint import baselines
    filled = baselines.mean_fill(image, mask)   # image (B, 3, H, W) in [0, 1]; mask (B, 1, H, W), 1 = known
    filled = baselines.telea(image, mask)       # OpenCV's fast-marching method (Telea 2004)

Both return (B, 3, H, W) on the image's device and dtype, with every known pixel equal to the
input's (already a composite), so they are scored exactly as the network's composite is. The
PConv paper's table compares against PatchMatch, Iizuka et al., Yu et al. and Telea's method;
the mean fill is the floor any model must beat.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def _known(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if image.dim() != 4 or mask.dim() != 4 or mask.shape[0] != image.shape[0] \
            or mask.shape[2:] != image.shape[2:] or mask.shape[1] not in (1, image.shape[1]):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit image {tuple(image.shape)}")
    return (mask > 0.5).to(image.dtype).expand_as(image)


def mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Holes filled with the image's mean colour over its known pixels (per image, per channel);
    0.5 grey where an image has no known pixel at all."""
    known = _known(image, mask)
    count = known.sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    mean = (image * known).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1)
    mean = torch.where(count > 0, mean, torch.full_like(mean, 0.5))
    return known * image + (1 - known) * mean


def telea(image: torch.Tensor, mask: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """``cv2.inpaint(..., cv2.INPAINT_TELEA)`` per image on uint8 HWC; known pixels are the
    input's own float values (not their 8-bit rounding). OpenCV takes the image's outermost
    ring of pixels as known whatever the mask says, so hole pixels there would keep (and spread)
    the ground truth: the holes are mean-filled first, and that ring keeps the mean colour."""
    known = _known(image, mask)
    pixels = (mean_fill(image.detach(), mask).clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, C)
    holes = (known[:, 0] < 0.5).cpu().numpy().astype(np.uint8) * 255  # (B, H, W), 255 = fill
    filled = np.stack([cv2.inpaint(np.ascontiguousarray(p), h, radius, cv2.INPAINT_TELEA)
                       for p, h in zip(pixels, holes)])
    filled = torch.from_numpy(filled.reshape(pixels.shape)).permute(0, 3, 1, 2)  # (B, C, H, W)
    filled = filled.to(image.device, image.dtype) / 255
    return known * image + (1 - known) * filled
