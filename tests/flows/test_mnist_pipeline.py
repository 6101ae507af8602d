"""The MNIST flows end to end under Prefect's test harness: shards on the S3 server, DDP
training over gloo, evaluation, and what lands in MLflow (SQLite)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.pipeline import mnist_pipeline
from tasks.data import shards
from tasks.mnist.config import MnistPipelineConfig
from tasks.track.tracking import tracking_uri

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pipeline_run(prefect_harness, idx_dir, s3_server, tmp_path_factory):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="pipeline")
    cfg = MnistPipelineConfig(source=str(idx_dir), out="s3://pipeline/datasets", epochs=2,
                              max_steps_per_epoch=3, nproc=2, run_name="flow-test")
    return mnist_pipeline(cfg)


def test_pipeline_writes_shards_and_a_complete_mlflow_run(pipeline_run, home):
    data, trained, scores = pipeline_run["data"], pipeline_run["train"], pipeline_run["evaluate"]
    assert data["url"] == "s3://pipeline/datasets/mnist/v1"
    assert data["samples"] == {"train": 600, "test": 200} and data["rejects"] == 0
    manifest = shards.read_manifest(data["url"])

    client = MlflowClient(tracking_uri(home, os.environ))
    run = client.get_run(trained["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["recipe"] == "mnist_convnet" and params["epochs"] == "2"
    assert params["data.dataset"] == "mnist" and params["data.train_samples"] == "600"
    tags = run.data.tags
    assert tags["dataset.manifest_sha256"] == shards.manifest_checksum(manifest)
    assert tags["dataset.url"] == data["url"] and len(tags["prefect.flow_run_id"]) == 36

    for name in ("train/loss", "val/top1", "val/top5", "val/loss", "perf/images_per_s"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [0, 1], name
    metrics = run.data.metrics
    assert 0.0 <= metrics["test/top1"] <= metrics["test/top5"] <= 1.0
    assert metrics["test/top1"] == pytest.approx(scores["test/top1"])
    assert {f"test/acc/{d}" for d in range(10)} <= set(metrics)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/confusion_matrix.png", "evaluation/misclassified.png",
                         "evaluation/per_class_accuracy.csv"}
    local = client.download_artifacts(run.info.run_id, "evaluation/confusion_matrix.png")
    assert open(local, "rb").read(8) == PNG

    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert any(m.source_run_id == run.info.run_id for m in models)


def test_rerunning_the_pipeline_resumes_instead_of_retraining(pipeline_run, idx_dir):
    again = mnist_pipeline(MnistPipelineConfig(source=str(idx_dir), out="s3://pipeline/datasets",
                                               epochs=2, max_steps_per_epoch=3, nproc=2,
                                               run_name="flow-test"))
    assert again["train"]["mlflow_run_id"] == pipeline_run["train"]["mlflow_run_id"]
    assert again["train"]["val/top1"] == pipeline_run["train"]["val/top1"]  # same checkpoint
    client = MlflowClient(tracking_uri(Path(os.environ["VISIONFLOW_HOME"]), os.environ))
    run = client.get_run(again["train"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    logged = [m for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])
              if m.source_run_id == run.info.run_id]
    assert len(logged) == 1 and logged[0].tags["visionflow.epoch"] == "1"  # not logged twice


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = _cli("ingest", "mnist", "--source", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"visionflow: error: {tmp_path / 'empty'}: no train-images-idx3-ubyte (or "
        "train-images-idx3-ubyte.gz) file; expected MNIST-format IDX files such as those of "
        "Debian's dataset-fashion-mnist package")


def test_cli_rejects_invalid_parameters_before_running(tmp_path):
    result = _cli("train", "--data", str(tmp_path), "--epochs", "0")
    assert result.returncode != 0 and "epochs" in result.stderr and "greater than or equal to 1" in result.stderr


def test_cli_names_unreachable_storage(idx_dir):
    result = _cli("ingest", "mnist", "--source", str(idx_dir), "--out", "s3://bucket/x",
                  env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "visionflow: error: s3://bucket/x: the S3 endpoint is unreachable (endpoint http://127.0.0.1:9)")
