"""The inpainting metrics agree with scikit-image's on real photographs with inpainting-like
damage touching the border (so the SSIM border handling matters), and the classical baselines
keep the known pixels and fill the holes as they claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torchmetrics.functional.image import structural_similarity_index_measure

from tasks.inpaint import baselines, quality

# Debian's MATE wallpapers: real photographs, where the system has them.
PHOTOS = [Path("/usr/share/backgrounds/mate/nature", name) for name in ("GreenMeadow.jpg", "Aqua.jpg")]
H, W = 144, 192  # not square, so a swapped axis would show


def textured(seed: int) -> np.ndarray:
    """Fallback when no photograph is installed: smooth colour fields plus fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 0.3 + 0.5
    return np.clip(base + rng.normal(0, 0.08, (H, W, 3)), 0, 1)


def golden(index: int) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1]."""
    path = PHOTOS[index]
    if not path.exists():
        return textured(index)
    with Image.open(path) as im:
        im.draft("RGB", (2 * W, 2 * H))  # JPEG: decode at a reduced scale, much faster
        return np.asarray(im.convert("RGB").resize((W, H), Image.BICUBIC), dtype=np.float64) / 255


def damaged(gt: np.ndarray, seed: int) -> np.ndarray:
    """Holes filled as a poor inpainter would (flat grey, the mean colour, a smeared copy), two
    of them on the image border, then noise over everything."""
    rng = np.random.default_rng(seed)
    pred = gt.copy()
    pred[:30, :50] = 0.5  # the top-left corner
    pred[H - 25:, 80:140] = gt[H - 25:, 80:140].mean(axis=(0, 1))  # the bottom edge
    pred[50:90, 100:150] = gt[50:90, 60:110]  # an interior hole, filled from elsewhere
    return np.clip(pred + rng.normal(0, 0.04, pred.shape), 0, 1)


def nchw(*arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, H, W, C) → (B, C, H, W)


@pytest.fixture(scope="module")
def pairs():
    gts = [golden(i) for i in range(len(PHOTOS))]
    preds = [damaged(gt, i) for i, gt in enumerate(gts)]
    return gts, preds


def reference_ssim(gt, pred) -> float:
    return sk_ssim(gt, pred, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                   use_sample_covariance=False)


def test_golden_images_are_real_and_distinct(pairs):
    gts, _ = pairs
    assert all(gt.shape == (H, W, 3) for gt in gts)
    assert all(gt.std() > 0.05 for gt in gts)  # textured, not flat
    assert np.abs(gts[0] - gts[1]).mean() > 0.05


def test_ssim_and_psnr_agree_with_scikit_image_per_image(pairs):
    gts, preds = pairs
    ssim = quality.ssim(nchw(*preds), nchw(*gts))
    psnr = quality.psnr(nchw(*preds), nchw(*gts))
    assert ssim.shape == psnr.shape == (2,) and ssim.dtype == psnr.dtype == torch.float64
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        assert ssim[i].item() == pytest.approx(reference_ssim(gt, pred), abs=1e-3)
        assert psnr[i].item() == pytest.approx(sk_psnr(gt, pred, data_range=1.0), abs=1e-3)
    assert 0.2 < ssim.min() and ssim.max() < 0.95  # damaged, not destroyed: a test that can fail
    assert ssim[0] != pytest.approx(ssim[1].item(), abs=1e-3)  # and per image, not batch-pooled


def test_float32_filtering_stays_within_1e5_of_float64(pairs):
    gts, preds = pairs
    pred, gt = nchw(*preds).float(), nchw(*gts).float()  # float32 inputs, as the evaluator has
    fast = quality.ssim(pred, gt, dtype=torch.float32)
    assert fast.dtype == torch.float64
    assert torch.allclose(fast, quality.ssim(pred, gt), atol=1e-5, rtol=0)
    assert fast[0].item() == pytest.approx(reference_ssim(gts[0], preds[0]), abs=1e-3)


def test_the_uncropped_torchmetrics_mean_disagrees(pairs):
    """torchmetrics >= 1.4.2 averages the reflect-padded border ring too; on these images that
    moves SSIM by more than 1e-3, so the crop in ``quality.ssim`` is what makes them agree."""
    gts, preds = pairs
    reference = reference_ssim(gts[0], preds[0])
    uncropped = structural_similarity_index_measure(nchw(preds[0]), nchw(gts[0]), data_range=1.0).item()
    assert abs(uncropped - reference) > 1e-3
    assert abs(quality.ssim(nchw(preds[0]), nchw(gts[0])).item() - reference) < 1e-3


def test_psnr_uses_data_range_one_not_the_batch_range():
    target = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    pred = target + 0.01  # the data spans 0.5..0.51: an inferred range would be 0.01
    assert quality.psnr(pred, target).item() == pytest.approx(40.0, abs=1e-4)


def test_l1_whole_image_and_holes_only():
    target = torch.zeros(2, 3, 12, 12, dtype=torch.float64)
    pred = target.clone()
    pred[0, :, :6] = 0.3  # the top half of image 0 is off by 0.3
    holes = torch.zeros(2, 1, 12, 12)
    holes[0, :, :3] = 1  # a hole inside the wrong half
    holes[0, :, 9:] = 1  # and one in the right half
    assert quality.l1(pred, target).tolist() == pytest.approx([0.15, 0.0])
    # image 0: half its hole pixels are off by 0.3; image 1 has no hole: 0, not NaN
    assert quality.l1(pred, target, holes).tolist() == pytest.approx([0.15, 0.0])
    with pytest.raises(ValueError):
        quality.l1(pred, target[:1])


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="11"):
        quality.ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


# --- baselines ---------------------------------------------------------------------------------


def _holes(b: int, h: int, w: int) -> torch.Tensor:
    mask = torch.ones(b, 1, h, w)  # 1 = known
    mask[0, :, 10:22, 12:30] = 0
    mask[-1, :, :8, -8:] = 0  # a corner hole
    return mask


def test_mean_fill_keeps_known_pixels_and_fills_with_the_known_mean(pairs):
    gts, _ = pairs
    image = nchw(*gts)
    mask = _holes(2, H, W)
    filled = baselines.mean_fill(image, mask)
    known = mask.bool().expand_as(image)
    assert filled.shape == image.shape and filled.dtype == image.dtype
    assert torch.equal(filled[known], image[known])
    for i in range(2):
        expected = image[i][:, mask[i, 0].bool()].mean(dim=1)  # (3,) the known pixels' colour
        hole = ~mask[i, 0].bool()
        assert torch.allclose(filled[i][:, hole], expected[:, None].expand(-1, int(hole.sum())))
    colours = [filled[i][:, ~mask[i, 0].bool()][:, 0] for i in range(2)]
    assert (colours[0] - colours[1]).abs().max() > 0.02  # per image, not one batch mean


def gradient(h: int = 64, w: int = 80) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xx, yy, (xx + yy) / 2])[None].double()  # (1, 3, H, W)


def test_telea_keeps_known_pixels_and_beats_the_mean_on_a_smooth_image():
    image = gradient()
    mask = _holes(1, 64, 80)
    filled = baselines.telea(image, mask)
    known = mask.bool().expand_as(image)
    assert filled.shape == image.shape and filled.dtype == image.dtype
    assert torch.equal(filled[known], image[known])
    holes = 1 - mask
    telea_l1 = quality.l1(filled, image, holes).item()
    mean_l1 = quality.l1(baselines.mean_fill(image, mask), image, holes).item()
    # measured: Telea 0.023, mean fill 0.27 (the gradient spans the image, the mean is flat)
    assert telea_l1 < 0.05 < 0.2 < mean_l1


def test_telea_never_sees_what_the_holes_hold():
    """OpenCV treats the image's 1-pixel frame as known even where the mask has a hole, so a
    border hole would carry the ground truth into Telea's fill (measured on 37 of 60 of the
    pipeline's 128² test masks, up to 6/255); the baseline mean-fills the holes first."""
    from tasks.inpaint import masks

    hole, _ = masks.draw_in(128, "r10-20", True, masks.mask_rng(0, "test", 3))
    assert hole[0].any() or hole[-1].any() or hole[:, 0].any() or hole[:, -1].any()
    known = torch.from_numpy(~hole).double()[None, None]
    image = gradient(128, 128)
    other = known * image + (1 - known) * torch.rand(image.shape, dtype=torch.float64)
    assert torch.equal(baselines.telea(image, known), baselines.telea(other, known))
