"""Flows ``inpaint-masks``: draw (or import) irregular hole masks into shards, and
``inpaint-pipeline``: masks → images paired with them → PConv U-Net training → evaluation.

    visionflow ingest masks --out s3://bucket/datasets --size 512 --train 55116 --test-per-bucket 1000
    visionflow ingest masks --import-folder ~/nvidia/testing_mask_dataset --size 512
    visionflow pipeline inpaint --images ~/photos --size 256 --perceptual models:/imagenet-vgg16@latest
"""

from __future__ import annotations

import os

from prefect import flow

from tasks.config import EvaluateConfig, TrainConfig, resolve_home
from tasks.data import shards, storage
from tasks.inpaint import steps
from tasks.inpaint.config import InpaintPipelineConfig, MaskIngestConfig
from tasks.track import tracking


@flow(name="inpaint-masks")
def inpaint_masks(cfg: MaskIngestConfig) -> dict:
    root = cfg.out or str(resolve_home(os.environ) / "datasets")
    storage.check_reachable(root)
    if cfg.import_folder:
        url = shards.dataset_url(root, f"imported-masks-{cfg.size}", "v1")
        manifest = steps.import_masks(cfg.import_folder, url, cfg.size, cfg.import_split, cfg.shard_size)
    else:
        url = shards.dataset_url(root, f"irregular-masks-{cfg.size}",
                                 f"seed{cfg.seed}-train{cfg.train}-test{cfg.test_per_bucket}")
        manifest = steps.generate_masks(url, cfg.size, cfg.train, cfg.test_per_bucket, cfg.seed, cfg.shard_size)
    return {"url": url, "rejects": manifest["rejects"], "params": manifest["params"],
            "samples": {split: s["samples"] for split, s in manifest["splits"].items()}}


@flow(name="inpaint-pipeline")
def inpaint_pipeline(cfg: InpaintPipelineConfig) -> dict:
    """Masks (unless given) → images paired with them → train (a re-run resumes) → evaluate on test."""
    from flows.evaluate import evaluate
    from flows.train import train

    home = resolve_home(os.environ)
    root = cfg.out or str(home / "datasets")
    masks_url = cfg.masks or inpaint_masks(MaskIngestConfig(out=root, size=cfg.size, train=cfg.train_masks,
                                                            test_per_bucket=cfg.test_per_bucket))["url"]
    url = shards.dataset_url(root, f"{cfg.dataset}-{cfg.size}", "v1")
    manifest = steps.prepare_images(cfg.images, masks_url, url, cfg.size)
    uri = tracking.tracking_uri(home, os.environ)
    vgg = steps.resolve_perceptual(cfg.perceptual, uri, str(home / "weights"))
    trained = train(TrainConfig(recipe="pconv_unet", data=url, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                lr=cfg.lr, width=cfg.width, nproc=cfg.nproc, num_workers=cfg.num_workers,
                                max_steps_per_epoch=cfg.max_steps_per_epoch,
                                options={"perceptual": vgg, "l1_norm": cfg.l1_norm},
                                run_name=cfg.run_name or f"{cfg.dataset}-{cfg.size}-pconv-unet"))
    scores = evaluate(EvaluateConfig(checkpoint_dir=trained["checkpoint_dir"], split="test", batch_size=16))
    for variant in ("untrained", "self_ensemble"):
        scores.update(evaluate(EvaluateConfig(checkpoint_dir=trained["checkpoint_dir"], split="test",
                                              batch_size=16, **{variant: True})))
    latency = steps.measure_latency(trained["checkpoint_dir"])
    return {"data": {"url": url, "masks": masks_url, "rejects": manifest["rejects"],
                     "samples": {split: s["samples"] for split, s in manifest["splits"].items()}},
            "train": trained, "evaluate": {**scores, **latency}}
