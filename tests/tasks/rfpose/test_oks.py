"""COCO keypoint JSON and AP over OKS for the 14-keypoint skeleton, checked against pycocotools
run by hand on the same files, and the COCO-17 → CrowdPose-14 mapping."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.errors import BadInput
from tasks.rfpose import oks, skeleton, teacher

# CrowdPose's computeOks, written out again so that a swapped constant fails here.
CROWDPOSE = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79]) / 10.0
HEAD, NECK = 12, 13


def _pose(x0: float, y0: float) -> np.ndarray:
    """A standing person, (14, 3) with v = 2, in CrowdPose order, 40 px wide and 80 px tall."""
    xy = [(x0 + 12, y0 + 15), (x0 + 28, y0 + 15), (x0 + 8, y0 + 30), (x0 + 32, y0 + 30),
          (x0 + 6, y0 + 42), (x0 + 34, y0 + 42), (x0 + 14, y0 + 44), (x0 + 26, y0 + 44),
          (x0 + 14, y0 + 60), (x0 + 26, y0 + 60), (x0 + 14, y0 + 76), (x0 + 26, y0 + 76),
          (x0 + 20, y0 + 4), (x0 + 20, y0 + 12)]
    return np.column_stack([np.array(xy, float), np.full(14, 2.0)])


def _records():
    """Three 100×100 images: one person, two people, one person with a hidden and an unlabelled joint."""
    third = _pose(50, 10)
    third[4, 2], third[11] = 1, (0, 0, 0)
    return [{"width": 100, "height": 100, "people": [{"keypoints": _pose(10, 10), "bbox": [10, 10, 40, 80]}]},
            {"width": 100, "height": 100, "people": [{"keypoints": _pose(5, 5), "bbox": [5, 5, 40, 80]},
                                                      {"keypoints": _pose(55, 15), "bbox": [55, 15, 40, 80]}]},
            {"width": 100, "height": 100, "people": [{"keypoints": third, "bbox": [50, 10, 40, 80]}]}]


def _perfect(records, score=1.0):
    return [{"image_id": i, "people": [{"keypoints": p["keypoints"][:, :2].copy(), "score": score} for p in r["people"]]}
            for i, r in enumerate(records, start=1)]


def test_the_ground_truth_follows_the_conventions():
    gt = oks.ground_truth_json(_records())
    assert [im["id"] for im in gt["images"]] == [1, 2, 3]
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3, 4]
    assert [a["image_id"] for a in gt["annotations"]] == [1, 2, 2, 3]
    a = gt["annotations"][3]
    assert a["area"] == pytest.approx(0.53 * 40 * 80) and a["iscrowd"] == 0 and a["category_id"] == 1
    assert a["num_keypoints"] == 13 and len(a["keypoints"]) == 42
    assert a["keypoints"][3 * 11:3 * 12] == [0, 0, 0] and a["keypoints"][3 * 4 + 2] == 1
    category = gt["categories"][0]
    assert category["keypoints"] == list(skeleton.KEYPOINTS) and len(category["keypoints"]) == 14
    assert [1 <= i <= 14 for pair in category["skeleton"] for i in pair] == [True] * 28
    json.dumps(gt)  # plain JSON all the way down


def test_results_carry_flag_one_a_score_and_no_bbox():
    [r] = oks.results_json([{"image_id": 2, "people": [{"keypoints": _pose(0, 0), "score": 0.7}]}])
    assert r["image_id"] == 2 and r["category_id"] == 1 and r["score"] == 0.7 and "bbox" not in r
    assert r["keypoints"][2::3] == [1.0] * 14 and r["keypoints"][:2] == [12.0, 15.0]


def test_perfect_predictions_score_one():
    records = _records()
    scores = oks.evaluate(oks.ground_truth_json(records), oks.results_json(_perfect(records)))
    assert scores == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0, "ar": 1.0}


def test_a_perturbation_scores_what_pycocotools_gives_on_the_same_files(tmp_path):
    records = _records()
    rng = np.random.default_rng(3)
    predictions = []
    for i, record in enumerate(records, start=1):
        people = [{"keypoints": p["keypoints"][:, :2] + rng.normal(0, 2.5 * i, (14, 2)), "score": 0.9 - 0.1 * i + 0.01 * k}
                  for k, p in enumerate(record["people"])]
        predictions.append({"image_id": i, "people": people})
    predictions[0]["people"].append({"keypoints": _pose(45, 15)[:, :2], "score": 0.5})   # a false positive
    gt, results = oks.ground_truth_json(records), oks.results_json(predictions)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        by_hand = COCOeval(coco, coco.loadRes(str(tmp_path / "results.json")), "keypoints")
        by_hand.params.kpt_oks_sigmas = CROWDPOSE
        by_hand.evaluate(), by_hand.accumulate(), by_hand.summarize()
    expected = dict(zip(("ap", "ap50", "ap75", "ar"), by_hand.stats[[0, 1, 2, 5]]))
    got = oks.evaluate(gt, results)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.1 < got["ap"] < 0.9   # neither trivially perfect nor empty


def _ap_from_formula(d: float, sigmas: np.ndarray, area: float) -> float:
    """One GT and one detection per image, every detection at the same OKS: AP@t is 1 when
    OKS ≥ t, else 0, so AP is the share of the ten thresholds at or under the OKS."""
    shifted = np.zeros(14)
    shifted[[HEAD, NECK]] = d ** 2
    similarity = np.mean(np.exp(-shifted / (2 * area * (2 * sigmas) ** 2)))
    return float(np.mean(np.linspace(0.5, 0.95, 10) <= similarity + 1e-12))


def test_the_evaluation_uses_crowdposes_sigmas_for_head_and_neck():
    records = [{"width": 100, "height": 100, "people": [{"keypoints": _pose(10 + i, 10), "bbox": [10 + i, 10, 40, 80]}]}
               for i in range(3)]
    d = 7.1   # px, head and neck only: OKS ≈ 0.936 with σ = 0.079
    predictions = _perfect(records)
    for p in predictions:
        p["people"][0]["keypoints"][[HEAD, NECK]] += [d / np.sqrt(2), d / np.sqrt(2)]
    gt, results = oks.ground_truth_json(records), oks.results_json(predictions)
    area = 0.53 * 40 * 80
    hupr = CROWDPOSE.copy()
    hupr[[HEAD, NECK]] = 0.10          # HuPR's head/neck sigma
    coco_face = CROWDPOSE.copy()
    coco_face[[HEAD, NECK]] = 0.026    # COCO's nose sigma taken for the head and neck
    expected = {name: _ap_from_formula(d, s, area) for name, s in
                (("crowdpose", CROWDPOSE), ("hupr", hupr), ("coco_face", coco_face))}
    assert expected == {"crowdpose": 0.9, "hupr": 1.0, "coco_face": 0.8}   # the test can tell them apart
    assert oks.evaluate(gt, results)["ap"] == pytest.approx(expected["crowdpose"])
    assert oks.evaluate(gt, results, sigmas=hupr)["ap"] == pytest.approx(expected["hupr"])
    assert oks.evaluate(gt, results, sigmas=coco_face)["ap"] == pytest.approx(expected["coco_face"])
    np.testing.assert_array_equal(skeleton.CROWDPOSE_SIGMAS, CROWDPOSE)


def test_cocos_17_sigmas_are_refused():
    records = _records()
    with pytest.raises(BadInput, match="17 OKS sigmas for 14 keypoints"):
        oks.evaluate(oks.ground_truth_json(records), oks.results_json(_perfect(records)), sigmas=skeleton.COCO_SIGMAS)


def test_empty_results_score_zero_and_strays_are_refused():
    gt = oks.ground_truth_json(_records())
    assert oks.evaluate(gt, []) == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "ar": 0.0}
    stray = oks.results_json([{"image_id": 9, "people": [{"keypoints": _pose(0, 0), "score": 1.0}]}])
    with pytest.raises(BadInput, match=r"missing from the ground truth: \[9\]"):
        oks.evaluate(gt, stray)
    with pytest.raises(BadInput, match="ids must be ≥ 1"):
        oks.ground_truth_json([{"image_id": 0, "width": 10, "height": 10, "people": []}])


def test_a_subset_of_images_is_scored_alone():
    records = _records()
    predictions = _perfect(records)
    predictions[2]["people"][0]["keypoints"] = predictions[2]["people"][0]["keypoints"] + 30   # image 3: a miss
    gt, results = oks.ground_truth_json(records), oks.results_json(predictions)
    assert oks.evaluate(gt, results, image_ids=[1, 2])["ap"] == 1.0
    assert oks.evaluate(gt, results, image_ids=[3])["ap"] == 0.0


def test_the_mean_pose_baseline_is_the_mean_of_labelled_joints():
    people = [p for r in _records() for p in r["people"]]
    predictions = oks.mean_pose_baseline(people, 3)
    assert [p["image_id"] for p in predictions] == [1, 2, 3]
    assert all(len(p["people"]) == 1 and p["people"][0]["score"] == 1.0 for p in predictions)
    mean = np.array(predictions[0]["people"][0]["keypoints"])
    kps = np.stack([p["keypoints"] for p in people])
    assert mean[0] == pytest.approx(kps[:, 0, :2].mean(0))
    assert mean[11] == pytest.approx(kps[:3, 11, :2].mean(0))   # the fourth person's right ankle is unlabelled
    scores = oks.evaluate(oks.ground_truth_json(_records()), oks.results_json(predictions))
    assert 0.0 <= scores["ap"] < 1.0
    with pytest.raises(BadInput, match="no training person"):
        oks.mean_pose_baseline([], 3)


def _coco17(x0=0.0, y0=0.0) -> np.ndarray:
    kp = np.zeros((17, 3))
    for name, (x, y) in {"nose": (20, 5), "left_eye": (22, 3), "right_eye": (18, 3), "left_ear": (24, 4),
                         "right_ear": (16, 4), "left_shoulder": (30, 15), "right_shoulder": (10, 17),
                         "left_elbow": (34, 30), "right_elbow": (6, 30), "left_wrist": (35, 42),
                         "right_wrist": (5, 42), "left_hip": (26, 44), "right_hip": (14, 44),
                         "left_knee": (26, 60), "right_knee": (14, 60), "left_ankle": (26, 76),
                         "right_ankle": (14, 76)}.items():
        kp[skeleton.COCO_KEYPOINTS.index(name)] = (x + x0, y + y0, 2)
    return kp


def test_coco17_maps_to_the_crowdpose_14_by_name_with_head_and_neck_built():
    kp = _coco17()
    kp[skeleton.COCO_KEYPOINTS.index("right_eye"), 2] = 0      # absent: left out of the head
    kp[skeleton.COCO_KEYPOINTS.index("nose"), 2] = 1
    out = skeleton.from_coco17(kp)
    assert out.shape == (14, 3)
    for name in skeleton.KEYPOINTS[:12]:
        assert out[skeleton.INDEX[name]].tolist() == kp[skeleton.COCO_KEYPOINTS.index(name)].tolist()
    assert out[HEAD].tolist() == [21.0, 4.0, 2.0]              # mean of nose (20, 5) and left eye (22, 3)
    assert out[NECK].tolist() == [20.0, 16.0, 2.0]             # shoulders' midpoint
    kp[skeleton.COCO_KEYPOINTS.index("left_shoulder"), 2] = 0
    kp[[0, 1, 2], 2] = 0
    out = skeleton.from_coco17(kp)
    assert out[NECK].tolist() == [0, 0, 0] and out[HEAD].tolist() == [0, 0, 0]
    batch = skeleton.from_coco17(np.stack([_coco17(), _coco17(5, 5)]))
    assert batch.shape == (2, 14, 3) and batch[1, NECK, :2].tolist() == [25.0, 21.0]


def test_keypoint_rcnn_outputs_become_14_keypoint_people():
    kp = torch.tensor(np.stack([_coco17(), _coco17(50, 0)]), dtype=torch.float32)
    kp[..., 2] = 1                                            # torchvision's flag is always 1
    logits = torch.full((2, 17), 5.0)
    logits[0, skeleton.COCO_KEYPOINTS.index("left_wrist")] = 1.0   # under the keypoint threshold
    output = {"boxes": torch.tensor([[0.0, 0, 40, 80], [50, 0, 90, 80]]), "scores": torch.tensor([0.95, 0.5]),
              "keypoints": kp, "keypoints_scores": logits}
    [person] = teacher._labels(output, teacher.SCORE_THRESHOLD, teacher.KEYPOINT_THRESHOLD)
    assert person["bbox"] == [0.0, 0.0, 40.0, 80.0] and person["score"] == pytest.approx(0.95)
    flags = [v for _, _, v in person["keypoints"]]
    assert flags[skeleton.INDEX["left_wrist"]] == 0 and flags.count(2) == 13
    assert person["keypoints"][NECK] == [20.0, 16.0, 2.0]
