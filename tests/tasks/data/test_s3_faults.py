"""Ingest and training reads through S3 faults (500, 503, SlowDown, resets, stalls, truncated
bodies) injected by the proxy of ``tests/s3_faults.py`` in front of the moto server: they survive
at a steady fault rate, no partial object ever shows, and endless faults end in one clear line.

Each test prints what its proxy injected (``pytest -rP`` shows it).
"""

from __future__ import annotations

import hashlib
import os
import re
import time

import boto3
import pytest
from torch.utils.data import DataLoader

from s3_faults import KINDS, S3FaultProxy
from tasks.data import shards, storage
from tasks.data.reader import ShardStream, read_shard, shards_of
from tasks.data.storage import StorageError
from tasks.errors import explain
from tasks.mnist import idx as mnist


@pytest.fixture
def faulty(s3_server, monkeypatch):
    """``faulty(rate, …)``: a fault proxy in front of the S3 server, and the code under test
    pointed at it (a new endpoint, so a new boto3 client) with short timeouts and retries."""
    proxies = []

    def start(rate, *, read_timeout=1.0, max_attempts=10, mode="standard", **kwargs):
        proxy = S3FaultProxy(s3_server, rate=rate, stall_s=2 * read_timeout, **kwargs)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("VISIONFLOW_S3_READ_TIMEOUT", str(read_timeout))
        monkeypatch.setenv("VISIONFLOW_S3_MAX_ATTEMPTS", str(max_attempts))
        monkeypatch.setenv("VISIONFLOW_S3_RETRY_MODE", mode)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def direct(s3_server):
    """A plain client of the S3 server itself, to see what really got stored."""
    return boto3.client("s3", endpoint_url=s3_server)


@pytest.fixture
def toy(s3_bucket, tmp_path):
    """Twelve shards of 10 samples with 3 KB payloads, written without faults: (url, {key: payload})."""
    url = f"{s3_bucket}/toy/v1"
    payloads = {f"s{i:03d}": hashlib.sha256(str(i).encode()).digest() * 96 for i in range(120)}
    keys = sorted(payloads)
    specs = shards.plan("train", keys, 10)
    build = lambda spec: ([{"__key__": k, "bin": payloads[k], "cls": int(k[1:]) % 10} for k in spec.inputs], [])
    records = [shards.commit_shard(url, spec, {}, build, scratch=tmp_path)[0] for spec in specs]
    shards.write_manifest(url, dataset="toy", version="v1", specs=specs, records=records, classes=[],
                          params={}, source_fingerprint="fp")
    return url, payloads


def _is_shard_get(method, target):
    return method == "GET" and ".tar" in target


def _read_all(url):
    return {split: [s for ref in shards_of(url, split) for s in read_shard(ref.url, ref.sha256)]
            for split in shards.read_manifest(url)["splits"]}


def _key_and_payload(sample):
    return sample["__key__"], sample["bin"]


def test_ingest_and_read_back_survive_every_fault_kind(faulty, direct, s3_bucket, idx_dir, tmp_path):
    reference = str(tmp_path / "local")
    expected = mnist.ingest(idx_dir, reference, "mnist", "v1", shard_size=100)
    url = f"{s3_bucket}/mnist/v1"
    proxy = faulty(0.3, seed=3)
    assert mnist.ingest(idx_dir, url, "mnist", "v1", shard_size=100) == expected
    assert _read_all(url) == _read_all(reference)
    print(proxy.report())
    assert set(proxy.counts) == set(KINDS), proxy.report()  # every kind injected, and survived
    bucket, prefix = url[len("s3://"):].split("/", 1)
    stored = direct.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]
    assert sorted(o["Key"][len(prefix) + 1:] for o in stored) == storage.listdir(reference)
    for shard in (s for split in expected["splits"].values() for s in split["shards"]):
        body = direct.get_object(Bucket=bucket, Key=f"{prefix}/{shard['name']}")["Body"].read()
        assert body == open(os.path.join(reference, shard["name"]), "rb").read()


def test_training_read_gets_every_sample_exactly_once(faulty, toy):
    url, payloads = toy
    refs = shards_of(url, "train")
    proxy = faulty(0.3, seed=5, mode="adaptive")
    for epoch in (3, 4):
        seen = []
        for rank in range(2):
            stream = ShardStream(refs, _key_and_payload, rank=rank, world_size=2, seed=1, policy="exact")
            stream.set_epoch(epoch)
            seen.extend(DataLoader(stream, batch_size=None, num_workers=2))
        assert sorted(key for key, _ in seen) == sorted(payloads)
        assert all(payload == payloads[key] for key, payload in seen)
    print(proxy.report())
    assert sum(proxy.counts.values()) >= 5, proxy.report()


def test_truncated_bodies_are_detected_and_read_again(faulty, toy):
    url, payloads = toy
    expected = sorted(payloads.items())
    # Cut short behind the full Content-Length: botocore notices, the body resumes with a Range.
    proxy = faulty(0.5, kinds=("truncate",), match=_is_shard_get, seed=2)
    assert sorted(map(_key_and_payload, _read_all(url)["train"])) == expected
    print(proxy.report())
    assert proxy.details["truncate:body"] >= 3, proxy.report()
    # Cut short behind a Content-Length rewritten to match: only tar framing or sha256 can tell.
    proxy = faulty(0.5, kinds=("short",), match=_is_shard_get, seed=2)
    assert sorted(map(_key_and_payload, _read_all(url)["train"])) == expected
    print(proxy.report())
    assert proxy.details["short:body"] >= 2, proxy.report()
    proxy = faulty(1.0, kinds=("short",), match=_is_shard_get, max_attempts=3)
    ref = shards_of(url, "train")[0]
    with pytest.raises(shards.ShardError, match=rf"^{re.escape(ref.url)}: .*\(read 3 times\)$"):
        list(read_shard(ref.url, ref.sha256))
    print(proxy.report())
    assert proxy.details["short:body"] == 3


def test_a_local_shard_cut_at_a_member_boundary_is_refused(tmp_path):
    path = tmp_path / "cut.tar"
    shards.write_tar(({"__key__": f"k{i}", "cls": i} for i in range(3)), path)
    path.write_bytes(path.read_bytes()[: 4 * 512])  # two whole members, no end-of-archive marker
    with pytest.raises(shards.ShardError, match="without tar's end-of-archive marker"):
        list(read_shard(str(path)))


def _bucket_listing(direct, bucket):
    return [o["Key"] for o in direct.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_failed_uploads_leave_nothing_visible(faulty, direct, s3_bucket, s3_server, tmp_path, monkeypatch):
    bucket = s3_bucket[len("s3://"):]
    # A single PUT whose body never fully arrives: half of it reaches the server, every time.
    proxy = faulty(1.0, kinds=("reset:request",), match=lambda m, t: m == "PUT", max_attempts=3)
    with pytest.raises(StorageError, match=r"S3 kept failing after 3 attempts \(the connection broke off\)"):
        storage.write_bytes(f"{s3_bucket}/single.bin", os.urandom(1 << 20))
    print(proxy.report())
    assert proxy.details["reset:request"] == 3 and _bucket_listing(direct, bucket) == []

    # A multipart upload whose second part keeps failing: s3transfer aborts it, nothing shows.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(17 << 20))  # three parts of boto3's 8 MiB
    part_two = lambda m, t: m == "PUT" and "partNumber=2&" in t + "&"
    proxy = faulty(1.0, match=part_two, max_attempts=3, read_timeout=0.5, seed=1)
    with pytest.raises(StorageError, match=rf"^{s3_bucket}/big.bin: S3 kept failing after 3 attempts"):
        storage.upload_file(big, f"{s3_bucket}/big.bin")
    print(proxy.report())
    assert _bucket_listing(direct, bucket) == []
    assert not direct.list_multipart_uploads(Bucket=bucket).get("Uploads")

    # … and when its abort fails too, the upload stays invisible until the commit's sweep.
    abort = lambda m, t: m == "DELETE" and "uploadId=" in t
    proxy = faulty(1.0, match=lambda m, t: part_two(m, t) or abort(m, t), max_attempts=3, kinds=("500",))
    with pytest.raises(StorageError, match=r"S3 kept failing after 3 attempts \(500 InternalError\)"):
        storage.upload_file(big, f"{s3_bucket}/pending/big.bin")
    print(proxy.report())
    assert _bucket_listing(direct, bucket) == [] and storage.listdir(f"{s3_bucket}/pending") == []
    assert len(direct.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 1
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    assert storage.sweep_temps(f"{s3_bucket}/pending") == 1
    assert not direct.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_endless_faults_end_in_one_clear_line(faulty, toy, capfd, caplog):
    url, _ = toy
    shard = shards_of(url, "train")[0]
    proxy = faulty(1.0, max_attempts=3, read_timeout=0.5, seed=4)
    bucket = url[len("s3://"):].split("/")[0]
    line = re.compile(rf"^s3://{bucket}/\S+: S3 kept failing after 3 attempts \([^()\n]+\) "
                      rf"\(endpoint {re.escape(proxy.url)}\)$")
    operations = {
        "read": lambda: storage.read_bytes(storage.join(url, shards.MANIFEST)),
        "write": lambda: storage.write_bytes(storage.join(url, "new.bin"), b"x" * 4096),
        "list": lambda: storage.listdir(storage.join(url, "_commits")),
        "shard": lambda: list(read_shard(shard.url, shard.sha256)),
    }
    lines = []
    for name, operation in operations.items():
        began = time.monotonic()
        with pytest.raises(StorageError) as failure:
            operation()
        message, took = str(failure.value), time.monotonic() - began
        lines.append(f"{name}: {message} [{took:.1f} s]")
        assert line.match(message), message
        assert explain(failure.value) == message and failure.value.__suppress_context__
        assert took < 20
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR") or r.exc_info]
    print("\n".join(lines), proxy.report(), sep="\n")
    assert sum(proxy.counts.values()) == proxy.requests  # every request failed


def test_s3_settings_come_from_the_environment(monkeypatch, s3_server):
    monkeypatch.setenv("VISIONFLOW_S3_READ_TIMEOUT", "7.5")
    monkeypatch.setenv("VISIONFLOW_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("VISIONFLOW_S3_RETRY_MODE", "adaptive")
    client = storage._client()
    assert (client.meta.config.read_timeout, client.meta.config.connect_timeout) == (7.5, 5.0)
    assert client.meta.config.retries == {"total_max_attempts": 2, "mode": "adaptive"}
    assert storage._client() is client
    monkeypatch.setenv("VISIONFLOW_S3_MAX_ATTEMPTS", "4")
    assert storage._client() is not client  # new settings, new client (and so a new endpoint)
    for name, value, complaint in (("VISIONFLOW_S3_MAX_ATTEMPTS", "0", "positive whole number"),
                                   ("VISIONFLOW_S3_READ_TIMEOUT", "soon", "positive number"),
                                   ("VISIONFLOW_S3_RETRY_MODE", "legacy", "'standard' or 'adaptive'")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(StorageError, match=f"^{name}={value!r}: must be .*{complaint}"):
                storage._client()
