"""Flow ``train``: launch the DDP training engine on a dataset, resuming a run of the same name.

    visionflow train --data ~/.visionflow/datasets/fashion-mnist/v1 --recipe mnist_convnet
"""

from __future__ import annotations

import os

from prefect import flow

from tasks.track import tracking
from tasks.config import TrainConfig, resolve_home
from tasks.train.launch import train_task


@flow(name="train")
def train(cfg: TrainConfig) -> dict:
    home = resolve_home(os.environ)
    return train_task(cfg, home, tracking.tracking_uri(home, os.environ))
