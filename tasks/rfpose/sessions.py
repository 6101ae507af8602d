"""RF-Pose recording sessions on disk → validated, memory-mapped ``Session`` objects.

One directory per recording; the directory's name is the session's name::

    session.json        {"rf": {"fps": 30}, "rgb": {"fps": 15, "width": W, "height": H},
                         "scene": "visible" | "through-wall", "clock_offset_s": optional}
    rf/horizontal.npy   (N, H, W) complex64 | (N, 2, H, W) float32 (re, im) | (N, H, W) float32 power
    rf/vertical.npy     same N and layout as horizontal (its H, W may differ)
    rf/timestamps.npy   (N,) float64 seconds, radio clock
    rgb/000000.jpg …    M camera frames
    rgb/timestamps.npy  (M,) float64 seconds, camera clock
    keypoints.json      optional teacher labels, CrowdPose order, image pixels:
                        {"frames": [{"frame": i, "people": [{"keypoints": [[x, y, v] × 14],
                                                             "bbox": [x, y, w, h]}]}]}

``"frame"`` in keypoints.json indexes the *camera* frames (the teacher ran on them); sync
(``tasks/rfpose/sync.py``) decides which RF frame each labelled camera frame labels.

Use: ``[read_session(p) for p in find_sessions(root)]``. Heatmaps stay memory-mapped; both come
out as (N, C, H, W) float32 views: C = 2 (re, im) for complex input, C = 1 for power. Any wrong
shape, dtype, length, non-finite value or unusable clock raises ``SessionError`` with one line
naming the session, the file and the reason. A clock is unusable when fewer than half its
frames lie in its longest increasing run, or when its median step disagrees with session.json's
fps by over 25%; lesser glitches (a duplicate, a frame stamped backwards) are left for sync to
reject frame by frame.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.errors import BadInput
from tasks.rfpose.skeleton import K

SCENES = ("visible", "through-wall")
LAYOUTS = "complex64 (N, H, W), float32 (N, 2, H, W) re/im, or float32 power (N, H, W)"
MIN_IN_ORDER = 0.5  # a clock with fewer of its frames in order than this is broken, not glitchy
FPS_SLACK = 0.25  # the median timestamp step may differ this much from 1/fps
CHUNK = 256  # frames per block when scanning a memory-mapped array
# What numpy raises on a damaged .npy header, besides ValueError: its header parser retries a
# dict it cannot parse through the tokenizer, which fails its own way; a shape too large for a
# C long overflows.
NPY_ERRORS = (OSError, ValueError, EOFError, OverflowError, SyntaxError, tokenize.TokenError)


class SessionError(BadInput):
    """A session is unreadable or inconsistent; the message names the session, file and reason."""


def fail(session: str, file: str, reason: str) -> SessionError:
    return SessionError(f"session {session}: {file}: {reason}")


@dataclass(frozen=True, eq=False)
class Session:
    """One recording. ``horizontal`` / ``vertical`` are (N, C, H, W) float32, ``rf_t`` (N,) and
    ``rgb_t`` (M,) float64 seconds on their own clocks; ``labels`` maps a camera frame to its
    people, each ``{"keypoints": (14, 3) float32 array, "bbox": [x, y, w, h]}``."""

    name: str
    path: Path
    scene: str
    rf_fps: float
    rgb_fps: float
    width: int
    height: int
    clock_offset_s: float | None
    horizontal: np.ndarray
    vertical: np.ndarray
    rf_t: np.ndarray
    rgb_t: np.ndarray
    rgb_paths: list[Path]
    labels: dict[int, list[dict]]


def find_sessions(root: Path) -> list[Path]:
    """``root`` itself when it holds session.json, else every session directory below it."""
    root = Path(root)
    if (root / "session.json").is_file():
        return [root]
    found = []
    for folder, subfolders, files in os.walk(root):
        if "session.json" in files:
            found.append(Path(folder))
            subfolders.clear()  # a session's own folders (rgb/ holds thousands of files) are not searched
        subfolders.sort()
    found.sort()
    if not found:
        raise SessionError(f"{root}: no session.json in it or below it")
    names: dict[str, Path] = {}
    for p in found:
        if p.name in names:
            raise SessionError(f"{root}: two sessions are named {p.name} ({names[p.name]} and {p})")
        names[p.name] = p
    return found


def read_session(path: Path) -> Session:
    path = Path(path).resolve()
    name = path.name
    meta = read_meta(name, path / "session.json")
    horizontal = read_heatmaps(name, path, "rf/horizontal.npy")
    vertical = read_heatmaps(name, path, "rf/vertical.npy")
    n = len(horizontal)
    if vertical.shape[0] != n:
        raise fail(name, "rf/vertical.npy", f"{vertical.shape[0]} frames, rf/horizontal.npy has {n}")
    if vertical.shape[1] != horizontal.shape[1]:
        raise fail(name, "rf/vertical.npy", f"{vertical.shape[1]} channel(s) but rf/horizontal.npy has "
                   f"{horizontal.shape[1]}: both must use the same layout")
    rf_t = read_timestamps(name, path, "rf/timestamps.npy", n, meta["rf_fps"])
    rgb_paths = frame_paths(name, path / "rgb")
    rgb_t = read_timestamps(name, path, "rgb/timestamps.npy", len(rgb_paths), meta["rgb_fps"])
    check_image_size(name, path, rgb_paths[0], meta["width"], meta["height"])
    labels = read_keypoints(name, path / "keypoints.json", len(rgb_paths))
    return Session(name=name, path=path, horizontal=horizontal, vertical=vertical, rf_t=rf_t,
                   rgb_t=rgb_t, rgb_paths=rgb_paths, labels=labels, **meta)


def read_json(session: str, path: Path, file: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise fail(session, file, "missing") from None
    except json.JSONDecodeError as exc:
        raise fail(session, file, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(session, file, f"cannot read ({exc})") from None
    except ValueError as exc:  # a number of more digits than Python converts (sys.get_int_max_str_digits)
        raise fail(session, file, f"not valid JSON ({str(exc).split(';')[0]})") from None
    except RecursionError:
        raise fail(session, file, "not valid JSON (nested too deeply)") from None


def finite(value) -> bool:
    """A JSON number that is finite as a float: Python's ints are unbounded, numpy's are not."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def read_meta(session: str, path: Path) -> dict:
    meta = read_json(session, path, "session.json")

    def number(where: str, value, integer: bool = False) -> float:
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not finite(value) or value <= 0:
            raise fail(session, "session.json", f"{where} must be a positive {'integer' if integer else 'number'}, "
                       f"got {json.dumps(value)}")
        return value

    if not isinstance(meta, dict) or not isinstance(meta.get("rf"), dict) or not isinstance(meta.get("rgb"), dict):
        raise fail(session, "session.json", 'needs the objects "rf" and "rgb"')
    if meta.get("scene") not in SCENES:
        raise fail(session, "session.json", f'"scene" must be one of {", ".join(SCENES)}, '
                   f"got {json.dumps(meta.get('scene'))}")
    offset = meta.get("clock_offset_s")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, (int, float))
                               or not finite(offset)):
        raise fail(session, "session.json", f'"clock_offset_s" must be a number of seconds, got {json.dumps(offset)}')
    return {"scene": meta["scene"], "clock_offset_s": None if offset is None else float(offset),
            "rf_fps": float(number("rf.fps", meta["rf"].get("fps"))),
            "rgb_fps": float(number("rgb.fps", meta["rgb"].get("fps"))),
            "width": number("rgb.width", meta["rgb"].get("width"), integer=True),
            "height": number("rgb.height", meta["rgb"].get("height"), integer=True)}


def load_npy(session: str, path: Path, file: str) -> np.ndarray:
    """The array, memory-mapped; refused unless the file holds exactly what its header describes
    (a damaged header can describe a smaller array than the bytes that follow it)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        size = path.stat().st_size
    except FileNotFoundError:
        raise fail(session, file, "missing") from None
    except NPY_ERRORS as exc:
        raise fail(session, file, f"not a readable .npy array ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(array, np.memmap) or array.offset + array.nbytes != size:
        raise fail(session, file, f"not a readable .npy array ({size} bytes, but its header describes "
                   f"{array.dtype} {array.shape}: cut, padded or damaged)")
    return array


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


def read_heatmaps(session: str, root: Path, file: str) -> np.ndarray:
    """(N, C, H, W) float32 view of one radio's heatmaps, still memory-mapped."""
    raw = load_npy(session, root / file, file)
    shape, dtype = raw.shape, raw.dtype
    if dtype == np.complex64 and raw.ndim == 3:
        if not raw.flags.c_contiguous:
            raw = np.ascontiguousarray(raw)
        # complex64 is (re, im) float32 pairs in memory: (N, H, W) → (N, H, W, 2) → (N, 2, H, W)
        frames = raw.view(np.float32).reshape(*shape, 2).transpose(0, 3, 1, 2)
    elif dtype == np.float32 and raw.ndim == 4 and shape[1] == 2:
        frames = raw
    elif dtype == np.float32 and raw.ndim == 3:
        frames = raw[:, None]  # power: (N, 1, H, W)
    elif dtype not in (np.complex64, np.float32):
        raise fail(session, file, f"dtype {dtype}; expected {LAYOUTS}")
    else:
        raise fail(session, file, f"shape {shape} with dtype {dtype}; expected {LAYOUTS}")
    if min(frames.shape) == 0:
        raise fail(session, file, f"shape {shape} is empty")
    bad = first_non_finite(frames)
    if bad is not None:
        raise fail(session, file, f"frame {bad} holds NaN or infinite values")
    return frames


def first_non_finite(frames: np.ndarray) -> int | None:
    for start in range(0, len(frames), CHUNK):
        ok = np.isfinite(frames[start:start + CHUNK]).reshape(min(CHUNK, len(frames) - start), -1).all(axis=1)
        if not ok.all():
            return start + int(np.argmin(ok))
    return None


def in_order(t: np.ndarray) -> np.ndarray:
    """Mask of the longest strictly increasing run of ``t`` (a subsequence, not reordered):
    the fewest frames to drop so that time never stands still or goes back."""
    tails: list[float] = []  # smallest last value of an increasing run of each length
    tail_at: list[int] = []
    parent = np.full(len(t), -1)
    for i, value in enumerate(t.tolist()):
        k = bisect.bisect_left(tails, value)
        if k:
            parent[i] = tail_at[k - 1]
        if k == len(tails):
            tails.append(value), tail_at.append(i)
        else:
            tails[k], tail_at[k] = value, i
    keep = np.zeros(len(t), dtype=bool)
    i = tail_at[-1] if tail_at else -1
    while i >= 0:
        keep[i], i = True, parent[i]
    return keep


def read_timestamps(session: str, root: Path, file: str, n: int, fps: float) -> np.ndarray:
    t = load_npy(session, root / file, file)
    if t.dtype != np.float64 or t.ndim != 1:
        raise fail(session, file, f"shape {t.shape} dtype {t.dtype}; expected ({n},) float64 seconds")
    if len(t) != n:
        raise fail(session, file, f"{len(t)} timestamps for {n} frames")
    t = np.array(t)
    if not np.isfinite(t).all():
        raise fail(session, file, f"timestamp {int(np.argmin(np.isfinite(t)))} is NaN or infinite")
    ordered = in_order(t)
    if n < 2 or ordered.sum() < MIN_IN_ORDER * n:
        raise fail(session, file, f"not increasing: only {ordered.sum()} of {n} timestamps are in order")
    step = float(np.median(np.diff(t[ordered])))
    if abs(step * fps - 1) > FPS_SLACK:
        raise fail(session, file, f"frames are {step:.4g} s apart (median) but session.json says {fps:g} fps")
    return t


def frame_paths(session: str, folder: Path) -> list[Path]:
    paths = list(folder.glob("*.jpg"))
    if not paths:
        raise fail(session, "rgb/", "no .jpg frames")
    digits = all(p.stem.isascii() and p.stem.isdigit() for p in paths)  # "²".isdigit(), yet int("²") fails
    return sorted(paths, key=(lambda p: int(p.stem)) if digits else (lambda p: p.name))


def check_image_size(session: str, root: Path, path: Path, width: int, height: int) -> None:
    file = str(path.relative_to(root))
    try:
        with Image.open(path) as image:  # reads the header only
            size = image.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise fail(session, file, f"not a readable image ({exc})") from None
    if size != (width, height):
        raise fail(session, file, f"{size[0]}×{size[1]} pixels but session.json says {width}×{height}")


def read_keypoints(session: str, path: Path, n_frames: int) -> dict[int, list[dict]]:
    """Camera frame → people; {} when the session has no keypoints.json."""
    if not path.exists():
        return {}
    file = "keypoints.json"
    doc = read_json(session, path, file)
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, list):
        raise fail(session, file, 'needs a "frames" list')
    labels: dict[int, list[dict]] = {}
    for k, entry in enumerate(frames):
        where = f"frames[{k}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("people"), list):
            raise fail(session, file, f'{where} needs "frame" and a "people" list')
        i = entry.get("frame")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_frames:
            raise fail(session, file, f"{where}: frame {json.dumps(i)} is not a camera frame index 0…{n_frames - 1}")
        if i in labels:
            raise fail(session, file, f"{where}: camera frame {i} is labelled twice")
        labels[i] = [read_person(session, file, f"{where}.people[{j}]", p) for j, p in enumerate(entry["people"])]
    return labels


def read_person(session: str, file: str, where: str, person) -> dict:
    try:
        keypoints = np.asarray(person["keypoints"], dtype=np.float32)
        bbox = np.asarray(person["bbox"], dtype=np.float64)
    except (TypeError, KeyError, ValueError, OverflowError):
        raise fail(session, file,
                   f'{where} needs numeric "keypoints" [[x, y, v] × 14] and "bbox" [x, y, w, h]') from None
    if keypoints.shape != (K, 3) or bbox.shape != (4,):
        raise fail(session, file, f"{where}: keypoints {keypoints.shape} and bbox {bbox.shape}; "
                   f"expected (14, 3) in CrowdPose order and (4,)")
    if not (np.isfinite(keypoints).all() and np.isfinite(bbox).all()):
        raise fail(session, file, f"{where} holds NaN or infinite values")
    return {"keypoints": keypoints, "bbox": bbox.tolist()}
