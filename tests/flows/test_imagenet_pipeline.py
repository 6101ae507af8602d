"""``imagenet-pipeline`` end to end under Prefect's test harness, on a tiny ILSVRC-shaped tree of
real photographs: ingest with a shorter-side variant, DDP training of the DAWNBench recipe (its
phases compressed into 3 epochs), evaluation, and what lands in MLflow."""

import os

import pytest
from mlflow import MlflowClient

from flows.imagenet import imagenet_pipeline
from tasks.data import storage
from tasks.imagenet import ilsvrc_sample
from tasks.imagenet.config import ImagenetPipelineConfig
from tasks.track.tracking import tracking_uri
from tasks.train.engine import CHECKPOINT, load_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    tree = ilsvrc_sample.make_tree(tmp_path_factory.mktemp("ilsvrc"), classes=4, train_per_class=8,
                                   val_per_class=3, odd=False, photos_per_class=1, val_layout="folder")
    out = str(tmp_path_factory.mktemp("datasets"))
    cfg = ImagenetPipelineConfig(source=str(tree.root), out=out, variants=(160,), recipe="resnet50_dawnbench",
                                 epochs=3, batch_size=8, width=1 / 16, image_scale=0.25, nproc=2,
                                 run_name="dawn-test")
    return imagenet_pipeline(cfg), out


def test_phases_switch_size_batch_and_variant_at_their_epochs(run):
    result, out = run
    state = load_checkpoint(storage.join(result["train"]["checkpoint_dir"], CHECKPOINT))
    history = state["history"]
    # DAWNBench's phases start at epochs 0, 6, 16, 19, 37 of 38; in 3 epochs: 0, 0, 1, 2, 2 (the
    # later one wins): 128 px at batch 16,384, 224 px at 8,192, 288 px at 16,384 with
    # rectangular validation; sizes × 0.25, batches × 8 / 8,192.
    assert [h["train/image_size"] for h in history] == [32, 56, 72]
    assert [h["train/batch_size"] for h in history] == [16, 8, 16]
    # the 160 px variant was ingested, the 352 px one not: those phases read the 256² shards
    assert [h["data"] for h in history] == [f"{out}/imagenet/v1-short160", f"{out}/imagenet/v1", f"{out}/imagenet/v1"]
    assert all(0.0 <= h["val/top1"] <= 1.0 and "val/top5" not in h for h in history)  # 4 classes: no top-5


def test_the_run_shows_its_dataset_lr_and_phases_and_registers_its_model(run, home):
    result, _ = run
    client = MlflowClient(tracking_uri(home, os.environ))
    mlflow_run = client.get_run(result["train"]["mlflow_run_id"])
    assert mlflow_run.info.status == "FINISHED"
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert experiment.name == "imagenet"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert mlflow_run.data.tags["visionflow.select"] == "val/top1"

    [dataset] = mlflow_run.inputs.dataset_inputs
    assert dataset.dataset.name == "imagenet/v1" and dataset.tags[0].value == "training"

    sizes = client.get_metric_history(mlflow_run.info.run_id, "train/image_size")
    assert [(m.step, m.value) for m in sizes] == [(0, 32), (1, 56), (2, 72)]
    steps = client.get_metric_history(mlflow_run.info.run_id, "train/lr_step")
    assert len(steps) >= 3 and [m.step for m in steps] == sorted(m.step for m in steps)

    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/confusion_matrix.png", "evaluation/misclassified.png",
                         "evaluation/per_class_accuracy.csv"}
    csv = open(client.download_artifacts(mlflow_run.info.run_id, "evaluation/per_class_accuracy.csv")).read()
    assert csv.splitlines()[0] == "class,samples,accuracy" and "tench" in csv

    version = client.get_model_version_by_alias("imagenet-resnet50_dawnbench", "latest")
    assert version.run_id == mlflow_run.info.run_id
    assert 0.0 <= result["evaluate"]["val/top1"] <= 1.0
