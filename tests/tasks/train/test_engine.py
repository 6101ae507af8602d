"""The training engine under torchrun: 2 CPU processes over gloo, checkpoints, resume."""

import pytest
import torch

from tasks.mnist import idx as mnist
from tasks.data import shards, storage
from tasks import catalog
from tasks.config import TrainConfig
from tasks.train.engine import CHECKPOINT, Job, load_checkpoint
from tasks.train.launch import TrainingError, launch, prepare


@pytest.fixture(scope="module")
def dataset(idx_dir, tmp_path_factory):
    url = shards.dataset_url(str(tmp_path_factory.mktemp("data")), "mnist", "v1")
    mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=128)  # 600 train samples in 5 shards
    return url


def _job(dataset, ckpt, epochs, **overrides):
    cfg = TrainConfig(data=dataset, epochs=epochs, nproc=2, num_workers=1, run_name="t", **overrides)
    return Job(cfg, str(ckpt), catalog.reference(cfg.recipe), classes=tuple(str(i) for i in range(10)))


def _epochs(log):
    return [line for line in log if line.startswith("epoch")]


def _adam_steps(state):
    return {int(s["step"]) for s in state["optimizer"]["state"].values()}


def test_ddp_trains_and_resumes_at_the_next_epoch(dataset, tmp_path):
    log = []
    first = launch(_job(dataset, tmp_path, epochs=1), log.append)
    assert any(line.startswith("  step 6/6") for line in log)  # progress within the epoch
    assert len(_epochs(log)) == 1 and _epochs(log)[0].startswith("epoch 1/1")
    state = load_checkpoint(storage.join(str(tmp_path), CHECKPOINT))
    # 600 samples, global batch 100 split over 2 ranks: 6 optimizer steps, in step on both ranks
    assert state["epoch"] == 0 and _adam_steps(state) == {6}
    assert first["val/top1"] > 0.2  # the bars are learnable: well above chance after one epoch

    log.clear()
    second = launch(_job(dataset, tmp_path, epochs=2), log.append)
    assert len(_epochs(log)) == 1 and _epochs(log)[0].startswith("epoch 2/2")  # epoch 1 was not run again
    state = load_checkpoint(storage.join(str(tmp_path), CHECKPOINT))
    assert state["epoch"] == 1 and _adam_steps(state) == {12}  # the optimizer carried on
    assert state["history"][0] == first and second["val/top1"] >= first["val/top1"] - 0.05

    log.clear()
    launch(_job(dataset, tmp_path, epochs=2), log.append)  # already done: nothing to run
    assert log == []


def test_gradient_accumulation_and_checkpoints_on_s3(dataset, s3_bucket):
    ckpt = f"{s3_bucket}/runs/accum"
    launch(_job(dataset, ckpt, epochs=1, grad_accum=2, max_steps_per_epoch=2, recipe="mnist_mlp"))
    state = load_checkpoint(storage.join(ckpt, CHECKPOINT))
    assert state["epoch"] == 0
    momentum = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert momentum and all(torch.isfinite(m).all() for m in momentum)


def test_a_failing_rank_surfaces_its_traceback(tmp_path):
    job = _job(str(tmp_path / "nowhere"), tmp_path / "ckpt", epochs=1)
    with pytest.raises(TrainingError, match="no manifest.json"):
        launch(job)


def test_batch_must_split_across_ranks(dataset, tmp_path):
    with pytest.raises(TrainingError, match="batch size 99 does not split into 2 ranks"):
        launch(_job(dataset, tmp_path, epochs=1, batch_size=99))


def test_resuming_with_other_parameters_is_refused(dataset, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrainConfig(data=dataset, run_name="r", checkpoint_dir=str(tmp_path / "ckpt"))
    job = prepare(cfg, tmp_path, uri)
    longer = prepare(cfg.model_copy(update={"epochs": 9, "nproc": 4}), tmp_path, uri)
    assert longer.mlflow_run_id == job.mlflow_run_id and longer.epochs == 9
    with pytest.raises(TrainingError, match=r"started with other parameters \(lr None → 0.5\)"):
        prepare(cfg.model_copy(update={"lr": 0.5}), tmp_path, uri)


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_gradients_all_reduced_in_half_precision_still_train(dataset, tmp_path, compression):
    result = launch(_job(dataset, tmp_path, epochs=1, ddp_compression=compression, ddp_bucket_mb=1))
    state = load_checkpoint(storage.join(str(tmp_path), CHECKPOINT))
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert result["val/top1"] > 0.2
