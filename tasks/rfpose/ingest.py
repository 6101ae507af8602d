"""RF-Pose sessions (or HuPR sequences) → a dataset of T-frame windows as WebDataset shards.

    url = shards.dataset_url(root, "rfpose", "v1")
    manifest = ingest_source(url, source="data/rfpose-sim", T=100)          # session directories
    manifest = ingest_source(url, hupr="data/HuPR", T=100)                 # HuPR's train/val/test
    manifest = ingest_sessions([path, session, ...], url, T=100, stride=50)  # the core

Each session is read (``sessions.read_session``), synchronized (``sync.synchronize``) and cut
into windows (``windows.window_session``). A session that raises ``BadInput`` (unreadable,
clock offset not found, …) is rejected whole, ``{"session", "error"}`` in rejects.jsonl, and
the batch carries on. Every RF frame of a kept session is in a window or in rejects.jsonl as
``{"session", "frame", "reason"}``. A session's rejects ride in the commit record of the shard
holding its first window; those of a session without one (rejected whole, or shorter than T)
ride with the plan's first shard, so ``shards.write_manifest`` writes them all.

One sample per window, key ``<session>-<first frame:06d>``::

    hori.npy      (C, T, H, W) float16  horizontal heatmaps / rf_scale (C = 2 re/im, 1 power)
    vert.npy      (C, T, H', W') float16  vertical heatmaps / rf_scale
    kp.npy        (T, P, 14, 3) float32  teacher keypoints (x, y, v) in image pixels, CrowdPose
                  order; P = most people on a labelled frame of the window; NaN rows pad a frame
                  with fewer, and an unlabelled frame is all NaN
    bbox.npy      (T, P, 4) float32  each teacher person's bbox [x, y, w, h] in image pixels
                  (NaN where kp is): the OKS scale of the evaluation
    labelled.npy  (T,) bool  the frame has a teacher label (sync's ``label_index >= 0``; a
                  labelled camera frame with nobody in it is labelled, with P NaN rows)
    json          {"session", "frames": [first, stop), "scene", "people": P,
                   "image": [width, height], "rf_scale"}

Normalisation: each stream's static background, every cell's mean over the session, is
subtracted (the wall, furniture and the back wall's echo, which a student trained in one room
would otherwise learn as part of the scene), then one scale per session divides both streams:
the RMS magnitude of what moves in its horizontal stream, ``sqrt(mean |x − x̄|²)`` over all frames and cells with ``x̄`` each
cell's mean over the session (re² + im² for complex input; the plain RMS where nothing moves),
so a radio's gain sets no input scale and neither do static reflectors: a wall's echo, many
times a person's, would otherwise shrink the people behind it; it is stored as ``rf_scale``.
Values are clipped to float16's range before the cast.

Splits, by session: through-wall sessions go to ``test`` only (RF-Pose never trains through
walls). Visible sessions with at least one window, sorted by name: index % 5 == 3 → ``val``,
index % 5 == 4 → ``test``, the rest ``train``; with 3 or more of them, a ``val`` or ``test``
left without a visible session takes the last ``train`` one (``val`` first). HuPR sequences
keep their release split. A session with no window has split ``None``.

Manifest ``params``: ``T``, ``stride``, ``shard_size``, ``keypoints``; ``sync.<session>`` the
sync report (``offset_s``, ``drift_ppm``, ``labelled``, ``unlabelled``, ``residual_ms``, …) with
``rejected`` recounted over the window rejects too; ``sessions.<session>`` ``{"split", "scene",
"windows", "frames", "rf_scale"}``; ``rejected_sessions`` ``{session: error}``; ``image``
``[W, H]`` when every session agrees, else ``None``; ``mean_pose`` (``mean_pose`` below).

Shards are ``<split>-NNNNNN.tar`` of ``shard_size`` windows in session-name order. A shard's
digest covers the content digest of each session it draws on (heatmap bytes, labels, label
index, windows, rejects, scale), so a re-run over the same inputs keeps committed shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tasks.data import shards
from tasks.errors import BadInput
from tasks.rfpose.hupr import REDUCTIONS as HUPR_REDUCTIONS, read_sequence, split_annotations
from tasks.rfpose.sessions import Session, SessionError, fail, find_sessions, read_session
from tasks.rfpose.skeleton import KEYPOINTS, K
from tasks.rfpose.sync import synchronize
from tasks.rfpose.windows import plan_windows, reasons, window_session

FORMAT = "visionflow.rfpose-windows/3"
SPLITS = ("train", "val", "test")
SHARD_SIZE = 64  # windows per shard: ~64 × 2 × 100 × 2 × 64 × 64 × 2 bytes ≈ 200 MB at the paper's size
CHUNK = 256  # frames per block when scanning a session's heatmaps
F16_MAX = float(np.finfo(np.float16).max)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")  # a session name must be a safe sample key


@dataclass(frozen=True)
class Source:
    """One session to ingest, loaded on demand (twice: to survey it, then to write its windows),
    so a batch never holds more than one in memory. ``split`` fixes its split (HuPR's)."""

    name: str
    load: Callable[[], Session]
    split: str | None = None


def as_source(item: Path | str | Session | Source, split: str | None = None) -> Source:
    if isinstance(item, Source):
        return item
    if isinstance(item, Session):
        return Source(item.name, lambda: item, split)
    path = Path(item).resolve()
    return Source(path.name, partial(read_session, path), split)


@dataclass
class PoseSums:
    """Running sums for ``mean_pose``: keypoints relative to the bbox centre, per bbox height."""

    offsets: np.ndarray = field(default_factory=lambda: np.zeros((K, 2)))  # Σ over present keypoints
    present: np.ndarray = field(default_factory=lambda: np.zeros(K))
    height: float = 0.0
    center: np.ndarray = field(default_factory=lambda: np.zeros(2))
    persons: int = 0

    def add(self, person: dict) -> None:
        x, y, w, h = person["bbox"]
        if not h > 0:
            return
        kp = np.asarray(person["keypoints"], np.float64)
        seen = kp[:, 2] > 0  # v = 0: the joint is absent, its (x, y) mean nothing
        centre = np.array([x + w / 2, y + h / 2])
        self.offsets[seen] += (kp[seen, :2] - centre) / h
        self.present += seen
        self.height, self.center, self.persons = self.height + h, self.center + centre, self.persons + 1


@dataclass(frozen=True, eq=False)
class Survey:
    """What the first pass learns of a readable session; small, kept for the whole batch."""

    name: str
    scene: str
    image: tuple[int, int]
    frames: int
    split: str | None
    windows: list[tuple[int, int]]
    rejects: list[dict]
    label_index: np.ndarray
    report: dict
    rf_scale: float
    background: tuple[np.ndarray, np.ndarray]   # each cell's mean over the session, per stream
    digest: str
    pose: PoseSums


def survey(source: Source, T: int, stride: int) -> Survey:
    session = source.load()
    name = session.name
    if not NAME.match(name):
        raise SessionError(f"session {name}: the name must be letters, digits, '-' or '_' (it keys the samples)")
    sync = synchronize(session)
    windows, rejects = window_session(sync, T, stride)
    digest = hashlib.sha256()
    sum_sq, moving_sq, h_mean = scan(session.horizontal, digest)
    _, _, v_mean = scan(session.vertical, digest)
    cells = session.horizontal.shape[0] * session.horizontal.shape[2] * session.horizontal.shape[3]
    scale = float(np.sqrt((moving_sq if moving_sq > 1e-12 * sum_sq else sum_sq) / cells))
    if not scale > 0:
        raise fail(name, "rf/horizontal.npy", "every value is zero: no scale to normalise by")
    labels = {str(i): [{"keypoints": p["keypoints"].tolist(), "bbox": p["bbox"]} for p in people]
              for i, people in sorted(session.labels.items())}
    digest.update(json.dumps([name, session.scene, session.width, session.height, scale, windows, rejects, labels],
                             sort_keys=True).encode())
    digest.update(np.asarray(sync.label_index, "<i8").tobytes())
    pose = PoseSums()
    for c in sync.label_index[covered(len(sync.label_index), windows) & (sync.label_index >= 0)]:
        for person in session.labels[int(c)]:
            pose.add(person)
    return Survey(name=name, scene=session.scene, image=(session.width, session.height), frames=len(session.rf_t),
                  split=source.split, windows=windows, rejects=rejects, label_index=np.array(sync.label_index),
                  report={**sync.report, "rejected": reasons(rejects)}, rf_scale=scale,
                  background=(h_mean, v_mean), digest=digest.hexdigest(), pose=pose)


def scan(frames: np.ndarray, digest) -> tuple[float, float, np.ndarray]:
    """Feed (N, C, H, W) frames to ``digest`` block by block; → the sums of squares of the
    frames and of their deviation from each cell's mean over time (what moves), and that mean."""
    total, sums = 0.0, np.zeros(frames.shape[1:], np.float64)
    for start in range(0, len(frames), CHUNK):
        block = np.ascontiguousarray(frames[start:start + CHUNK], dtype=np.float32)
        digest.update(block.tobytes())
        total += float(np.square(block, dtype=np.float64).sum())
        sums += block.sum(axis=0, dtype=np.float64)
    n = max(len(frames), 1)
    return total, max(0.0, total - float(np.square(sums).sum()) / n), (sums / n).astype(np.float32)


def covered(n: int, windows: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for first, stop in windows:
        mask[first:stop] = True
    return mask


def assign_splits(scenes: dict[str, str], fixed: dict[str, str | None] | None = None) -> dict[str, str]:
    """Session name → split for sessions that hold windows (the rule in the module docstring)."""
    fixed = fixed or {}
    out: dict[str, str] = {}
    visible = []
    for name in sorted(scenes):
        if scenes[name] == "through-wall":
            out[name] = "test"
        elif fixed.get(name) is not None:
            out[name] = fixed[name]
        else:
            visible.append(name)
    for i, name in enumerate(visible):
        out[name] = {3: "val", 4: "test"}.get(i % 5, "train")
    if len(visible) >= 3:
        for split in ("val", "test"):
            if not any(out[n] == split for n in visible):
                out[[n for n in visible if out[n] == "train"][-1]] = split
    return out


def mean_pose(sums: Sequence[PoseSums]) -> dict | None:
    """The mean training skeleton, for a baseline that places one pose: ``offsets`` (14 × [x, y])
    is each keypoint's mean position relative to its person's bbox centre in units of bbox
    height (over the persons where it is present; ``None`` where it never is), ``height`` the
    mean bbox height and ``center`` the mean bbox centre, in image pixels. Persons are those on
    the labelled frames of training windows, a frame counted once however many windows hold it."""
    persons = sum(s.persons for s in sums)
    if not persons:
        return None
    offsets, present = sum(s.offsets for s in sums), sum(s.present for s in sums)
    mean = offsets / np.maximum(present, 1)[:, None]
    return {"offsets": [[float(x), float(y)] if n else None for (x, y), n in zip(mean, present)],
            "height": float(sum(s.height for s in sums) / persons),
            "center": (sum(s.center for s in sums) / persons).tolist(), "persons": persons}


# --- samples ---------------------------------------------------------------------------------


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def rf_window(frames: np.ndarray, first: int, stop: int, background: np.ndarray, scale: float) -> np.ndarray:
    x = (np.asarray(frames[first:stop], dtype=np.float32) - background) / np.float32(scale)
    x = np.clip(x, -F16_MAX, F16_MAX).astype(np.float16)
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3))  # (T, C, H, W) → (C, T, H, W)


def window_sample(session: Session, s: Survey, first: int, stop: int) -> dict:
    label_index = s.label_index[first:stop]
    people = [session.labels[int(c)] if c >= 0 else [] for c in label_index]
    P = max(map(len, people), default=0)
    kp = np.full((stop - first, P, K, 3), np.nan, np.float32)
    bbox = np.full((stop - first, P, 4), np.nan, np.float32)
    for t, frame_people in enumerate(people):
        for j, person in enumerate(frame_people):
            kp[t, j] = person["keypoints"]
            bbox[t, j] = person["bbox"]
    return {"__key__": f"{s.name}-{first:06d}",
            "hori.npy": npy(rf_window(session.horizontal, first, stop, s.background[0], s.rf_scale)),
            "vert.npy": npy(rf_window(session.vertical, first, stop, s.background[1], s.rf_scale)),
            "kp.npy": npy(kp), "bbox.npy": npy(bbox), "labelled.npy": npy(label_index >= 0),
            "json": {"session": s.name, "frames": [first, stop], "scene": s.scene, "people": P,
                     "image": list(s.image), "rf_scale": s.rf_scale}}


def one_slot(sources: dict[str, Source]) -> Callable[[str], Session]:
    """Load a session by name, keeping only the last one: shards read sessions in order."""
    held: dict[str, Session] = {}

    def get(name: str) -> Session:
        if name not in held:
            held.clear()
            held[name] = sources[name].load()
        return held[name]

    return get


# --- the batch -------------------------------------------------------------------------------


def plan_shards(surveys: dict[str, Survey], splits: dict[str, str], shard_size: int) -> list[shards.ShardSpec]:
    specs = []
    for split in SPLITS:
        inputs = [[name, first, stop] for name in sorted(surveys) if splits.get(name) == split
                  for first, stop in surveys[name].windows]
        specs.extend(shards.plan(split, inputs, shard_size))
    return specs


def carriers(specs: list[shards.ShardSpec], names: Sequence[str]) -> dict[str, list[str]]:
    """Shard → the sessions whose rejects its commit record carries (module docstring)."""
    out: dict[str, list[str]] = {spec.name: [] for spec in specs}
    first: dict[str, str] = {}
    for spec in specs:
        for name, _, _ in spec.inputs:
            first.setdefault(name, spec.name)
    for name in sorted(names):
        out[first.get(name, specs[0].name)].append(name)
    return out


def ingest_sessions(sessions: Sequence[Path | str | Session | Source], dataset_url: str, *, dataset: str = "rfpose",
                    version: str = "v1", T: int = 100, stride: int | None = None, shard_size: int = SHARD_SIZE,
                    split: str | None = None, scratch: Path | None = None,
                    on_shard=lambda record, written: None) -> dict:
    """Session directories or ``Session`` objects → committed shards and manifest at
    ``dataset_url``; ``split`` puts every visible one in that split instead of the rule."""
    stride = T if stride is None else stride
    plan_windows([], T, stride)  # a bad T or stride is the caller's, not each session's, error
    if split is not None and split not in SPLITS:
        raise BadInput(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    sources = {}
    for src in (as_source(item, split) for item in sessions):
        if src.name in sources:
            raise BadInput(f"two sessions are named {src.name}: names key the samples and must be unique")
        sources[src.name] = src
    surveys, rejected = {}, {}
    for name in sorted(sources):
        try:
            surveys[name] = survey(sources[name], T, stride)
        except BadInput as exc:
            rejected[name] = " ".join(str(exc).split())
    with_windows = {n: s for n, s in surveys.items() if s.windows}
    splits = assign_splits({n: s.scene for n, s in with_windows.items()}, {n: s.split for n, s in with_windows.items()})
    specs = plan_shards(surveys, splits, shard_size)
    if not specs:
        why = "; ".join(f"{n}: {e}" for n, e in list(rejected.items())[:3]) or "every session is shorter than T"
        raise BadInput(f"no session gave a window of T={T} frames ({why})")
    params = manifest_params(surveys, rejected, splits, T, stride, shard_size)
    fingerprint = hashlib.sha256(json.dumps([{n: s.digest for n, s in surveys.items()}, rejected],
                                            sort_keys=True).encode()).hexdigest()
    existing = shards.check_compatible(dataset_url, params, fingerprint)
    if existing is not None:
        return existing
    carried, load, records = carriers(specs, [*surveys, *rejected]), one_slot(sources), []
    for spec in specs:
        names = carried[spec.name]
        drawn = {name for name, _, _ in spec.inputs} | set(names)
        shard_params = {"format": FORMAT, "T": T, "stride": stride, "carries": names,
                        "sources": {n: surveys[n].digest if n in surveys else rejected[n] for n in sorted(drawn)}}
        rejects = [r for n in names for r in ([{"session": n, "error": rejected[n]}] if n in rejected
                                              else surveys[n].rejects)]

        def build(spec: shards.ShardSpec, rejects=rejects):
            samples = (window_sample(load(name), surveys[name], first, stop) for name, first, stop in spec.inputs)
            return samples, rejects

        record, written = shards.commit_shard(dataset_url, spec, shard_params, build, scratch)
        on_shard(record, written)
        records.append(record)
    return shards.write_manifest(dataset_url, dataset=dataset, version=version, specs=specs, records=records,
                                 classes=list(KEYPOINTS), params=params, source_fingerprint=fingerprint)


def manifest_params(surveys: dict[str, Survey], rejected: dict[str, str], splits: dict[str, str], T: int,
                    stride: int, shard_size: int) -> dict:
    images = {s.image for s in surveys.values()}
    return {
        "format": FORMAT, "T": T, "stride": stride, "shard_size": shard_size, "keypoints": list(KEYPOINTS),
        "image": list(images.pop()) if len(images) == 1 else None,
        "sessions": {n: {"split": splits.get(n), "scene": s.scene, "windows": len(s.windows), "frames": s.frames,
                         "rf_scale": s.rf_scale} for n, s in surveys.items()},
        "sync": {n: s.report for n, s in surveys.items()},
        "rejected_sessions": rejected,
        "mean_pose": mean_pose([s.pose for n, s in surveys.items() if splits.get(n) == "train"]),
    }


def hupr_sources(root: Path, splits: Sequence[str] = SPLITS, reduce: str = "power") -> list[Source]:
    """HuPR's sequences of each split (``tasks/rfpose/hupr.py``), read one at a time, so one
    damaged sequence is rejected alone; an unreadable annotation file fails the batch."""
    root = Path(root).resolve()
    if reduce not in HUPR_REDUCTIONS:
        raise SessionError(f"HuPR {root}: reduce must be one of {', '.join(HUPR_REDUCTIONS)}, got {reduce!r}")
    out = []
    for split in splits:
        people = split_annotations(root, split)
        out += [Source(f"single_{k}", partial(read_sequence, root / f"single_{k}", people[k], reduce), split)
                for k in sorted(people)]
    return out


def ingest_source(dataset_url: str, *, source: Path | str | None = None, hupr: Path | str | None = None,
                  hupr_splits: Sequence[str] = SPLITS, hupr_reduce: str = "power", dataset: str = "rfpose",
                  version: str = "v1", T: int = 100, stride: int | None = None, shard_size: int = SHARD_SIZE,
                  scratch: Path | None = None, on_shard=lambda record, written: None) -> dict:
    """Every session directory under ``source`` and/or HuPR's sequences under ``hupr``."""
    if source is None and hupr is None:
        raise BadInput("nothing to ingest: give a session directory (source) or a HuPR root (hupr)")
    items: list[Path | Source] = list(find_sessions(Path(source))) if source is not None else []
    if hupr is not None:
        items += hupr_sources(Path(hupr), [hupr_splits] if isinstance(hupr_splits, str) else hupr_splits, hupr_reduce)
    return ingest_sessions(items, dataset_url, dataset=dataset, version=version, T=T, stride=stride,
                           shard_size=shard_size, scratch=scratch, on_shard=on_shard)
