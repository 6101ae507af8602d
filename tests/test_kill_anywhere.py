"""Kill anywhere, lose nothing (issue 13): every ingest CLI, and `visionflow train`, SIGKILLed
(the whole process group) at seeded random points, re-run to completion, and compared with an
uninterrupted run.

    .venv/bin/pytest -q tests/test_kill_anywhere.py

An ingest's kill points are drawn from ``random.Random`` seeded per ingest, uniformly over the
working part of an uninterrupted run of the same command, measured first: from its flow's
"Beginning flow run" line to its "Finished in state" line (before it are Python and torch
imports, after it the process's shutdown: a kill there can leave nothing behind). A run that
finishes before its kill point is itself checked and its output wiped, and the next kill starts
afresh. After the completing re-run the dataset root must hold exactly the uninterrupted run's
objects, byte for byte: same shard names, sha256s, sample counts, rejects, commit records and
manifest. No manifest field is excluded: a manifest records no timestamp or duration (the ingest
summaries that do, ImageNet's MLflow run and table, are not part of the dataset). Nothing else
may remain: no temp file or object under the root, no unfinished S3 multipart upload, no shard
staging folder in the subprocess's TMPDIR (MLflow's own temp files are not checked).

11 kills: MNIST ×6 and masks ×1 into S3, ImageNet ×2 and RF-Pose ×1 on local disk, training ×1.
Most of the runtime is CLI start-up (Prefect, torch, MLflow imports: ~20 launches).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tasks.data import shards, storage

ROOT = Path(__file__).resolve().parents[1]
SEED = 13
BEGAN, ENDED = "Beginning flow run", "Finished in state"


# --- running the CLI --------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    seconds: float  # from start to exit
    began: float | None  # from start to the flow's first line
    ended: float | None  # from start to the flow's last line (then the process shuts down)
    lines: list[str]

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL

    @property
    def working(self) -> float:
        return self.ended - self.began

    def tail(self) -> str:
        return "\n".join(self.lines[-40:])


def visionflow(args: list[str], env: dict, *, kill_after: float | None = None,
               kill_when: Callable[[str], bool] | None = None, timeout: float = 300) -> Run:
    """Run ``visionflow *args`` in a session of its own; SIGKILL its process group ``kill_after``
    seconds after its flow began, or at the first output line ``kill_when`` accepts."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    began: list[float] = []
    ended: list[float] = []
    trigger = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if BEGAN in line and not began:
                began.append(time.monotonic() - start)
            if ENDED in line and "Flow run" in line:
                ended.append(time.monotonic() - start)
            if kill_when is not None and kill_when(line):
                trigger.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if kill_after is not None:
            while not began and proc.poll() is None:
                time.sleep(0.02)
            if began:
                try:
                    proc.wait(timeout=max(0.0, start + began[0] + kill_after - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        elif kill_when is not None:
            while not trigger.wait(0.02) and proc.poll() is None:
                pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    return Run(proc.returncode, time.monotonic() - start, began[0] if began else None,
               ended[-1] if ended else None, lines)


@pytest.fixture
def env(prefect_harness, tmp_path) -> dict:
    """The CLI's environment: this session's Prefect server (a CLI would start its own, for tens
    of seconds), S3 endpoint and VISIONFLOW_HOME, and a TMPDIR of its own to check."""
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "tmp").mkdir()
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "TMPDIR": str(tmp_path / "tmp")}


# --- what a dataset root holds ----------------------------------------------------------------


def objects(root: str) -> dict[str, bytes]:
    """Every object under a local folder or an S3 prefix (temps included), by relative name."""
    return {name: storage.read_bytes(storage.join(root, name)) for name in storage.listdir(root)}


def wipe(root: str) -> None:
    if storage.is_s3(root):
        for name in storage.listdir(root):
            storage.delete(storage.join(root, name))
    else:
        shutil.rmtree(root, ignore_errors=True)


def assert_same_and_clean(expected: dict[str, bytes], root: str, dataset: str, env: dict) -> None:
    got = objects(root)
    assert sorted(set(got) - set(expected)) == [], "orphans beside the committed dataset"
    assert sorted(set(expected) - set(got)) == [], "objects lost"
    manifest = json.loads(got[f"{dataset}/{shards.MANIFEST}"])
    assert manifest == json.loads(expected[f"{dataset}/{shards.MANIFEST}"])
    assert got[f"{dataset}/{shards.REJECTS}"] == expected[f"{dataset}/{shards.REJECTS}"]
    assert [name for name in expected if got[name] != expected[name]] == [], "objects differ"
    for split in manifest["splits"].values():  # the manifest describes the bytes that are there
        for shard in split["shards"]:
            assert storage.sha256(storage.join(root, dataset, shard["name"])) == shard["sha256"]
    if storage.is_s3(root):
        bucket = root[len("s3://"):].split("/")[0]
        assert not storage._client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    tmp, staging = Path(env["TMPDIR"]), f"vf-staging-{os.getuid()}"
    left = [str(p.relative_to(tmp)) for p in tmp.glob("vf-*") if p.name != staging] + \
           [str(p.relative_to(tmp)) for p in tmp.glob(f"{staging}/*")]
    assert left == [], "shard staging left in the temp dir"


def kill_and_rerun(name: str, command: Callable[[str], list[str]], roots: tuple[str, str], dataset: str,
                   env: dict, kills: int) -> list[Run]:
    """The uninterrupted run into ``roots[0]``; then ``kills`` runs into ``roots[1]`` killed at
    random points, and a run to completion there; returns the killed runs."""
    reference = visionflow(command(roots[0]), env)
    assert reference.code == 0 and None not in (reference.began, reference.ended), reference.tail()
    expected = objects(roots[0])
    assert_same_and_clean(expected, roots[0], dataset, env)
    rng = random.Random(f"{SEED}-{name}")
    killed: list[Run] = []
    outran = 0
    while len(killed) < kills and outran < 2 * kills:
        run = visionflow(command(roots[1]), env, kill_after=rng.uniform(0, reference.working))
        if run.killed:
            killed.append(run)
            continue
        assert run.code == 0, run.tail()  # it finished before its kill point: complete and clean
        assert_same_and_clean(expected, roots[1], dataset, env)
        wipe(roots[1])
        outran += 1
    assert len(killed) == kills, f"{name}: {len(killed)} of {kills} kills landed"
    final = visionflow(command(roots[1]), env)
    assert final.code == 0, final.tail()
    assert_same_and_clean(expected, roots[1], dataset, env)
    print(f"{name}: uninterrupted {reference.seconds:.1f} s ({reference.working:.1f} s working); killed at "
          + ", ".join(f"{r.seconds - r.began:.2f}" for r in killed) + f" s into the flow; {outran} outran their kill; "
          f"re-run {final.seconds:.1f} s")
    return killed


# --- the ingests -------------------------------------------------------------------------------


def test_mnist_ingest_into_s3(env, idx_dir, s3_bucket):
    roots = (f"{s3_bucket}/uninterrupted", f"{s3_bucket}/killed")
    kill_and_rerun("mnist", lambda out: ["ingest", "mnist", "--source", str(idx_dir), "--out", out,
                                         "--shard-size", "40"],  # 15 train shards, 5 test
                   roots, "mnist/v1", env, kills=6)


def test_mask_ingest_into_s3(env, s3_bucket):
    roots = (f"{s3_bucket}/uninterrupted", f"{s3_bucket}/killed")
    kill_and_rerun("masks", lambda out: ["ingest", "masks", "--out", out, "--size", "64", "--train", "120",
                                         "--test-per-bucket", "5", "--shard-size", "10"],  # 12 + 6 shards
                   roots, "irregular-masks-64/seed0-train120-test5", env, kills=1)


def test_imagenet_ingest_on_local_disk(env, tmp_path, home):
    from mlflow import MlflowClient

    from photos import sample_photos
    from tasks.imagenet import ilsvrc_sample
    from tasks.track.tracking import tracking_uri

    client = MlflowClient(tracking_uri(home, os.environ))
    client.search_experiments()  # the tables made now, not in the run that sets the kill points
    tree = ilsvrc_sample.make_tree(tmp_path / "ilsvrc", classes=3, train_per_class=4, val_per_class=2,
                                   val_layout="folder", photos=sample_photos())  # 24 images, 5 rejects
    roots = (str(tmp_path / "uninterrupted"), str(tmp_path / "killed"))
    kill_and_rerun("imagenet", lambda out: ["ingest", "imagenet", "--source", str(tree.root), "--out", out,
                                            "--shard-size", "2", "--workers", "2"],  # 15 shards
                   roots, "imagenet/v1", env, kills=2)
    manifest = json.loads(Path(roots[1], "imagenet/v1/manifest.json").read_text())
    assert manifest["rejects"] == len(tree.expected_rejects) == 5
    # Each ingest logs one summary run; none a killed one made may stay RUNNING for ever.
    experiment = client.get_experiment_by_name("imagenet-ingest")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`dataset.url` = '{roots[1]}/imagenet/v1'")
    assert runs and [r.info.status for r in runs if r.info.status == "RUNNING"] == []


def test_rfpose_ingest_on_local_disk(env, tmp_path):
    from tasks.rfpose.simulator import simulate_session

    source = tmp_path / "sessions"
    for i in range(4):
        simulate_session(source / f"v{i}", seed=10 + i, seconds=3.0, rf_size=(16, 16), image_size=(48, 36),
                         clock_offset=i % 2 == 0)
    simulate_session(source / "wall", seed=20, seconds=3.0, scene="through-wall", rf_size=(16, 16),
                     image_size=(48, 36), clock_offset=True)
    shutil.copytree(source / "v0", source / "bad")
    (source / "bad/session.json").write_text('{"rf": {"fps": 30},')  # rejected: a reject to keep
    roots = (str(tmp_path / "uninterrupted"), str(tmp_path / "killed"))
    kill_and_rerun("rfpose", lambda out: ["ingest", "rfpose", "--source", str(source), "--out", out,
                                          "--window", "2"],  # 225 windows in 5 shards
                   roots, "rfpose/v1", env, kills=1)
    assert json.loads(Path(roots[1], "rfpose/v1/manifest.json").read_text())["rejects"] >= 1


# --- training ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_data(idx_dir, tmp_path_factory) -> str:
    from tasks.mnist import idx as mnist

    url = shards.dataset_url(str(tmp_path_factory.mktemp("data")), "mnist", "v1")
    mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=100)  # 600 train samples: 12 steps of 50
    return url


def test_a_killed_training_resumes_bit_for_bit_into_its_one_mlflow_run(env, mnist_data, tmp_path, home):
    """Killed at a seeded random step after a mid-epoch checkpoint, then re-run unchanged: the run
    resumes there, ends with an uninterrupted run's weights and metrics (the engine's promise
    for a resume on the same plan, tests/tasks/train/test_resume.py), and MLflow holds one run
    for it, FINISHED, with one value per epoch."""
    import torch
    from mlflow import MlflowClient

    from tasks import catalog
    from tasks.config import TrainConfig
    from tasks.track.tracking import tracking_uri
    from tasks.train.engine import CHECKPOINT, Job, load_checkpoint
    from tasks.train.launch import launch

    data = mnist_data
    settings = dict(recipe="mnist_mlp", epochs=2, batch_size=50, nproc=1, device="cpu", num_workers=0,
                    checkpoint_every_steps=3, run_name="kill-anywhere-mlp", experiment="kill-anywhere")
    uninterrupted = str(tmp_path / "uninterrupted")
    launch(Job(TrainConfig(data=data, **settings), uninterrupted, catalog.reference("mnist_mlp"),
               classes=tuple(str(d) for d in range(10))), log=lambda line: None)

    killed = str(tmp_path / "killed")
    args = ["train", "--data", data, "--checkpoint-dir", killed,
            *[a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]]
    step = random.Random(f"{SEED}-train").choice([*range(4, 12), *range(16, 24)])  # after a mid-epoch checkpoint
    epoch, at = divmod(step - 1, 12)
    seen = {"epochs": 0}

    def at_step(line: str) -> bool:
        seen["epochs"] += " - epoch " in line
        return seen["epochs"] == epoch and f"  step {at + 1}/12 " in line

    first = visionflow(args, env, kill_when=at_step)
    assert first.killed, first.tail()
    where = load_checkpoint(storage.join(killed, CHECKPOINT))["position"]
    assert where["epoch"] == epoch and 3 <= where["steps"] <= at + 1, where
    again = visionflow(args, env)
    assert again.code == 0, again.tail()
    assert any(f"resumed epoch {epoch + 1} after step {where['steps']}" in line for line in again.lines), again.tail()

    expected, got = (load_checkpoint(storage.join(d, CHECKPOINT)) for d in (uninterrupted, killed))
    assert expected["model"].keys() == got["model"].keys()
    assert all(torch.equal(expected["model"][k], got["model"][k]) for k in expected["model"])
    # Excluded: wall-clock measurements. The interrupted epoch's mean train loss is summed in two
    # parts (the checkpoint carries the first as a float64), so it may differ in its last bits.
    timing = ("perf/images_per_s", "perf/epoch_s")
    for was, now in zip(expected["history"], got["history"], strict=True):
        assert {k: v for k, v in now.items() if k not in timing} == \
               {**{k: v for k, v in was.items() if k not in timing}, "train/loss": pytest.approx(was["train/loss"], rel=1e-6)}

    client = MlflowClient(tracking_uri(home, os.environ))
    experiment = client.get_experiment_by_name("kill-anywhere")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'kill-anywhere-mlp'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert any(line.endswith(f"MLflow run {runs[0].info.run_id}") for line in again.lines), again.tail()
    history = client.get_metric_history(runs[0].info.run_id, "val/top1")
    assert [m.step for m in history] == [0, 1]
    assert [m.value for m in history] == [h["val/top1"] for h in expected["history"]]


# --- the kills that left something behind, at their exact point ------------------------------

KILLED_BUILDER = """
import os, signal, sys
from tasks.data import shards

def samples(spec):
    yield {"__key__": "k0", "txt": "0"}
    os.kill(os.getpid(), signal.SIGKILL)  # half a shard written

spec = shards.plan("val", list(range(6)), 3)[0]
shards.commit_shard(sys.argv[1], spec, {"shard_size": 3}, lambda s: (samples(s), []))
"""


def test_a_shard_half_built_by_a_killed_writer_is_removed_by_the_commit(tmp_path, monkeypatch):
    """A writer SIGKILLed while building a shard leaves the half-written tar in the local temp
    dir, in a folder of its own that nothing removed (``vf-shard-*``, one per kill, before the
    staging folder); the completing run's commit removes it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    url = str(tmp_path / "ds" / "v1")
    child = subprocess.run([sys.executable, "-c", KILLED_BUILDER, url], cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)})
    assert child.returncode == -signal.SIGKILL
    assert [p.name for p in tmp.rglob("*.tar")] == ["val-000000.tar"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    specs = shards.plan("val", list(range(6)), 3)
    records = [shards.commit_shard(url, spec, {"shard_size": 3},
                                   lambda s: ([{"__key__": f"k{i}", "txt": str(i)} for i in s.inputs], []))[0]
               for spec in specs]
    shards.write_manifest(url, dataset="ds", version="v1", specs=specs, records=records, classes=[],
                          params={"shard_size": 3}, source_fingerprint="x")
    assert [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.name != f"vf-staging-{os.getuid()}"] == []
    assert sorted(storage.listdir(url)) == ["_commits/val-000000.tar.json", "_commits/val-000001.tar.json",
                                            "manifest.json", "rejects.jsonl", "val-000000.tar", "val-000001.tar"]


def test_an_ingest_summary_run_a_kill_left_running_is_ended_by_the_next_ingest(home, tmp_path):
    """What a SIGKILL between making ImageNet's ingest summary run and ending it leaves: the run,
    RUNNING for ever beside the next ingest's. The next ingest marks it KILLED (only its own
    dataset's: the same name under another root is another dataset)."""
    from tasks.imagenet import ingest as imagenet
    from tasks.imagenet.config import ImagenetIngestConfig
    from tasks.track import tracking

    uri = tracking.tracking_uri(home, os.environ)
    cfg = ImagenetIngestConfig(source=str(tmp_path), experiment="kill-anywhere-ingest")
    url = str(tmp_path / "imagenet" / "v1")
    killed = tracking.start_run(uri, cfg.experiment, home, "imagenet-v1", {}, {"dataset.url": url})
    elsewhere = tracking.start_run(uri, cfg.experiment, home, "imagenet-v1", {}, {"dataset.url": "s3://b/imagenet/v1"})
    summary = imagenet.Summary(urls=[url], images={"train": 2}, rejects={}, shards=1, bytes=10, shards_written=1,
                               inputs_processed=2, seconds=1.0)
    run_id = imagenet.log_summary(summary, cfg, {"splits": {}}, uri, home)
    client = tracking.client(uri)
    assert [client.get_run(r).info.status for r in (killed, run_id, elsewhere)] == ["KILLED", "FINISHED", "RUNNING"]


def test_a_launch_killed_before_its_run_record_leaves_no_second_mlflow_run(mnist_data, tmp_path, home, monkeypatch):
    """A launcher stopped between making the MLflow run and writing the run record (what a SIGKILL
    there leaves) made a run nothing refers to, RUNNING for ever; the re-run made a second one
    under the same name. The re-run deletes it."""
    from tasks.config import TrainConfig
    from tasks.track import tracking
    from tasks.train import launch

    class Killed(BaseException):
        pass

    def killed(url, data):
        raise Killed

    cfg = TrainConfig(data=mnist_data, recipe="mnist_mlp", run_name="unrecorded", experiment="kill-anywhere",
                      checkpoint_dir=str(tmp_path / "ckpt"))
    uri = tracking.tracking_uri(home, os.environ)
    with monkeypatch.context() as patch:
        patch.setattr(storage, "create", killed)
        with pytest.raises(Killed):
            launch.prepare(cfg, home, uri)
    job = launch.prepare(cfg, home, uri)
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name("kill-anywhere")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'unrecorded'")
    assert [r.info.run_id for r in runs] == [job.mlflow_run_id]
