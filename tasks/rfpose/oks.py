"""COCO keypoint JSON for the 14-keypoint skeleton, and keypoint AP over OKS with pycocotools.

    from tasks.rfpose import oks
    gt = oks.ground_truth_json([{"width": 160, "height": 120, "people": [
        {"keypoints": [[x, y, v]] * 14, "bbox": [x, y, w, h]}]}])
    dt = oks.results_json([{"image_id": 1, "people": [{"keypoints": [[x, y]] * 14, "score": 0.9}]}])
    oks.evaluate(gt, dt)          # {"ap": …, "ap50": …, "ap75": …, "ar": …}, CrowdPose's sigmas

Conventions, each chosen against a pycocotools trap (research note rfpose §4.3):

- Image ids are the record's ``image_id`` when it has one, else its 1-based position; all ≥ 1.
  Annotation ids run 1…N: COCOeval stores 0 for "unmatched", so a GT with id 0 can never match.
- ``area`` (the OKS scale) is ``AREA_FACTOR`` × bbox w × h with ``AREA_FACTOR = 0.53``, the
  CrowdPose / xtcocotools choice for annotations without masks. It changes every number, so it
  is fixed here and nowhere else.
- ``iscrowd`` is 0; ``num_keypoints`` counts v > 0 (pycocotools ignores a GT with none, and a
  detection matched to an ignored GT is neither a hit nor a miss); v = 0 keypoints are written
  as ``0, 0, 0``, COCO's "not labelled".
- A result's keypoints carry flag 1 in the third slot: pycocotools ignores it, xtcocotools drops
  a detection whose flags are all 0. Results carry no ``bbox``: ``loadRes`` would then take the
  detection's area from it instead of from the keypoints' extent. ``score`` is required (it
  ranks detections when several people share an image).
- ``evaluate`` keeps ``maxDets = [20]`` (the keypoint summary reads the 20 column; anything else
  turns every stat into -1), checks that the sigmas match the number of keypoints (COCO's 17
  would otherwise silently broadcast or fail deep inside), answers 0 for an empty result list
  (what COCOeval computes, but ``loadRes([])`` raises), and silences pycocotools' prints.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tasks.errors import BadInput
from tasks.rfpose.skeleton import CROWDPOSE_SIGMAS, KEYPOINTS, K, coco_skeleton

AREA_FACTOR = 0.53  # CrowdPose's computeOks: tmparea = bbox_w * bbox_h * 0.53
CATEGORY_ID = 1
STATS = {"ap": 0, "ap50": 1, "ap75": 2, "ar": 5}  # positions in COCOeval.stats for keypoints


class EvaluationError(BadInput):
    """The ground truth or results cannot be scored as given; the message says why."""


def _keypoints(value, columns: tuple[int, ...], what: str) -> np.ndarray:
    kp = np.asarray(value, dtype=np.float64)
    if kp.ndim != 2 or kp.shape[0] != K or kp.shape[1] not in columns:
        raise EvaluationError(f"{what}: expected {K} keypoints of {' or '.join(map(str, columns))} "
                              f"values, got shape {kp.shape}")
    return kp


def category() -> dict:
    return {"id": CATEGORY_ID, "name": "person", "supercategory": "person",
            "keypoints": list(KEYPOINTS), "skeleton": coco_skeleton()}


def ground_truth_json(records: Iterable[Mapping]) -> dict:
    """A COCO keypoint ground truth from per-image records.

    A record is ``{"width", "height", "people": [{"keypoints": 14×[x, y, v], "bbox": [x, y, w, h]}]}``
    with optional ``"image_id"`` (≥ 1; default: 1-based position) and ``"file_name"``.
    """
    images, annotations = [], []
    for position, record in enumerate(records, start=1):
        image_id = int(record.get("image_id", position))
        if image_id < 1:
            raise EvaluationError(f"image ids must be ≥ 1 (COCOeval reads 0 as unmatched), got {image_id}")
        images.append({"id": image_id, "width": int(record["width"]), "height": int(record["height"]),
                       "file_name": record.get("file_name", f"{image_id:06d}.jpg")})
        for person in record["people"]:
            kp = _keypoints(person["keypoints"], (3,), f"image {image_id}")
            labelled = kp[:, 2] > 0
            kp[~labelled] = 0.0
            x, y, w, h = (float(v) for v in person["bbox"])
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_ID,
                "keypoints": [round(float(v), 3) if i % 3 != 2 else int(v) for i, v in enumerate(kp.ravel())],
                "num_keypoints": int(labelled.sum()), "bbox": [x, y, w, h],
                "area": AREA_FACTOR * w * h, "iscrowd": 0,
            })
    if len({im["id"] for im in images}) != len(images):
        raise EvaluationError("two records share an image id")
    return {"images": images, "annotations": annotations, "categories": [category()]}


def results_json(predictions: Iterable[Mapping]) -> list[dict]:
    """COCO keypoint results from ``{"image_id", "people": [{"keypoints": 14×[x, y(, c)], "score"}]}``."""
    results = []
    for prediction in predictions:
        image_id = int(prediction["image_id"])
        for person in prediction["people"]:
            kp = _keypoints(person["keypoints"], (2, 3), f"prediction for image {image_id}")
            flat = np.column_stack([kp[:, :2], np.ones(K)]).ravel()   # (14, 3) → 42
            results.append({"image_id": image_id, "category_id": CATEGORY_ID,
                            "keypoints": [float(v) for v in flat], "score": float(person["score"])})
    return results


def _check(gt: Mapping, results: Sequence[Mapping], sigmas: np.ndarray) -> None:
    names = gt["categories"][0]["keypoints"]
    if len(sigmas) != len(names):
        raise EvaluationError(f"{len(sigmas)} OKS sigmas for {len(names)} keypoints "
                              f"(COCO's 17 sigmas do not fit the 14-keypoint skeleton)")
    if not any(a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0) for a in gt["annotations"]):
        raise EvaluationError("the ground truth has no annotation with a labelled keypoint: nothing to score")
    known = {im["id"] for im in gt["images"]}
    stray = sorted({r["image_id"] for r in results} - known)
    if stray:
        raise EvaluationError(f"results name images missing from the ground truth: {stray[:5]}")


def evaluate(gt: Mapping, results: Sequence[Mapping], sigmas=CROWDPOSE_SIGMAS,
             image_ids: Iterable[int] | None = None) -> dict[str, float]:
    """AP (OKS 0.50:0.95), AP50, AP75 and AR of ``results`` against ``gt``, by COCOeval.

    ``image_ids`` restricts both sides to a subset (e.g. the through-wall frames).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sigmas = np.asarray(sigmas, dtype=np.float64)
    _check(gt, results, sigmas)
    if not results:
        return {name: 0.0 for name in STATS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dict(gt))     # COCOeval writes "ignore" into the GT dicts
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))  # loadRes writes ids and areas
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.params.maxDets = [20]
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: max(float(evaluator.stats[i]), 0.0) for name, i in STATS.items()}


def mean_pose_baseline(train_people: Iterable[Mapping], n: int, *, score: float = 1.0) -> list[dict]:
    """The RF-blind floor: the mean training skeleton, predicted once in each of ``n`` frames.

    The mean is taken in image pixels, joint by joint over the training people whose joint is
    labelled (v > 0): it knows where people usually stand in this camera and nothing about the
    frame at hand, which is what a model must beat. Predictions go to image ids 1…n, the ids
    ``ground_truth_json`` gives records without their own, each with the constant ``score``.
    """
    total, count = np.zeros((K, 2)), np.zeros(K)
    for person in train_people:
        kp = _keypoints(person["keypoints"], (3,), "training person")
        labelled = kp[:, 2] > 0
        total[labelled] += kp[labelled, :2]
        count += labelled
    if (count == 0).any():
        missing = [KEYPOINTS[i] for i in np.flatnonzero(count == 0)]
        raise EvaluationError(f"no training person has a labelled {', '.join(missing)}")
    mean = (total / count[:, None]).tolist()
    return [{"image_id": i, "people": [{"keypoints": mean, "score": score}]} for i in range(1, n + 1)]
