"""The RF-Pose pipeline's Prefect tasks: thin wrappers over the tested core functions of
``simulator``, ``ingest`` and ``baseline`` (apart from them, so that training processes, which
import the recipe, never import Prefect)."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.errors import retry_unless_bad_input
from tasks.rfpose import baseline, ingest, simulator

RETRY = dict(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
# Every fourth simulated session is through-wall: RF-Pose trains on visible scenes only and tests
# through walls, so most sessions must be visible ones.
SIMULATED_SCENES = ("visible", "visible", "visible", "through-wall")


@task(name="simulate-rfpose", **RETRY)
def simulate(out: str, sessions: int, seconds: float, seed: int, rf_size: int = 64,
             grid: str = "range-angle", clock_offset: bool = False) -> list[str]:
    paths = simulator.simulate(out, sessions=sessions, seconds=seconds, seed=seed, scenes=SIMULATED_SCENES,
                               rf_size=(rf_size, rf_size), grid=grid, clock_offset=clock_offset)
    get_run_logger().info("%d sessions of %.0f s in %s", len(paths), seconds, out)
    return [str(p) for p in paths]


@task(name="ingest-rfpose", **RETRY)
def ingest_sessions(source: str | None, hupr: str | None, out_url: str, window: int, stride: int | None,
                    dataset: str, version: str) -> dict:
    # HuPR's frames reduce to complex (re, im) planes: the student takes two channels
    manifest = ingest.ingest_source(out_url, source=source, hupr=hupr, hupr_reduce="complex", dataset=dataset,
                                    version=version, T=window, stride=stride)
    logger = get_run_logger()
    for name, report in manifest["params"]["sync"].items():
        logger.info("sync %s: offset %.3f s, drift %.1f ppm, labelled %d, unlabelled %d, rejected %s, residual %.1f ms",
                    name, report["offset_s"], report["drift_ppm"], report["labelled"], report["unlabelled"],
                    report["rejected"], report["residual_ms"] or 0.0)
    return manifest


@task(name="mean-pose-baseline", **RETRY)
def score_baseline(url: str, checkpoint_dir: str, split: str = "test") -> dict:
    from tasks.train.evaluation import load_trained, log_to_run

    metrics = {f"{split}/{k}": v for k, v in baseline.mean_pose_scores(url, split).items()}
    job, _ = load_trained(checkpoint_dir)
    if job.mlflow_run_id:
        log_to_run(job.tracking_uri, job.mlflow_run_id, metrics, {})
    return metrics
