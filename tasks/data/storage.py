"""One URL form for every byte visionflow stores: a local path or ``s3://bucket/prefix``.

S3 goes through boto3, which reads the standard ``AWS_ENDPOINT_URL`` (AWS, MinIO, Ceph or a
test server all work). Writes are atomic: a temp file renamed into place locally, a single PUT
or a completed multipart upload on S3, so a reader never sees half an object.

How hard S3 calls try is set once per process, from the environment (``S3Settings``):
``VISIONFLOW_S3_CONNECT_TIMEOUT`` (seconds, default 5), ``VISIONFLOW_S3_READ_TIMEOUT`` (seconds
a response may stay silent, default 60), ``VISIONFLOW_S3_MAX_ATTEMPTS`` (tries per request, the
first included, default 5) and ``VISIONFLOW_S3_RETRY_MODE`` (botocore's ``standard``, the
default, or ``adaptive``, which also slows the client down after throttling). botocore retries
a request until its response starts; a body that breaks off later is picked up where it
stopped (``_S3Body``), within the same number of attempts.

    from tasks.data import storage
    storage.write_bytes("s3://bucket/ds/manifest.json", b"{}")
    with storage.open_read("s3://bucket/ds/train-000000.tar") as stream: ...
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from http import HTTPStatus
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


@dataclass(frozen=True)
class S3Settings:
    """How long S3 calls wait and how often they try (the module docstring names the variables)."""

    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    # Five tries ride out a burst of SlowDown (throttling backs off 1, 2, 4, 8 s at most) while
    # an unreachable endpoint still fails in seconds (other errors back off 50 ms, 100 ms, …).
    max_attempts: int = 5
    retry_mode: str = "standard"

    @classmethod
    def from_env(cls) -> "S3Settings":
        return cls(_number("VISIONFLOW_S3_CONNECT_TIMEOUT", float, cls.connect_timeout),
                   _number("VISIONFLOW_S3_READ_TIMEOUT", float, cls.read_timeout),
                   _number("VISIONFLOW_S3_MAX_ATTEMPTS", int, cls.max_attempts),
                   _retry_mode(os.environ.get("VISIONFLOW_S3_RETRY_MODE") or cls.retry_mode))


def _number(name: str, kind: type, default):
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise StorageError(f"{name}={text!r}: must be a positive {'whole ' if kind is int else ''}number")
    return value


def _retry_mode(mode: str) -> str:
    if mode not in ("standard", "adaptive"):
        raise StorageError(f"VISIONFLOW_S3_RETRY_MODE={mode!r}: must be 'standard' or 'adaptive'")
    return mode


def _client():
    # One client per endpoint, settings and process: boto3 clients must not cross a fork
    # (DataLoader workers), and tests point AWS_ENDPOINT_URL at different servers.
    return _client_for(os.environ.get("AWS_ENDPOINT_URL"), S3Settings.from_env(), os.getpid())


@functools.lru_cache(maxsize=None)
def _client_for(endpoint: str | None, settings: S3Settings, pid: int):
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                    retries={"total_max_attempts": settings.max_attempts, "mode": settings.retry_mode})
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def _s3_error(url: str, exc: Exception) -> StorageError:
    """Translate a botocore failure into one sentence naming the URL (and the endpoint)."""
    return StorageError(f"{url}: {_reason(exc)} (endpoint {_endpoint()})")


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL", "the AWS default endpoint")


_REASONS = {
    "NoSuchBucket": "the bucket does not exist",
    "NoSuchKey": "no such object",
    "404": "no such object",
    "InvalidAccessKeyId": "the access key is not valid for this endpoint",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "AccessDenied": "access denied",
    "403": "access denied",
    "PreconditionFailed": "the object changed while it was being read",
}
_THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}


def _reason(exc: BaseException) -> str:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    cause = _transient_cause(exc)
    if cause is not None:
        tries = S3Settings.from_env().max_attempts  # botocore spent them all (or its retry quota)
        if isinstance(exc, ClientError):
            tries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        return _kept_failing(tries, cause)
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        return _REASONS.get(code, f"S3 error {code}")
    if isinstance(exc, EndpointConnectionError):
        return "the S3 endpoint is unreachable"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials are configured"
    return type(exc).__name__


def _transient_cause(exc: BaseException) -> str | None:
    """What a failure that botocore retries was ("503 SlowDown"); None for any other."""
    from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                     IncompleteReadError, ReadTimeoutError, ResponseStreamingError)

    settings = S3Settings.from_env()
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _REASONS or not (status >= 500 or status == 429 or code in _THROTTLING):
            return None
        return f"{status} {HTTPStatus(status).phrase}" if code in ("", str(status)) else f"{status} {code}"
    if isinstance(exc, ConnectTimeoutError):
        return f"no connection within {settings.connect_timeout:g} s"
    if isinstance(exc, ReadTimeoutError):
        return f"no response within the {settings.read_timeout:g} s read timeout"
    if isinstance(exc, (ConnectionClosedError, ResponseStreamingError)):
        return "the connection broke off"
    if isinstance(exc, IncompleteReadError):
        return "the response was cut short"
    return None


def _kept_failing(attempts: int, cause: str) -> str:
    return f"S3 kept failing after {attempts} attempt{'s' if attempts != 1 else ''} ({cause})"


def _s3_call(url: str, fn, *args, **kwargs):
    from boto3.exceptions import RetriesExceededError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise _s3_error(url, exc) from None
    except RetriesExceededError as exc:  # s3transfer's downloads retry a broken body themselves
        raise _s3_error(url, exc.last_exception) from None


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
    """A streaming reader: a local file, or the body of an S3 GET (never fully buffered) that
    picks up where it broke off."""
    if not is_s3(url):
        try:
            return open(url, "rb")
        except OSError as exc:
            raise StorageError(f"{url}: {exc.strerror}") from None
    return io.BufferedReader(_S3Body(url), buffer_size=1 << 20)


def attempts(url: str) -> int:
    """How many times a read of ``url`` may be tried: S3's attempt budget; once locally."""
    return S3Settings.from_env().max_attempts if is_s3(url) else 1


def pause(failures: int) -> None:
    """Wait before the next try after ``failures`` failed ones: botocore's jittered backoff."""
    time.sleep(random.random() * min(0.05 * 2 ** (failures - 1), 20))


class _S3Body(io.RawIOBase):
    """An object's bytes that survive the body breaking off. botocore retries a request until its
    response starts, never once the body streams: a reset, a stall past the read timeout or
    fewer bytes than the Content-Length raise from ``read()``. Here the rest is asked for again
    (a Range from the byte reached, If-Match the first ETag, so a replaced object is an error,
    not a splice), up to the attempt budget for the whole body, as s3transfer's downloads do."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self._bucket, self._key = _split(url)
        self._failures, self._offset = 0, 0
        response = self._get()
        self._size, self._etag, self._body = response.get("ContentLength"), response.get("ETag"), response["Body"]
        if self._size is None:
            raise StorageError(f"{url}: S3 answered the GET without a Content-Length (endpoint {_endpoint()})")

    def _get(self, **kwargs):
        return _s3_call(self.url, _client().get_object, Bucket=self._bucket, Key=self._key, **kwargs)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        while self._offset < self._size:
            try:
                n = self._body.readinto(buffer)
            except (BotoCoreError, HTTPError, OSError) as exc:
                self._resume(exc)
                continue
            if n:
                self._offset += n
                return n
            self._resume(None)  # a clean end before the Content-Length
        return 0

    def _resume(self, exc: BaseException | None) -> None:
        self._failures += 1
        self._body.close()
        budget = attempts(self.url)
        if self._failures >= budget:
            cause = "the body ended early" if exc is None else _transient_cause(exc) or "the connection broke off"
            where = f"{cause} at byte {self._offset} of {self._size}"
            raise StorageError(f"{self.url}: {_kept_failing(budget, where)} (endpoint {_endpoint()})")
        pause(self._failures)
        extra = {"IfMatch": self._etag} if self._etag else {}
        self._body = self._get(Range=f"bytes={self._offset}-", **extra)["Body"]

    def close(self) -> None:
        if not self.closed and hasattr(self, "_body"):
            self._body.close()
        super().close()


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
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _split(url)
    try:
        _client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise _s3_error(url, exc) from None
    except BotoCoreError as exc:
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
        # boto3 raises it while handling the ClientError of the part (or PUT) that failed.
        if exc.__context__ is not None:
            raise _s3_error(url, exc.__context__) from None
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
