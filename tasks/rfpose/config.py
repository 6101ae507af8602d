"""Config models of the RF-Pose flows: simulate, ingest, and the whole pipeline (the Prefect forms)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config import Frozen

NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]*$"


class SimulateConfig(Frozen):
    out: str = Field(description="Directory to write the sessions into (one directory per session)")
    sessions: int = Field(8, ge=1, description="Sessions to simulate; every fourth is through-wall")
    seconds: float = Field(20.0, gt=0, description="Length of each session in seconds")
    seed: int = Field(0, description="Seed: the same seed writes the same sessions")
    clock_offset: bool = Field(False, description="Write the true camera–radio clock offset into session.json "
                               "(a calibrated rig); without it sync estimates the offset from motion")
    rf_size: int = Field(64, ge=16, description="RF heatmap side (range or depth bins, and bins across)")
    grid: Literal["range-angle", "cartesian"] = Field(
        "range-angle", description="Heatmap cells: range × azimuth / elevation (what the rfpose_student "
        "recipe takes), or Cartesian depth × x / height")


class RfposeIngestConfig(Frozen):
    source: str | None = Field(None, description="A directory holding one recorded session (session.json, "
                               "rf/, rgb/) or many")
    hupr: str | None = Field(None, description="Instead: a HuPR root (single_<k>/hori, vert, hrnet_annot_<split>.json)")
    out: str | None = Field(None, description="Dataset root: a local directory or s3://bucket/prefix "
                            "(default: $VISIONFLOW_HOME/datasets)")
    dataset: str = Field("rfpose", pattern=NAME, description="Dataset name under the root")
    version: str = Field("v1", pattern=NAME, description="Dataset version directory")
    window: int = Field(100, ge=2, description="Frames per window (100 = 3.3 s at 30 fps, the paper's)")
    stride: int | None = Field(None, ge=1, description="Frames between window starts (default: the window)")


class RfposePipelineConfig(Frozen):
    simulate: int | None = Field(None, ge=1, description="Simulate this many sessions and train on them")
    seconds: float = Field(20.0, gt=0, description="Length of each simulated session")
    rf_size: int = Field(64, ge=16, description="Simulated RF heatmap side (range and angle bins; the "
                         "rfpose_student recipe takes 64, its maps are half of it)")
    clock_offset: bool = Field(True, description="Simulated sessions carry their true clock offset, so the "
                               "scores measure the student, not sync (--no-clock-offset: sync estimates it)")
    source: str | None = Field(None, description=RfposeIngestConfig.model_fields["source"].description)
    hupr: str | None = Field(None, description=RfposeIngestConfig.model_fields["hupr"].description)
    out: str | None = Field(None, description=RfposeIngestConfig.model_fields["out"].description)
    dataset: str = Field("rfpose", pattern=NAME, description="Dataset name under the root")
    window: int = Field(16, ge=2, description="Frames per window (CPU-sized default; the paper's is 100)")
    epochs: int | None = Field(16, ge=1, description="Epochs (CPU-sized default; the recipe's own is 10)")
    batch_size: int | None = Field(None, ge=1, description="Global batch size (default: the recipe's)")
    lr: float | None = Field(None, gt=0, description="Peak LR (default: the recipe's)")
    width: float = Field(0.25, gt=0, le=4, description="Student channel width (1: the paper's; 0.25 is CPU-sized)")
    nproc: int | None = Field(None, ge=1, description="Training processes per node (default: one per GPU, "
                              "or one using every core on a CPU node)")
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers per process (default: chosen for the machine)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap steps per epoch (smoke runs)")
    run_name: str | None = Field(None, pattern=NAME, description="Run name (default: {dataset}-rfpose-student)")
