"""The RF-Pose student recipes (Zhao et al., "Through-Wall Human Pose Estimation Using Radio
Signals", CVPR 2018), as the one engine trains them.

    visionflow pipeline rfpose --simulate 24
    visionflow train --recipe rfpose_student --data ~/.visionflow/datasets/rfpose/v1 --width 0.25

Two recipes, one loss and evaluation, two students (``models.rfpose``):

- ``rfpose_student`` (the pipeline's): ``RangeMatchedStudent``. The paper's two spatio-temporal
  RF encoders (horizontal and vertical windows), striding range only, joined where a reflector
  shows in both planes (same range), warped from azimuth × elevation to the image and decoded by
  a small head. Takes range × angle heatmaps with 64 azimuth and 64 elevation bins (the
  simulator's default grid; HuPR's planes).
- ``rfpose_student_paper``: ``RFPoseStudent``, the paper's encoder–decoder (H/32 bottleneck,
  fractionally strided decoder), any heatmap grid; for the paper's data and GPUs.

Both: per-pixel binary cross-entropy against the teacher's maps, averaged over the frames a
camera frame labelled (the others are input only: cameras run slower than radios); Adam. The
paper's batch, LR and schedule are not in the text read (research notes: "recall, unverified");
the recipes use Adam 1e-3 at batch 8 with a cosine decay to 5 %. Evaluation: keypoints decoded
from the maps, one person per neck peak, AP over OKS with CrowdPose's 14 sigmas
(``tasks/rfpose/evaluator.py``).
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch
import torch.nn.functional as F

from tasks.rfpose import maps
from tasks.rfpose.evaluator import SCENES, PoseEvaluator
from tasks.train.recipe import Optimizer, Recipe
from tasks.train.schedules import Phase, Schedule


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def two_channels(frames: torch.Tensor) -> torch.Tensor:
    """(re, im) as they are; a power-only recording's one channel, with zeros for the second."""
    return frames if frames.shape[0] == 2 else torch.cat([frames, torch.zeros_like(frames)])


def decode(sample: dict) -> tuple:
    """A window → (horizontal, vertical (C, T, H, W) float32, teacher maps (14, T, H/2, W/2),
    teacher keypoints (T, MAX_PEOPLE, 14, 3) and bboxes (T, MAX_PEOPLE, 4), NaN-padded,
    labelled (T,), scene index, image size)."""
    meta = json.loads(sample["json"])
    hori, vert = (two_channels(torch.from_numpy(_npy(sample[k]).astype(np.float32))) for k in ("hori.npy", "vert.npy"))
    kp = _npy(sample["kp.npy"]).astype(np.float32)  # (T, P, 14, 3)
    labelled = _npy(sample["labelled.npy"]).astype(bool)
    _, t, h, w = hori.shape
    image = tuple(meta["image"])
    teacher = np.stack([maps.render(kp[f], (h // 2, w // 2), image) for f in range(t)], axis=1)
    bbox = _npy(sample["bbox.npy"]).astype(np.float32)  # (T, P, 4)
    people = np.full((t, maps.MAX_PEOPLE, kp.shape[2], 3), np.nan, np.float32)
    boxes = np.full((t, maps.MAX_PEOPLE, 4), np.nan, np.float32)
    people[:, : kp.shape[1]] = kp[:, : maps.MAX_PEOPLE]
    boxes[:, : bbox.shape[1]] = bbox[:, : maps.MAX_PEOPLE]
    return (hori, vert, torch.from_numpy(teacher), torch.from_numpy(people), torch.from_numpy(boxes),
            torch.from_numpy(labelled), SCENES.index(meta["scene"]), torch.tensor(image))


def decoder(phase: Phase, train: bool):
    return decode


def to_device(batch, device: torch.device):
    hori, vert, teacher, kp, bbox, labelled, scene, image = batch
    return ((hori.to(device, non_blocking=True), vert.to(device, non_blocking=True)),
            (teacher.to(device), labelled.to(device), kp, bbox, scene, image))


def masked_bce(logits: torch.Tensor, targets) -> torch.Tensor:
    """The paper's per-pixel BCE on the labelled frames only: (B, 14, T, h, w) logits."""
    teacher, labelled = targets[0], targets[1]
    per_frame = F.binary_cross_entropy_with_logits(logits, teacher.to(logits.dtype), reduction="none").mean(dim=(1, 3, 4))
    weight = labelled.to(per_frame.dtype)  # (B, T)
    return (per_frame * weight).sum() / weight.sum().clamp(min=1.0)


def loss(device: torch.device):
    return masked_bce


def example_input(kwargs: dict, phase: Phase) -> tuple[torch.Tensor, ...]:
    c = kwargs.get("in_channels", 2)
    return torch.zeros(2, c, 8, 64, 64), torch.zeros(2, c, 8, 64, 64)


_COMMON = dict(
    experiment="rfpose",
    # complex heatmaps as (re, im) channels, as RF-Pose feeds them
    model_kwargs=lambda manifest, width: {"in_channels": 2, "width": width},
    decoder=decoder, to_device=to_device, loss=loss, evaluator=PoseEvaluator, example_input=example_input,
    optimizer=Optimizer("adam"), lr=1e-3, epochs=10, batch_size=8, select="ap", val_split="val",
    schedule=Schedule("cosine", min_factor=0.05))  # our choice: the paper's schedule is not in the text read

# The default student joins the two planes by range (``RangeMatchedStudent``): range × angle
# heatmaps with 64 angle bins (the simulator's default grid, HuPR's 64 × 64 planes).
RFPOSE_STUDENT = Recipe("rfpose_student", model="rfpose_range_matched", **_COMMON)
# The paper's encoder–decoder (``RFPoseStudent``), for data and GPUs at the paper's scale.
RFPOSE_STUDENT_PAPER = Recipe("rfpose_student_paper", model="rfpose_student", **_COMMON)
