"""ILSVRC-2012 (or any ImageFolder-shaped tree) → resized JPEG WebDataset shards.

Layouts read (``root`` may also be Kaggle's download, with images under ``ILSVRC/Data/CLS-LOC``):

    root/train/<wnid>/*.JPEG                          class index = position in sorted wnids
    root/val/<wnid>/*.JPEG                            val as an ImageFolder, or
    root/val/ILSVRC2012_val_*.JPEG                    flat val labelled by
        root/LOC_val_solution.csv                     Kaggle's ground truth, or
        root/ILSVRC2012_devkit_t12/data/              the devkit's (meta.mat + ground truth)
    root/LOC_synset_mapping.txt                       human-readable class names (optional)

Every image becomes ``<key>.jpg`` (shorter side resized to ``size`` with an antialiased filter,
then center-cropped to ``size``², as torchvision's ``Resize(size)`` + ``CenterCrop(size)``),
``<key>.cls`` and ``<key>.json`` (wnid, original size and mode, source path). Optional variants
resize the shorter side only (fast.ai's pre-resized sets for progressive resizing), each written
as its own dataset version. An input that cannot be read goes to ``rejects.jsonl`` with one of
``empty``, ``not-an-image``, ``truncated``, ``corrupt``, ``decompression-bomb``, ``unlabeled``,
``unreadable``.

Each image is made by ``tasks/imaging.py``. The flow (``flows/imagenet.py``) fans the shard plan
out to Prefect tasks; ``ingest`` below runs the same steps in one process (tests, scripts).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.data import shards
from tasks.track import tracking
from tasks.imagenet.config import ImagenetIngestConfig
from tasks.errors import BadInput, retry_unless_bad_input
from tasks.data.imaging import Rejected, Transform, one_torch_thread, one_torch_thread_in_workers, render

SPLITS = ("train", "val")
KAGGLE_IMAGES = Path("ILSVRC", "Data", "CLS-LOC")
SYNSET_MAPPING = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
DEVKIT = Path("ILSVRC2012_devkit_t12", "data")
DEVKIT_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
UNLABELED = -1
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


class ImagenetError(BadInput):
    """The source tree is not a layout this ingest understands; the message says what is missing."""


# --- the source tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What a scan found: class wnids (sorted), optional names, and per split the sorted inputs
    as ``(path relative to images, class index or -1, sample key)``."""

    root: str
    images: str
    wnids: list[str]
    names: list[str] | None
    splits: dict[str, list[tuple[str, int, str]]]
    fingerprint: str


def _files(folder: Path) -> list[tuple[str, int]]:
    """(path relative to ``folder``, size in bytes or -1 when it cannot be read) of the non-hidden
    files below ``folder``, in path order (hidden files are OS metadata). One ``scandir`` per
    directory and one ``stat`` per file: ImageNet's train split is 1.28 M of them."""
    found: list[tuple[str, int]] = []

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():  # symlinked folders included
                    walk(entry.path, f"{prefix}{entry.name}/")
                    continue
                try:
                    size = entry.stat().st_size
                except OSError:  # a dangling link: read, and rejected, as "unreadable"
                    size = -1
                found.append((prefix + entry.name, size))

    walk(str(folder), "")
    return sorted(found, key=lambda item: item[0].split("/"))


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_synset_names(root: Path) -> dict[str, str]:
    """``n01440764 tench, Tinca tinca`` lines → {wnid: name}; empty without the file."""
    path = root / SYNSET_MAPPING
    if not path.is_file():
        return {}
    names = {}
    for line in path.read_text().splitlines():
        wnid, _, name = line.strip().partition(" ")
        if wnid:
            names[wnid] = name.strip()
    return names


def read_val_truth(root: Path) -> dict[str, str]:
    """Flat val ground truth as {image stem: wnid}: Kaggle's CSV, else the devkit's files."""
    csv_path = root / VAL_SOLUTION
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            rows = csv.DictReader(f)
            if not rows.fieldnames or "ImageId" not in rows.fieldnames:
                raise ImagenetError(f"{csv_path}: expected the header ImageId,PredictionString")
            return {row["ImageId"]: row["PredictionString"].split()[0] for row in rows
                    if row.get("PredictionString")}
    devkit = root / DEVKIT
    if (devkit / DEVKIT_TRUTH).is_file():
        return _devkit_truth(devkit)
    return {}


def _devkit_truth(devkit: Path) -> dict[str, str]:
    from scipy.io import loadmat  # MATLAB v5 parsing: no pickle involved

    try:
        synsets = loadmat(devkit / "meta.mat", squeeze_me=True)["synsets"]
    except (OSError, ValueError, KeyError) as exc:
        raise ImagenetError(f"{devkit / 'meta.mat'}: cannot read the devkit's synsets ({exc})") from None
    # The 1,000 classes are the leaves; their ILSVRC2012_ID is not the sorted-wnid index.
    by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    truth = {}
    for number, line in enumerate((devkit / DEVKIT_TRUTH).read_text().split(), start=1):
        if int(line) not in by_id:
            raise ImagenetError(f"{devkit / DEVKIT_TRUTH}: line {number} names ILSVRC2012_ID "
                                f"{line}, which meta.mat does not list as a class")
        truth[f"ILSVRC2012_val_{number:08d}"] = by_id[int(line)]
    return truth


def _keys(rels: list[str]) -> list[str]:
    """Safe, unique WebDataset keys from split-relative paths (``n01440764/n01440764_10026``)."""
    keys, seen = [], set()
    for i, rel in enumerate(rels):
        parts = [_UNSAFE.sub("_", p) for p in rel.rsplit(".", 1)[0].split("/")]
        key = "/".join(p if p[:1].isalnum() else "x" + p for p in parts)
        if key in seen:
            key = f"{key}-{i}"
        seen.add(key)
        keys.append(key)
    return keys


def scan(root: str | Path) -> Source:
    """Find the splits, classes and labels under ``root``; raise ``ImagenetError`` when the tree
    is not a layout this ingest understands."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImagenetError(f"{root}: no such directory (expected an ILSVRC-2012 root holding train/ and val/)")
    images = root if any((root / s).is_dir() for s in SPLITS) else root / KAGGLE_IMAGES
    present = [s for s in SPLITS if (images / s).is_dir()]
    if not present:
        raise ImagenetError(f"{root}: holds neither train/ nor val/ (nor Kaggle's {KAGGLE_IMAGES}/…)")
    names = read_synset_names(root)
    wnids = (_subdirs(images / "train") if "train" in present else None) \
        or (_subdirs(images / "val") if "val" in present else None) or sorted(names)
    if not wnids:
        raise ImagenetError(f"{root}: found no class folders (train/<wnid>/) and no {SYNSET_MAPPING}")
    index = {w: i for i, w in enumerate(wnids)}
    digest = hashlib.sha256()
    splits: dict[str, list[tuple[str, int, str]]] = {}
    truth: dict[str, str] | None = None
    for split in present:
        items = []
        for rel, size in _files(images / split):
            folder, _, name = rel.rpartition("/")
            if folder:
                label = folder.split("/")[0]
            else:
                truth = _flat_truth(root, split) if truth is None else truth
                label = truth.get(name.rsplit(".", 1)[0], "")
            items.append((f"{split}/{rel}", index.get(label, UNLABELED)))
            digest.update(f"{split}/{rel}\0{size}\n".encode())
        splits[split] = [(rel, cls, key) for (rel, cls), key
                         in zip(items, _keys([r.split("/", 1)[1] for r, _ in items]))]
    for label_file in (root / SYNSET_MAPPING, root / VAL_SOLUTION, root / DEVKIT / DEVKIT_TRUTH):
        if label_file.is_file():
            digest.update(label_file.read_bytes())
    return Source(str(root), str(images), wnids, [names.get(w, w) for w in wnids] if names else None,
                  splits, digest.hexdigest())


def _flat_truth(root: Path, split: str) -> dict[str, str]:
    truth = read_val_truth(root)
    if not truth:
        raise ImagenetError(f"{root}/{split}/ holds images directly but there is no ground truth "
                            f"for them: add {VAL_SOLUTION} (Kaggle) or {DEVKIT / DEVKIT_TRUTH} with "
                            "meta.mat (the ILSVRC2012 devkit) to the root, or sort them into "
                            f"{split}/<wnid>/ folders")
    return truth


# --- one chunk: a shard per target --------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One dataset version written by the ingest: where it goes and how its images are made."""

    url: str
    version: str
    transform: Transform
    params: dict


def targets(root: str, cfg: ImagenetIngestConfig) -> list[Target]:
    """The main version (resize + center crop) and one version per shorter-side variant."""
    common = dict(quality=cfg.quality, resample=cfg.resample, draft=cfg.draft, max_pixels=cfg.max_pixels)
    made = [(cfg.version, Transform(cfg.size, True, **common))]
    made += [(f"{cfg.version}-short{n}", Transform(n, False, **common)) for n in cfg.variants]
    return [Target(shards.dataset_url(root, cfg.dataset, version), version, t, t.params(cfg.shard_size))
            for version, t in made]


def build_samples(images: Path, spec: shards.ShardSpec, wnids: list[str],
                  transforms: list[Transform]) -> tuple[list[list[dict]], list[dict]]:
    """Samples of one chunk for each transform (each input decoded once), and its rejects."""
    per_target: list[list[dict]] = [[] for _ in transforms]
    rejects: list[dict] = []
    for rel, cls, key in spec.inputs:
        try:
            if cls == UNLABELED:
                raise Rejected("unlabeled", "no class folder or ground-truth entry names a known class")
            try:
                data = (images / rel).read_bytes()
            except OSError as exc:
                raise Rejected("unreadable", exc.strerror or str(exc)) from None
            jpegs, info = render(data, transforms)
        except Rejected as r:
            rejects.append({"split": spec.split, "path": rel, "reason": r.reason, "detail": r.detail})
            continue
        meta = {"wnid": wnids[cls], "source": rel, **info}
        for samples, jpeg in zip(per_target, jpegs):
            samples.append({"__key__": key, "jpg": jpeg, "cls": cls, "json": meta})
    return per_target, rejects


@dataclass
class ChunkResult:
    """What one chunk task did: per target its shard record, and whether it (re)wrote it."""

    split: str
    inputs: int
    records: list[shards.ShardRecord]
    written: list[bool]
    seconds: float


def write_chunk(images: str, wnids: list[str], chunk_targets: list[Target], spec: shards.ShardSpec,
                scratch: Path | None = None) -> ChunkResult:
    """Commit this chunk's shard in every target, decoding the inputs once for all targets
    still missing it; committed shards are kept as they are."""
    start = time.perf_counter()
    cache: dict[int, tuple[list[dict], list[dict]]] = {}

    def builder(i: int):
        def build(spec_: shards.ShardSpec):
            if i not in cache:  # the first target that needs writing: build it and all after it
                todo = [t.transform for t in chunk_targets[i:]]
                per_target, rejects = build_samples(Path(images), spec_, wnids, todo)
                cache.update({i + j: (samples, rejects) for j, samples in enumerate(per_target)})
            return cache.pop(i)
        return build

    records, written = [], []
    for i, target in enumerate(chunk_targets):
        record, wrote = shards.commit_shard(target.url, spec, target.params, builder(i), scratch)
        records.append(record)
        written.append(wrote)
    return ChunkResult(spec.split, len(spec.inputs), records, written, time.perf_counter() - start)


# --- the whole dataset ---------------------------------------------------------------------------


def plan_chunks(source: Source, shard_size: int) -> list[shards.ShardSpec]:
    return [spec for split, items in source.splits.items() for spec in shards.plan(split, items, shard_size)]


def check_targets(source: Source, all_targets: list[Target]) -> list[dict | None]:
    """Each target's committed manifest when it holds exactly this ingest, else None; a
    version built from other inputs or parameters is an error (versions are immutable)."""
    return [shards.check_compatible(t.url, _manifest_params(source, t), source.fingerprint)
            for t in all_targets]


def _manifest_params(source: Source, target: Target) -> dict:
    params = dict(target.params)
    if source.names:
        params["class_names"] = source.names
    return params


def commit_manifests(source: Source, all_targets: list[Target], specs: list[shards.ShardSpec],
                     results: list[ChunkResult], dataset: str) -> list[dict]:
    """rejects.jsonl then manifest.json (the commit point) of every target."""
    return [shards.write_manifest(t.url, dataset=dataset, version=t.version, specs=specs,
                                  records=[r.records[i] for r in results], classes=source.wnids,
                                  params=_manifest_params(source, t), source_fingerprint=source.fingerprint)
            for i, t in enumerate(all_targets)]


@dataclass
class Summary:
    """The numbers a user wants after an ingest (printed, a Prefect table, an MLflow run)."""

    urls: list[str]
    images: dict[str, int]
    rejects: dict[str, int]
    shards: int
    bytes: int
    shards_written: int
    inputs_processed: int
    seconds: float
    rejected_paths: list[dict] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.inputs_processed / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> list[dict]:
        rows = [{"what": f"images ({split})", "value": n} for split, n in self.images.items()]
        rows += [{"what": f"rejects ({reason})", "value": n} for reason, n in sorted(self.rejects.items())]
        rows += [{"what": "shards (written / total)", "value": f"{self.shards_written} / {self.shards}"},
                 {"what": "bytes", "value": self.bytes},
                 {"what": "images/s", "value": round(self.images_per_s, 1)}]
        return rows

    def markdown(self) -> str:
        return "| | |\n|---|---:|\n" + "".join(f"| {r['what']} | {r['value']} |\n" for r in self.table())

    def metrics(self) -> dict[str, float]:
        out = {f"ingest/images/{split}": float(n) for split, n in self.images.items()}
        out.update({f"ingest/rejects/{reason}": float(n) for reason, n in self.rejects.items()})
        out.update({"ingest/rejects": float(sum(self.rejects.values())), "ingest/shards": float(self.shards),
                    "ingest/bytes": float(self.bytes), "perf/images_per_s": self.images_per_s})
        return out


def summarize(manifests: list[dict], urls: list[str], results: list[ChunkResult], seconds: float) -> Summary:
    main = manifests[0]
    rejects = [r for result in results for r in result.records[0].rejects]
    written = [r for result in results for r, w in zip(result.records, result.written) if w]
    processed = sum(result.inputs for result in results if any(result.written))
    return Summary(urls=urls, images={s: v["samples"] for s, v in main["splits"].items()},
                   rejects=dict(Counter(r["reason"] for r in rejects)),
                   shards=sum(len(m["splits"][s]["shards"]) for m in manifests for s in m["splits"]),
                   bytes=sum(shard["bytes"] for m in manifests for split in m["splits"].values()
                             for shard in split["shards"]),
                   shards_written=len(written), inputs_processed=processed, seconds=seconds,
                   rejected_paths=rejects)


def ingest(source_root: str | Path, root: str, cfg: ImagenetIngestConfig,
           map_chunks: Callable[[Callable, Iterable], Iterable] = map) -> Summary:
    """The whole ingest in one process (or over ``map_chunks``, e.g. a pool's ``imap``)."""
    source = scan(source_root)
    all_targets = targets(root, cfg)
    check_targets(source, all_targets)
    specs = plan_chunks(source, cfg.shard_size)
    start = time.perf_counter()
    with one_torch_thread():
        results = list(map_chunks(lambda spec: write_chunk(source.images, source.wnids, all_targets, spec), specs))
    seconds = time.perf_counter() - start
    manifests = commit_manifests(source, all_targets, specs, results, cfg.dataset)
    return summarize(manifests, [t.url for t in all_targets], results, seconds)


def log_summary(summary: Summary, cfg: ImagenetIngestConfig, manifest: dict, uri: str, home: Path) -> str:
    """One MLflow run per ingest: the config as params, the summary as metrics and artifacts."""
    from mlflow.entities import Metric

    tags = {"dataset.url": summary.urls[0], "dataset.manifest_sha256": shards.manifest_checksum(manifest),
            "visionflow.stage": "ingest"}
    name = f"{cfg.dataset}-{cfg.version}"
    client = tracking.client(uri)
    # A run of this dataset still RUNNING is an ingest's that was killed while logging (a version
    # has one writer at a time, and logging is its last step): this ingest takes its place.
    for stale in client.search_runs([tracking.experiment_id(uri, cfg.experiment, home)],
                                    filter_string=f"attributes.run_name = '{name}' and attributes.status = 'RUNNING'"):
        if stale.data.tags.get("dataset.url") == summary.urls[0]:
            client.set_terminated(stale.info.run_id, status="KILLED")
    run_id = tracking.start_run(uri, cfg.experiment, home, name, tracking.flatten(cfg), tags)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in summary.metrics().items()])
    client.log_text(run_id, summary.markdown(), "ingest_summary.md")
    client.log_dict(run_id, {"table": summary.table(), "urls": summary.urls,
                             "rejects": summary.rejected_paths}, "ingest_summary.json")
    client.set_terminated(run_id)
    return run_id


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="scan-imagenet", retries=1, cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_bad_input)
def scan_task(source_root: str) -> Source:
    source = scan(source_root)
    get_run_logger().info("%s: %d classes; %s", source_root, len(source.wnids),
                          ", ".join(f"{s} {len(v)} files" for s, v in source.splits.items()))
    return source


# Idempotency comes from the shard commit records, not from Prefect's result cache.
@task(name="write-imagenet-shard", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_bad_input)
def write_chunk_task(images: str, wnids: list[str], chunk_targets: list[Target],
                     spec: shards.ShardSpec) -> ChunkResult:
    one_torch_thread_in_workers()
    result = write_chunk(images, wnids, chunk_targets, spec)
    get_run_logger().info("%s: %s %d inputs in %.1f s", spec.name,
                          "wrote" if any(result.written) else "kept committed", result.inputs, result.seconds)
    return result


@task(name="commit-imagenet-manifests", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_bad_input)
def commit_manifests_task(source: Source, all_targets: list[Target], specs: list[shards.ShardSpec],
                          results: list[ChunkResult], dataset: str) -> list[dict]:
    return commit_manifests(source, all_targets, specs, results, dataset)


@task(name="log-imagenet-ingest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_bad_input)
def log_summary_task(summary: Summary, cfg: ImagenetIngestConfig, manifest: dict, uri: str, home: Path) -> str:
    return log_summary(summary, cfg, manifest, uri, home)
