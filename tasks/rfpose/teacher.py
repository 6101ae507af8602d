"""Teachers: the people in each RGB frame, as 14 keypoints + a bbox in image pixels.

    from tasks.rfpose import teacher
    people = teacher.from_keypoints_json("sessions/s000")          # list over RGB frames
    people = teacher.keypoint_rcnn(sorted(Path("s000/rgb").glob("*.jpg")),
                                   weights="keypointrcnn_resnet50_fpn_coco-fc266e95.pth")

Every teacher returns one list per RGB frame (in frame order) of people
``{"keypoints": 14×[x, y, v], "bbox": [x, y, w, h], "score": float}`` in CrowdPose's keypoint
order (``skeleton.KEYPOINTS``); v = 2 a keypoint the teacher vouches for, 1 labelled but occluded,
0 not to be used. RF-Pose's teacher was OpenPose on the camera image (research note §1.2); here
the simulator's ground truth (``keypoints.json``) stands in for a perfect teacher, and
torchvision's Keypoint R-CNN for a real one.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.errors import BadInput
from tasks.rfpose.skeleton import K, from_coco17

WEIGHTS_URL = "https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
# Keypoint R-CNN's people: keep a detection whose box score reaches SCORE_THRESHOLD (pseudo-labels
# should rather miss a person than invent one); its keypoint scores are heatmap logits, and a
# keypoint under KEYPOINT_THRESHOLD (Detectron's kp_thresh for drawing keypoints) gets v = 0.
SCORE_THRESHOLD = 0.9
KEYPOINT_THRESHOLD = 2.0


class TeacherError(BadInput):
    """A teacher cannot label these frames as asked; the message says what to supply."""


def _person(keypoints, bbox, score: float, where: str) -> dict:
    kp = np.asarray(keypoints, dtype=np.float64)
    box = np.asarray(bbox, dtype=np.float64)
    if kp.shape != (K, 3) or box.shape != (4,):
        raise TeacherError(f"{where}: expected {K}×[x, y, v] keypoints and an [x, y, w, h] bbox, "
                           f"got shapes {kp.shape} and {box.shape}")
    return {"keypoints": kp.tolist(), "bbox": box.tolist(), "score": float(score)}


def from_keypoints_json(session_dir) -> list[list[dict]]:
    """The labels a session ships in ``keypoints.json`` (the simulator's exact ground truth)."""
    session = Path(session_dir)
    path = session / "keypoints.json"
    try:
        frames = json.loads(path.read_text())["frames"]
        count = len(np.load(session / "rgb" / "timestamps.npy", allow_pickle=False))
    except FileNotFoundError as exc:
        raise TeacherError(f"{session}: no {Path(exc.filename).relative_to(session)}; "
                           "a session needs keypoints.json and rgb/timestamps.npy") from None
    except (KeyError, ValueError) as exc:
        raise TeacherError(f"{path}: not a keypoints.json with a 'frames' list ({exc})") from None
    people: list[list[dict]] = [[] for _ in range(count)]
    for entry in frames:
        i = int(entry["frame"])
        if not 0 <= i < count:
            raise TeacherError(f"{path}: frame {i} is outside the session's {count} RGB frames")
        people[i] = [_person(p["keypoints"], p["bbox"], p.get("score", 1.0), f"{path} frame {i}")
                     for p in entry["people"]]
    return people


def _load_keypoint_rcnn(weights):
    hint = (f"download torchvision's COCO Keypoint R-CNN weights ({WEIGHTS_URL}) "
            "and pass the local file as weights=")
    if weights is None:
        raise TeacherError(f"keypoint_rcnn needs a local weights file: {hint}")
    path = Path(weights)
    if not path.is_file():
        raise TeacherError(f"no Keypoint R-CNN weights at {path}: {hint}")
    import torch
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise TeacherError(f"{path} is not a keypointrcnn_resnet50_fpn state dict ({str(exc)[:200]}); {hint}") from None
    return model.eval()


def _labels(output: dict, score_threshold: float, keypoint_threshold: float) -> list[dict]:
    keep = output["scores"] >= score_threshold
    kp17 = output["keypoints"][keep].numpy().astype(np.float64)           # (P, 17, 3), v = 1
    kp17[..., 2] = np.where(output["keypoints_scores"][keep].numpy() >= keypoint_threshold, 2.0, 0.0)
    kp14 = from_coco17(kp17)                                              # (P, 14, 3)
    boxes = output["boxes"][keep].numpy().astype(np.float64)              # (P, 4) x1 y1 x2 y2
    scores = output["scores"][keep].numpy()
    return [_person(kp, [b[0], b[1], b[2] - b[0], b[3] - b[1]], s, "keypoint_rcnn")
            for kp, b, s in zip(kp14, boxes, scores)]


def keypoint_rcnn(rgb_paths: Sequence, *, weights=None, score_threshold: float = SCORE_THRESHOLD,
                  keypoint_threshold: float = KEYPOINT_THRESHOLD, batch_size: int = 4,
                  device: str = "cpu") -> list[list[dict]]:
    """torchvision's Keypoint R-CNN (COCO-17, mapped to the 14) on each image, from local weights.

    There is no fallback: without a weights file this raises ``TeacherError`` saying where to
    get one, because a silently different teacher would change every label downstream.
    """
    model = _load_keypoint_rcnn(weights).to(device)
    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    people: list[list[dict]] = []
    with torch.inference_mode():
        for start in range(0, len(rgb_paths), batch_size):
            batch = []
            for path in rgb_paths[start:start + batch_size]:
                with Image.open(path) as image:
                    batch.append(pil_to_tensor(image.convert("RGB")).to(device, torch.float32) / 255)
            for output in model(batch):
                people.append(_labels({k: v.cpu() for k, v in output.items()}, score_threshold, keypoint_threshold))
    return people
