"""Storage on local disk and on an S3 server process (moto) on 127.0.0.1."""

import os
import socket

import pytest

from tasks.data import storage
from tasks.data.storage import StorageError


def test_round_trip_listing_and_checksums(storage_root, tmp_path):
    url = storage.join(storage_root, "a", "b.bin")
    assert not storage.exists(url)
    storage.write_bytes(url, b"hello")
    assert storage.exists(url) and storage.read_bytes(url) == b"hello"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # above boto3's 8 MiB multipart threshold
    import hashlib

    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    storage.upload_file(big, storage.join(storage_root, "c", "big.bin"), checksum=digest)
    assert storage.sha256(storage.join(storage_root, "c", "big.bin")) == digest
    with storage.open_read(storage.join(storage_root, "c", "big.bin")) as stream:
        assert stream.read(4) == big.read_bytes()[:4]
    assert storage.listdir(storage_root) == ["a/b.bin", "c/big.bin"]
    storage.download_file(storage.join(storage_root, "c", "big.bin"), tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == big.read_bytes()
    storage.delete(url)
    assert not storage.exists(url)


def test_local_write_is_atomic(tmp_path):
    target = tmp_path / "ckpt.pt"
    storage.write_bytes(str(target), b"old")

    def explode(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # a crash mid-write

    with pytest.raises(KeyboardInterrupt):
        storage._local_atomic(target, explode)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_missing_bucket_is_named(s3_server):
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x: the bucket does not exist"):
        storage.write_bytes("s3://no-such-bucket/x", b"1")


def test_missing_object_is_named(s3_bucket):
    with pytest.raises(StorageError, match="nothing.bin: no such object"):
        storage.read_bytes(f"{s3_bucket}/nothing.bin")


def test_unreachable_endpoint_is_one_clear_error_without_secrets(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError) as err:
        storage.check_reachable("s3://bucket/prefix")
    message = str(err.value)
    assert message.startswith("s3://bucket/prefix: the S3 endpoint is unreachable")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message


def test_s3_url_needs_a_bucket():
    with pytest.raises(StorageError, match="needs a bucket"):
        storage.read_bytes("s3:///key")


def test_create_writes_once_and_tells_the_loser(storage_root):
    url = storage.join(storage_root, "runs", "r", "run.json")
    assert storage.create(url, b"first") is True
    assert storage.create(url, b"second") is False
    assert storage.read_bytes(url) == b"first"
