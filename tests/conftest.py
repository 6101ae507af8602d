"""Shared test fixtures: real servers on 127.0.0.1, a private VISIONFLOW_HOME, one Prefect harness.

The environment is set at import time, before anything imports Prefect or MLflow: both read
their settings once.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

_SCRATCH = Path(tempfile.mkdtemp(prefix="vf-tests-"))
os.environ.update({
    "VISIONFLOW_HOME": str(_SCRATCH / "home"),
    "PREFECT_HOME": str(_SCRATCH / "prefect"),
    "MPLCONFIGDIR": str(_SCRATCH / "matplotlib"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # moto accepts any credentials; these only keep boto3 from looking for real ones.
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
})
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
(_SCRATCH / "home").mkdir()

import pytest  # noqa: E402

from idxfiles import synthetic_digits, write_idx  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a loopback port; sets AWS_ENDPOINT_URL for boto3 and subprocesses."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL", None)


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket per test: returns its URL root ``s3://<bucket>``."""
    import boto3

    name = "vf-" + "".join(ch for ch in request.node.name.lower() if ch.isalnum())[:40]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path) -> str:
    """The same test on local disk and on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/store"


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (its first start can take a minute)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def home() -> Path:
    return Path(os.environ["VISIONFLOW_HOME"])


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    """A small MNIST-format directory (gzipped train, raw test) of synthetic digits."""
    root = tmp_path_factory.mktemp("idx")
    for split, prefix, n, gz in (("train", "train", 600, True), ("test", "t10k", 200, False)):
        images, labels = synthetic_digits(n, seed=len(split))
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return root
