"""Confidence maps and keypoints: the teacher's people rendered as Gaussians at the student's map
resolution (in the loader, never stored), and the student's maps decoded back into people.

Map coordinates: pixel (x, y) of an ``h × w`` map is image pixel ``(x · W / w, y · H / h)`` of
the camera's ``W × H`` frame; the student's maps are half the RF heatmap's side.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tasks.rfpose.skeleton import INDEX, K

SIGMA = 1.0  # map pixels: the Gaussian of each teacher keypoint
PEAK = 0.1  # a map value below this is no keypoint
MAX_PEOPLE = 4  # people per frame kept in a batch (the simulator draws 1–3, RF-Pose averages 1.6)
ANCHOR = INDEX["neck"]  # each person is grown from a neck peak; the head where no neck shows


def render(keypoints: np.ndarray, map_hw: tuple[int, int], image_wh: tuple[int, int]) -> np.ndarray:
    """(P, 14, 3) keypoints in image pixels (v > 0 and finite: present) → (14, h, w) maps, the
    per-pixel maximum over people of a Gaussian of ``SIGMA`` map pixels."""
    h, w = map_hw
    out = np.zeros((K, h, w), np.float32)
    if keypoints.size == 0:
        return out
    sx, sy = w / image_wh[0], h / image_wh[1]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for person in keypoints:
        for k, (x, y, v) in enumerate(person):
            if not (np.isfinite(x) and np.isfinite(y) and v > 0):
                continue
            g = np.exp(-((xs - x * sx) ** 2 + (ys - y * sy) ** 2) / (2 * SIGMA**2))
            np.maximum(out[k], g, out=out[k])
    return out


def peaks(maps: torch.Tensor, threshold: float = PEAK) -> list[list[tuple[float, float, float]]]:
    """(14, h, w) probabilities → per keypoint, the local maxima (3×3) above ``threshold`` as
    (x, y, value), strongest first, each refined to a fraction of a map pixel."""
    pooled = F.max_pool2d(maps[None], 3, stride=1, padding=1)[0]
    found = (maps == pooled) & (maps > threshold)
    logs = maps.clamp(min=1e-6).log()
    out = []
    for k in range(maps.shape[0]):
        ys, xs = torch.nonzero(found[k], as_tuple=True)
        values = maps[k, ys, xs]
        order = torch.argsort(values, descending=True)
        out.append([(float(xs[i]) + offset(logs[k, ys[i]], int(xs[i])),
                     float(ys[i]) + offset(logs[k, :, xs[i]], int(ys[i])), float(values[i])) for i in order])
    return out


def offset(line: torch.Tensor, i: int) -> float:
    """Sub-pixel position of the peak at ``line[i]`` (log values): the vertex of the parabola
    through it and its neighbours, exact for a Gaussian; 0 at an edge."""
    if i == 0 or i == len(line) - 1:
        return 0.0
    left, centre, right = float(line[i - 1]), float(line[i]), float(line[i + 1])
    curve = left - 2 * centre + right
    return 0.0 if curve >= 0 else max(-0.5, min(0.5, 0.5 * (left - right) / curve))


def people(maps: torch.Tensor, image_wh: tuple[int, int], threshold: float = PEAK) -> list[dict]:
    """(14, h, w) probabilities → people in image pixels: one per neck peak (head peaks where no
    neck was found), each keypoint the nearest unclaimed peak of its map (Euclidean distance,
    RF-Pose's association in place of OpenPose's part affinities), or the anchor itself with
    score 0 where its map has none left. Score: the mean of the keypoints' peak values."""
    h, w = maps.shape[-2:]
    candidates = peaks(maps, threshold)
    anchors = candidates[ANCHOR] or candidates[INDEX["head"]]
    found = []
    taken = [set() for _ in range(K)]
    for ax, ay, _ in anchors[:MAX_PEOPLE]:
        keypoints, values = [], []
        for k in range(K):
            best, best_d = None, None
            for j, (x, y, v) in enumerate(candidates[k]):
                d = (x - ax) ** 2 + (y - ay) ** 2
                if j not in taken[k] and (best_d is None or d < best_d):
                    best, best_d = j, d
            if best is None:
                keypoints.append((ax, ay))
                values.append(0.0)
            else:
                taken[k].add(best)
                x, y, v = candidates[k][best]
                keypoints.append((x, y))
                values.append(v)
        sx, sy = image_wh[0] / w, image_wh[1] / h
        found.append({"keypoints": [[x * sx, y * sy] for x, y in keypoints], "score": float(np.mean(values))})
    return found
