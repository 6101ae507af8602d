"""MNIST-format IDX files (MNIST, Fashion-MNIST) → WebDataset shards.

An IDX file is a big-endian header — two zero bytes, a type code (0x08 = uint8), the number of
dimensions — then one uint32 per dimension, then the data. Images are ``idx3`` (N, 28, 28),
labels ``idx1`` (N,). Files may be gzipped. Each sample becomes ``<split>-<NNNNNN>.png`` (the
28×28 grayscale image) and ``.cls`` (the label).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from tasks.errors import BadInput, retry_unless_bad_input
from tasks.data.shards import ShardSpec, check_compatible, commit_shard, plan, write_manifest

UBYTE = 0x08
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}


class IdxError(BadInput):
    """An IDX file is unreadable or inconsistent; the message names the file and the problem."""


def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except OSError as exc:
        raise IdxError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except EOFError:
        raise IdxError(f"{path}: the gzip stream is truncated") from None
    if len(raw) < 4:
        raise IdxError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise IdxError(f"{path}: bad magic number 0x{raw[:4].hex()} (an IDX file starts with two zero bytes)")
    if dtype != UBYTE:
        raise IdxError(f"{path}: data type 0x{dtype:02x} is not unsigned byte (0x08)")
    if ndim != expect_dims:
        raise IdxError(f"{path}: has {ndim} dimensions, expected {expect_dims}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{path}: truncated inside the header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise IdxError(f"{path}: header says shape {shape} ({expected} bytes of data) but the file "
                       f"holds {len(raw) - header} (truncated or padded)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_file(source: Path, split: str, kind: str) -> Path:
    """``train-images-idx3-ubyte[.gz]`` and friends, as torchvision and the Debian package name them."""
    stem = f"{SPLIT_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (source / name).is_file():
            return source / name
    raise IdxError(f"{source}: no {stem} (or {stem}.gz) file; expected MNIST-format IDX files "
                   "such as those of Debian's dataset-fashion-mnist package")


@dataclass(frozen=True)
class IdxSplit:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8


def load_split(source: Path, split: str, num_classes: int = 10) -> IdxSplit:
    images_path, labels_path = find_file(source, split, "images"), find_file(source, split, "labels")
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                       f"{labels.shape[0]} labels")
    if labels.size and labels.max() >= num_classes:
        raise IdxError(f"{labels_path}: label {labels.max()} is out of range for {num_classes} classes")
    return IdxSplit(images, labels)


def fingerprint(source: Path) -> str:
    digest = hashlib.sha256()
    for split in SPLIT_PREFIX:
        for kind in ("images", "labels"):
            digest.update(find_file(source, split, kind).read_bytes())
    return digest.hexdigest()


def guess_dataset(source: Path) -> str:
    return "fashion-mnist" if "fashion" in str(source).lower() else "mnist"


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    # compress_level 1: near-optimal size for 28×28 glyphs at a fraction of the encode time
    Image.fromarray(image).save(out, format="PNG", compress_level=1)  # (28, 28) uint8 → mode "L"
    return out.getvalue()


def build_shard(data: IdxSplit, spec: ShardSpec) -> tuple[list[dict], list[dict]]:
    """Samples for one shard plan (its inputs are record indices). IDX records cannot be partly
    unreadable — the whole file is validated up front — so there are never rejects here."""
    samples = [{"__key__": f"{spec.split}-{i:06d}", "png": encode_png(data.images[i]),
                "cls": int(data.labels[i])} for i in spec.inputs]
    return samples, []


def download(dest: Path) -> Path:
    """Fetch MNIST's IDX files with torchvision; a clear error when the network says no."""
    from torchvision.datasets import MNIST

    try:
        MNIST(str(dest), train=True, download=True)
        MNIST(str(dest), train=False, download=True)
    except (OSError, RuntimeError) as exc:
        raise IdxError(f"cannot download MNIST ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); point "
                       "--source at a directory of IDX files instead, e.g. "
                       "/usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist") from None
    return dest / "MNIST" / "raw"


def ingest(source: Path, dataset_url: str, dataset: str, version: str, shard_size: int,
           on_shard=lambda record, written: None) -> dict:
    """IDX files → committed shards and manifest at ``dataset_url``; resumes a partial run."""
    params = {"dataset": dataset, "shard_size": shard_size, "encoding": "png"}
    source_fp = fingerprint(source)
    existing = check_compatible(dataset_url, params, source_fp)
    if existing is not None:
        return existing
    specs, records = [], []
    for split in SPLIT_PREFIX:
        data = load_split(source, split, len(CLASSES[dataset]))
        split_specs = plan(split, range(len(data.labels)), shard_size)
        for spec in split_specs:
            record, written = commit_shard(dataset_url, spec, params, lambda s: build_shard(data, s))
            on_shard(record, written)
            records.append(record)
        specs.extend(split_specs)
    return write_manifest(dataset_url, dataset=dataset, version=version,
                          specs=specs, records=records, classes=CLASSES[dataset], params=params,
                          source_fingerprint=source_fp)


@task(name="ingest-mnist", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def ingest_task(source: Path, dataset_url: str, dataset: str, version: str, shard_size: int) -> dict:
    logger = get_run_logger()

    def progress(record, written):
        logger.info("%s %s (%d samples, %d bytes)", "wrote" if written else "kept committed",
                    record.name, record.samples, record.bytes)

    return ingest(source, dataset_url, dataset, version, shard_size, on_shard=progress)


@task(name="download-mnist", retries=1, retry_condition_fn=retry_unless_bad_input)
def download_task(dest: Path) -> Path:
    return download(dest)
