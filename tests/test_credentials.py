"""No credential leaves the environment: a real MNIST pipeline runs as the ``visionflow`` CLI
with marker credentials (AWS keys and session token, MLflow's and Prefect's auth variables),
then ``visionflow train`` with a password in the tracking URI's userinfo, which it refuses
(the URI is recorded in run records, checkpoints and logs). Every place they write is searched for
the markers: its stdout and stderr, every file under its home (logs, run.json, checkpoints,
Prefect's home), every object in the S3 bucket (shards, manifests, checkpoints), the MLflow
server's store (database, artifacts, and through its API every run's params, tags, metric names,
inputs and logged models) and the Prefect API (flow runs and their parameters and states, task
runs, logs, artifacts, deployments, variables, blocks) plus Prefect's database file.

Each scan is shown to see what the pipeline wrote (a value it must hold) and to find a planted
marker, so an empty result means the credentials are absent, not that the scan looked nowhere.
"""

from __future__ import annotations

import gzip
import io
import os
import secrets
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tasks.ops import processes, stack

ROOT = Path(__file__).resolve().parents[1]


def _markers() -> dict[str, str]:
    m = {name: f"vfleak{name}{secrets.token_hex(8)}" for name in (
        "secretkey", "session", "uripass", "mlflowpass", "mlflowtoken", "prefectkey", "prefectauth")}
    m["accesskey"] = "AKIAMARKER" + secrets.token_hex(5).upper()  # AWS's 20-character form
    return m


MARKERS = _markers()
PLANT = f"vfplanted{secrets.token_hex(8)}"  # put into each scanned place by the test itself


def _credential_env(mlflow_port: int) -> dict[str, str]:
    """The pipeline's credentials: the AWS ones boto3 signs with, MLflow's basic auth (the
    server has none and ignores it) and Prefect's key and auth string (likewise)."""
    m = MARKERS
    return {
        "AWS_ACCESS_KEY_ID": m["accesskey"],
        "AWS_SECRET_ACCESS_KEY": m["secretkey"],
        "AWS_SESSION_TOKEN": m["session"],
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "MLFLOW_TRACKING_USERNAME": "vf",
        "MLFLOW_TRACKING_PASSWORD": m["mlflowpass"],
        "MLFLOW_TRACKING_TOKEN": m["mlflowtoken"],
        "PREFECT_API_KEY": m["prefectkey"],
        "PREFECT_API_AUTH_STRING": f"vf:{m['prefectauth']}",
    }


def _password_uri(mlflow_port: int) -> str:
    """A tracking URI with the password in its userinfo: refused, since the URI is recorded."""
    return f"http://vf:{MARKERS['uripass']}@127.0.0.1:{mlflow_port}"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server on SQLite with proxied local artifacts, as `stack up` runs one."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = processes.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING"))}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts")]
    proc = processes.spawn(cmd, log=root / "server.log", env=env, cwd=root)
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/health", proc=proc, timeout=120)
        yield port, root
    finally:
        processes.stop(proc)


@pytest.fixture(scope="module")
def run(prefect_harness, s3_server, mlflow_server, idx_dir, tmp_path_factory):
    """The pipeline, once, as a CLI subprocess with the marker credentials in its environment."""
    import boto3
    from prefect.settings import PREFECT_API_URL

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="creds")
    port, mlflow_root = mlflow_server
    scratch = tmp_path_factory.mktemp("creds")
    env = {**os.environ, **_credential_env(port),
           "VISIONFLOW_HOME": str(scratch / "home"), "PREFECT_HOME": str(scratch / "prefect"),
           "MPLCONFIGDIR": str(scratch / "matplotlib"), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    cmd = [sys.executable, "-m", "flows.cli", "pipeline", "mnist", "--source", str(idx_dir),
           "--out", "s3://creds/datasets", "--epochs", "1", "--max-steps-per-epoch", "2", "--nproc", "1",
           "--run-name", "creds"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    live = _environ(proc.pid)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    # The same credentials, plus the password in the tracking URI: training refuses to start.
    refused = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--data", "s3://creds/datasets/mnist/v1",
                              "--run-name", "refused"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**env, "MLFLOW_TRACKING_URI": _password_uri(port)})
    return {"stdout": out, "stderr": err, "environ": live, "home": scratch, "refused": refused,
            "mlflow_uri": f"http://127.0.0.1:{port}", "mlflow_root": mlflow_root}


def _environ(pid: int) -> dict[bytes, bytes]:
    """The running process's own environment (read back from /proc, once exec has filled it)."""
    for _ in range(100):
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        if b"VISIONFLOW_HOME=" in raw:
            return dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} shows no environment")


# -- where to look -----------------------------------------------------------------------------

def _readable(data: bytes) -> list[bytes]:
    """The bytes, and what a gzip or zip (torch checkpoints, MLflow models) holds inside."""
    out = [data]
    if data[:2] == b"\x1f\x8b":
        out.append(gzip.decompress(data))
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            out += [z.read(name) for name in z.namelist()]
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): b"\n".join(_readable(p.read_bytes())) for p in sorted(root.rglob("*")) if p.is_file()}


def _bucket(endpoint: str, bucket: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {f"s3://{bucket}/{k}": b"\n".join(_readable(s3.get_object(Bucket=bucket, Key=k)["Body"].read()))
            for k in keys}


def _mlflow(uri: str) -> dict[str, bytes]:
    """Every experiment and run (deleted ones too): params, tags, metric names, inputs, models."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    out = {}
    for exp in client.search_experiments(view_type=ViewType.ALL):
        out[f"mlflow experiment {exp.name}"] = repr((exp.name, exp.artifact_location, exp.tags)).encode()
        for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000):
            inputs = [(d.dataset.name, d.dataset.source, d.dataset.profile, d.tags) for d in r.inputs.dataset_inputs]
            out[f"mlflow run {r.info.run_id}"] = repr((r.info.run_name, r.info.artifact_uri, r.data.params,
                                                       r.data.tags, sorted(r.data.metrics), inputs)).encode()
        for m in client.search_logged_models(experiment_ids=[exp.experiment_id]):
            out[f"mlflow model {m.model_id}"] = repr((m.name, m.params, m.tags, m.artifact_location)).encode()
    return out


def _paged(read, **kwargs) -> list:
    items, offset = [], 0
    while batch := read(limit=200, offset=offset, **kwargs):
        items += batch
        offset += len(batch)
    return items


def _prefect() -> dict[str, bytes]:
    """The Prefect API: every flow run (parameters, states), task run, log, artifact, deployment,
    variable and block document, as JSON."""
    from prefect.client.orchestration import get_client

    out = {}
    with get_client(sync_client=True) as client:
        for fr in _paged(client.read_flow_runs):
            states = client.read_flow_run_states(fr.id)
            out[f"prefect flow run {fr.name}"] = (fr.model_dump_json() + "".join(s.model_dump_json() for s in states)).encode()
        for tr in _paged(client.read_task_runs):
            out[f"prefect task run {tr.name}"] = tr.model_dump_json().encode()
        out["prefect logs"] = "\n".join(log.model_dump_json() for log in _paged(client.read_logs)).encode()
        out["prefect artifacts"] = "\n".join(a.model_dump_json() for a in _paged(client.read_artifacts)).encode()
        out["prefect deployments"] = "\n".join(d.model_dump_json() for d in client.read_deployments()).encode()
        out["prefect variables"] = "\n".join(v.model_dump_json() for v in client.read_variables()).encode()
        out["prefect blocks"] = "\n".join(b.model_dump_json() for b in client.read_block_documents()).encode()
    return out


def _prefect_database() -> dict[str, bytes]:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    return {str(p): p.read_bytes() for p in db.parent.glob(db.name + "*")}  # the -wal and -shm too


def _plant(run, s3_server) -> None:
    """The planted marker, once in each kind of place the scans read."""
    import boto3
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    (run["home"] / "home" / "planted.log").write_text(f"a line with {PLANT}\n")
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket="creds", Key="planted", Body=PLANT.encode())
    client = MlflowClient(run["mlflow_uri"])
    run_id = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])[0].info.run_id
    client.set_tag(run_id, "planted", PLANT)
    with get_client(sync_client=True) as prefect:
        prefect.create_artifact(ArtifactCreate(type="markdown", data=PLANT, key=None))


@pytest.fixture(scope="module")
def scanned(run, s3_server) -> dict[str, dict[str, bytes]]:
    _plant(run, s3_server)
    refused = run["refused"]
    return {"output": {"stdout": run["stdout"].encode(), "stderr": run["stderr"].encode(),
                       "refused stdout": refused.stdout.encode(), "refused stderr": refused.stderr.encode()},
            "home": _files(run["home"]),
            "s3": _bucket(s3_server, "creds"),
            "mlflow store": _files(run["mlflow_root"]),
            "mlflow api": _mlflow(run["mlflow_uri"]),
            "prefect api": _prefect(),
            "prefect database": _prefect_database()}


def _found(places: dict[str, bytes], needle: str) -> list[str]:
    return [where for where, blob in places.items() if needle.encode() in blob]


# -- the checks ----------------------------------------------------------------------------------

def test_the_pipeline_ran_with_the_marker_credentials(run):
    for name, value in _credential_env(0).items():
        if name != "MLFLOW_TRACKING_URI":
            assert run["environ"][name.encode()] == value.encode(), name
    assert "  dataset     s3://creds/datasets/mnist/v1  (" in run["stdout"]
    assert "MLflow run  " in run["stdout"] and f"in {run['mlflow_uri']}" in run["stdout"]


def test_a_password_in_the_tracking_uri_is_refused_without_echoing_it(run):
    refused = run["refused"]
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "visionflow: error: MLFLOW_TRACKING_URI http://vf:****@127.0.0.1… holds a password, which would "
        "be written wherever the URI is recorded; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")


def test_every_scan_sees_what_the_pipeline_wrote_and_the_planted_marker(scanned, idx_dir):
    expected = {  # a value each place must hold if the pipeline wrote there
        "output": "MLflow run", "home": '"mlflow_run_id"', "s3": '"version": "v1"', "mlflow store": "creds",
        "mlflow api": "data.train_samples", "prefect api": str(idx_dir), "prefect database": str(idx_dir)}
    for kind, places in scanned.items():
        assert _found(places, expected[kind]), f"{kind}: the scan saw nothing the pipeline wrote"
    planted = {"home", "s3", "mlflow store", "mlflow api", "prefect api"}  # the database too, once flushed
    assert {kind for kind, places in scanned.items() if _found(places, PLANT)} >= planted
    assert {"run.json", "last.pt", "best.pt"} <= {Path(p).name for p in scanned["home"]}
    assert any(".tar" in p for p in scanned["s3"])
    assert any(p.startswith("prefect flow run") for p in scanned["prefect api"])


@pytest.mark.parametrize("name", sorted(MARKERS))
def test_no_credential_is_written_anywhere(scanned, name):
    leaks = {kind: _found(places, MARKERS[name]) for kind, places in scanned.items()}
    assert not any(leaks.values()), f"{name} leaked into {({k: v for k, v in leaks.items() if v})}"


def test_the_stack_env_printout_masks_every_secret():
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "t0ken",
           "PREFECT_API_KEY": "pnu_k3y", "PREFECT_API_AUTH_STRING": "u:authpw",
           "MLFLOW_TRACKING_PASSWORD": "mlpw", "MLFLOW_TRACKING_URI": "http://vf:uripw@127.0.0.1:5000",
           "PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    printed = stack.format_env(env)
    for secret in ("s3cr3t", "t0ken", "pnu_k3y", "authpw", "mlpw", "uripw"):
        assert secret not in printed, secret
    assert "MLFLOW_TRACKING_URI=http://vf:****@127.0.0.1:5000" in printed.splitlines()
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in printed.splitlines()
    assert stack.mask("AWS_ENDPOINT_URL", "https://key:pw@s3.example/x?y") == "https://key:****@s3.example/x?y"
