"""The ImageNet ingest flow under Prefect's test harness: `visionflow ingest imagenet` into the S3
server on worker processes, the threads runner on local disk, progress and summary artifacts,
the MLflow run, a re-run that keeps every shard, and a bad source as one clean error."""

import json
import os

import pytest
from mlflow import MlflowClient

from flows import cli
from flows.imagenet import imagenet_ingest, task_runner
from photos import sample_photos
from tasks.imagenet import ilsvrc_sample
from tasks.data import shards, storage
from tasks.imagenet.config import ImagenetIngestConfig
from tasks.imagenet.ingest import ImagenetError
from tasks.track.tracking import tracking_uri


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return ilsvrc_sample.make_tree(tmp_path_factory.mktemp("ilsvrc"), classes=3, train_per_class=4,
                                   val_per_class=2, val_layout="folder",
                                   photos=sample_photos())


def _good(tree) -> dict[str, int]:
    return {s: n - sum(1 for p in tree.expected_rejects if p.startswith(s)) for s, n in tree.images.items()}


def _artifact(artifact_key: str):
    from prefect.artifacts import Artifact

    artifact = Artifact.get(artifact_key)
    assert artifact is not None, artifact_key
    return artifact


def test_cli_ingests_into_s3_on_worker_processes(prefect_harness, s3_bucket, tree, capsys, home):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    out = f"{s3_bucket}/datasets"
    cli.app(["ingest", "imagenet", "--source", str(tree.root), "--out", out, "--shard-size", "6",
             "--task-runner", "processes", "--workers", "2", "--variants", "160"], result_action="return_value")
    printed = capsys.readouterr().out
    good = _good(tree)
    assert f"{out}/imagenet/v1\n" in printed and f"{out}/imagenet/v1-short160" in printed
    table = {line.rsplit(None, 1)[0].strip(): line.split()[-1] for line in printed.splitlines() if line.strip()}
    assert table["images (train)"] == str(good["train"]) and table["rejects (empty)"] == "1"

    manifest = shards.read_manifest(f"{out}/imagenet/v1")
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == good
    assert manifest["rejects"] == len(tree.expected_rejects)
    assert storage.exists(f"{out}/imagenet/v1-short160/manifest.json")

    summary = _artifact("imagenet-ingest-summary")
    rows = {row["what"]: row["value"] for row in json.loads(summary.data)}
    assert rows["images (train)"] == good["train"] and rows["rejects (truncated)"] == 2
    assert float(_artifact("imagenet-ingest-progress").data) == 100.0
    with get_client(sync_client=True) as client:
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[summary.flow_run_id]))
        runs = client.read_task_runs(flow_run_filter=this_run)
    writes = [r for r in runs if r.name.startswith("write-imagenet-shard")]
    assert len(writes) == len(manifest["splits"]["train"]["shards"]) + len(manifest["splits"]["val"]["shards"])
    assert {r.state.type.value for r in writes} == {"COMPLETED"}

    client = MlflowClient(tracking_uri(home, os.environ))
    experiment = client.get_experiment_by_name("imagenet-ingest")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`dataset.url` = '{out}/imagenet/v1'")
    assert run.info.status == "FINISHED" and run.data.params["source"] == str(tree.root)
    assert run.data.metrics["ingest/images/train"] == good["train"]
    assert run.data.metrics["ingest/rejects/decompression-bomb"] == 1
    assert run.data.metrics["perf/images_per_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"ingest_summary.md", "ingest_summary.json"}


def test_threads_runner_on_local_disk_and_a_rerun_keeps_every_shard(prefect_harness, tree, tmp_path):
    cfg = ImagenetIngestConfig(source=str(tree.root), out=str(tmp_path), shard_size=8, task_runner="threads")
    first = imagenet_ingest(cfg)
    assert first["images"] == _good(tree) and first["rejects"]["not-an-image"] == 1
    tars = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "imagenet" / "v1").glob("*.tar")}
    again = imagenet_ingest(cfg)
    assert again["images"] == first["images"] and again["images_per_s"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "imagenet" / "v1").glob("*.tar")} == tars


def test_a_bad_source_is_one_clean_error(prefect_harness, tmp_path):
    with pytest.raises(SystemExit) as exited:
        cli.app(["ingest", "imagenet", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path)],
                result_action="return_value")
    assert exited.value.code == 1


@pytest.mark.parametrize("runner, package", [("dask", "prefect-dask"), ("ray", "prefect-ray")])
def test_cluster_runners_name_their_package(runner, package):
    cfg = ImagenetIngestConfig(source="/data", task_runner=runner, cluster_address="tcp://127.0.0.1:8786")
    try:
        __import__(package.replace("-", "_"))
    except ImportError:
        with pytest.raises(ImagenetError, match=f"pip install {package}"):
            task_runner(cfg)
    else:
        assert type(task_runner(cfg)).__name__.endswith("TaskRunner")
