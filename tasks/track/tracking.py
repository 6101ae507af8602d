"""MLflow: where runs go, and what every run carries (flattened params, linking tags).

Embedded default: ``sqlite:///$VISIONFLOW_HOME/mlflow.db`` with artifacts under
``$VISIONFLOW_HOME/mlartifacts``; any ``MLFLOW_TRACKING_URI`` (a server, another database)
takes its place. Browse with ``mlflow ui --backend-store-uri sqlite:///…/mlflow.db``.

A tracking server that goes away (restarted, unreachable, answering 5xx) is waited for, for a
bounded time, by ``retrying``; metrics logged meanwhile are buffered (``tasks/train/metrics_log.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.errors import Transient

# MLflow 3 opens an experiment in its model-training view (runs, metrics, models), not its GenAI
# one (traces, prompts, evaluation runs), by this tag.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_SECRET = re.compile(r"(secret|password|token|access_key|credential)", re.I)


class TrackingUnreachable(Transient):
    """The tracking server did not answer for as long as visionflow waits for it."""


def tracking_uri(home: Path, environ: dict) -> str:
    """The tracking URI. It is recorded (run records, checkpoints, logs, MLflow's own "View run"
    line), so an HTTP one must not carry a password: MLflow reads that from its own variables."""
    from urllib.parse import urlsplit

    from tasks.errors import BadInput

    uri = environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(home).resolve()}/mlflow.db"
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.password is not None:
        raise BadInput(f"MLFLOW_TRACKING_URI {parts.scheme}://{parts.username}:****@{parts.hostname}… "
                       "holds a password, which would be written wherever the URI is recorded; set "
                       "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
    return uri


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def experiment_id(uri: str, name: str, home: Path) -> str:
    """The experiment's id, created on first use; a local store keeps artifacts under home."""
    mlflow_client = client(uri)
    existing = mlflow_client.get_experiment_by_name(name)
    if existing is not None:
        if existing.tags.get(EXPERIMENT_KIND[0]) is None:
            mlflow_client.set_experiment_tag(existing.experiment_id, *EXPERIMENT_KIND)
        return existing.experiment_id
    location = None
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        location = (Path(home).resolve() / "mlartifacts" / name).as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"a.b": "1"}``, with anything secret-looking left out."""
    if hasattr(config, "model_dump"):
        config = config.model_dump()
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if _SECRET.search(key):
            continue
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]  # MLflow's limit on a param value
    return out


def prefect_tags() -> dict[str, str]:
    """The Prefect flow run this code runs in, if any: its id and UI address."""
    try:
        from prefect.runtime import flow_run
    except ImportError:
        return {}
    run_id = flow_run.id
    if not run_id:
        return {}
    tags = {"prefect.flow_run_id": str(run_id), "prefect.flow_run_name": str(flow_run.name)}
    if flow_run.ui_url:
        tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def start_run(uri: str, experiment: str, home: Path, run_name: str, params: dict[str, str],
              tags: dict[str, str]) -> str:
    mlflow_client = client(uri)
    all_tags = {**tags, **prefect_tags()}
    commit = git_commit()
    if commit:
        all_tags["git.commit"] = commit
    run = mlflow_client.create_run(experiment_id(uri, experiment, home), run_name=run_name, tags=all_tags)
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def run_url(uri: str, run_id: str, experiment_id_: str) -> str:
    base = uri if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id_}/runs/{run_id}"


def log_dataset(uri: str, run_id: str, url: str, manifest: dict) -> None:
    """The shards as the run's MLflow dataset input (the run page's "Datasets" column): name
    ``<dataset>/<version>``, the manifest checksum as digest, the splits' sizes as its profile."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from tasks.data.shards import manifest_checksum

    with warnings.catch_warnings():  # a local path fits two of MLflow's equivalent source kinds
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(url)
    dataset = MetaDataset(source, name=f"{manifest['dataset']}/{manifest['version']}",
                          digest=manifest_checksum(manifest)[:36])
    source = dataset.source
    entity = Dataset(dataset.name, dataset.digest, source._get_source_type(), source.to_json(),
                     profile=json.dumps({split: s["samples"] for split, s in manifest["splits"].items()}))
    client(uri).log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", "training")])])


# MLflow's HTTP client retries a refused connection for about four minutes (7 retries, backoff
# factor 2) and gives a request 120 s to answer. Calls that must not stall make one attempt each
# and are retried on visionflow's own schedule; MLflow reads these two variables per request.
_QUICK = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@contextmanager
def quick_requests(timeout: int | None = None):
    """MLflow REST calls inside make one attempt each, answered within ``timeout`` seconds
    (None: MLflow's own 120 s, for artifact uploads)."""
    saved = {key: os.environ.get(key) for key in _QUICK}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    if timeout is not None:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def unreachable(exc: BaseException) -> bool:
    """True for a failure of the server rather than of the request: a refused or broken
    connection, a timeout, a 5xx or 429 answer. Another 4xx (a bad metric, a deleted run) is the
    request's."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    def busy(code: int) -> bool:
        return code >= 500 or code == 429

    if isinstance(exc, RestException):
        return busy(exc.get_http_status_code())
    if isinstance(exc, MlflowException):  # raised by MLflow's HTTP layer, not by validation
        return str(exc).startswith("API request to") and busy(exc.get_http_status_code())
    if isinstance(exc, requests.RequestException):  # artifact uploads raise these
        return exc.response is None or busy(exc.response.status_code)
    return False


def reason(exc: BaseException) -> str:
    """A connection failure in a few words: "Connection refused", "HTTP 503", "Read timed out"."""
    text = str(exc).strip()
    if code := re.search(r"too many (\d{3}) error responses", text):
        return f"HTTP {code.group(1)}"
    for known in ("Connection refused", "Connection reset", "Read timed out", "timed out"):
        if known in text:
            return known
    return text.splitlines()[-1][:160] if text else type(exc).__name__


def retrying(call, uri: str, what: str, *, wait: float = 120.0, every: float = 2.0,
             timeout: int | None = None, log=print):
    """``call()``, tried again every ``every`` seconds while the tracking server at ``uri`` is
    unreachable, for at most ``wait`` seconds; then ``TrackingUnreachable`` says so in one line.
    Any other failure is raised at once."""
    deadline = time.monotonic() + wait
    warned = False
    while True:
        try:
            with quick_requests(timeout):
                return call()
        except Exception as exc:  # noqa: BLE001 — sorted by unreachable()
            if not unreachable(exc):
                raise
            if time.monotonic() + every > deadline:
                waited = f" for {wait:.0f} s" if wait else ""
                raise TrackingUnreachable(f"tracking server {uri} unreachable{waited} while {what} "
                                          f"({reason(exc)})") from exc
            if not warned:
                log(f"tracking server {uri} unreachable while {what} ({reason(exc)}); "
                    f"retrying for up to {wait:.0f} s")
                warned = True
            time.sleep(every)
