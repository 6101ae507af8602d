"""The ImageNet ingest's shard tasks on real engines: ``--task-runner ray --cluster-address`` on a
Ray head started here and ``--task-runner dask --cluster-address`` on a dask.distributed
LocalCluster of two worker processes, both on 127.0.0.1, commit byte for byte the datasets that
threads commit: the same shards, manifests, rejects and commit records. Without an address each
engine starts one on this machine, sized by ``--workers``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("prefect_ray")
pytest.importorskip("prefect_dask")
psutil = pytest.importorskip("psutil")

from tasks.ops.processes import free_port  # noqa: E402
from flows import cli  # noqa: E402
from flows.imagenet import _quote, task_runner  # noqa: E402
from tasks.data import shards  # noqa: E402
from photos import sample_photos  # noqa: E402
from tasks.imagenet import ilsvrc_sample  # noqa: E402
from tasks.imagenet.config import ImagenetIngestConfig  # noqa: E402
from tasks.imagenet.ingest import ImagenetError  # noqa: E402

# Ray swaps 127.0.0.1 for the machine's address unless told it is a one-node cluster (as on
# macOS): then the head and every driver and worker stay on loopback.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SHARD_SIZE = 7


class RayHead:
    """``ray start --head --block`` on loopback ports of its own, in a short temp dir (Ray's
    socket paths must fit 107 bytes). It starts in the background; ``address`` waits for it."""

    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="vf-ray-"))
        port = free_port()
        ports = [x for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
                 for x in (flag, str(free_port()))]
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address",
             "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
             "--disable-usage-stats", "--temp-dir", str(self.temp), *ports],
            env={**os.environ, **RAY_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self._address = f"127.0.0.1:{port}"

    @property
    def address(self) -> str:
        deadline = time.monotonic() + 120
        while not any("raylet" in p.name() for p in self.children()):
            assert self.proc.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        return self._address

    def children(self) -> list:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def worker_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.temp.glob("session_*/logs/worker-*"))

    def stop(self) -> None:
        """By its pid and its children's: ``ray stop`` would stop every Ray on the machine."""
        started = self.children()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for proc in started:
            if proc.is_running():
                proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    from ray._private import ray_constants

    with pytest.MonkeyPatch.context() as patch:
        for name, value in RAY_ENV.items():  # for the driver, ray.init in this process
            patch.setenv(name, value)
        # read when ray is imported, which may have happened already
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        head = RayHead()
        try:
            yield head
        finally:
            head.stop()


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return ilsvrc_sample.make_tree(tmp_path_factory.mktemp("ilsvrc"), classes=3, train_per_class=8,
                                   val_per_class=3, photos=sample_photos())


def ingest(tree, out: Path, *runner: str) -> dict[str, str]:
    """The CLI's ingest with a 96 px variant; returns every file it wrote → its sha256."""
    cli.app(["ingest", "imagenet", "--source", str(tree.root), "--out", str(out), "--shard-size", str(SHARD_SIZE),
             "--size", "64", "--variants", "96", *runner], result_action="return_value")
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def on_threads(prefect_harness, tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("threads")
    files = ingest(tree, out, "--task-runner", "threads")
    manifest = json.loads((out / "imagenet" / "v1" / "manifest.json").read_text())
    return files, manifest


def shard_names(manifest: dict) -> list[str]:
    return [shard["name"] for split in manifest["splits"].values() for shard in split["shards"]]


# The Ray head (its own fixture, first) starts in the background while the threads ingest runs.
def test_ray_head_writes_what_threads_write(ray_head, on_threads, tree, tmp_path):
    files, manifest = on_threads
    assert ingest(tree, tmp_path, "--task-runner", "ray", "--cluster-address", ray_head.address) == files
    logs = ray_head.worker_logs()  # each shard was written by a worker of that head
    assert all(f"{name}: wrote" in logs for name in shard_names(manifest)), logs[-2000:]


def test_dask_cluster_writes_what_threads_write(dask_cluster, on_threads, tree, tmp_path):
    files, manifest = on_threads
    scheduler = dask_cluster.scheduler
    since = scheduler.get_task_stream_index()
    address = dask_cluster.scheduler_address
    assert ingest(tree, tmp_path, "--task-runner", "dask", "--cluster-address", address) == files
    ran = scheduler.get_task_stream(start_index=since)
    assert len(ran) == len(shard_names(manifest))
    assert {r["worker"] for r in ran} <= set(dask_cluster.scheduler_info["workers"])


def test_the_threads_reference_holds_every_image_and_reject(tree, on_threads):
    files, manifest = on_threads
    good = {s: n - sum(1 for p in tree.expected_rejects if p.startswith(s)) for s, n in tree.images.items()}
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == good
    assert manifest["rejects"] == len(tree.expected_rejects)
    names = shard_names(manifest)
    assert len(names) == sum(-(-n // SHARD_SIZE) for n in tree.images.values()) == 7
    for version in ("v1", "v1-short96"):
        assert {f"imagenet/{version}/{n}" for n in names} < files.keys()
        assert f"imagenet/{version}/manifest.json" in files and f"imagenet/{version}/rejects.jsonl" in files


def test_without_an_address_each_engine_starts_one_here_sized_by_workers():
    def runner(**kw):
        return task_runner(ImagenetIngestConfig(source="/data", workers=3, **kw))

    dask = runner(task_runner="dask")
    assert dask.address is None
    assert dask.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True}
    ray = runner(task_runner="ray")
    assert ray.address is None and ray.init_kwargs["num_cpus"] == 3
    assert runner(task_runner="ray", cluster_address="ray://127.0.0.1:10001").address == "ray://127.0.0.1:10001"
    with pytest.raises(ImagenetError, match="cluster_address is for task_runner=dask or ray, not threads"):
        runner(task_runner="threads", cluster_address="tcp://127.0.0.1:8786")


def test_quoted_task_inputs_survive_pickling_to_a_worker():
    import cloudpickle
    from prefect.utilities.annotations import quote
    from prefect.utilities.engine import resolve_inputs_sync

    spec = shards.ShardSpec("train", 3, (("a.JPEG", 0, "a"),))
    # Prefect's own comes back wrapping a tuple; when this fails, Prefect fixed it: drop _quote
    assert cloudpickle.loads(cloudpickle.dumps(quote(spec))).unwrap() == (spec,)
    sent = cloudpickle.loads(cloudpickle.dumps({"spec": _quote(spec)}))
    assert resolve_inputs_sync(sent) == {"spec": spec}
