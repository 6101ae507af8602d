"""The RF-Pose evaluator: people decoded from the student's maps on every labelled frame, scored
with pycocotools' keypoint AP over OKS and CrowdPose's 14 sigmas (``tasks/rfpose/oks.py``),
overall and per scene.

    evaluator.update(logits, (teacher, labelled, keypoints, bboxes, scene, image), inputs)
    evaluator.compute()     # {"ap", "ap50", "ap75", "ar", "visible/ap", "through-wall/ap", …}
    evaluator.artifacts()   # ground_truth.json (COCO), predictions.json (COCO results), strip.png

AP is not a sum over samples, so every rank's per-frame records are gathered before scoring;
each labelled frame of each window is one COCO image (ids 1…N in the gathered order).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from tasks.rfpose import maps, oks
from tasks.rfpose.skeleton import LIMBS
from tasks.track.plots import figure_png, pyplot
from tasks.train.evaluator import gather_across_ranks
from tasks.train.recipe import EvalContext

SCENES = ("visible", "through-wall")
STRIP = 6  # frames in the strip artifact


class PoseEvaluator:
    def __init__(self, ctx: EvalContext):
        self.detailed = ctx.detailed
        self.records: list[dict] = []
        self.strip: list[dict] = []
        self.gt: dict | None = None
        self.results: list[dict] = []

    def update(self, logits: torch.Tensor, targets: tuple, inputs: tuple) -> None:
        _, labelled, keypoints, bboxes, scene, image = targets
        probs = logits.float().sigmoid().cpu()  # (B, 14, T, h, w)
        labelled = labelled.cpu()
        for b in range(probs.shape[0]):
            wh = tuple(int(v) for v in image[b])
            for t in torch.nonzero(labelled[b]).flatten().tolist():
                truth = present(keypoints[b, t].numpy(), bboxes[b, t].numpy())
                predicted = maps.people(probs[b, :, t], wh)
                self.records.append({"scene": SCENES[int(scene[b])], "width": wh[0], "height": wh[1],
                                     "people": [person_record(p, box) for p, box in truth], "pred": predicted})
                if self.detailed and len(self.strip) < STRIP:
                    self.strip.append({"hori": magnitude(inputs[0][b, :, t]), "vert": magnitude(inputs[1][b, :, t]),
                                       "map": probs[b, :, t].amax(0).numpy(), "truth": [p for p, _ in truth],
                                       "pred": predicted,
                                       "image": wh, "scene": SCENES[int(scene[b])]})

    def compute(self) -> dict[str, float]:
        records = gather_across_ranks(self.records)
        self.gt = oks.ground_truth_json(records)
        self.results = oks.results_json({"image_id": i, "people": r["pred"]} for i, r in enumerate(records, 1))
        out = score(self.gt, self.results, "")
        for scene in SCENES:
            ids = [i for i, r in enumerate(records, 1) if r["scene"] == scene]
            if ids:
                out.update(score(self.gt, self.results, f"{scene}/", ids))
        return out

    def artifacts(self) -> dict[str, bytes]:
        out = {}
        if self.gt is not None:
            out["ground_truth.json"] = json.dumps(self.gt).encode()
            out["predictions.json"] = json.dumps(self.results).encode()
        if self.strip:
            out["strip.png"] = strip_png(self.strip)
        return out


def present(keypoints: np.ndarray, bboxes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (keypoints (14, 3), bbox (4,)) of the people a frame holds (padding rows are NaN)."""
    return [(p, box) for p, box in zip(keypoints, bboxes) if np.isfinite(p[:, :2]).all(axis=1).any()]


def person_record(keypoints: np.ndarray, bbox: np.ndarray) -> dict:
    """A teacher person → COCO's record: keypoints with v = 0 where unknown, and the teacher's
    bbox, whose area (0.53 × w × h) is the OKS scale."""
    kp = np.nan_to_num(keypoints, nan=0.0)
    kp[~np.isfinite(keypoints).all(axis=1), 2] = 0
    return {"keypoints": kp.tolist(), "bbox": [float(v) for v in bbox]}


def score(gt: dict, results: list, prefix: str, ids: list[int] | None = None) -> dict[str, float]:
    try:
        values = oks.evaluate(gt, results, image_ids=ids)
    except oks.EvaluationError:  # no labelled person in these frames: nothing to score
        values = {name: 0.0 for name in oks.STATS}
    return {f"{prefix}{k}": v for k, v in values.items()}


def magnitude(frames: torch.Tensor) -> np.ndarray:
    """(C, H, W) heatmap channels (re, im) → |z|."""
    return frames.float().pow(2).sum(0).sqrt().cpu().numpy()


def strip_png(frames: list[dict]) -> bytes:
    """Per frame: the horizontal and vertical RF heatmaps, and the predicted maps (max over the 14)
    with the teacher's skeletons (green) and the decoded ones (red), in map coordinates."""
    plt = pyplot()
    fig, axes = plt.subplots(3, len(frames), figsize=(2.2 * len(frames), 6.6), squeeze=False)
    for c, f in enumerate(frames):
        axes[0, c].imshow(f["hori"], cmap="magma", origin="lower")
        axes[0, c].set_title(f"{f['scene']}\nhorizontal (x–depth)", fontsize=7)
        axes[1, c].imshow(f["vert"], cmap="magma", origin="lower")
        axes[1, c].set_title("vertical (height–depth)", fontsize=7)
        h, w = f["map"].shape
        axes[2, c].imshow(f["map"], cmap="gray", vmin=0, vmax=1)
        sx, sy = w / f["image"][0], h / f["image"][1]
        for person, colour in [(p[:, :2], "lime") for p in f["truth"]] + \
                              [(np.array(p["keypoints"]), "red") for p in f["pred"]]:
            for a, b in LIMBS:
                axes[2, c].plot([person[a, 0] * sx, person[b, 0] * sx], [person[a, 1] * sy, person[b, 1] * sy],
                                color=colour, linewidth=1)
        axes[2, c].set_title("maps: teacher green, student red", fontsize=7)
        for ax in axes[:, c]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return figure_png(fig)
