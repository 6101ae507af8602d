"""Flow ``mnist-ingest``: MNIST-format IDX files → WebDataset shards (local or S3).

    visionflow ingest mnist --source /usr/share/datasets/fashion-mnist [--out s3://bucket/datasets]
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow

from tasks.mnist import idx as mnist
from tasks.data import shards, storage
from tasks.config import resolve_home
from tasks.mnist.config import MnistIngestConfig


@flow(name="mnist-ingest")
def mnist_ingest(cfg: MnistIngestConfig = MnistIngestConfig()) -> dict:
    home = resolve_home(os.environ)
    source = mnist.download_task(home / "raw") if cfg.source == "download" else Path(cfg.source)
    dataset = mnist.guess_dataset(source) if cfg.dataset == "auto" else cfg.dataset
    root = cfg.out or str(home / "datasets")
    storage.check_reachable(root)
    url = shards.dataset_url(root, dataset, cfg.version)
    manifest = mnist.ingest_task(source, url, dataset, cfg.version, cfg.shard_size)
    return {"url": url, "dataset": dataset, "rejects": manifest["rejects"],
            "samples": {split: s["samples"] for split, s in manifest["splits"].items()}}
