"""Shard planning, deterministic bytes, commit/skip, crash-and-resume, on local disk and S3."""

import io
import os
import json
import random
import tarfile

import pytest

from tasks.mnist import idx as mnist
from tasks.data import shards, storage
from tasks.data.reader import read_shard
from tasks.data.shards import ShardError


def _samples_of(spec):
    return [{"__key__": f"{spec.split}-{i:04d}", "txt": f"item {i}", "cls": i % 3} for i in spec.inputs]


def _ingest(url, specs, params, fail_at=None):
    """Commit every shard; raise in the middle of shard ``fail_at`` (a crash mid-ingest)."""
    records, written = [], []

    def build(spec):
        if spec.index == fail_at:
            def crashing():
                yield from _samples_of(spec)[:3]
                raise RuntimeError("worker killed")
            return crashing(), []
        rejects = [{"input": f"bad-{spec.index}", "reason": "unreadable"}]
        return _samples_of(spec), rejects

    for spec in specs:
        record, was_written = shards.commit_shard(url, spec, params, build)
        records.append(record)
        written.append(was_written)
    manifest = shards.write_manifest(url, dataset="toy", version="v1", specs=specs, records=records,
                                     classes=["a", "b", "c"], params=params, source_fingerprint="fp")
    return manifest, written


def test_plan_is_a_pure_function_of_inputs():
    specs = shards.plan("train", list(range(10)), 4)
    assert [s.inputs for s in specs] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [s.name for s in specs] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert shards.plan_digest(specs[0], {"q": 1}) == shards.plan_digest(shards.plan("train", list(range(10)), 4)[0], {"q": 1})
    assert shards.plan_digest(specs[0], {"q": 1}) != shards.plan_digest(specs[0], {"q": 2})


def test_tar_bytes_are_deterministic(tmp_path):
    spec = shards.plan("train", list(range(5)), 5)[0]
    shards.write_tar(_samples_of(spec), tmp_path / "a.tar")
    shards.write_tar(_samples_of(spec), tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


@pytest.mark.parametrize("count", [0, 1, 9])
def test_tar_bytes_are_those_tarfile_writes(tmp_path, count):
    """The hand-made headers against the standard library's, long (prefix-split) names included."""
    rng = random.Random(count)
    samples = [{"__key__": f"{'d' * rng.randint(1, 90)}/{i}{'x' * rng.randint(1, 95)}",
                "jpg": rng.randbytes(rng.randint(0, 2000)), "cls": i, "json": {"i": i}} for i in range(count)]
    shards.write_tar(samples, tmp_path / "ours.tar")
    with tarfile.open(tmp_path / "tarfiles.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for name, data in shards.encode_sample(sample):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                    len(data), 0, 0o444, 0, 0, "", ""
                tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "tarfiles.tar").read_bytes()
    assert [s["__key__"] for s in read_shard(str(tmp_path / "ours.tar"))] == [s["__key__"] for s in samples]


@pytest.mark.parametrize("sample, reason", [
    ({"__key__": "../etc/passwd", "txt": "x"}, "not a safe tar member name"),
    ({"__key__": "/abs", "txt": "x"}, "not a safe tar member name"),
    ({"__key__": "ok", "../x": "x"}, "not a safe tar member suffix"),
    ({"__key__": "ok", "pkl": object()}, "cannot store a object"),
])
def test_unsafe_members_are_refused(tmp_path, sample, reason):
    with pytest.raises(ShardError, match=reason):
        shards.write_tar([sample], tmp_path / "x.tar")


def test_crash_then_rerun_gives_the_same_dataset(storage_root):
    specs = shards.plan("train", list(range(23)), 5)
    params = {"shard_size": 5}
    clean_url, crash_url = storage.join(storage_root, "clean"), storage.join(storage_root, "crash")
    clean, _ = _ingest(clean_url, specs, params)

    with pytest.raises(RuntimeError, match="worker killed"):
        _ingest(crash_url, specs, params, fail_at=2)
    assert not storage.exists(storage.join(crash_url, "manifest.json"))  # nothing committed
    assert not storage.exists(storage.join(crash_url, "train-000002.tar"))  # no half shard

    resumed, written = _ingest(crash_url, specs, params)
    assert written == [False, False, True, True, True]  # committed shards were not rewritten
    assert resumed == clean
    assert storage.read_bytes(storage.join(crash_url, "manifest.json")) == \
        storage.read_bytes(storage.join(clean_url, "manifest.json"))
    keys = [s["__key__"] for spec in specs for s in read_shard(storage.join(crash_url, spec.name))]
    assert keys == [f"train-{i:04d}" for i in range(23)]  # none missing, none twice
    rejects = storage.read_bytes(storage.join(crash_url, "rejects.jsonl")).decode().splitlines()
    assert [json.loads(r)["input"] for r in rejects] == [f"bad-{i}" for i in range(5)]
    assert resumed["rejects"] == 5 and resumed["splits"]["train"]["samples"] == 23


def test_damaged_shard_is_rebuilt(tmp_path):
    url = str(tmp_path / "ds")
    specs = shards.plan("train", list(range(10)), 5)
    _ingest(url, specs, {})
    (tmp_path / "ds" / "train-000001.tar").write_bytes(b"garbage")
    manifest, written = _ingest(url, specs, {})
    assert written == [False, True]
    assert storage.sha256(f"{url}/train-000001.tar") == manifest["splits"]["train"]["shards"][1]["sha256"]


def test_a_version_is_immutable(tmp_path):
    url = str(tmp_path / "ds")
    _ingest(url, shards.plan("train", list(range(4)), 2), {"shard_size": 2})
    assert shards.check_compatible(url, {"shard_size": 2}, "fp")["splits"]["train"]["samples"] == 4
    with pytest.raises(ShardError, match="already holds a dataset built from other inputs"):
        shards.check_compatible(url, {"shard_size": 3}, "fp")


def test_manifest_requires_every_planned_shard(tmp_path):
    specs = shards.plan("train", list(range(4)), 2)
    record, _ = shards.commit_shard(str(tmp_path), specs[0], {}, lambda s: (_samples_of(s), []))
    with pytest.raises(ShardError, match="shards not written: \\['train-000001.tar'\\]"):
        shards.write_manifest(str(tmp_path), dataset="t", version="v1", specs=specs, records=[record],
                              classes=[], params={}, source_fingerprint="")


def test_missing_manifest_explains_itself(tmp_path):
    with pytest.raises(ShardError, match="no manifest.json"):
        shards.read_manifest(str(tmp_path))


def test_mnist_ingest_to_s3_round_trips(idx_dir, s3_bucket):
    url = shards.dataset_url(s3_bucket + "/datasets", "mnist", "v1")
    manifest = mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=256)
    assert manifest["splits"]["train"]["samples"] == 600
    assert [s["samples"] for s in manifest["splits"]["train"]["shards"]] == [256, 256, 88]
    assert manifest["classes"] == [str(d) for d in range(10)]
    first = next(read_shard(f"{url}/train-000000.tar"))
    data = mnist.load_split(idx_dir, "train")
    from tasks.data.reader import decode_image

    assert decode_image(first["png"]).squeeze(0).numpy().tolist() == data.images[0].tolist()
    assert int(first["cls"]) == int(data.labels[0])
    again = mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=256)  # a re-run changes nothing
    assert again == manifest


def test_the_commit_sweeps_what_killed_writers_left(storage_root):
    """A SIGKILL between a temp's creation and its rename (local), or mid multipart upload (S3),
    leaves debris beside the data; the next run's commit removes it."""
    specs = shards.plan("val", list(range(6)), 3)
    url = storage.join(storage_root, "swept")
    if storage.is_s3(url):
        bucket, key = url[len("s3://"):].split("/", 1)
        storage._client().create_multipart_upload(Bucket=bucket, Key=f"{key}/val-000001.tar")
    else:
        debris = [f"{url}/_commits/.val-000001.tar.json.k1ll3d.tmp", f"{url}/.val-000000.tar.x9.tmp"]
        for path in debris:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").close()
    _ingest(url, specs, {"shard_size": 3})
    if storage.is_s3(url):
        assert not storage._client().list_multipart_uploads(Bucket=bucket, Prefix=key + "/").get("Uploads")
    else:
        assert not any(os.path.exists(p) for p in debris)
        assert sorted(os.listdir(url)) == ["_commits", "manifest.json", "rejects.jsonl", "val-000000.tar", "val-000001.tar"]
