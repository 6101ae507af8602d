"""ImageNet training and evaluation transforms on uint8 tensors, for the 256² JPEG shards that
``tasks/imagenet/ingest.py`` writes, named presets as in torchvision's reference scripts.

Workers decode and crop only; pixels stay uint8 (a quarter of float32's bytes through the
DataLoader's shared memory) and are normalised per batch on the training device by ``normalize``.

    preset = TrainPreset(224)                           # RandomResizedCrop(224) + flip
    stream = ShardStream(shards_of(url, "train"), ShardDecoder(preset), rank=r, world_size=w)
    loader = DataLoader(stream, batch_size=64, num_workers=2, collate_fn=collate)
    for images, labels in loader:                       # uint8 (B, 3, 224, 224), channels-last memory
        x = normalize(images.to(device, non_blocking=True), channels_last=True)

- ``decode_jpeg``: libjpeg-turbo through ``torchvision.io.decode_jpeg`` (Pillow when torchvision
  lacks it, or for a file it refuses), always RGB.
- ``TrainPreset``: RandomResizedCrop's sampling (area scale in [min_scale, 1], log-uniform aspect
  3/4..4/3, ten tries, then the centre crop of the clamped aspect), or VGG's scale jittering with
  ``jitter=(S_min, S_max)``; the crop box is cut first and only it is resized (torch's
  antialiased bilinear on uint8, the kernel of torchvision's v2 ``resized_crop``); then a flip
  with p = 0.5. Every random number comes from the ``torch.Generator`` passed in.
- ``EvalPreset``: shorter side → ``resize`` (default ``round(size / 0.875)``) and a centre crop;
  a 256² shard image with size 224 is only cropped, as ``Resize(256)`` + ``CenterCrop(224)``.
- ``rect_collate``: rectangular validation batches (fast.ai's DAWNBench ImageNet entry).
- ``decode_batch`` + ``GpuTrainPreset``: the CUDA path, where the DataLoader ships the JPEG bytes
  (``jpeg_bytes``) and nvjpeg decodes a whole batch on the GPU.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import get_worker_info

try:  # deprecated in torchvision 0.29 for TorchCodec's; without it Pillow decodes
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _tv_decode_jpeg
except ImportError:  # pragma: no cover - depends on the installed torchvision
    _tv_decode_jpeg = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RATIO = (3 / 4, 4 / 3)
TRIES = 10  # RandomResizedCrop's attempts before its centre-crop fallback
EVAL_CROP_FRACTION = 0.875  # 224 / 256


# --- decoding ------------------------------------------------------------------------------------


def _as_uint8_1d(data: bytes | bytearray | memoryview | Tensor) -> Tensor:
    if isinstance(data, Tensor):
        return data
    # A writable copy: torch.frombuffer warns on (and must not write to) immutable bytes.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _to_bytes(data: bytes | bytearray | memoryview | Tensor) -> bytes:
    return data.numpy().tobytes() if isinstance(data, Tensor) else bytes(data)


def decode_pillow(data: bytes | Tensor) -> Tensor:
    """Any image Pillow reads → uint8 (3, H, W) RGB (a view of HWC memory)."""
    from PIL import Image

    with Image.open(io.BytesIO(_to_bytes(data))) as im:
        array = np.array(im.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def decode_jpeg(data: bytes | Tensor) -> Tensor:
    """JPEG bytes (or a uint8 1-D tensor of them) → uint8 (3, H, W) RGB, grayscale and CMYK
    converted. libjpeg-turbo's output is HWC memory seen as CHW, which ``TrainPreset`` and
    ``collate`` keep: no transposing copy anywhere on the way to a channels-last batch."""
    if _tv_decode_jpeg is not None:
        try:
            return _tv_decode_jpeg(_as_uint8_1d(data), mode=ImageReadMode.RGB)
        except RuntimeError:  # not a JPEG (a PNG named .jpg), or one libjpeg refuses: Pillow judges
            pass
    return decode_pillow(data)


def jpeg_bytes(data: bytes) -> Tensor:
    """Shard bytes → a uint8 1-D tensor, what the DataLoader ships for ``decode_batch``."""
    return _as_uint8_1d(data)


def decode_batch(datas: Sequence[Tensor], device: torch.device | str) -> list[Tensor]:
    """uint8 1-D tensors of JPEG bytes → uint8 (3, H, W) RGB images on ``device``: one batched
    nvjpeg call on CUDA, libjpeg-turbo on the CPU otherwise. A batch nvjpeg refuses is decoded on
    the CPU and moved."""
    device = torch.device(device)
    if device.type == "cuda" and _tv_decode_jpeg is not None:
        try:
            return _tv_decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
    return [decode_jpeg(d).to(device) for d in datas]


# --- geometry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A crop box in source pixels, and whether the output is mirrored."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def random_resized_crop_box(height: int, width: int, u: Sequence[float], scale: tuple[float, float],
                            ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w) from ``4 * TRIES`` uniforms in [0, 1): each try
    draws an area fraction in ``scale`` and a log-uniform aspect in ``ratio``, and the first box
    that fits is placed uniformly; after ``TRIES`` misses, the centre crop of the whole image
    with its aspect clamped to ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(TRIES):
        u_area, u_ratio, u_top, u_left = u[4 * k:4 * k + 4]
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def jitter_box(height: int, width: int, u: Sequence[float], size: int,
               jitter: tuple[int, int]) -> tuple[int, int, int, int]:
    """VGG's scale jittering as a source box: S uniform in [S_min, S_max] (integers), the image
    seen rescaled so its shorter side is S, a uniform size×size crop of that; in source pixels a
    square of side ``size * short / S`` (the image itself is never rescaled)."""
    s_min, s_max = jitter
    s = min(s_min + int(u[0] * (s_max - s_min + 1)), s_max)
    short = min(height, width)
    side = max(1, min(short, int(round(size * short / s))))
    top = min(int(u[1] * (height - side + 1)), height - side)
    left = min(int(u[2] * (width - side + 1)), width - side)
    return top, left, side, side


def resize_shorter_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)``: (h, w) with the shorter side ``size``, the longer truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_offset(length: int, crop: int) -> int:
    """torchvision's ``CenterCrop``: the crop's offset along one side."""
    return int(round((length - crop) / 2.0))


def _resize(image: Tensor, height: int, width: int) -> Tensor:
    """uint8 or float (3, h, w) → (3, height, width), antialiased bilinear (Pillow's filter, as
    torchvision's tensor ``resize(..., antialias=True)``). torch's uint8 kernel runs fastest on
    channels-last memory, so the input is made so (a decoded JPEG usually is already)."""
    if image.shape[-2:] == (height, width):
        return image
    x = image[None].contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def resize_shorter(image: Tensor, size: int) -> Tensor:
    """Shorter side → ``size`` (``Resize(size)``); an image already that size is returned as is."""
    h, w = resize_shorter_size(image.shape[-2], image.shape[-1], size)
    return _resize(image, h, w)


# --- presets -------------------------------------------------------------------------------------


def _uniforms(generator: torch.Generator, n: int) -> list[float]:
    return torch.rand(n, generator=generator).tolist()


class TrainPreset:
    """Shard JPEG → uint8 (3, size, size): RandomResizedCrop(size, scale=(min_scale, 1)) or, with
    ``jitter=(S_min, S_max)``, VGG's scale jittering; then a horizontal flip with p = 0.5 when
    ``flip``. The same bytes and a generator in the same state give the same tensor."""

    def __init__(self, size: int, min_scale: float = 0.08, jitter: tuple[int, int] | None = None,
                 flip: bool = True):
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], not {min_scale}")
        if jitter is not None and not size <= jitter[0] <= jitter[1]:
            raise ValueError(f"jitter needs size <= S_min <= S_max, not size {size} and {jitter}")
        self.size, self.min_scale, self.jitter, self.flip = size, min_scale, jitter, flip

    def box(self, height: int, width: int, generator: torch.Generator) -> Box:
        """The crop box and flip for a ``height`` × ``width`` image (draws from ``generator``)."""
        if self.jitter is None:
            u = _uniforms(generator, 4 * TRIES + 1)
            top, left, h, w = random_resized_crop_box(height, width, u, (self.min_scale, 1.0))
        else:
            u = _uniforms(generator, 4)
            top, left, h, w = jitter_box(height, width, u, self.size, self.jitter)
        return Box(top, left, h, w, self.flip and u[-1] < 0.5)

    def __call__(self, data: bytes | Tensor, generator: torch.Generator) -> Tensor:
        image = decode_jpeg(data) if not isinstance(data, Tensor) or data.dim() == 1 else data
        b = self.box(image.shape[-2], image.shape[-1], generator)
        out = _resize(image[:, b.top:b.top + b.height, b.left:b.left + b.width], self.size, self.size)
        return out.flip(-1) if b.flip else out

    def __repr__(self) -> str:
        how = f"jitter={self.jitter}" if self.jitter else f"min_scale={self.min_scale}"
        return f"TrainPreset({self.size}, {how}, flip={self.flip})"


class EvalPreset:
    """Shard JPEG → uint8 (3, size, size): shorter side → ``resize`` (default
    ``round(size / 0.875)``), then the centre size×size crop, as ``Resize(resize)`` +
    ``CenterCrop(size)``. A square image already ``resize`` wide is only cropped."""

    def __init__(self, size: int, resize: int | None = None):
        self.size = size
        self.resize = round(size / EVAL_CROP_FRACTION) if resize is None else resize
        if self.resize < size:
            raise ValueError(f"resize ({self.resize}) must be at least size ({size})")

    def __call__(self, data: bytes | Tensor, generator: torch.Generator | None = None) -> Tensor:
        image = decode_jpeg(data) if not isinstance(data, Tensor) or data.dim() == 1 else data
        h, w = image.shape[-2:]
        if not h == w == self.resize:
            image = resize_shorter(image, self.resize)
            h, w = image.shape[-2:]
        top, left = center_offset(h, self.size), center_offset(w, self.size)
        return image[:, top:top + self.size, left:left + self.size]

    def __repr__(self) -> str:
        return f"EvalPreset({self.size}, resize={self.resize})"


class GpuTrainPreset:
    """RandomResizedCrop + flip of already decoded images on their device (the CUDA path): the
    boxes are drawn on the CPU from ``generator`` exactly as ``TrainPreset`` draws them, each box
    is cut and resized (antialiased bilinear on float) into one (B, 3, size, size) batch in
    channels-last memory, uint8 (rounded) or float in 0..255 (``dtype``), for ``normalize``."""

    def __init__(self, size: int, min_scale: float = 0.08, flip: bool = True, dtype: torch.dtype = torch.uint8):
        self.sampler = TrainPreset(size, min_scale=min_scale, flip=flip)
        self.size, self.dtype = size, dtype

    def __call__(self, images: Sequence[Tensor], generator: torch.Generator) -> Tensor:
        if not images:
            raise ValueError("no images")
        device = images[0].device
        out = torch.empty((len(images), 3, self.size, self.size), dtype=torch.float32, device=device,
                          memory_format=torch.channels_last)
        for i, image in enumerate(images):
            b = self.sampler.box(image.shape[-2], image.shape[-1], generator)
            crop = image[None, :, b.top:b.top + b.height, b.left:b.left + b.width].float()
            if (b.height, b.width) != (self.size, self.size):
                crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True,
                                     align_corners=False)
            out[i] = crop[0].flip(-1) if b.flip else crop[0]
        if self.dtype == torch.uint8:
            return out.round_().clamp_(0, 255).to(torch.uint8)
        return out.to(self.dtype)


class ShardDecoder:
    """``ShardStream``'s ``decode``: a shard sample → (uint8 image, class index) through
    ``preset``, or (JPEG bytes as a uint8 tensor, class index) with ``preset=None`` for the GPU
    path. Each DataLoader worker draws from its own generator, seeded with the worker's seed
    (distinct per worker and epoch; reproducible when the DataLoader's ``generator`` is seeded),
    or with ``seed`` in the main process."""

    def __init__(self, preset: Any = None, seed: int = 0):
        self.preset, self.seed = preset, seed
        self._generator: torch.Generator | None = None
        self._for: int | None = None

    def generator(self) -> torch.Generator:
        info = get_worker_info()
        seed = info.seed if info is not None else self.seed
        if self._generator is None or self._for != seed:
            self._generator, self._for = torch.Generator().manual_seed(seed % 2**63), seed
        return self._generator

    def __call__(self, sample: dict) -> tuple[Tensor, int]:
        label = int(sample["cls"])
        if self.preset is None:
            return jpeg_bytes(sample["jpg"]), label
        return self.preset(sample["jpg"], self.generator()), label


# --- batches -------------------------------------------------------------------------------------


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An empty CPU tensor, in shared memory inside a DataLoader worker (where the batch is
    pickled to the main process: this spares the copy into shared memory)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def collate(batch: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """(uint8 (3, H, W) image, label) pairs of one size → (uint8 (B, 3, H, W) in channels-last
    memory, int64 labels). The images' HWC memory is copied row for row (default_collate's
    NCHW stack transposes every image: ~6× slower)."""
    images = [image for image, _ in batch]
    c, h, w = images[0].shape
    out = _shared_empty((len(images), h, w, c), images[0].dtype)
    for i, image in enumerate(images):
        out[i].copy_(image.permute(1, 2, 0))
    return out.permute(0, 3, 1, 2), torch.tensor([label for _, label in batch], dtype=torch.int64)


def collate_bytes(batch: Sequence[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
    """(JPEG bytes tensor, label) pairs → (the list as it is, int64 labels): for ``decode_batch``."""
    return [data for data, _ in batch], torch.tensor([label for _, label in batch], dtype=torch.int64)


def rect_shape(aspects: Sequence[float], size: int) -> tuple[int, int]:
    """(h, w) of a rectangular batch: the batch-mean aspect (w / h), the shorter side ``size``
    rounded down and the longer side rounded to a multiple of 8 (at least 8)."""
    mean = sum(aspects) / len(aspects)
    short = max(8, size // 8 * 8)
    longer = max(short, int(round(short * max(mean, 1 / mean) / 8)) * 8)
    return (short, longer) if mean >= 1 else (longer, short)


def rect_collate(batch: Sequence[tuple[Tensor, int]], size: int) -> tuple[Tensor, Tensor]:
    """Rectangular validation (fast.ai's DAWNBench ImageNet entry): (uint8 (3, H, W) image
    resized to shorter side ``size``, label) pairs of any aspect → (uint8 (B, 3, h, w), int64
    labels), every image centre-cropped to the batch-mean aspect, both sides multiples of 8.

    fast.ai sorts the validation set by aspect ratio so that a batch holds similar shapes; our
    shard stream is not sorted, so a batch mixes portrait and landscape images and its mean
    aspect fits some of them badly: an image smaller than (h, w) along one side is cut to the
    largest centred box of the batch's aspect and that box resized to (h, w) (antialiased
    bilinear), where fast.ai would only crop."""
    images = [image for image, _ in batch]
    h, w = rect_shape([im.shape[-1] / im.shape[-2] for im in images], size)
    out = []
    for image in images:
        ih, iw = image.shape[-2:]
        if ih >= h and iw >= w:
            top, left = center_offset(ih, h), center_offset(iw, w)
            out.append(image[:, top:top + h, left:left + w])
            continue
        if iw * h > ih * w:  # wider than the batch aspect: full height
            bh, bw = ih, min(iw, max(1, int(round(ih * w / h))))
        else:
            bh, bw = min(ih, max(1, int(round(iw * h / w)))), iw
        top, left = center_offset(ih, bh), center_offset(iw, bw)
        out.append(_resize(image[:, top:top + bh, left:left + bw], h, w))
    return torch.stack(out), torch.tensor([label for _, label in batch], dtype=torch.int64)


# --- normalisation, on the device ----------------------------------------------------------------

_AFFINE: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}


def _affine(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(scale, bias) of shape (3,) with x * scale + bias = (x / 255 - mean) / std."""
    key = (device, dtype)
    if key not in _AFFINE:
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64) * 255
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64) * 255
        _AFFINE[key] = ((1 / std).to(device, dtype), (-mean / std).to(device, dtype))
    return _AFFINE[key]


def normalize(images: Tensor, channels_last: bool, *, dtype: torch.dtype = torch.float32,
              out: Tensor | None = None) -> Tensor:
    """uint8 (or float 0..255) (B, 3, H, W) on the training device → ``dtype`` normalised with
    ImageNet's mean and std (scaled to 0..255), in channels-last memory when ``channels_last``.
    ``out``, a tensor of that shape, dtype and memory format, is written instead of a new one
    (on the CPU a fresh 38 MB batch costs more in page faults than the arithmetic)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if out is None:
        out = torch.empty(images.shape, dtype=dtype, device=images.device, memory_format=fmt)
    out.copy_(images)
    scale, bias = _affine(out.device, out.dtype)
    hwc = out.permute(0, 2, 3, 1)
    if hwc.is_contiguous() and out.device.type == "cpu":
        # Channels-last on the CPU: (B·H, W·3) rows against a (W·3,) pattern vectorise; a
        # (1, 3, 1, 1) broadcast over interleaved channels does not (3× slower).
        width = out.shape[-1]
        rows = hwc.view(-1, width * 3)
        torch.addcmul(bias.repeat(width), rows, scale.repeat(width), out=rows)
    else:
        torch.addcmul(bias.view(1, 3, 1, 1), out, scale.view(1, 3, 1, 1), out=out)
    return out
