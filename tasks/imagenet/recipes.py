"""The ImageNet recipes, each a table of its paper's hyper-parameters.

- ``vgg11`` … ``vgg19`` (Simonyan & Zisserman, 2015, Sec. 3.1): batch 256, SGD momentum 0.9,
  weight decay 5e-4, dropout 0.5 on the first two FC layers, LR 1e-2 divided by 10 when the
  validation accuracy stops improving (three times in all), 74 epochs; scale jittering S in
  [256, 512] with random 224 crops and horizontal flips. The paper started the deeper nets from
  config A's weights; here every config starts from He initialisation (the paper notes that
  Glorot-style initialisation makes the pre-training unnecessary), so that step is left out.
- ``resnet50`` (torchvision's reference recipe): 90 epochs, SGD 0.1 × batch / 256, momentum
  0.9, weight decay 1e-4, LR ÷10 every 30 epochs, RandomResizedCrop 224 + flip.
- ``resnet50_dawnbench`` (fast.ai's 16 × 8 V100 DAWNBench entry, Aug 2018): progressive resizing
  128 → 224 → 288 px on pre-resized variants, per-phase batch sizes, linear warm-up, no weight
  decay on BN and biases, zero-initialised last BN gamma per block, rectangular validation in
  the last phase; bf16 autocast and channels_last on GPUs (the engine's). 93% top-5 after 38
  epochs. The LR is stated per 256 images and scaled to each phase's global batch, which gives
  back fast.ai's absolute LRs at their batch sizes (1.88 at 8,192 …).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.width import scale
from tasks.classify.recipe import CrossEntropy, ImagesToDevice, evaluator, num_classes
from tasks.data.reader import decode_class
from tasks.imagenet.transforms import (EvalPreset, GpuTrainPreset, TrainPreset, decode_batch, decode_jpeg,
                                       jpeg_bytes, normalize, rect_collate, resize_shorter)
from tasks.train.recipe import Optimizer, Recipe
from tasks.train.schedules import Phase, Schedule

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SHARD_SIDE = 256  # the ingest's square images


@dataclass(frozen=True)
class Decode:
    """A shard sample (``jpg``, ``cls``) → (uint8 image (3, S, S), label); picklable for the
    DataLoader's workers. Train-time randomness comes from the sample's own seed."""

    preset: object
    train: bool

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int]:
        label = decode_class(sample["cls"])
        if self.train:
            return self.preset(sample["jpg"], torch.Generator().manual_seed(sample["__seed__"])), label
        return self.preset(sample["jpg"]), label


def eval_preset(phase: Phase, crop_ratio: float):
    size = phase.val_size or phase.image_size or 224
    return EvalPreset(size, resize=round(size / crop_ratio))


@dataclass(frozen=True)
class VggData:
    """Scale jittering: S in [256, 512] for a 224 crop, i.e. S/crop in [8/7, 16/7] at any size."""

    def __call__(self, phase: Phase, train: bool):
        size = phase.image_size or 224
        if train:
            return Decode(TrainPreset(size, jitter=(round(size * 256 / 224), round(size * 512 / 224))), True)
        return Decode(eval_preset(phase, crop_ratio=224 / 256), False)


@dataclass(frozen=True)
class RandomResizedCropData:
    """RandomResizedCrop + flip for training; resize + center crop (``crop_ratio``) for val."""

    crop_ratio: float = 0.875

    def __call__(self, phase: Phase, train: bool):
        size = phase.image_size or 224
        if train:
            return Decode(TrainPreset(size, min_scale=phase.min_scale or 0.08), True)
        if phase.rect_val:
            # fast.ai: validate on the shorter side, each batch cropped to its mean aspect ratio
            return Decode(ShorterSide(phase.val_size or size), False)
        return Decode(eval_preset(phase, self.crop_ratio), False)


@dataclass(frozen=True)
class ShorterSide:
    """Shorter side to ``size``, aspect kept: rectangular validation crops per batch."""

    size: int

    def __call__(self, data: bytes) -> torch.Tensor:
        return resize_shorter(decode_jpeg(data), self.size)


@dataclass(frozen=True)
class EncodedSample:
    """A shard sample → (its JPEG as a uint8 1-D tensor, label, augmentation seed): decoding
    waits for the device."""

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int, int]:
        return jpeg_bytes(sample["jpg"]), decode_class(sample["cls"]), sample["__seed__"]


def collate_encoded(batch):
    return [data for data, _, _ in batch], torch.tensor([label for _, label, _ in batch]), [s for _, _, s in batch]


@dataclass(frozen=True)
class DeviceCropBatch:
    """JPEG bytes → nvjpeg on the GPU (libjpeg-turbo on a CPU device) → RandomResizedCrop +
    flip there → normalised float; the crop boxes drawn from the batch's own sample seeds."""

    size: int
    min_scale: float

    def __call__(self, batch, device: torch.device):
        datas, labels, seeds = batch
        images = decode_batch(datas, device)
        generator = torch.Generator().manual_seed(seeds[0] * 1_000_003 + len(seeds))
        crops = GpuTrainPreset(self.size, min_scale=self.min_scale)(images, generator)
        return (normalize(crops, channels_last=device.type == "cuda"),), labels.to(device, non_blocking=True)


def device_decode(phase: Phase):
    size = phase.image_size or 224
    return EncodedSample(), collate_encoded, DeviceCropBatch(size, phase.min_scale or 0.08)


def rect_val_collate(phase: Phase, train: bool):
    if train or not phase.rect_val:
        return None
    return RectCollate(phase.val_size or phase.image_size or 224)


@dataclass(frozen=True)
class RectCollate:
    size: int

    def __call__(self, batch):
        return rect_collate(batch, self.size)


def vgg_kwargs(manifest: dict, width: float) -> dict:
    return {"num_classes": num_classes(manifest), "width": width, "hidden": scale(4096, width)}


def resnet_kwargs(manifest: dict, width: float) -> dict:
    return {"num_classes": num_classes(manifest), "width": width, "zero_init_residual": True}


def example_input(kwargs: dict, phase: Phase) -> tuple[torch.Tensor, ...]:
    size = phase.val_size or phase.image_size or 224
    return (torch.zeros(2, 3, size, size),)


def vgg_recipe(name: str) -> Recipe:
    return Recipe(
        name, experiment="imagenet", model=name, model_kwargs=vgg_kwargs, decoder=VggData(),
        to_device=ImagesToDevice(MEAN, STD), loss=CrossEntropy(), evaluator=evaluator,
        example_input=example_input,
        optimizer=Optimizer("sgd", momentum=0.9, weight_decay=5e-4),
        lr=1e-2, epochs=74, batch_size=256, phases=(Phase(0, image_size=224),),
        # ÷10 when val accuracy stops improving, three times; the paper gives no patience
        schedule=Schedule("plateau", monitor="val/top1", mode="max", gamma=0.1, patience=3, max_decays=3))


VGG11, VGG11_LRN, VGG13, VGG16_C, VGG16, VGG19 = (
    vgg_recipe(n) for n in ("vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19"))

RESNET50 = Recipe(
    "resnet50", experiment="imagenet", model="resnet50", model_kwargs=resnet_kwargs,
    decoder=RandomResizedCropData(), to_device=ImagesToDevice(MEAN, STD), loss=CrossEntropy(),
    evaluator=evaluator, example_input=example_input,
    optimizer=Optimizer("sgd", momentum=0.9, weight_decay=1e-4),
    lr=0.1, lr_batch=256, epochs=90, batch_size=256, phases=(Phase(0, image_size=224),),
    schedule=Schedule("step", step_size=30, gamma=0.1), device_decode=device_decode)

# fast.ai's 16-machine table (global batch = per-GPU batch × 128); LR factors of 0.05875 per
# 256 images: 1 → 2 over the warm-up, 1 again when the batch doubles at epoch 6, ÷10 at 19,
# ÷100 at 31, ÷1000 at 38.
DAWNBENCH_PHASES = (
    Phase(0, image_size=128, batch_size=8192, variant="short160"),
    Phase(6, image_size=128, batch_size=16384, variant="short160"),
    Phase(16, image_size=224, batch_size=8192, variant="short352", min_scale=0.087),
    Phase(19, image_size=224, batch_size=24576, variant="short352", min_scale=0.087),
    Phase(37, image_size=288, batch_size=16384, variant="short352", min_scale=0.5, rect_val=True),
)
DAWNBENCH_LR = Schedule("piecewise", knots=((0, 1.0), (6, 2.0), (6, 1.0), (19, 1.0), (19, 0.1), (31, 0.1),
                                            (31, 0.01), (38, 0.01), (38, 0.001)))

RESNET50_DAWNBENCH = Recipe(
    "resnet50_dawnbench", experiment="imagenet", model="resnet50", model_kwargs=resnet_kwargs,
    decoder=RandomResizedCropData(crop_ratio=1 / 1.14), collate=rect_val_collate,
    to_device=ImagesToDevice(MEAN, STD), loss=CrossEntropy(), evaluator=evaluator,
    example_input=example_input,
    optimizer=Optimizer("sgd", momentum=0.9, weight_decay=1e-4, no_decay_bn_bias=True),
    lr=0.05875, lr_batch=256, epochs=38, batch_size=8192, phases=DAWNBENCH_PHASES, schedule=DAWNBENCH_LR,
    device_decode=device_decode)
