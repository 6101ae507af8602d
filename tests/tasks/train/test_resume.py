"""Exactly-once epochs: mid-epoch checkpoints with the data position, a rank SIGKILLed under
torchrun's elastic restart, a resume on another world size, and the sample ledger that proves it."""

import os
import signal
from collections import Counter

import psutil
import pytest
import torch

from tasks import catalog
from tasks.config import TrainConfig
from tasks.data import shards, storage
from tasks.mnist import idx as mnist
from tasks.train import ledger
from tasks.train.engine import CHECKPOINT, Job, load_checkpoint
from tasks.train.launch import TrainingError, launch

EPOCHS = 2


@pytest.fixture(scope="module")
def dataset(idx_dir, tmp_path_factory):
    url = shards.dataset_url(str(tmp_path_factory.mktemp("data")), "mnist", "v1")
    mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=128)  # 600 train samples in 5 shards
    return url


@pytest.fixture(scope="module")
def train_keys(dataset):
    return sorted(s["__key__"] for ref in _refs(dataset) for s in _read(ref))


def _refs(url):
    from tasks.data.reader import shards_of
    return shards_of(url, "train")


def _read(ref):
    from tasks.data.reader import read_shard
    return read_shard(ref.url)


def _job(dataset, ckpt, nproc=2, **overrides):
    settings = dict(recipe="mnist_convnet", epochs=EPOCHS, batch_size=20, checkpoint_every_steps=4, sample_ledger=True)
    cfg = TrainConfig(data=dataset, nproc=nproc, num_workers=1, run_name="t", device="cpu",
                      **{**settings, **overrides})
    return Job(cfg, str(ckpt), catalog.reference(cfg.recipe), classes=tuple(str(i) for i in range(10)))


def _is_engine(proc) -> bool:
    """A rank or one of its DataLoader workers (the torchrun agent names the engine too)."""
    cmdline = " ".join(proc.cmdline())
    return "tasks.train.engine" in cmdline and "torch.distributed.run" not in cmdline


def _kill(rank: str) -> None:
    """SIGKILL the rank's own process (not its DataLoader workers, which share its command line)."""
    for proc in psutil.process_iter():
        try:
            if _is_engine(proc) and proc.environ().get("RANK") == rank and not _is_engine(proc.parent()):
                proc.send_signal(signal.SIGKILL)
                return
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no engine process of rank {rank}")


def _killer(rank: str, log: list, at: str = "  step 9/30"):
    """A log callback that kills ``rank`` when the first epoch reaches step 9 (checkpoints every 4)."""
    def callback(line: str) -> None:
        log.append(line)
        if line.startswith(at) and not any(l.startswith("resumed") or l.startswith("epoch") for l in log[:-1]):
            _kill(rank)
    return callback


def _assert_exactly_once(ckpt, keys):
    for epoch in range(EPOCHS):
        lines = [line for f in ledger.read(str(ckpt), epoch).values() for line in f]
        real = [line for line in lines if not line.endswith(ledger.PADDING)]
        counts = Counter(real)
        assert sorted(counts) == keys, f"epoch {epoch}: samples missing or unknown"
        assert max(counts.values()) == 1, f"epoch {epoch}: {counts.most_common(3)} trained twice"


def _weights(ckpt):
    return load_checkpoint(storage.join(str(ckpt), CHECKPOINT))["model"]


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("uninterrupted")
    launch(_job(dataset, ckpt))
    return ckpt


def test_an_uninterrupted_run_trains_every_sample_once_per_epoch(uninterrupted, train_keys):
    _assert_exactly_once(uninterrupted, train_keys)
    state = load_checkpoint(storage.join(str(uninterrupted), CHECKPOINT))
    assert state["position"] is None and state["epoch"] == EPOCHS - 1  # an epoch-end checkpoint
    assert len(state["rng"]) == 2  # every rank's RNG states


def test_a_killed_rank_is_restarted_and_the_run_ends_bit_for_bit(dataset, tmp_path, uninterrupted, train_keys):
    log = []
    launch(_job(dataset, tmp_path, max_restarts=1), _killer("1", log))
    resumed = [line for line in log if line.startswith("resumed")]
    assert len(resumed) == 1 and "same plan" in resumed[0], log
    _assert_exactly_once(tmp_path, train_keys)
    expected, got = _weights(uninterrupted), _weights(tmp_path)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed weights differ from an uninterrupted run's"


def test_a_stopped_epoch_resumes_exactly_once_on_another_world_size(dataset, tmp_path, train_keys):
    with pytest.raises(TrainingError):
        launch(_job(dataset, tmp_path), _killer("0", []))  # no restarts: the run fails mid-epoch
    where = load_checkpoint(storage.join(str(tmp_path), CHECKPOINT))["position"]
    assert where["epoch"] == 0 and 0 < where["samples"] < 600
    log = []
    launch(_job(dataset, tmp_path, nproc=1), log.append)  # one process: the rest of the epoch re-planned
    assert any(line.startswith("resumed epoch 1") and "re-planned for 1 ranks" in line for line in log), log
    _assert_exactly_once(tmp_path, train_keys)
    state = load_checkpoint(storage.join(str(tmp_path), CHECKPOINT))
    assert [h["epoch"] for h in state["history"]] == list(range(EPOCHS))


def test_padding_is_marked_in_the_ledger_and_reported(dataset, tmp_path):
    # 600 samples do not split over 7 ranks: 86 each, 602 in all
    result = launch(_job(dataset, tmp_path, nproc=7, batch_size=70, epochs=1))
    assert result["train/padding"] == 2.0
    lines = [line for f in ledger.read(str(tmp_path), 0).values() for line in f]
    assert sum(line.endswith(ledger.PADDING) for line in lines) == 2 and len(lines) == 602


def test_the_ledger_needs_a_local_checkpoint_dir(dataset, s3_bucket):
    with pytest.raises(TrainingError, match="sample_ledger needs a local"):
        launch(_job(dataset, f"{s3_bucket}/runs/ledger", nproc=1))
