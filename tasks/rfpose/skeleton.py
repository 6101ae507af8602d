"""The 14-keypoint skeleton RF-Pose predicts, in CrowdPose's order, and the way from COCO's 17.

    from tasks.rfpose import skeleton
    skeleton.KEYPOINTS[12]               # "head"
    skeleton.CROWDPOSE_SIGMAS            # (14,) OKS sigmas, the evaluation's default
    skeleton.from_coco17(kp17)           # (..., 17, 3) → (..., 14, 3)

RF-Pose's 14 keypoints are CrowdPose's set (research note rfpose §1.2): head and neck take the
place of COCO's five face points. The order is CrowdPose's ``crowdpose_val.json`` (§4.1); its
``skeleton`` field was copied from COCO and names keypoints 16 and 17, so ``LIMBS`` is written
here instead. The sigmas are the ones CrowdPose's ``computeOks`` hard-codes (§4.2): COCO's
values for the twelve body joints, 0.079 for head and neck.
"""

from __future__ import annotations

import numpy as np

KEYPOINTS = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "head", "neck",
)
K = len(KEYPOINTS)
INDEX = {name: i for i, name in enumerate(KEYPOINTS)}

# 0-based pairs of KEYPOINTS; COCO's "skeleton" field wants them 1-based (see coco_skeleton).
LIMBS = (
    (12, 13),                    # head–neck
    (13, 0), (13, 1),            # neck–shoulders
    (0, 2), (2, 4),              # left arm
    (1, 3), (3, 5),              # right arm
    (0, 6), (1, 7), (6, 7),      # torso sides, pelvis
    (6, 8), (8, 10),             # left leg
    (7, 9), (9, 11),             # right leg
)

CROWDPOSE_SIGMAS = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79]) / 10.0
CROWDPOSE_SIGMAS.setflags(write=False)

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                        1.07, 1.07, .87, .87, .89, .89]) / 10.0
COCO_SIGMAS.setflags(write=False)

_COCO = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
_BODY = [(INDEX[n], _COCO[n]) for n in KEYPOINTS if n in _COCO]  # the twelve joints both sets name
_HEAD_FROM = [_COCO["nose"], _COCO["left_eye"], _COCO["right_eye"]]
_NECK_FROM = [_COCO["left_shoulder"], _COCO["right_shoulder"]]


def coco_skeleton() -> list[list[int]]:
    """``LIMBS`` 1-based, as a COCO category's ``skeleton`` field."""
    return [[a + 1, b + 1] for a, b in LIMBS]


def from_coco17(keypoints) -> np.ndarray:
    """COCO-17 keypoints ``(..., 17, 3)`` → CrowdPose-14 ``(..., 14, 3)``.

    The third column is a visibility flag or a confidence, 0 meaning "absent". The twelve body
    joints are copied by name. The head is the mean of the nose and eyes that are present, with
    the largest of their flags (CrowdPose's head is the top of the head, a little above this;
    no COCO point marks it). The neck is the shoulders' midpoint when both are present, with the
    smaller flag. A joint with nothing to build it from is ``(0, 0, 0)``.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape[-2:] != (len(COCO_KEYPOINTS), 3):
        raise ValueError(f"expected (..., 17, 3) COCO keypoints, got shape {kp.shape}")
    out = np.zeros(kp.shape[:-2] + (K, 3))
    for ours, theirs in _BODY:
        out[..., ours, :] = kp[..., theirs, :]

    face = kp[..., _HEAD_FROM, :]                          # (..., 3 points, 3)
    present = face[..., 2] > 0
    count = present.sum(axis=-1)
    xy = (face[..., :2] * present[..., None]).sum(axis=-2) / np.maximum(count, 1)[..., None]
    out[..., INDEX["head"], :2] = np.where(count[..., None] > 0, xy, 0.0)
    out[..., INDEX["head"], 2] = np.where(count > 0, face[..., 2].max(axis=-1), 0.0)

    shoulders = kp[..., _NECK_FROM, :]
    both = (shoulders[..., 2] > 0).all(axis=-1)
    out[..., INDEX["neck"], :2] = np.where(both[..., None], shoulders[..., :2].mean(axis=-2), 0.0)
    out[..., INDEX["neck"], 2] = np.where(both, shoulders[..., 2].min(axis=-1), 0.0)
    return out
