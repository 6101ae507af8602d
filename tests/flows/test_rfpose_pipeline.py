"""``rfpose-pipeline`` end to end under Prefect's test harness on simulated sessions: simulate →
sync → windows → student training → AP over OKS per scene against the mean-pose baseline, with
the sync reports in the manifest and the COCO files in the MLflow run."""

import json
import os

import pytest
from mlflow import MlflowClient

from flows.rfpose import rfpose_pipeline
from tasks.data import shards
from tasks.rfpose import oks
from tasks.rfpose.config import RfposePipelineConfig
from tasks.track.tracking import tracking_uri


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("datasets"))
    cfg = RfposePipelineConfig(simulate=6, seconds=6, out=out, window=8, epochs=1, batch_size=4,
                               width=1 / 8, nproc=1, num_workers=0, run_name="rfpose-test")
    return rfpose_pipeline(cfg)


def test_sessions_are_synced_windowed_and_split_by_scene(run):
    data = run["data"]
    manifest = shards.read_manifest(data["url"])
    sessions = manifest["params"]["sessions"]
    assert all(s["split"] == "test" for s in sessions.values() if s["scene"] == "through-wall")
    assert {"train", "val", "test"} <= set(manifest["splits"])
    for name, report in manifest["params"]["sync"].items():
        assert {"offset_s", "drift_ppm", "labelled", "unlabelled", "rejected", "residual_ms"} <= set(report)
        assert report["labelled"] > 0
        frames = sessions[name]["frames"]
        assert report["labelled"] + report["unlabelled"] + sum(report["rejected"].values()) == frames


def test_ap_per_scene_for_the_student_and_the_mean_pose_with_rescorable_coco_files(run, home):
    scores = run["evaluate"]
    for who in ("", "baseline/"):
        for scene in ("", "visible/", "through-wall/"):
            for metric in ("ap", "ap50", "ap75", "ar"):
                assert 0.0 <= scores[f"test/{who}{scene}{metric}"] <= 1.0
    client = MlflowClient(tracking_uri(home, os.environ))
    run_id = run["train"]["mlflow_run_id"]
    assert client.get_experiment(client.get_run(run_id).info.experiment_id).name == "rfpose"
    gt = json.load(open(client.download_artifacts(run_id, "evaluation/ground_truth.json")))
    dt = json.load(open(client.download_artifacts(run_id, "evaluation/predictions.json")))
    assert oks.evaluate(gt, dt)["ap"] == pytest.approx(scores["test/ap"])
    logged = client.get_run(run_id).data.metrics
    assert logged["test/baseline/ap50"] == pytest.approx(scores["test/baseline/ap50"])
    assert "evaluation/strip.png" in {a.path for a in client.list_artifacts(run_id, "evaluation")}
