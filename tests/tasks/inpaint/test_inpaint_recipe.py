"""The pconv_unet recipe: its two stages as phases of one run (LR 2e-4 → 5e-5, the encoder's BN
frozen in the second, kept inside short runs), and the per-(seed, epoch, sample) pairing of
training images with masks."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import models
from tasks.config import TrainConfig
from tasks.inpaint import masks, recipes
from tasks.train.job import Job
from tasks.train.schedules import LRSchedule


def job(epochs):
    cfg = TrainConfig(recipe="pconv_unet", data="-", epochs=epochs, options={"perceptual": "random"})
    return Job(cfg, "-", "tasks.inpaint.recipes:PCONV_UNET")


@pytest.mark.parametrize("epochs, fine_tune", [(11, 10), (6, 5), (2, 1)])
def test_stage_two_starts_where_its_lr_drops_at_any_run_length(epochs, fine_tune):
    j = job(epochs)
    assert [p.start_epoch for p in j.phases] == [0, fine_tune]
    lr = LRSchedule(j.schedule, epochs)
    factors = [lr.factor(e + 0.5) for e in range(epochs)]
    assert factors == [1.0] * fine_tune + [0.25] * (epochs - fine_tune)
    assert recipes.PCONV_UNET.lr * 0.25 == pytest.approx(5e-5)


def test_fine_tuning_freezes_the_encoders_batch_norm_only():
    net = models.build("pconv_unet", depth=7, width=1 / 16)
    j = job(2)
    for index, phase in enumerate(j.phases):
        j.recipe.on_phase(net, index, phase)
        net.train()
        encoder_bn = [m.training for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        decoder_bn = [m.training for m in net.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert encoder_bn and all(t == (index == 0) for t in encoder_bn)
        assert decoder_bn and all(decoder_bn)


def test_unknown_recipe_options_are_refused_by_name():
    cfg = TrainConfig(recipe="pconv_unet", data="-", options={"perceptul": "random"})
    with pytest.raises(ValueError, match="no option perceptul.*perceptual"):
        Job(cfg, "-", "tasks.inpaint.recipes:PCONV_UNET").build_loss(torch.device("cpu"))


def test_the_l1_norm_option_reaches_the_loss_and_a_wrong_one_names_the_choices():
    image = torch.rand(2, 3, 32, 32)
    known = torch.ones(2, 1, 32, 32)
    known[0, :, :4, :4] = 0  # a small hole and a large one, each off by 0.5
    known[1, :, :16, :16] = 0
    output = image + 0.5 * (1 - known)
    losses = {}
    for norm in ("size", "mask"):
        cfg = TrainConfig(recipe="pconv_unet", data="-", options={"perceptual": "random", "l1_norm": norm})
        torch.manual_seed(0)  # the same random VGG16 for both
        losses[norm] = Job(cfg, "-", "tasks.inpaint.recipes:PCONV_UNET").build_loss(torch.device("cpu"))
    per_image, size = (losses[n](output, (image, known)) for n in ("mask", "size"))
    # hole weight 6: the per-image hole mean is 0.5, the size-averaged one 0.5 × the hole share
    torch.testing.assert_close(per_image - size, 6 * 0.5 * (1 - (1 - known).mean()), rtol=1e-4, atol=1e-6)
    cfg = TrainConfig(recipe="pconv_unet", data="-", options={"perceptual": "random", "l1_norm": "pixel"})
    with pytest.raises(ValueError, match="option l1_norm must be one of size, mask, got 'pixel'"):
        Job(cfg, "-", "tasks.inpaint.recipes:PCONV_UNET").build_loss(torch.device("cpu"))


def _jpeg(side, seed):
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def test_training_pairs_depend_on_the_samples_seed_alone(monkeypatch):
    pngs = [masks.encode_png(masks.draw(64, masks.mask_rng(0, "train", i))) for i in range(5)]
    pairs = recipes.TrainPairs()
    monkeypatch.setattr(pairs, "masks_of", lambda url: pngs)
    sample = {"__url__": "x/train-000000.tar", "jpg": _jpeg(64, 0)}
    a = pairs({**sample, "__seed__": 12345})
    b = recipes.TrainPairs()
    monkeypatch.setattr(b, "masks_of", lambda url: pngs)
    again = b({**sample, "__seed__": 12345})
    other = pairs({**sample, "__seed__": 12346})
    assert torch.equal(a[0], again[0]) and torch.equal(a[1], again[1])
    assert not torch.equal(a[1], other[1])
    image, known, bucket, border = a
    assert image.shape == (3, 64, 64) and known.shape == (1, 64, 64) and known.dtype == torch.uint8
    assert set(known.unique().tolist()) <= {0, 1} and (bucket, border) == (-1, False)
    # the mask is one of the set's, in one of its 8 flips and quarter turns
    holes = [masks.decode_png(p) for p in pngs]
    variants = [np.rot90(h, k)[:, ::f] for h in holes for k in range(4) for f in (1, -1)]
    assert any(np.array_equal(~known[0].numpy().astype(bool), v) for v in variants)
