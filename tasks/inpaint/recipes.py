"""The PConv U-Net recipe (Liu et al., "Image Inpainting for Irregular Holes Using Partial
Convolutions", ECCV 2018), as the one engine trains it.

    visionflow pipeline inpaint --images ~/photos --perceptual models:/imagenet-vgg16@latest
    visionflow train --recipe pconv_unet --data ~/.visionflow/datasets/inpaint-256/v1 --options.perceptual vgg16.pth

The paper's table:

- loss: valid 1, hole 6, perceptual 0.05, style 120 (on the output and the composite), TV 0.1
  (``models.pconv_loss``), VGG16 pool1–3 features of ImageNet-normalised [0, 1] images; the L1
  terms averaged over all C·H·W elements (option ``l1_norm=size``, the paper's) or per image over
  its own hole or valid pixels (``l1_norm=mask``, what the CPU-sized pipeline uses);
- Adam; stage 1 at LR 2e-4 with batch norm everywhere, stage 2 (fine-tuning) at 5e-5 with the
  encoder's batch norm frozen; batch 6. The paper gives days, not steps (10 days + 1 on Places2),
  so the recipe runs ten epochs of stage 1 and one of stage 2, and a shorter or longer run keeps
  that ratio. The two stages are two phases of one run: a resumed run re-enters its stage;
- the U-Net has 7 encoder layers (the 256² network; the paper's 512² one has 8, but a depth-7
  net takes 512² inputs too, with a 4² bottleneck).

Each training image is paired, per step, with the training mask that (seed, epoch, sample)
picks, in one of its 8 flips and quarter turns; validation and test samples carry their own
fixed masks (``tasks/inpaint/images.py``).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from tasks.data.reader import decode_image, read_shard, shards_of
from tasks.errors import BadInput
from tasks.inpaint import masks, perceptual
from tasks.inpaint.evaluator import InpaintEvaluator
from tasks.train.ensemble import dihedral
from tasks.train.recipe import Optimizer, Recipe
from tasks.train.schedules import Phase, Schedule

DEPTH = 7
EPOCHS, FINE_TUNE = 11, 10  # stage 2 starts at epoch 10


def bucket_index(meta: dict) -> int:
    return masks.BUCKETS.index(meta["bucket"]) if meta.get("bucket") in masks.BUCKETS else -1


def as_sample(image: torch.Tensor, hole: np.ndarray, meta: dict) -> tuple:
    """(uint8 image (3, H, W), uint8 known-pixel mask (1, H, W), bucket index, border flag)."""
    known = torch.from_numpy(~hole).to(torch.uint8).unsqueeze(0)
    if known.shape[1:] != image.shape[1:]:
        raise ValueError(f"mask {tuple(known.shape[1:])} and image {tuple(image.shape[1:])} differ in size")
    return image, known, bucket_index(meta), bool(meta.get("border", False))


class TrainPairs:
    """Decoder of training samples: the image, a random flip, and the training mask that the
    sample's ``__seed__`` picks from the mask dataset its manifest names (read once per
    process)."""

    def __init__(self):
        self._masks: dict[str, list[bytes]] = {}

    def masks_of(self, shard_url: str) -> list[bytes]:
        dataset = shard_url.rsplit("/", 1)[0]
        if dataset not in self._masks:
            from tasks.data import shards

            url = shards.read_manifest(dataset)["params"]["masks"]
            self._masks[dataset] = [s["png"] for ref in shards_of(url, "train") for s in read_shard(ref.url)]
        return self._masks[dataset]

    def __call__(self, sample: dict) -> tuple:
        pngs = self.masks_of(sample["__url__"])
        seed = sample["__seed__"]
        hole = masks.decode_png(pngs[seed % len(pngs)])
        turn = (seed // len(pngs)) % 8  # one of the 8 flips and quarter turns of the square
        hole = dihedral(torch.from_numpy(hole), turn).numpy()
        image = decode_image(sample["jpg"], mode="RGB")
        if (seed >> 24) & 1:
            image = image.flip(-1)
        return as_sample(image, np.ascontiguousarray(hole), {})


def decode_fixed(sample: dict) -> tuple:
    meta = json.loads(sample["json"])
    return as_sample(decode_image(sample["jpg"], mode="RGB"), masks.decode_png(sample["mask.png"]), meta)


def decoder(phase: Phase, train: bool):
    return TrainPairs() if train else decode_fixed


def to_device(batch, device: torch.device):
    """((image ⊙ mask, mask), (image, mask, bucket, border)), images in [0, 1], mask 1 = known."""
    image, known, bucket, border = batch
    image = image.to(device, non_blocking=True).float() / 255
    known = known.to(device, non_blocking=True).float()
    return (image * known, known), (image, known, bucket.to(device), border.to(device))


def loss(device: torch.device, perceptual: str | None = None, l1_norm: str = "size"):
    """The paper's five-term loss; its VGG16 weights come from the ``perceptual`` option, what its
    L1 terms average over from ``l1_norm``."""
    from models.pconv_loss import L1_NORMS, PConvLoss

    if l1_norm not in L1_NORMS:
        raise BadInput(f"recipe pconv_unet: option l1_norm must be one of {', '.join(L1_NORMS)}, got {l1_norm!r}")
    weights = perceptual_weights(perceptual)
    module = PConvLoss(weights, allow_random_weights=weights is None, l1_norm=l1_norm).to(device)
    return lambda output, targets: module(output, targets[0], targets[1])["total"]


def perceptual_weights(ref: str | None):
    if ref is None:
        raise ValueError("recipe pconv_unet needs the perceptual option: a VGG16 state-dict file, "
                         "a models:/ URI (resolved by `visionflow pipeline inpaint`), or 'random' "
                         "for a smoke run")
    return perceptual.load(ref)


def example_input(kwargs: dict, phase: Phase) -> tuple[torch.Tensor, ...]:
    side = 2 ** kwargs.get("depth", DEPTH)
    return torch.zeros(2, 3, side, side), torch.ones(2, 1, side, side)


def freeze_encoder_bn_when_fine_tuning(model, index: int, phase: Phase) -> None:
    model.set_encoder_bn_frozen(index >= 1)


PCONV_UNET = Recipe(
    "pconv_unet", experiment="inpaint", model="pconv_unet",
    model_kwargs=lambda manifest, width: {"depth": DEPTH, "width": width},
    decoder=decoder, to_device=to_device, loss=loss, evaluator=InpaintEvaluator,
    example_input=example_input, optimizer=Optimizer("adam"), lr=2e-4, epochs=EPOCHS, batch_size=6,
    # 2e-4 → 5e-5 where the fine-tuning phase begins (knots land on the phase's epoch)
    schedule=Schedule("piecewise", knots=((0, 1.0), (FINE_TUNE, 1.0), (FINE_TUNE, 0.25), (EPOCHS, 0.25))),
    phases=(Phase(0), Phase(FINE_TUNE)), select="psnr", val_split="val",
    on_phase=freeze_encoder_bn_when_fine_tuning, self_ensemble=True,
    options={"perceptual": "VGG16 weights of the perceptual and style losses: a state-dict file "
                           "(torchvision's vgg16-397923af.pth, or what the pipeline saved from a "
                           "models:/ URI) or 'random' (smoke runs only)",
             "l1_norm": "what the valid and hole L1 terms average over: 'size' (the paper's, every "
                        "element of the image) or 'mask' (MMagic's, each image's own hole or valid "
                        "elements, so small holes weigh as much as large ones)"})
