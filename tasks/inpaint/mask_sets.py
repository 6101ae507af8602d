"""Mask datasets as WebDataset shards: generated irregular masks, or a folder of mask PNGs.

    from tasks.inpaint import mask_sets
    manifest = mask_sets.generate("s3://bucket/masks/irregular/v1", size=512, test_per_bucket=1000)
    mask_sets.import_folder("testing_mask_dataset/", "/data/masks/nvidia-test/v1", split="test")
    for key, hole, meta in mask_sets.load("/data/masks/nvidia-test/v1", "test"): ...

Every sample is ``<split>-<NNNNNN>.png``, a 1-bit PNG with pixel 1 = hole, and ``.json``, its
statistics measured from those pixels (``hole_ratio``, ``bucket`` or null, ``border``) plus where
it came from. The layout on storage, the commit records and the manifest are those of
``tasks.data.shards``: shards under deterministic names, committed one by one, manifest last,
so a re-run keeps every committed shard and rewrites only what is missing. The manifest's
``params`` hold the inputs (which decide every byte) and, beside them, the measured summary:
``params["draws"]`` (how many draws each bucket and flag took) and ``params["hole_ratio"]`` (per
split: min, mean, max and the count per bucket and border flag).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from tasks.data import reader, shards, storage
from tasks.data.imaging import Rejected, open_image
from tasks.inpaint import masks

DATASET_GENERATED = "irregular-masks"
DATASET_IMPORTED = "imported-masks"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64 * 1024 * 1024
SUMMARY_KEYS = ("draws", "hole_ratio")  # measured, not inputs: left out when comparing params


def slot(split: str, index: int, per_bucket: int) -> tuple[str, bool | None]:
    """(bucket, border flag or None) that mask ``index`` of a generated split must have. Test:
    bucket by bucket, first ``per_bucket`` border masks then ``per_bucket`` no-border ones, as
    NVIDIA's test set orders its files. Train: buckets round-robin, any border flag."""
    if split == "test":
        group = index // per_bucket
        return masks.BUCKETS[group // 2], group % 2 == 0
    return masks.BUCKETS[index % len(masks.BUCKETS)], None


def generate(out_url: str, *, size: int = 512, train: int = 2000, test_per_bucket: int = 100,
             seed: int = 0, shard_size: int = 1000, max_draws: int = 200,
             dataset: str = DATASET_GENERATED, version: str | None = None) -> dict:
    """Draw a mask set and commit it as shards at ``out_url``; returns the manifest.

    ``test``: ``test_per_bucket`` masks for every bucket × {border, no-border} (the paper's test
    set has 1,000), in bucket order (see ``slot``). ``train``: ``train`` masks with the
    ratio spread of the test buckets, an equal share per bucket assigned round-robin by index,
    the border flag left free (half the draws lay out in the inner region, half anywhere). The
    paper's 55,116 training masks come from occlusion estimation and their ratio spread is not
    published; matching the test buckets keeps training and evaluation on one distribution.

    Mask ``index`` of a split is drawn from ``masks.mask_rng(seed, split, index)`` alone, so
    shards are pure functions of the parameters and a re-run skips committed ones.
    """
    params = {"kind": "generated", "generator": masks.GENERATOR, "size": size, "seed": seed,
              "margin": masks.margin_for(size), "train": train, "test_per_bucket": test_per_bucket,
              "shard_size": shard_size, "max_draws": max_draws, "buckets": list(masks.BUCKETS),
              "encoding": "png-1bit-1=hole"}
    fingerprint = f"{masks.GENERATOR}:seed={seed}"
    existing = _existing(out_url, params, fingerprint)
    if existing is not None:
        return existing
    counts = {"test": 2 * len(masks.BUCKETS) * test_per_bucket, "train": train}
    specs = [spec for split, n in counts.items() for spec in shards.plan(split, range(n), shard_size)]

    def build(spec: shards.ShardSpec):
        return (_generated_sample(spec.split, i, params) for i in spec.inputs), []

    records = [shards.commit_shard(out_url, spec, params, build)[0] for spec in specs]
    return _finish(out_url, dataset, version, specs, records, params, fingerprint)


def _generated_sample(split: str, index: int, params: dict) -> dict:
    size, per_bucket = params["size"], params["test_per_bucket"]
    bucket, border = slot(split, index, per_bucket)
    rng = masks.mask_rng(params["seed"], split, index)
    hole, draws = masks.draw_in(size, bucket, border, rng, params["max_draws"])
    meta = {**masks.stats(hole, params["margin"]), "seed": params["seed"], "index": index, "draws": draws}
    return {"__key__": f"{split}-{index:06d}", "png": masks.encode_png(hole), "json": meta}


def import_folder(folder: str | Path, out_url: str, *, size: int = 512, split: str = "test",
                  threshold: int = 127, shard_size: int = 1000, invert: bool = False,
                  dataset: str = DATASET_IMPORTED, version: str | None = None) -> dict:
    """A folder of mask images (NVIDIA's irregular masks: white = hole) → shards at ``out_url``.

    Files (any depth, image suffixes only) are taken in sorted path order; sample ``i`` is the
    ``i``-th file. Each is read as gray, thresholded (``> threshold`` is a hole; ``invert`` for
    black = hole), resized to ``size``² by nearest neighbour, and its statistics recomputed from
    the pixels. A mask outside every bucket is kept with ``bucket`` null (usable for training)
    and counted in the summary; a file that cannot be read is a reject (file and reason) in
    ``rejects.jsonl``, and the import carries on.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise masks.MaskError(f"{folder}: not a directory of mask images")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise masks.MaskError(f"{folder}: no mask images ({', '.join(IMAGE_SUFFIXES)})")
    fingerprint = _fingerprint(folder, files)
    params = {"kind": "imported", "size": size, "split": split, "threshold": threshold,
              "invert": invert, "margin": masks.margin_for(size), "shard_size": shard_size,
              "files": len(files), "source": fingerprint, "encoding": "png-1bit-1=hole"}
    existing = _existing(out_url, params, fingerprint)
    if existing is not None:
        return existing
    specs = shards.plan(split, [[rel, i] for i, rel in enumerate(files)], shard_size)

    def build(spec: shards.ShardSpec):
        rejects: list[dict] = []

        def samples():
            for rel, i in spec.inputs:
                try:
                    hole = _read_mask(folder / rel, threshold, size, invert)
                except Rejected as r:
                    rejects.append({"split": spec.split, "path": rel, "reason": r.reason, "detail": r.detail})
                    continue
                meta = {**masks.stats(hole, params["margin"]), "source": rel, "index": i}
                yield {"__key__": f"{spec.split}-{i:06d}", "png": masks.encode_png(hole), "json": meta}

        return samples(), rejects

    records = [shards.commit_shard(out_url, spec, params, build)[0] for spec in specs]
    return _finish(out_url, dataset, version, specs, records, params, fingerprint)


def _read_mask(path: Path, threshold: int, size: int, invert: bool) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Rejected("unreadable", exc.strerror or str(exc)) from None
    im = open_image(data, MAX_PIXELS)
    try:
        gray = np.asarray(im.convert("L"))  # decodes: a truncated or corrupt body fails here
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        raise Rejected(reason, f"{type(exc).__name__}: {exc}") from None
    return masks.from_image(gray, threshold, size, invert)


def _fingerprint(folder: Path, files: list[str]) -> str:
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0")
        try:
            digest.update(hashlib.sha256((folder / rel).read_bytes()).digest())
        except OSError:
            digest.update(b"unreadable")  # rejected when the shard is built
    return digest.hexdigest()


def load(url: str, split: str) -> Iterator[tuple[str, np.ndarray, dict]]:
    """(key, hole (H, W) bool with True = hole, metadata) for every mask of ``split``, in order."""
    for ref in reader.shards_of(url, split):
        for sample in reader.read_shard(ref.url):
            yield sample["__key__"], masks.decode_png(sample["png"]), json.loads(sample["json"])


# --- the manifest -----------------------------------------------------------------------------


def _existing(url: str, params: dict, fingerprint: str) -> dict | None:
    """The committed manifest if it was built from these inputs; an error if from others."""
    if not storage.exists(storage.join(url, shards.MANIFEST)):
        return None
    manifest = shards.read_manifest(url)
    inputs = {k: v for k, v in manifest["params"].items() if k not in SUMMARY_KEYS}
    if inputs != json.loads(json.dumps(params)) or manifest["source_fingerprint"] != fingerprint:
        raise shards.ShardError(f"{url} already holds a mask set built from other inputs or "
                                "parameters; choose another version")
    return manifest


def _finish(url: str, dataset: str, version: str | None, specs, records, params: dict,
            fingerprint: str) -> dict:
    """Summarize what the committed shards hold (read back, so kept shards count too), then
    write rejects and the manifest."""
    draws: dict[str, dict[str, dict[str, int]]] = {}
    ratios: dict[str, dict] = {}
    for record in records:
        for sample in reader.read_shard(storage.join(url, record.name)):
            meta = json.loads(sample["json"])
            _count(ratios.setdefault(record.split, _empty_summary()), meta)
            if "draws" in meta:
                group = meta["bucket"] if record.split != "test" else \
                    f"{meta['bucket']}/{masks.BORDER_FLAGS[0 if meta['border'] else 1]}"
                cell = draws.setdefault(record.split, {}).setdefault(group, {"masks": 0, "draws": 0})
                cell["masks"] += 1
                cell["draws"] += meta["draws"]
    summary = {"hole_ratio": {split: _close_summary(s) for split, s in ratios.items()}}
    if params["kind"] == "generated":
        summary["draws"] = draws
    return shards.write_manifest(url, dataset=dataset, version=version or Path(str(url).rstrip("/")).name,
                                 specs=specs, records=records, classes=[], params={**params, **summary},
                                 source_fingerprint=fingerprint)


def _empty_summary() -> dict:
    return {"masks": 0, "sum": 0.0, "min": None, "max": None, "border": 0,
            "buckets": {**{b: 0 for b in masks.BUCKETS}, "none": 0}}


def _count(summary: dict, meta: dict) -> None:
    r = meta["hole_ratio"]
    summary["masks"] += 1
    summary["sum"] += r
    summary["min"] = r if summary["min"] is None else min(summary["min"], r)
    summary["max"] = r if summary["max"] is None else max(summary["max"], r)
    summary["border"] += bool(meta["border"])
    summary["buckets"][meta["bucket"] or "none"] += 1


def _close_summary(summary: dict) -> dict:
    total = summary.pop("sum")
    return {**summary, "mean": total / summary["masks"] if summary["masks"] else None}
