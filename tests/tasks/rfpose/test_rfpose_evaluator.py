"""Confidence maps rendered from teacher people decode back into the same people (AP 1 over OKS
at the map's resolution), the loss ignores unlabelled frames, and the evaluator reports AP
overall and per scene with COCO artifacts pycocotools can rescore."""

import json

import numpy as np
import pytest
import torch

from tasks.rfpose import maps, oks
from tasks.rfpose.evaluator import PoseEvaluator
from tasks.rfpose.recipes import masked_bce
from tasks.train.recipe import EvalContext

W, H = 160, 120  # camera image
MAP = (32, 32)  # student map (h, w)


def person(cx, cy, scale=1.0):
    """A standing skeleton (CrowdPose order) around (cx, cy) in image pixels, all visible."""
    offsets = [(-8, -20), (8, -20), (-11, -8), (11, -8), (-12, 4), (12, 4), (-6, 6), (6, 6),
               (-6, 22), (6, 22), (-6, 38), (6, 38), (0, -34), (0, -24)]
    return np.array([[cx + dx * scale, cy + dy * scale, 2] for dx, dy in offsets], np.float32)


def logits_of(people_kp):
    probs = torch.from_numpy(maps.render(np.stack(people_kp), MAP, (W, H))).clamp(1e-4, 1 - 1e-4)
    return torch.logit(probs)


def test_rendered_maps_decode_into_the_same_people():
    truth = [person(45, 60), person(115, 55, 0.9)]
    probs = torch.from_numpy(maps.render(np.stack(truth), MAP, (W, H)))
    found = maps.people(probs, (W, H))
    assert len(found) == 2
    gt = oks.ground_truth_json([{"width": W, "height": H, "people": [
        {"keypoints": p.tolist(), "bbox": [float(p[:, 0].min()), float(p[:, 1].min()),
                                           float(np.ptp(p[:, 0])), float(np.ptp(p[:, 1]))]} for p in truth]}])
    assert oks.evaluate(gt, oks.results_json([{"image_id": 1, "people": found}]))["ap50"] == pytest.approx(1.0)


def test_the_loss_ignores_unlabelled_frames():
    teacher = torch.rand(2, 14, 3, 8, 8)
    logits = torch.randn(2, 14, 3, 8, 8)
    labelled = torch.tensor([[True, False, True], [False, False, True]])
    base = masked_bce(logits, (teacher, labelled))
    scrambled = logits.clone()
    scrambled[0, :, 1] = 50.0  # an unlabelled frame: any prediction there costs nothing
    scrambled[1, :, 0] = -50.0
    assert masked_bce(scrambled, (teacher, labelled)) == pytest.approx(base.item())
    worse = logits.clone()
    worse[1, :, 2] = 50.0  # a labelled one does
    assert masked_bce(worse, (teacher, labelled)) > base


def batch(scene_of_window):
    """Two windows of 2 frames, the second frame of each unlabelled; teacher keypoints padded."""
    t = 2
    kp = np.full((len(scene_of_window), t, maps.MAX_PEOPLE, 14, 3), np.nan, np.float32)
    logits = torch.full((len(scene_of_window), 14, t, *MAP), -9.0)
    for b in range(len(scene_of_window)):
        kp[b, 0, 0] = person(50 + 30 * b, 60)
        logits[b, :, 0] = logits_of([kp[b, 0, 0]])
    labelled = torch.tensor([[True, False]] * len(scene_of_window))
    image = torch.tensor([[W, H]] * len(scene_of_window))
    box = np.full(kp.shape[:3] + (4,), np.nan, np.float32)
    for b in range(len(scene_of_window)):
        p = kp[b, 0, 0]
        box[b, 0, 0] = [p[:, 0].min(), p[:, 1].min(), np.ptp(p[:, 0]), np.ptp(p[:, 1])]
    targets = (None, labelled, torch.from_numpy(kp), torch.from_numpy(box), torch.tensor(scene_of_window), image)
    inputs = (torch.randn(len(scene_of_window), 2, t, 64, 64),) * 2
    return logits, targets, inputs


def test_perfect_maps_score_ap_one_overall_and_per_scene_with_rescorable_artifacts():
    evaluator = PoseEvaluator(EvalContext((), torch.device("cpu"), detailed=True))
    logits, targets, inputs = batch([0, 1])
    evaluator.update(logits, targets, inputs)
    metrics = evaluator.compute()
    assert metrics["ap50"] == pytest.approx(1.0) and metrics["visible/ap50"] == pytest.approx(1.0)
    assert metrics["through-wall/ap50"] == pytest.approx(1.0)
    art = evaluator.artifacts()
    gt, dt = json.loads(art["ground_truth.json"]), json.loads(art["predictions.json"])
    assert len(gt["images"]) == 2  # the labelled frames only
    assert oks.evaluate(gt, dt)["ap"] == pytest.approx(metrics["ap"])
    assert art["strip.png"].startswith(b"\x89PNG")


def test_blank_maps_find_nobody_and_score_zero():
    evaluator = PoseEvaluator(EvalContext((), torch.device("cpu")))
    logits, targets, inputs = batch([0])
    evaluator.update(torch.full_like(logits, -9.0), targets, inputs)
    assert evaluator.compute()["ap"] == 0.0


def test_peaks_are_refined_below_a_map_pixel():
    kp = np.full((1, 14, 3), np.nan, np.float32)
    kp[0, 13] = [53.0, 47.0, 2]  # neck at map (10.6, 6.27) of a 32 × 32 map over 160 × 120
    probs = torch.from_numpy(maps.render(kp, MAP, (W, H)))
    [(x, y, _)] = maps.peaks(probs)[13]
    assert x == pytest.approx(53.0 * 32 / W, abs=0.02) and y == pytest.approx(47.0 * 32 / H, abs=0.02)
