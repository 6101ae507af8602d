"""MLflow: where runs go, and what every run carries (flattened params, linking tags).

Embedded default: ``sqlite:///$VISIONFLOW_HOME/mlflow.db`` with artifacts under
``$VISIONFLOW_HOME/mlartifacts``; any ``MLFLOW_TRACKING_URI`` (a server, another database)
takes its place. Browse with ``mlflow ui --backend-store-uri sqlite:///…/mlflow.db``.
"""

from __future__ import annotations

import json
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

# MLflow 3 opens an experiment in its model-training view (runs, metrics, models), not its GenAI
# one (traces, prompts, evaluation runs), by this tag.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_SECRET = re.compile(r"(secret|password|token|access_key|credential)", re.I)


def tracking_uri(home: Path, environ: dict) -> str:
    return environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(home).resolve()}/mlflow.db"


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
