"""One URL form for every byte visionflow stores: a local path or ``s3://bucket/prefix``.

S3 goes through boto3, which reads the standard ``AWS_ENDPOINT_URL`` (AWS, MinIO, Ceph or a
test server all work). Writes are atomic: a temp file renamed into place locally, a single PUT
or a completed multipart upload on S3, so a reader never sees half an object.

    from tasks.data import storage
    storage.write_bytes("s3://bucket/ds/manifest.json", b"{}")
    with storage.open_read("s3://bucket/ds/train-000000.tar") as stream: ...
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from tasks.errors import Transient


class StorageError(Transient):
    """A storage operation failed; the message names the URL and the reason, never secrets."""


def is_s3(url: str) -> bool:
    return str(url).startswith("s3://")


def join(url: str, *parts: str) -> str:
    url = str(url)
    if is_s3(url):
        return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(url, *parts))


def _split(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if not parsed.netloc:
        raise StorageError(f"{url}: an S3 URL needs a bucket (s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def _client():
    # One client per endpoint and process: boto3 clients must not cross a fork (DataLoader
    # workers), and tests point AWS_ENDPOINT_URL at different servers.
    return _client_for(os.environ.get("AWS_ENDPOINT_URL"), os.getpid())


@functools.lru_cache(maxsize=None)
def _client_for(endpoint: str | None, pid: int):
    import boto3
    from botocore.config import Config

    # Few, short retries: an unreachable endpoint must fail in seconds, not minutes.
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def _s3_error(url: str, exc: Exception) -> StorageError:
    """Translate a botocore failure into one sentence naming the URL (and the endpoint)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the AWS default endpoint")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        reasons = {
            "NoSuchBucket": "the bucket does not exist",
            "NoSuchKey": "no such object",
            "404": "no such object",
            "InvalidAccessKeyId": "the access key is not valid for this endpoint",
            "SignatureDoesNotMatch": "the secret key does not match the access key",
            "AccessDenied": "access denied",
            "403": "access denied",
        }
        reason = reasons.get(code, f"S3 error {code}")
    elif isinstance(exc, EndpointConnectionError):
        reason = "the S3 endpoint is unreachable"
    elif isinstance(exc, NoCredentialsError):
        reason = "no AWS credentials are configured"
    else:
        reason = type(exc).__name__
    return StorageError(f"{url}: {reason} (endpoint {endpoint})")


def _s3_call(url: str, fn, *args, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise _s3_error(url, exc) from None


def exists(url: str) -> bool:
    if not is_s3(url):
        return Path(url).exists()
    from botocore.exceptions import ClientError

    bucket, key = _split(url)
    try:
        _client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise _s3_error(url, exc) from None
    except Exception as exc:  # connection failures
        raise _s3_error(url, exc) from None


def sha256(url: str) -> str | None:
    """The object's sha256: hashed locally; on S3 the value recorded at upload (None if absent)."""
    if not is_s3(url):
        digest = hashlib.sha256()
        with open_read(url) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    bucket, key = _split(url)
    head = _s3_call(url, _client().head_object, Bucket=bucket, Key=key)
    return head.get("Metadata", {}).get("sha256")


def read_bytes(url: str) -> bytes:
    with open_read(url) as stream:
        return stream.read()


def open_read(url: str) -> BinaryIO:
    """A streaming reader: a local file, or the body of an S3 GET (never fully buffered)."""
    if not is_s3(url):
        try:
            return open(url, "rb")
        except OSError as exc:
            raise StorageError(f"{url}: {exc.strerror}") from None
    bucket, key = _split(url)
    return _s3_call(url, _client().get_object, Bucket=bucket, Key=key)["Body"]


def write_bytes(url: str, data: bytes) -> None:
    if not is_s3(url):
        path = Path(url)
        _local_atomic(path, lambda tmp: tmp.write_bytes(data))
        return
    bucket, key = _split(url)
    _s3_call(url, _client().put_object, Bucket=bucket, Key=key, Body=data)


def create(url: str, data: bytes) -> bool:
    """Write ``data`` to ``url`` only if nothing is there yet, atomically; False when another
    writer got there first (a hard link locally, a conditional PUT, If-None-Match, on S3)."""
    if not is_s3(url):
        path = Path(url)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.create.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
    from botocore.exceptions import ClientError

    bucket, key = _split(url)
    try:
        _client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise _s3_error(url, exc) from None


def upload_file(local_path: str | Path, url: str, checksum: str | None = None) -> None:
    """Copy a finished local file to ``url`` atomically (multipart uploads complete or vanish).

    On S3 the checksum travels as object metadata so a re-run can verify a committed shard
    without downloading it.
    """
    if not is_s3(url):
        _local_atomic(Path(url), lambda tmp: shutil.copyfile(local_path, tmp))
        return
    bucket, key = _split(url)
    from boto3.exceptions import S3UploadFailedError

    extra = {"Metadata": {"sha256": checksum}} if checksum else None
    try:
        _s3_call(url, _client().upload_file, str(local_path), bucket, key, ExtraArgs=extra)
    except S3UploadFailedError as exc:
        raise StorageError(f"{url}: upload failed ({_short(exc)})") from None


def sweep_temps(url: str) -> int:
    """Remove what killed writers left under ``url``: local ``.<name>.*.tmp`` files (from
    ``_local_atomic`` and ``create``) and, on S3, unfinished multipart uploads (invisible, but
    stored and billed). Call it only when no writer of ``url`` is running, as an ingest does at
    its commit point. Returns how many were removed."""
    if not is_s3(url):
        root = Path(url)
        temps = [p for p in root.rglob(".*.tmp") if p.is_file()] if root.exists() else []
        for path in temps:
            path.unlink(missing_ok=True)
        return len(temps)
    bucket, prefix = _split(url)
    client = _client()
    uploads = _s3_call(url, client.list_multipart_uploads, Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    pending = uploads.get("Uploads", [])
    for upload in pending:
        _s3_call(url, client.abort_multipart_upload, Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(pending)


def download_file(url: str, local_path: str | Path) -> None:
    local_path = Path(local_path)
    if not is_s3(url):
        _local_atomic(local_path, lambda tmp: shutil.copyfile(url, tmp))
        return
    bucket, key = _split(url)
    _local_atomic(local_path, lambda tmp: _s3_call(url, _client().download_file, bucket, key, str(tmp)))


def listdir(url: str) -> list[str]:
    """Names (not URLs) of the objects directly or transitively below ``url``, sorted."""
    if not is_s3(url):
        root = Path(url)
        if not root.exists():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    bucket, prefix = _split(url)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    paginator = _client().get_paginator("list_objects_v2")
    names: list[str] = []
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
    for page in _s3_call(url, list, pages):
        names.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
    return sorted(names)


def delete(url: str) -> None:
    if not is_s3(url):
        Path(url).unlink(missing_ok=True)
        return
    bucket, key = _split(url)
    _s3_call(url, _client().delete_object, Bucket=bucket, Key=key)


def check_reachable(url: str) -> None:
    """Fail early, with one clear sentence, when ``url`` cannot be written to."""
    if not is_s3(url):
        path = Path(url)
        while not path.exists():
            path = path.parent
        if not os.access(path, os.W_OK):
            raise StorageError(f"{url}: not writable ({path} is read-only for this user)")
        return
    bucket, _ = _split(url)
    _s3_call(url, _client().head_bucket, Bucket=bucket)


def _local_atomic(path: Path, write) -> None:
    """Write through a temp file in the target directory, then rename over the target."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror}") from None
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; datasets and checkpoints are shared reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "…"
