"""HuPR (Lee et al., WACV 2023) sequences → ``Session`` objects, so its data runs through the
same sync and windows as an RF-Pose recording.

    sessions = read_hupr("data/HuPR", "test")                    # the release's 21 test sequences
    sessions = read_hupr(root, "val", sequences=[1, 14])         # a custom split list

Layout (research note rfpose §2.2)::

    <root>/hrnet_annot_<split>.json
    <root>/single_<k>/hori/%09d.npy      one complex frame per file, (D, R, A, E) = (16, 64, 64, 8)
    <root>/single_<k>/vert/%09d.npy      same shape; the sensor is rotated, so its A axis is elevation

The annotation file is HuPR's own: a list over the split's sequences, in the order of the
config's ``<split>Name`` list (``sequences``; by default the release's ``mscsa_prgcn.yaml``
lists, below), each a list of ``{"image": "000000123.jpg", "joints": [[x, y] × 14],
"bbox": [x0, y0, x1, y1]}`` in the 256×256 camera frame. Its COCO form (``generateGTAnnot``:
``images`` / ``annotations``, ``image_id = frame + 100000 × sequence``, flat keypoints, xywh
bbox) reads too. Keypoints come in HuPR's order and leave in CrowdPose's (``HUPR_TO_CROWDPOSE``);
HuPR's teacher gives no visibility, so v = 2 for every joint.

Radar and camera run at 10 fps on one clock and are paired by frame number, so each session has
``clock_offset_s = 0`` and ``rgb_t = rf_t = frame / 10``; a missing frame file becomes a gap for
sync to find. The release has no camera images in this layout (``visualization/`` holds plots),
so ``rgb_paths`` is empty.

Each (D, R, A, E) frame becomes one 2-D plane per radar, range × azimuth for ``hori`` and range ×
elevation for ``vert`` (both are the file's (R, A) plane), by ``reduce``:

- ``"power"`` (default): Σ |x|² over Doppler and the file's E axis → (1, R, A);
- ``"complex"``: HuPR's loader keeps the middle half of the Doppler bins (4…11 of 16) and its
  network first averages over elevation; averaging those bins and E too leaves a complex
  (R, A) plane → (2, R, A) re/im. Coherent averaging cancels moving reflectors, so power is the
  default.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tasks.rfpose.sessions import Session, SessionError, fail, first_non_finite, load_npy
from tasks.rfpose.skeleton import KEYPOINTS, K

FPS = 10.0
IMAGE_SIZE = 256
SEQUENCE_ID = 100000  # generateGTAnnot: image_id = frame + sequence × 100000
HUPR_KEYPOINTS = ("R_Hip", "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "Neck", "Head",
                  "L_Shoulder", "L_Elbow", "L_Wrist", "R_Shoulder", "R_Elbow", "R_Wrist")


def _crowdpose_name(hupr: str) -> str:
    return hupr.lower().replace("r_", "right_").replace("l_", "left_")


# crowdpose[i] = hupr[HUPR_TO_CROWDPOSE[i]]
HUPR_TO_CROWDPOSE = np.array([[_crowdpose_name(n) for n in HUPR_KEYPOINTS].index(name) for name in KEYPOINTS])

# The release config (config/mscsa_prgcn.yaml, trainName / valName / testName): the order of
# the lists in hrnet_annot_<split>.json.
SPLITS = {
    "test": [15, 16, 38, 40, 41, 42, 17, 39, 244, 245, 246, 249, 250, 251, 252, 253, 254, 247, 248, 255, 256],
    "val": [1, 14, 34, 57, 65, 98, 56, 99, 159, 178, 101, 120, 137, 156, 161, 164, 181, 194, 197, 205, 257],
    "train": [
        2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 33, 35, 36,
        37, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 58, 59, 60, 61, 62, 63, 64, 66, 71, 73, 74, 75, 76, 77, 78,
        79, 80, 81, 83, 84, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 31, 32, 53, 54, 55, 67, 68, 69, 70, 72,
        85, 86, 100, 157, 158, 160, 167, 168, 169, 170, 177, 179, 180, 187, 188, 189, 190, 228, 229, 230, 259,
        260, 263, 264, 269, 270, 273, 274, 102, 103, 104, 105, 106, 107, 108, 109, 110, 119, 121, 122, 123, 124,
        133, 134, 135, 138, 147, 148, 149, 150, 151, 152, 153, 154, 155, 162, 163, 165, 166, 171, 172, 173, 174,
        175, 176, 182, 183, 184, 185, 186, 191, 192, 193, 195, 196, 198, 199, 200, 201, 202, 203, 204, 206, 207,
        208, 209, 210, 211, 212, 213, 215, 216, 223, 224, 225, 226, 231, 232, 233, 234, 235, 236, 258, 261, 262,
        265, 266, 267, 268, 271, 272, 275, 276,
    ],
}
REDUCTIONS = ("power", "complex")


def read_hupr(root: Path, split: str, sequences: list[int] | None = None, reduce: str = "power") -> list[Session]:
    root = Path(root).resolve()
    if reduce not in REDUCTIONS:
        raise SessionError(f"HuPR {root}: reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    people = split_annotations(root, split, sequences)
    return [read_sequence(root / f"single_{k}", people[k], reduce) for k in sorted(people)]


def split_annotations(root: Path, split: str, sequences=None) -> dict[int, dict[int, list[dict]]]:
    """``hrnet_annot_<split>.json`` read and checked: sequence → frame → people."""
    file = f"hrnet_annot_{split}.json"
    try:
        doc = json.loads((root / file).read_text())
    except FileNotFoundError:
        raise SessionError(f"HuPR {root}: {file}: missing") from None
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError, a 5000-digit number
        raise SessionError(f"HuPR {root}: {file}: cannot read as JSON ({str(exc).split(';')[0]})") from None
    except RecursionError:
        raise SessionError(f"HuPR {root}: {file}: cannot read as JSON (nested too deeply)") from None
    return read_annotations(root, file, doc, split, sequences)


def read_annotations(root: Path, file: str, doc, split: str, sequences) -> dict[int, dict[int, list[dict]]]:
    """sequence → frame number → people (CrowdPose order, xywh bbox)."""
    where = f"HuPR {root}: {file}"
    out: dict[int, dict[int, list[dict]]] = {}
    try:
        if isinstance(doc, dict):  # the COCO form
            for a in doc["annotations"]:
                seq, frame = sequence_frame(where, a["image_id"])
                if sequences is None or seq in sequences:
                    kp = np.asarray(a["keypoints"], dtype=np.float32).reshape(K, 3)
                    out.setdefault(seq, {}).setdefault(frame, []).append(person(where, kp, list(map(float, a["bbox"]))))
            return out
        order = SPLITS.get(split) if sequences is None else list(sequences)
        if order is None:
            raise SessionError(f"{where}: no release split named {split!r}; pass sequences=[…]")
        if not isinstance(doc, list) or len(doc) != len(order):
            raise SessionError(f"{where}: {len(doc) if isinstance(doc, list) else 'not a'} list of sequences "
                               f"for the {len(order)} in the split list")
        for seq, blocks in zip(order, doc):
            frames = out.setdefault(seq, {})
            for b in blocks:
                xy = np.asarray(b["joints"], dtype=np.float32).reshape(K, 2)
                x0, y0, x1, y1 = map(float, b["bbox"])
                kp = np.concatenate([xy, np.full((K, 1), 2.0, np.float32)], axis=1)
                frames.setdefault(int(Path(b["image"]).stem), []).append(person(where, kp, [x0, y0, x1 - x0, y1 - y0]))
    except SessionError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf), a 400-digit number
        raise SessionError(f"{where}: not HuPR's annotation format ({type(exc).__name__}: {exc})") from None
    return out


def sequence_frame(where: str, image_id) -> tuple[int, int]:
    """generateGTAnnot's ``image_id`` → (sequence, frame); refused when negative or when the
    sequence would not fit a folder name (``single_<400 digits>``)."""
    image_id = int(image_id)
    if not 0 <= image_id < SEQUENCE_ID ** 2:
        digits = str(image_id)
        raise SessionError(f"{where}: image_id {digits if len(digits) < 20 else digits[:12] + '…'} "
                           f"is not sequence × {SEQUENCE_ID} + frame")
    return divmod(image_id, SEQUENCE_ID)


def person(where: str, hupr_keypoints: np.ndarray, bbox: list[float]) -> dict:
    if len(bbox) != 4:
        raise SessionError(f"{where}: a bbox of {len(bbox)} numbers, expected 4")
    if not (np.isfinite(hupr_keypoints).all() and np.isfinite(bbox).all()):
        raise SessionError(f"{where}: keypoints or bbox hold NaN or infinite values")
    return {"keypoints": hupr_keypoints[HUPR_TO_CROWDPOSE], "bbox": bbox}


def read_sequence(path: Path, labels: dict[int, list[dict]], reduce: str) -> Session:
    name = path.name
    hori, vert = frame_files(name, path, "hori"), frame_files(name, path, "vert")
    if sorted(hori) != sorted(vert):
        odd = sorted(set(hori) ^ set(vert))[0]
        raise fail(name, "hori/, vert/", f"frame {odd:09d} is in one folder only")
    frames = np.array(sorted(hori))
    position = {int(f): i for i, f in enumerate(frames)}
    missing = sorted(set(labels) - set(position))
    if missing:
        raise fail(name, "hrnet annotations", f"frame {missing[0]} is labelled but has no radar file")
    t = frames / FPS
    return Session(
        name=name, path=path, scene="visible", rf_fps=FPS, rgb_fps=FPS, width=IMAGE_SIZE,
        height=IMAGE_SIZE, clock_offset_s=0.0,
        horizontal=planes(name, path, "hori", [hori[f] for f in frames], reduce),
        vertical=planes(name, path, "vert", [vert[f] for f in frames], reduce),
        rf_t=t, rgb_t=t.copy(), rgb_paths=[],
        labels={position[f]: people for f, people in labels.items()})


def frame_files(name: str, path: Path, folder: str) -> dict[int, Path]:
    files: dict[int, Path] = {}
    for p in sorted((path / folder).glob("*.npy")):
        if not (p.stem.isascii() and p.stem.isdigit()):  # "²".isdigit(), yet int("²") fails
            continue
        if int(p.stem) in files:
            raise fail(name, f"{folder}/", f"{files[int(p.stem)].name} and {p.name} are both frame {int(p.stem)}")
        files[int(p.stem)] = p
    if not files:
        raise fail(name, f"{folder}/", "no %09d.npy frames" if (path / folder).is_dir() else "missing")
    return files


def planes(name: str, path: Path, folder: str, files: list[Path], reduce: str) -> np.ndarray:
    """(N, C, R, A) float32, one reduced plane per frame file."""
    out, shape = None, None
    for i, p in enumerate(files):
        file = f"{folder}/{p.name}"
        x = load_npy(name, p, file)
        if x.ndim != 4 or not np.iscomplexobj(x):
            raise fail(name, file, f"shape {x.shape} dtype {x.dtype}; expected a complex (D, R, A, E) frame")
        if x.size == 0:
            raise fail(name, file, f"shape {x.shape} is empty")
        if shape is None:
            shape = x.shape
        elif x.shape != shape:
            raise fail(name, file, f"shape {x.shape} differs from the first frame's {shape}")
        plane = reduce_frame(np.asarray(x), reduce)
        if out is None:
            out = np.empty((len(files), *plane.shape), np.float32)
        out[i] = plane
        if first_non_finite(out[i:i + 1]) is not None:
            raise fail(name, file, "holds NaN or infinite values")
    return out


def reduce_frame(x: np.ndarray, reduce: str) -> np.ndarray:
    """(D, R, A, E) complex → (1, R, A) power or (2, R, A) re/im (module docstring)."""
    if reduce == "power":
        return (x.real ** 2 + x.imag ** 2).sum(axis=(0, 3))[None]
    d = x.shape[0]
    mean = x[d // 4: d - d // 4].mean(axis=(0, 3))
    return np.stack([mean.real, mean.imag])
