"""Images for inpainting: a tree of photographs, or image shards, → an inpainting dataset at one
size, paired with a mask dataset (``tasks/inpaint/mask_sets.py``).

    manifest = prepare("~/photos", "~/.visionflow/datasets/masks-256/v1", "~/.visionflow/datasets/inpaint/v1", size=256)

Sources: any ImageFolder-shaped tree (every ``.jpg/.jpeg/.png`` below the root, folders
ignored), or a shard dataset with JPEG or PNG samples (the ImageNet ingest's: every split is
read). Each image is resized (shorter side) and center-cropped to ``size``², as the ImageNet
ingest does, and re-encoded as JPEG (quality 95).

Splits, by a hash of the image's name so that adding images never moves the others:
1 in 10 images to ``test``, 1 in 10 to ``val``, the rest to ``train``.

- ``train``: images alone (``jpg``, ``json``). Each step pairs an image with a training mask
  drawn per (seed, epoch, sample) (``recipes.TrainPairs``); the mask dataset is named in the
  manifest's ``params["masks"]``.
- ``val``: each held-out image with one fixed training mask (``mask.png``, 1 = hole).
- ``test``: every test mask of the mask dataset, in its order (bucket by bucket, border then
  no-border), each paired with one test image (mask j ↔ test image j mod n): the network and
  the classical baselines score the very same pairs. ``mask.json`` is the mask's own record
  (``hole_ratio``, ``bucket``, ``border``).

Images that cannot be decoded are recorded in ``rejects.jsonl`` with their reason; the rest go on.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from tasks.data import imaging, shards, storage
from tasks.data.reader import read_shard, shards_of
from tasks.errors import BadInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_MEMBERS = ("jpg", "jpeg", "png")
TEST_EVERY, VAL_EVERY = 10, 10  # 1 in 10 images to test, 1 in 10 to val


class InpaintDataError(BadInput):
    pass


@dataclass(frozen=True)
class ImageRef:
    """One source image: a file of a tree, or a sample of a shard (``shard`` is its URL)."""

    name: str  # stable, unique within the source: a relative path, or "<split>/<key>"
    path: str | None = None
    shard: str | None = None


def scan(source: str) -> list[ImageRef]:
    """Every image of a tree or a shard dataset, sorted by name."""
    if not storage.is_s3(source):
        source = str(Path(source).expanduser())
    if storage.exists(storage.join(source, shards.MANIFEST)):
        manifest = shards.read_manifest(source)
        refs = [ImageRef(f"{split}/{sample['__key__']}", shard=ref.url)
                for split in sorted(manifest["splits"]) for ref in shards_of(source, split, manifest)
                for sample in read_shard(ref.url) if any(m in sample for m in IMAGE_MEMBERS)]
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise InpaintDataError(f"{source}: neither a directory of images nor a shard dataset "
                                   "(no manifest.json)")
        refs = [ImageRef(str(p.relative_to(root)), path=str(p)) for p in sorted(root.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not refs:
        raise InpaintDataError(f"{source}: no images (.jpg, .jpeg, .png) found")
    return sorted(refs, key=lambda r: r.name)


def split_of(name: str) -> str:
    h = zlib.crc32(name.encode())
    return "test" if h % TEST_EVERY == 0 else "val" if (h // TEST_EVERY) % VAL_EVERY == 0 else "train"


def mask_records(masks_url: str, split: str) -> list[dict]:
    """A mask split as ``{"key", "png", "meta"}`` records, in its order."""
    out = []
    for ref in shards_of(masks_url, split):
        for sample in read_shard(ref.url):
            out.append({"key": sample["__key__"], "png": sample["png"], "meta": json.loads(sample["json"])})
    return out


def plan(refs: list[ImageRef], masks_url: str) -> dict[str, list]:
    """Per split, the inputs of its samples: (image name, mask key or None)."""
    by_split: dict[str, list[ImageRef]] = {"train": [], "val": [], "test": []}
    for ref in refs:
        by_split[split_of(ref.name)].append(ref)
    for split in ("val", "test"):
        if not by_split[split]:
            raise InpaintDataError(f"too few images for a {split} split: {len(refs)} images, "
                                   f"1 in {TEST_EVERY} goes to test and 1 in {VAL_EVERY} to val")
    train_masks = [m["key"] for m in mask_records(masks_url, "train")]
    test_masks = [m["key"] for m in mask_records(masks_url, "test")]
    if not train_masks or not test_masks:
        raise InpaintDataError(f"{masks_url}: the mask dataset needs train and test masks")
    val = [(r.name, train_masks[zlib.crc32(r.name.encode()) % len(train_masks)]) for r in by_split["val"]]
    tests = by_split["test"]
    test = [(tests[j % len(tests)].name, key) for j, key in enumerate(test_masks)]
    return {"train": [(r.name, None) for r in by_split["train"]], "val": val, "test": test}


def read_images(refs: list[ImageRef]) -> dict[str, bytes]:
    """Bytes of the named images; a shard is read once for all the images it holds."""
    out: dict[str, bytes] = {}
    for ref in refs:
        if ref.path:
            out[ref.name] = Path(ref.path).read_bytes()
    wanted_by_shard: dict[str, set[str]] = {}
    for ref in refs:
        if ref.shard:
            wanted_by_shard.setdefault(ref.shard, set()).add(ref.name.split("/", 1)[1])
    for url, keys in wanted_by_shard.items():
        split = next(r.name.split("/", 1)[0] for r in refs if r.shard == url)
        for sample in read_shard(url):
            if sample["__key__"] in keys:
                data = next(sample[m] for m in IMAGE_MEMBERS if m in sample)
                out[f"{split}/{sample['__key__']}"] = data
    return out


def build_samples(spec: shards.ShardSpec, refs: dict[str, ImageRef], masks: dict[str, dict],
                  size: int) -> tuple[list[dict], list[dict]]:
    """One shard's samples and rejects."""
    transform = imaging.Transform(size)
    blobs = read_images([refs[name] for name in {name for name, _ in spec.inputs}])
    samples, rejects, rendered = [], [], {}
    for offset, (name, mask_key) in enumerate(spec.inputs):
        key = f"{spec.split}-{spec.index:04d}-{offset:05d}"
        if name not in rendered:
            try:
                rendered[name] = imaging.render(blobs[name], [transform])[0][0]
            except imaging.Rejected as exc:
                rendered[name] = exc
        image = rendered[name]
        if isinstance(image, imaging.Rejected):
            rejects.append({"source": name, "split": spec.split, "reason": image.reason, "detail": image.detail})
            continue
        record = {"source": name}
        sample = {"__key__": key, "jpg": image}
        if mask_key is not None:
            mask = masks[mask_key]
            sample["mask.png"] = mask["png"]
            record.update(mask=mask_key, **{k: mask["meta"][k] for k in ("hole_ratio", "bucket", "border")})
        sample["json"] = json.dumps(record, sort_keys=True).encode()
        samples.append(sample)
    return samples, rejects


def prepare(source: str, masks_url: str, out_url: str, *, size: int = 256, shard_size: int = 500,
            dataset: str = "inpaint", version: str = "v1", on_shard=lambda record, written: None) -> dict:
    """Source images + a mask dataset → the inpainting dataset at ``out_url``; a re-run keeps
    committed shards."""
    mask_manifest = shards.read_manifest(masks_url)
    mask_size = mask_manifest["params"].get("size")
    if mask_size != size:
        raise InpaintDataError(f"{masks_url}: masks are {mask_size}² but the images are to be {size}²; "
                               f"make masks at --size {size}")
    refs = scan(source)
    by_name = {r.name: r for r in refs}
    inputs = plan(refs, masks_url)
    masks = {m["key"]: m for split in ("train", "test") for m in mask_records(masks_url, split)}
    params = {"size": size, "masks": masks_url, "masks_sha256": shards.manifest_checksum(mask_manifest),
              "source": source, "encoding": "jpeg", "quality": 95, "shard_size": shard_size,
              "pairing": "train: per (seed, epoch, sample); val: fixed train mask; test: mask j ↔ test image j mod n"}
    fingerprint = zlib.crc32("\n".join(r.name for r in refs).encode())
    specs, records = [], []
    for split, items in inputs.items():
        split_specs = shards.plan(split, items, shard_size)
        for spec in split_specs:
            record, written = shards.commit_shard(out_url, spec, params,
                                                  lambda s: build_samples(s, by_name, masks, size))
            on_shard(record, written)
            records.append(record)
        specs.extend(split_specs)
    return shards.write_manifest(out_url, dataset=dataset, version=version, specs=specs, records=records,
                                 classes=[], params=params, source_fingerprint=f"crc32:{fingerprint:08x}")

