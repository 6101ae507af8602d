"""Stream a split's WebDataset shards (local or S3) into a DataLoader, split across DDP ranks.

Each epoch the shards are ordered by a permutation of (seed, epoch) and the concatenated sample
sequence is cut into equal contiguous ranges, one per rank and then one per DataLoader worker
(the epoch's plan, ``tasks/data/plan.py``; a resumed epoch brings its own).
Every rank therefore sees the same number of samples (``policy="pad"`` repeats the first samples
to fill the last rank, ``"drop"`` drops the remainder; ``"exact"`` gives each sample exactly once
with ranks differing by at most one, for evaluation), so DDP never hangs on an uneven split.

    stream = ShardStream(shards_of(url, "train"), decode, rank=r, world_size=w, seed=0)
    stream.set_epoch(epoch)
    loader = DataLoader(stream, batch_size=100, num_workers=2)
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import sys
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from tasks.data import shards, storage, tarstream
from tasks.data.plan import EpochPlan, expand, part_rng, plan_epoch, shuffled

Policy = Literal["pad", "drop", "exact"]


@dataclass(frozen=True)
class ShardRef:
    url: str
    samples: int
    sha256: str | None = None  # the manifest's; checked when the bytes come over the network


def shards_of(dataset_url: str, split: str, manifest: dict | None = None) -> list[ShardRef]:
    manifest = manifest or shards.read_manifest(dataset_url)
    if split not in manifest["splits"]:
        raise shards.ShardError(f"{dataset_url}: no split {split!r}; it has {sorted(manifest['splits'])}")
    return [ShardRef(storage.join(dataset_url, s["name"]), s["samples"], s.get("sha256"))
            for s in manifest["splits"][split]["shards"]]


def segments(sizes: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """Map global sample positions [start, stop) to (shard, first, last) pieces, wrapping past
    the end (padding) by starting again at the first shard."""
    total = sum(sizes)
    pieces = []
    pos = start
    while pos < stop:
        offset = pos % total
        shard = 0
        while offset >= sizes[shard]:
            offset -= sizes[shard]
            shard += 1
        take = min(sizes[shard] - offset, stop - pos)
        pieces.append((shard, offset, offset + take))
        pos += take
    return pieces


def read_shard(url: str, sha256: str | None = None) -> Iterator[dict[str, Any]]:
    """Samples of one tar shard as ``{"__key__": …, "<ext>": bytes}`` (nothing decoded).

    A shard must end with tar's end-of-archive marker and, read from S3 with ``sha256`` given,
    hash to it: a body cut short behind a consistent Content-Length (which HTTP cannot notice)
    fails one or the other. On S3 such a read is tried again, within the storage's attempt
    budget, from the first sample not yet handed out; the last sample waits for the checks, as
    it may be missing members."""
    handed_out = 0
    tries = storage.attempts(url)
    for attempt in range(1, tries + 1):
        try:
            for i, sample in enumerate(_checked_samples(url, sha256 if storage.is_s3(url) else None)):
                if i >= handed_out:
                    handed_out += 1
                    yield sample
            return
        except shards.ShardError as exc:
            if attempt == tries:
                raise (shards.ShardError(f"{exc} (read {tries} times)") if tries > 1 else exc) from None
        storage.pause(attempt)


def _checked_samples(url: str, sha256: str | None) -> Iterator[dict[str, Any]]:
    with storage.open_read(url) as raw:
        stream = _Hashing(raw, sha256 is not None)
        last = None
        try:
            for sample in tarstream.samples(stream):
                if last is not None:
                    yield last
                last = sample
        except tarstream.TarFormatError as exc:
            raise shards.ShardError(f"{url}: {exc}") from None
        if stream.ended:
            raise shards.ShardError(f"{url}: the archive ends without tar's end-of-archive marker (cut short)")
        if sha256 is not None and stream.drain() != sha256:
            raise shards.ShardError(f"{url}: the bytes read do not hash to the manifest's sha256 (cut short "
                                    "or damaged)")
        if last is not None:
            yield last


class _Hashing:
    """A read-through stream that notes a premature end and, if asked, hashes what passes."""

    def __init__(self, stream, hashing: bool):
        self.stream, self.ended = stream, False
        self.digest = hashlib.sha256() if hashing else None

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if not data and n != 0:
            self.ended = True
        if self.digest is not None:
            self.digest.update(data)
        return data

    def drain(self) -> str:
        """Read what follows the end-of-archive marker (zeros to a whole record), then the digest."""
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


class Tracked(NamedTuple):
    """A sample as the engine's tracking loader sees it: where it came from, then its decoding."""

    part: int          # the plan part (rank × workers + worker) that read it
    key: str
    padding: bool      # a repeat that evens out the ranks' shares
    item: Any


class TrackedBatch(NamedTuple):
    part: int
    keys: list[str]
    padding: list[bool]
    batch: Any


class TrackedCollate:
    """Collate ``Tracked`` samples: their keys beside the recipe's batch (one worker, one part)."""

    def __init__(self, collate: Callable | None):
        self.collate = collate or default_collate

    def __call__(self, items: list[Tracked]) -> TrackedBatch:
        return TrackedBatch(items[0].part, [t.key for t in items], [t.padding for t in items],
                            self.collate([t.item for t in items]))


class ShardStream(IterableDataset):
    def __init__(self, shard_refs: list[ShardRef], decode: Callable[[dict], Any], *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 1000, policy: Policy = "pad", workers: int = 1):
        if not shard_refs:
            raise shards.ShardError("no shards to read")
        self.shard_refs = list(shard_refs)
        self.decode = decode
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        self.policy = policy
        self.epoch = 0
        self.total = sum(s.samples for s in self.shard_refs)
        self.plan = plan_epoch(self.total, world_size, workers, policy)
        self.skip: dict[int, int] = {}  # part → samples it handed out before a resume
        self.rotation = 0               # worker w reads part (w + rotation) % workers
        self.track = False              # yield Tracked(part, key, padding, item) instead of item

    def set_epoch(self, epoch: int, plan: EpochPlan | None = None, skip: dict[int, int] | None = None,
                  rotation: int = 0) -> None:
        """The next epoch to read; a resumed one with its plan, what each part had handed out,
        and which worker the DataLoader's round robin was at."""
        self.epoch = epoch
        self.plan = plan or plan_epoch(self.total, self.world_size, self.plan.workers, self.policy)
        self.skip, self.rotation = dict(skip or {}), rotation

    def __len__(self) -> int:
        return self.plan.rank_samples(self.rank)

    def order(self, epoch: int) -> list[ShardRef]:
        refs = list(self.shard_refs)
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(refs)
        return refs

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        if num_workers != self.plan.workers:
            if self.skip or self.plan.generation:
                raise ValueError(f"the resumed epoch was planned for {self.plan.workers} DataLoader "
                                 f"workers; this loader has {num_workers}")
            self.plan = plan_epoch(self.total, self.world_size, num_workers, self.policy)
        part = self.plan.part(self.rank, (worker_id + self.rotation) % num_workers)
        refs = self.order(self.epoch)
        sizes = [r.samples for r in refs]
        pieces = [piece for a, b in self.plan.parts[part] for piece in segments(sizes, a, b)]
        samples = zip(expand(self.plan.parts[part]).tolist(), self._samples(refs, pieces))
        if self.shuffle:
            samples = shuffled(samples, self.shuffle_buffer, part_rng(self.seed, self.epoch, self.plan, part))
        for _ in range(self.skip.get(part, 0)):  # handed out before the stop: read, not decoded
            next(samples)
        for position, sample in samples:
            # Augmentation randomness per (seed, epoch, sample), whichever rank or worker reads it.
            sample["__seed__"] = zlib.crc32(f"{self.seed}:{self.epoch}:{sample['__key__']}".encode())
            item = self.decode(sample)
            yield Tracked(part, sample["__key__"], position >= self.total, item) if self.track else item

    @staticmethod
    def _samples(refs: list[ShardRef], pieces) -> Iterator[dict]:
        for shard, first, last in pieces:
            count = 0
            for i, sample in enumerate(read_shard(refs[shard].url, refs[shard].sha256)):
                if i >= last:
                    break
                if i >= first:
                    count += 1
                    sample["__url__"] = refs[shard].url  # webdataset's convention: where it came from
                    yield sample
            if count != last - first:
                raise shards.ShardError(f"{refs[shard].url}: holds fewer samples than its manifest "
                                        f"entry ({refs[shard].samples}); the shard is damaged")


# --- decoders: image bytes and labels, never pickle ------------------------------------------


_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG


def decode_image(data: bytes, mode: str | None = None) -> torch.Tensor:
    """PNG/JPEG bytes → uint8 tensor (C, H, W). libpng / libjpeg-turbo through torchvision where
    the process has torchvision loaded already (half of Pillow's 38 µs on an MNIST PNG); Pillow
    otherwise, for anything else, and to name the problem of a file those decoders refuse.
    Importing torchvision only to decode would cost each DataLoader worker 1.7 s on a small CPU,
    more than the decoding saves on MNIST's 70,000 images."""
    tv_decode, read_modes = _torchvision_decoder() if "torchvision" in sys.modules else (None, {})
    read_mode = read_modes.get(mode)
    if tv_decode is not None and read_mode is not None and data.startswith(_MAGIC):
        try:
            return tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode)
        except RuntimeError:
            pass  # Pillow below decodes it or raises its own, clearer error
    return _decode_pillow(data, mode)


def _decode_pillow(data: bytes, mode: str | None) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if mode:
            img = img.convert(mode)
        array = np.asarray(img)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (H, W, C) → (C, H, W)


@functools.cache
def _torchvision_decoder() -> tuple[Callable | None, dict]:
    """torchvision's decode_image and its read modes.
    Deprecated in torchvision 0.29 for TorchCodec's; should a later pin lack it, Pillow decodes."""
    try:
        from torchvision.io import ImageReadMode, decode_image as tv_decode
    except ImportError:
        return None, {}
    return tv_decode, {"L": ImageReadMode.GRAY, "RGB": ImageReadMode.RGB, None: ImageReadMode.UNCHANGED}


def decode_class(data: bytes) -> int:
    return int(data.decode())


def register_s3_opener() -> None:
    """Let plain ``webdataset.WebDataset("s3://…")`` read through boto3 (WebDataset 1.0 has no
    opener for s3:// of its own)."""
    import sys

    gopen = sys.modules["webdataset.gopen"]
    gopen.gopen_schemes["s3"] = lambda url, mode="rb", bufsize=8192, **kw: storage.open_read(url)
