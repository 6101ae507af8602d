"""The ``visionflow`` command: run flows directly (Prefect's ephemeral mode needs no server).

    visionflow pipeline mnist --source /usr/share/datasets/fashion-mnist --epochs 6
    visionflow ingest mnist --source DIR [--out s3://bucket/datasets]
    visionflow ingest imagenet --source ILSVRC_ROOT [--out s3://bucket/datasets]
    visionflow pipeline imagenet --source ILSVRC_ROOT --recipe vgg11 [--epochs N] [--batch-size B] [--width W]
    visionflow ingest masks [--out DIR] [--size 512] [--train N] [--test-per-bucket N] [--seed S]
    visionflow pipeline inpaint --images DIR [--masks URL] [--size 256] [--perceptual models:/imagenet-vgg16@latest]
    visionflow simulate rfpose --out DIR [--sessions 8] [--seconds 20]
    visionflow ingest rfpose --source DIR | --hupr ROOT [--out DIR]
    visionflow pipeline rfpose --simulate 24 | --source DIR | --hupr ROOT
    visionflow train --data URL [--recipe mnist_mlp] [--epochs N]
    visionflow evaluate --checkpoint-dir DIR
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter

from flows.stack_cli import deploy, runs_app, stack_app, trigger
from tasks.config import EvaluateConfig, TrainConfig, resolve_home
from tasks.imagenet.config import ImagenetIngestConfig, ImagenetPipelineConfig
from tasks.inpaint.config import InpaintPipelineConfig, MaskIngestConfig
from tasks.mnist.config import MnistIngestConfig, MnistPipelineConfig
from tasks.rfpose.config import RfposeIngestConfig, RfposePipelineConfig, SimulateConfig

app = App(name="visionflow", help="Computer-vision experiments as Prefect pipelines.")
pipeline_app = App(name="pipeline", help="Run a whole pipeline: ingest → train → evaluate.")
ingest_app = App(name="ingest", help="Turn a raw dataset into WebDataset shards.")
app.command(pipeline_app)
app.command(ingest_app)
simulate_app = App(name="simulate", help="Write synthetic recordings in a pipeline's raw format.")
app.command(simulate_app)
app.command(stack_app)  # the local real stack, deployments, triggers and run comparison
app.command(deploy)
app.command(trigger)
app.command(runs_app)

# Quiet, robust defaults for Prefect's embedded server; anything the user set wins.
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


def _prepare_environment() -> Path:
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    home = resolve_home(os.environ)
    home.mkdir(parents=True, exist_ok=True)
    # Prefect's embedded server keeps its database beside visionflow's, not in ~/.prefect.
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("MPLCONFIGDIR", str(home / "matplotlib"))
    try:
        from tasks.ops import stack
    except ImportError:
        return home
    stack.apply_env_file(home)  # a running `visionflow stack up` points every command at it
    return home


_final_words: list[str] = []


def _say_final_words() -> None:
    # Registered before Prefect starts its embedded server, so it runs after that server's own
    # exit handler: the error stays the last line on the terminal.
    for line in _final_words:
        print(line, file=sys.stderr)


def _run(flow, cfg):
    """Run a flow; expected failures become one line on stderr and exit code 1."""
    import logging

    from tasks.errors import QuietExpectedFailures, explain

    quiet = QuietExpectedFailures()
    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            handler.addFilter(quiet)
    try:
        return flow(cfg)
    except Exception as exc:  # noqa: BLE001 — every failure ends as one readable line
        message = explain(exc)
        if message is None:
            raise
        _final_words.append(f"visionflow: error: {message.splitlines()[0]}")
        sys.exit(1)


@pipeline_app.command(name="mnist")
def pipeline_mnist(cfg: Annotated[MnistPipelineConfig, Parameter(name="*")] = MnistPipelineConfig()):
    """MNIST-format IDX files → shards → DDP training → evaluation → MLflow."""
    from flows.pipeline import mnist_pipeline

    result = _run(mnist_pipeline, cfg)
    _print_summary(result["data"], result["train"], result["evaluate"])


@pipeline_app.command(name="imagenet")
def pipeline_imagenet(cfg: Annotated[ImagenetPipelineConfig, Parameter(name="*")]):
    """An ILSVRC-2012 or ImageFolder tree → 256² shards → DDP training of a recipe → evaluation → MLflow."""
    from flows.imagenet import imagenet_pipeline, progress_bar

    with progress_bar():
        result = _run(imagenet_pipeline, cfg)
    _print_summary(result["data"], result["train"], result["evaluate"])


@pipeline_app.command(name="inpaint")
def pipeline_inpaint(cfg: Annotated[InpaintPipelineConfig, Parameter(name="*")]):
    """Irregular masks + photographs → PConv U-Net training (two stages) → L1 / PSNR / SSIM per hole bucket → MLflow."""
    from flows.inpaint import inpaint_pipeline

    result = _run(inpaint_pipeline, cfg)
    _print_summary(result["data"], result["train"], result["evaluate"])
    scores = result["evaluate"]
    for method in ("", "self_ensemble/", "untrained/", "baseline/mean/", "baseline/telea/"):
        values = [scores.get(f"test/{method}{m}") for m in ("l1_hole", "l1", "psnr", "ssim")]
        if None not in values:
            print(f"  {method.strip('/') or 'pconv_unet':<16}hole L1 {values[0]:.2%}   L1 {values[1]:.2%}   "
                  f"PSNR {values[2]:.2f}   SSIM {values[3]:.4f}")
    print(f"  latency     {scores['test/latency_s_512']:.3f} s per 512² image ({scores['device']}, batch 1)")
    print("  per bucket  evaluation/inpaint_table.md in the MLflow run")


@pipeline_app.command(name="rfpose")
def pipeline_rfpose(cfg: Annotated[RfposePipelineConfig, Parameter(name="*")] = RfposePipelineConfig()):
    """RF heatmap + camera sessions (simulated, recorded or HuPR's) → sync → windows → student training → AP over OKS."""
    from flows.rfpose import rfpose_pipeline

    result = _run(rfpose_pipeline, cfg)
    _print_summary(result["data"], result["train"], result["evaluate"])
    scores = result["evaluate"]
    for scene in ("", "visible/", "through-wall/"):
        line = [f"{who} AP {scores[f'test/{b}{scene}ap']:.3f} AP50 {scores[f'test/{b}{scene}ap50']:.3f}"
                for who, b in (("student", ""), ("mean pose", "baseline/")) if f"test/{b}{scene}ap" in scores]
        if line:
            print(f"  {scene.strip('/') or 'all':<13}" + "   ".join(line))


@simulate_app.command(name="rfpose")
def simulate_rfpose(cfg: Annotated[SimulateConfig, Parameter(name="*")]):
    """Synthetic RF-Pose sessions: 1–3 people in a room, RF heatmaps, camera frames, two clocks."""
    from flows.rfpose import rfpose_simulate

    for path in _run(rfpose_simulate, cfg):
        print(path)


@ingest_app.command(name="rfpose")
def ingest_rfpose(cfg: Annotated[RfposeIngestConfig, Parameter(name="*")] = RfposeIngestConfig()):
    """Recorded RF + camera sessions (or HuPR's layout) → clock sync → windows with teacher keypoints → shards."""
    from flows.rfpose import rfpose_ingest

    data = _run(rfpose_ingest, cfg)
    print(f"dataset {data['url']}: " + ", ".join(f"{k} {v}" for k, v in data["samples"].items())
          + f" windows, rejects {data['rejects']}")
    for name, r in data["sync"].items():
        print(f"  {name}: offset {r['offset_s']:+.3f} s, drift {r['drift_ppm']:+.1f} ppm, labelled {r['labelled']}, "
              f"unlabelled {r['unlabelled']}, rejected {r['rejected']}")


@ingest_app.command(name="masks")
def ingest_masks(cfg: Annotated[MaskIngestConfig, Parameter(name="*")] = MaskIngestConfig()):
    """Free-form irregular hole masks (or a folder of mask images) → 1-bit PNG WebDataset shards."""
    from flows.inpaint import inpaint_masks

    data = _run(inpaint_masks, cfg)
    print(f"dataset {data['url']}: " + ", ".join(f"{k} {v}" for k, v in data["samples"].items())
          + f", rejects {data['rejects']}")
    for split, groups in sorted((data["params"].get("draws") or {}).items()):
        print(f"  {split}: " + ", ".join(f"{group} {g['masks']}/{g['draws']}" for group, g in sorted(groups.items()))
              + "  (masks kept / drawn)")


@ingest_app.command(name="mnist")
def ingest_mnist(cfg: Annotated[MnistIngestConfig, Parameter(name="*")] = MnistIngestConfig()):
    """MNIST or Fashion-MNIST IDX files (gzipped or raw) → WebDataset shards."""
    from flows.mnist import mnist_ingest

    data = _run(mnist_ingest, cfg)
    print(f"dataset {data['url']}: " + ", ".join(f"{k} {v}" for k, v in data["samples"].items())
          + f", rejects {data['rejects']}")


@app.command
def train(cfg: Annotated[TrainConfig, Parameter(name="*")]):
    """Train a recipe on a dataset with DDP; a re-run with the same --run-name resumes."""
    from flows.train import train as train_flow

    result = _run(train_flow, cfg)
    select = result["select"]
    print(f"trained: {select} {result[select]:.4f}; checkpoints in {result['checkpoint_dir']}; "
          f"MLflow run {result['mlflow_run_id']}")


@app.command
def evaluate(cfg: Annotated[EvaluateConfig, Parameter(name="*")]):
    """Score a trained run and log the results to its MLflow run."""
    from flows.evaluate import evaluate as evaluate_flow

    scores = _run(evaluate_flow, cfg)
    print(", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float) and "/acc/" not in k))


@ingest_app.command(name="imagenet")
def ingest_imagenet(cfg: Annotated[ImagenetIngestConfig, Parameter(name="*")]):
    """ILSVRC-2012 (train/, val/ + labels) or any ImageFolder tree → 256² JPEG WebDataset shards."""
    from flows.imagenet import imagenet_ingest, progress_bar, summary_lines

    with progress_bar():
        result = _run(imagenet_ingest, cfg)
    print("\n".join(summary_lines(result)))


def _print_summary(data: dict, trained: dict, scores: dict) -> None:
    split = scores["select"].split("/")[0]
    uri = scores["tracking_uri"]
    print()
    print(f"  dataset     {data['url']}  ({', '.join(f'{k} {v}' for k, v in data['samples'].items())}, "
          f"rejects {data['rejects']})")
    shown = {k.split("/", 1)[1]: v for k, v in scores.items()  # overall metrics; per-class, per-bucket
             if k.startswith(f"{split}/") and k.count("/") == 1 and isinstance(v, float)}  # ones are in MLflow
    print(f"  {split:<10}  " + "   ".join(f"{k} {v:.2%}" if k.startswith("top") else f"{k} {v:.4f}"
                                        for k, v in shown.items()))
    print(f"  checkpoint  {trained['checkpoint_dir']}")
    print(f"  MLflow run  {scores['mlflow_run_id']}  in {uri}")
    if uri.startswith("sqlite:"):
        print(f"  browse      mlflow ui --backend-store-uri {uri}")


def main() -> None:
    _prepare_environment()  # before Prefect is imported: it reads its settings once
    atexit.register(_say_final_words)
    app()


if __name__ == "__main__":
    main()
