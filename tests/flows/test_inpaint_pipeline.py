"""``inpaint-pipeline`` end to end under Prefect's test harness, on real photographs: the
ImageNet pipeline trains and registers a tiny vgg16, the inpainting pipeline draws masks, pairs
them with that ingest's image shards, fetches the registered VGG16 as its perceptual network,
trains the PConv U-Net through both stages and scores it and the two baselines per bucket."""

import json
import os

import pytest
from mlflow import MlflowClient

from flows.imagenet import imagenet_pipeline
from flows.inpaint import inpaint_pipeline
from tasks.data import shards, storage
from tasks.data.reader import read_shard, shards_of
from tasks.imagenet import ilsvrc_sample
from tasks.imagenet.config import ImagenetPipelineConfig
from tasks.inpaint import masks, perceptual
from tasks.inpaint.config import InpaintPipelineConfig
from tasks.track.tracking import tracking_uri
from tasks.train.engine import CHECKPOINT, load_checkpoint


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    tree = ilsvrc_sample.make_tree(tmp_path_factory.mktemp("photos"), classes=4, train_per_class=8,
                                   val_per_class=3, odd=False, photos_per_class=1, val_layout="folder")
    out = str(tmp_path_factory.mktemp("datasets"))
    imagenet_pipeline(ImagenetPipelineConfig(source=str(tree.root), out=out, recipe="vgg16", epochs=1,
                                             batch_size=4, width=1 / 16, image_scale=0.25, nproc=1,
                                             num_workers=0, run_name="vgg16-for-perceptual"))
    cfg = InpaintPipelineConfig(images=f"{out}/imagenet/v1", out=out, size=128, train_masks=24, test_per_bucket=1,
                                perceptual="models:/imagenet-vgg16@latest", epochs=2, batch_size=4,
                                width=1 / 16, nproc=1, num_workers=0, run_name="inpaint-test")
    return inpaint_pipeline(cfg), out


def test_test_pairs_cover_every_bucket_and_flag_with_the_masks_own_statistics(run):
    result, out = run
    url = result["data"]["url"]
    assert result["data"]["rejects"] == 0
    samples = [s for ref in shards_of(url, "test") for s in read_shard(ref.url)]
    assert len(samples) == 6 * 2  # six buckets × {border, no-border} × 1
    seen = set()
    margin = masks.margin_for(128)
    for sample in samples:
        meta = json.loads(sample["json"])
        recomputed = masks.stats(masks.decode_png(sample["mask.png"]), margin)
        assert (meta["bucket"], meta["border"]) == (recomputed["bucket"], recomputed["border"])
        assert meta["hole_ratio"] == pytest.approx(recomputed["hole_ratio"])
        seen.add((meta["bucket"], meta["border"]))
    assert seen == {(b, f) for b in masks.BUCKETS for f in (True, False)}
    manifest = shards.read_manifest(url)
    assert manifest["params"]["masks"] == result["data"]["masks"] and manifest["params"]["size"] == 128


def test_two_stages_train_in_one_run_and_the_run_shows_them(run, home):
    result, _ = run
    state = load_checkpoint(storage.join(result["train"]["checkpoint_dir"], CHECKPOINT))
    history = state["history"]
    assert [h["train/lr"] for h in history] == pytest.approx([1e-3, 2.5e-4])  # the pipeline's CPU-sized LR
    client = MlflowClient(tracking_uri(home, os.environ))
    mlflow_run = client.get_run(result["train"]["mlflow_run_id"])
    assert mlflow_run.info.status == "FINISHED"
    assert client.get_experiment(mlflow_run.info.experiment_id).name == "inpaint"
    assert mlflow_run.data.params["options.perceptual"].endswith(".pt")  # the fetched registry VGG16
    assert mlflow_run.data.params["options.l1_norm"] == "mask"  # the pipeline's CPU-sized default
    version = client.get_model_version_by_alias("inpaint-pconv_unet", "latest")
    assert version.run_id == mlflow_run.info.run_id


def test_metrics_per_bucket_and_flag_for_the_network_and_both_baselines(run, home):
    result, _ = run
    scores = result["evaluate"]
    for method in ("", "baseline/mean/", "baseline/telea/"):
        for metric in ("l1", "l1_hole", "psnr", "ssim"):
            assert f"test/{method}{metric}" in scores
            for bucket in masks.BUCKETS:
                for flag in ("border", "no-border"):
                    assert f"test/{method}{metric}/{bucket}/{flag}" in scores
    assert 0 < scores["test/ssim"] <= 1 and scores["test/psnr"] > 0
    assert {"test/untrained/l1_hole", "test/untrained/psnr/r50-60/border"} <= set(scores)
    # the self-ensemble scores the network alone: no second copy of the baselines
    assert {"test/self_ensemble/l1_hole", "test/self_ensemble/ssim/r01-10/border"} <= set(scores)
    assert not any(k.startswith("test/self_ensemble/baseline/") for k in scores)
    assert scores["test/latency_s_512"] > 0
    client = MlflowClient(tracking_uri(home, os.environ))
    run_id = result["train"]["mlflow_run_id"]
    logged = client.get_run(run_id).data.metrics
    assert logged["test/baseline/telea/psnr/r01-10/no-border"] == pytest.approx(
        scores["test/baseline/telea/psnr/r01-10/no-border"])
    assert "test/latency_s_512" in logged
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/inpaint_table.md", "evaluation/inpaint_grid.png"} <= artifacts
    assert "evaluation/self_ensemble/inpaint_table.md" in {
        a.path for a in client.list_artifacts(run_id, "evaluation/self_ensemble")}


def test_a_missing_registered_perceptual_network_is_a_clear_error(home, tmp_path):
    uri = tracking_uri(home, os.environ)
    with pytest.raises(perceptual.PerceptualError, match="models:/nothing-here@latest.*pipeline imagenet --recipe vgg16"):
        perceptual.resolve("models:/nothing-here@latest", uri, str(tmp_path))
    with pytest.raises(perceptual.PerceptualError, match="no such file"):
        perceptual.resolve(str(tmp_path / "vgg16.pth"), uri, str(tmp_path))
