"""One input image → resized, center-cropped RGB JPEGs, as torchvision's ``Resize(size)`` +
``CenterCrop(size)`` would make them, at half the CPU and mostly outside the GIL.

Two ways through, the same pixels (within 1 level of torchvision's reference):

- the common case, an RGB or grayscale JPEG read at full size (ILSVRC-2012-like sizes: ~93% of
  the files), has its frame header read here, is decoded by libjpeg-turbo straight into a uint8
  tensor (``torchvision.io.decode_jpeg``) and resized by torch's vectorized uint8 antialiased
  resampler, which follows Pillow's bilinear filter;
- everything else goes through Pillow: large JPEGs decoded at 1/2, 1/4 or 1/8 scale in the DCT
  domain (``draft``) and then resized from the crop box only; CMYK, palette, alpha, 16-bit and
  non-JPEG files converted to RGB first; and any file the fast path refuses, so a broken file is
  always judged (and named) by one decoder.

Every output is encoded by Pillow (libjpeg-turbo) into a per-thread in-memory file, where Pillow
lets the GIL go. An input that cannot be read raises ``Rejected`` with one of ``empty``,
``not-an-image``, ``truncated``, ``corrupt``, ``decompression-bomb``.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F

try:  # deprecated in torchvision 0.29 for TorchCodec's; should a later pin lack it, Pillow decodes
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:
    decode_jpeg = None

DRAFT_GAP = 1.5  # DCT-domain decoding down to 1.5× the target size (see draft_scale)
MAX_TENSOR_ASPECT = 4  # beyond this, resizing the whole image before cropping wastes too much
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS}
TENSOR_RESAMPLE = ("bilinear",)  # torch's antialiased bicubic differs from Pillow's by more than ±1


class Rejected(Exception):
    """One input cannot become a sample; ``reason`` is a stable code for the rejects file."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Transform:
    """Shorter side → ``size`` (antialiased), then a center ``size``² crop when ``crop``."""

    size: int
    crop: bool = True
    quality: int = 95
    resample: str = "bilinear"
    draft: bool = True
    max_pixels: int = 89_478_485

    def params(self, shard_size: int) -> dict:
        return {"transform": "resize-shorter+center-crop" if self.crop else "resize-shorter",
                "size": self.size, "quality": self.quality, "resample": self.resample,
                "draft": self.draft, "max_pixels": self.max_pixels, "shard_size": shard_size,
                "encoding": "jpeg"}


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)``: the shorter side becomes ``size``, the longer one is truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_offset(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's ``CenterCrop(size)``: (left, top) of the crop."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def output_geometry(width: int, height: int, t: Transform) -> tuple[tuple[int, int], tuple[float, ...]]:
    """(output size, source box) reproducing ``Resize(size)`` then ``CenterCrop(size)`` as a
    single resize of just the cropped region (Pillow samples outside the box as needed)."""
    new_w, new_h = resized_size(width, height, t.size)
    if not t.crop:
        return (new_w, new_h), (0.0, 0.0, float(width), float(height))
    left, top = crop_offset(new_w, new_h, t.size)
    sx, sy = width / new_w, height / new_h
    return (t.size, t.size), (left * sx, top * sy, (left + t.size) * sx, (top + t.size) * sy)


def draft_scale(width: int, height: int, t: Transform) -> int:
    """The JPEG DCT scaling (1, 2, 4 or 8) that still leaves DRAFT_GAP× the target resolution.
    Measured on the bench corpus's large photos (quality-90 outputs against torchvision's): gap 2
    costs 11.0 ms per image, 1.5 costs 9.1 ms with the same worst PSNR (36.0 dB), 1 costs 7.6 ms
    but loses 1.2 dB on photos whose scaled size lands just above the target."""
    if not t.draft:
        return 1
    return next(s for s in (8, 4, 2, 1) if min(width, height) // s >= DRAFT_GAP * t.size or s == 1)


def open_image(data: bytes, max_pixels: int):
    """Identify the image (header only) and refuse what must not be decoded."""
    if not data:
        raise Rejected("empty", "0 bytes")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Rejected("not-an-image", f"{len(data)} bytes starting {data[:8]!r}") from None
    except Image.DecompressionBombError as exc:
        raise Rejected("decompression-bomb", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Rejected(_decode_reason(exc), f"{type(exc).__name__}: {exc}") from None
    if im.width * im.height > max_pixels:
        raise Rejected("decompression-bomb", f"{im.width}×{im.height} = {im.width * im.height} pixels "
                       f"is over the limit of {max_pixels}")
    return im


def _decode_reason(exc: BaseException) -> str:
    return "truncated" if "truncat" in str(exc).lower() else "corrupt"


def to_rgb(im):
    """RGB (or L, kept single-channel until after resizing). Transparency is composited onto
    white: the colour under a fully transparent pixel is arbitrary, often black."""
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":
        return im.point(lambda v: v / 256).convert("L")  # 16-bit → 8-bit, not clipped to white
    return im.convert("RGB")  # CMYK (Adobe-inverted ones too), YCbCr, P, 1, …


def resize(data: bytes, transforms: list[Transform]) -> tuple[list[Image.Image], dict]:
    """One input → one RGB image per transform, plus what the sample's json records about it."""
    limit = min(t.max_pixels for t in transforms)
    header = jpeg_header(data)
    if header and header[0] * header[1] <= limit and all(_tensor_path(header, t) for t in transforms):
        pixels = _decode_tensor(data)
        if pixels is not None:
            width, height, components = header
            info = {"width": width, "height": height, "mode": "RGB" if components == 3 else "L", "format": "JPEG"}
            return [_resize_tensor(pixels, width, height, t) for t in transforms], info
    return _resize_with_pillow(data, transforms, limit)


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of an 8-bit JPEG's frame, read by walking its markers (a
    fraction of Pillow's open); None for anything else: Pillow then identifies it."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _SOF:
            if pos + 10 > len(data) or data[pos + 4] != 8:  # 12- and 16-bit JPEGs: Pillow's
                return None
            height, width = int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big")
            return (width, height, data[pos + 9]) if width and height else None
        elif marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _tensor_path(header: tuple[int, int, int], t: Transform) -> bool:
    """Whether libjpeg-turbo → torch can make this output: a gray or YCbCr/RGB JPEG read at full
    size, a filter torch antialiases as Pillow does, and an aspect that does not make the
    uncropped resize wasteful."""
    width, height, components = header
    return (components in (1, 3) and draft_scale(width, height, t) == 1 and t.resample in TENSOR_RESAMPLE
            and max(width, height) <= MAX_TENSOR_ASPECT * min(width, height))


def _decode_tensor(data: bytes) -> torch.Tensor | None:
    """C×H×W uint8 (C = 3 or 1), or None when libjpeg-turbo refuses the file: Pillow's path then
    decodes it or names what is wrong with it."""
    if decode_jpeg is None:
        return None
    try:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except RuntimeError:
        return None


def _resize_tensor(pixels: torch.Tensor, width: int, height: int, t: Transform) -> Image.Image:
    """``Resize(size)`` (+ ``CenterCrop(size)``) of a decoded image, as an RGB Pillow image."""
    new_w, new_h = resized_size(width, height, t.size)
    out = F.interpolate(pixels[None], size=(new_h, new_w), mode=t.resample, antialias=True)[0]
    if t.crop:
        left, top = crop_offset(new_w, new_h, t.size)
        out = out[:, top:top + t.size, left:left + t.size]
    planes = [Image.fromarray(plane) for plane in out.contiguous().numpy()]  # 4× cheaper than an HWC copy
    return Image.merge("RGB", planes) if len(planes) == 3 else planes[0].convert("RGB")


def _resize_with_pillow(data: bytes, transforms: list[Transform], limit: int) -> tuple[list[Image.Image], dict]:
    im = open_image(data, limit)
    info = {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format}
    outputs: list[Image.Image] = []
    decoded: dict[int, Image.Image] = {}  # by draft scale: each input is decoded once per scale
    try:
        for t in transforms:
            scale = draft_scale(im.width, im.height, t) if im.format == "JPEG" else 1
            if scale not in decoded:
                src = open_image(data, limit) if decoded else im
                if scale > 1:
                    src.draft(src.mode, (src.width // scale, src.height // scale))
                decoded[scale] = to_rgb(src)
            size, box = output_geometry(info["width"], info["height"], t)
            out = decoded[scale].resize(size, RESAMPLE[t.resample], box=tuple(b / scale for b in box))
            outputs.append(out if out.mode == "RGB" else out.convert("RGB"))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Rejected(_decode_reason(exc), f"{type(exc).__name__}: {exc}") from None
    return outputs, info


def render(data: bytes, transforms: list[Transform]) -> tuple[list[bytes], dict]:
    """``resize``, then each image re-encoded as JPEG at its transform's quality."""
    images, info = resize(data, transforms)
    return [encode_jpeg(im, t.quality) for im, t in zip(images, transforms)], info


def encode_jpeg(im, quality: int) -> bytes:
    """Pillow's JPEG encoder holds the GIL while it writes into memory (``BytesIO``) but lets it
    go while it writes to a file descriptor, so each thread encodes into a file of its own in
    memory: two threads then encode at once instead of taking turns. A forked child makes its own
    (a file inherited across fork shares its offset with the parent)."""
    f = getattr(_encoder_file, "f", None)
    if f is None or _encoder_file.pid != os.getpid():
        f = _encoder_file.f = (os.fdopen(os.memfd_create("visionflow-jpeg"), "w+b") if hasattr(os, "memfd_create")
                               else tempfile.TemporaryFile())
        _encoder_file.pid = os.getpid()
    f.seek(0)
    f.truncate()
    im.save(f, format="JPEG", quality=quality)
    f.seek(0)
    return f.read()


_encoder_file = threading.local()


@contextmanager
def one_torch_thread():
    """Torch's resampler on one thread while it runs here: the ingest already keeps every core
    busy with one image per worker, and each worker fanning out again only adds contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_torch_thread_in_workers() -> None:
    """The same for good in a process pool's (or Dask's) worker process, which only runs tasks
    like this one. (Ray already starts its workers with one thread per task.)"""
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)
