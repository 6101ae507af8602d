"""Flows ``rfpose-ingest``: recorded RF + camera sessions (or HuPR's layout) → clock sync →
windows with teacher keypoints → shards, and ``rfpose-pipeline``: (simulate →) ingest → train the
student → evaluate (AP over OKS) against the mean-pose baseline.

    visionflow simulate rfpose --out ~/rfpose-sim --sessions 8 --seconds 20
    visionflow ingest rfpose --source ~/recordings [--out s3://bucket/datasets]
    visionflow ingest rfpose --hupr ~/HuPR
    visionflow pipeline rfpose --simulate 24
"""

from __future__ import annotations

import os

from prefect import flow

from tasks.config import EvaluateConfig, TrainConfig, resolve_home
from tasks.data import shards, storage
from tasks.rfpose import steps
from tasks.rfpose.config import RfposeIngestConfig, RfposePipelineConfig, SimulateConfig


@flow(name="rfpose-simulate")
def rfpose_simulate(cfg: SimulateConfig) -> list[str]:
    return steps.simulate(cfg.out, cfg.sessions, cfg.seconds, cfg.seed, cfg.rf_size, cfg.grid, cfg.clock_offset)


@flow(name="rfpose-ingest")
def rfpose_ingest(cfg: RfposeIngestConfig) -> dict:
    root = cfg.out or str(resolve_home(os.environ) / "datasets")
    storage.check_reachable(root)
    url = shards.dataset_url(root, cfg.dataset, cfg.version)
    manifest = steps.ingest_sessions(cfg.source, cfg.hupr, url, cfg.window, cfg.stride, cfg.dataset, cfg.version)
    return {"url": url, "rejects": manifest["rejects"], "sync": manifest["params"]["sync"],
            "samples": {split: s["samples"] for split, s in manifest["splits"].items()}}


@flow(name="rfpose-pipeline")
def rfpose_pipeline(cfg: RfposePipelineConfig) -> dict:
    """(Simulate →) ingest → train (a re-run resumes) → evaluate on test → the mean-pose baseline."""
    from flows.evaluate import evaluate
    from flows.train import train

    home = resolve_home(os.environ)
    source = cfg.source
    if cfg.simulate:
        source = str(home / "raw" / f"rfpose-sim-{cfg.simulate}x{cfg.seconds:g}s-rf{cfg.rf_size}")
        rfpose_simulate(SimulateConfig(out=source, sessions=cfg.simulate, seconds=cfg.seconds, rf_size=cfg.rf_size,
                                       clock_offset=cfg.clock_offset))
    data = rfpose_ingest(RfposeIngestConfig(source=source, hupr=cfg.hupr, out=cfg.out, dataset=cfg.dataset,
                                            version=f"w{cfg.window}-rf{cfg.rf_size}" if cfg.simulate else f"w{cfg.window}",
                                            window=cfg.window))
    trained = train(TrainConfig(recipe="rfpose_student", data=data["url"], epochs=cfg.epochs,
                                batch_size=cfg.batch_size, lr=cfg.lr, width=cfg.width, nproc=cfg.nproc,
                                num_workers=cfg.num_workers, max_steps_per_epoch=cfg.max_steps_per_epoch,
                                run_name=cfg.run_name or f"{cfg.dataset}-rfpose-student"))
    scores = evaluate(EvaluateConfig(checkpoint_dir=trained["checkpoint_dir"], split="test", batch_size=8))
    scores.update(steps.score_baseline(data["url"], trained["checkpoint_dir"]))
    return {"data": data, "train": trained, "evaluate": scores}
