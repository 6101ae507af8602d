"""The mean-pose baseline, the RF-blind floor a student must beat: the mean training skeleton (in
image pixels) predicted once on every labelled test frame, scored with the evaluator's AP."""

from __future__ import annotations

import io
import json

import numpy as np

from tasks.data.reader import read_shard, shards_of
from tasks.rfpose import oks
from tasks.rfpose.evaluator import SCENES, person_record, present, score


def labelled_frames(url: str, split: str):
    """(scene, image (W, H), [(keypoints (14, 3), bbox)]) of every labelled frame of a split's windows."""
    for ref in shards_of(url, split):
        for sample in read_shard(ref.url):
            meta = json.loads(sample["json"])
            kp = np.load(io.BytesIO(sample["kp.npy"]), allow_pickle=False)
            bbox = np.load(io.BytesIO(sample["bbox.npy"]), allow_pickle=False)
            labelled = np.load(io.BytesIO(sample["labelled.npy"]), allow_pickle=False)
            for t in np.flatnonzero(labelled):
                yield meta["scene"], tuple(meta["image"]), present(kp[t], bbox[t])


def mean_pose_scores(url: str, split: str = "test", train_split: str = "train") -> dict[str, float]:
    """``baseline/ap`` … overall and ``baseline/<scene>/ap`` … per scene, on ``split``."""
    train = [person_record(p, box) for _, _, people in labelled_frames(url, train_split) for p, box in people]
    frames = list(labelled_frames(url, split))
    records = [{"scene": scene, "width": wh[0], "height": wh[1], "people": [person_record(p, box) for p, box in people]}
               for scene, wh, people in frames]
    gt = oks.ground_truth_json(records)
    results = oks.results_json(oks.mean_pose_baseline(train, len(records)))
    out = score(gt, results, "baseline/")
    for scene in SCENES:
        ids = [i for i, r in enumerate(records, 1) if r["scene"] == scene]
        if ids:
            out.update(score(gt, results, f"baseline/{scene}/", ids))
    return out
