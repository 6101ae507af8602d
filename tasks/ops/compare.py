"""Compare MLflow runs: the params that differ, the key metrics, and MLflow's compare view.

    table = compare.runs_table("mnist", tracking_uri="http://127.0.0.1:5000")
    print(compare.render(table))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

from tasks.ops import processes

# DESIGN.md's stable metric names, in the order a reader wants them; others follow by name.
KEY_METRICS = ("test/top1", "test/top5", "val/top1", "val/top5", "val/ap", "val/ap50", "val/ap75",
               "val/psnr", "val/ssim", "val/l1", "val/loss", "train/loss", "perf/images_per_s")
MAX_METRICS = 6


class CompareError(RuntimeError):
    """The runs could not be read; the message names the store and what to do."""


@dataclass(frozen=True)
class RunsTable:
    experiment: str
    columns: list[str]
    rows: list[list[str]]
    compare_url: str | None  # None where the store has no UI of its own (a SQLite file)
    ui_hint: str | None


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 28 else text[:25] + "..."


def differing_params(runs: list[dict[str, str]]) -> list[str]:
    """Param names whose value is not the same in every run (absent counts as a value)."""
    names = sorted({k for params in runs for k in params})
    return [k for k in names if len({params.get(k) for params in runs}) > 1]


def key_metrics(runs: list[dict[str, float]], selects: list[str] = ()) -> list[str]:
    """The columns to show: first each run's own selection metric (``visionflow.select``, e.g.
    ``val/top1``, ``val/ap``, ``val/psnr``) and its test-split twin, then DESIGN.md's order."""
    present = {k for metrics in runs for k in metrics}
    lead = []
    for select in dict.fromkeys(s for s in selects if s):
        name = select.split("/", 1)[-1]
        lead += [f"test/{name}", select]
    ordered = [m for m in dict.fromkeys([*lead, *KEY_METRICS]) if m in present]
    ordered += sorted(m for m in present - set(ordered) if "/acc/" not in m)  # per-class last, if at all
    return ordered[:MAX_METRICS]


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    runs = quote(json.dumps(run_ids, separators=(",", ":")))
    experiments = quote(json.dumps([experiment_id], separators=(",", ":")))
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


def runs_table(experiment: str, *, tracking_uri: str, max_runs: int = 20) -> RunsTable:
    """The latest ``max_runs`` runs of ``experiment``, newest first."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri.startswith(("http://", "https://")) and \
            not processes.http_ok(f"{tracking_uri.rstrip('/')}/health", timeout=5):
        raise CompareError(f"the MLflow server at {tracking_uri} does not answer: start it with "
                           f"`visionflow stack up`, or point MLFLOW_TRACKING_URI at a running one")
    client = MlflowClient(tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in client.search_experiments())
            raise CompareError(f"no MLflow experiment {experiment!r} at {tracking_uri} "
                               f"(experiments: {', '.join(names) or 'none yet'})")
        runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=max_runs)
    except MlflowException as exc:
        raise CompareError(f"cannot read MLflow runs at {tracking_uri}: {exc.message.splitlines()[0]}") from None
    params = differing_params([r.data.params for r in runs])
    metrics = key_metrics([r.data.metrics for r in runs], [r.data.tags.get("visionflow.select") for r in runs])
    columns = ["run", "id", "status", "commit", *params, *metrics]
    rows = [[r.info.run_name, r.info.run_id[:8], r.info.status, (r.data.tags.get("git.commit") or "-")[:8],
             *(_fmt(r.data.params.get(p)) for p in params), *(_fmt(r.data.metrics.get(m)) for m in metrics)]
            for r in runs]
    ids = [r.info.run_id for r in runs]
    if tracking_uri.startswith(("http://", "https://")):
        url, hint = compare_url(tracking_uri, found.experiment_id, ids), None
    else:
        url = compare_url("http://127.0.0.1:5000", found.experiment_id, ids)
        hint = f"start the UI first: mlflow ui --backend-store-uri {tracking_uri}"
    return RunsTable(experiment, columns, rows, url if ids else None, hint)


def render(table: RunsTable) -> str:
    if not table.rows:
        return f"experiment {table.experiment}: no runs yet"
    widths = [max(len(c), *(len(row[i]) for row in table.rows)) for i, c in enumerate(table.columns)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
             for row in [table.columns, *table.rows]]
    if table.compare_url:
        lines.append(f"compare view: {table.compare_url}")
    if table.ui_hint:
        lines.append(f"  ({table.ui_hint})")
    return "\n".join(lines)
