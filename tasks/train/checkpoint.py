"""The one checkpoint format: a ``torch.save`` dict written atomically to storage (temp +
rename locally, one PUT on S3) and read back with ``weights_only=True`` (no pickle)."""

from __future__ import annotations

import io

import torch

from tasks.data import storage

CHECKPOINT = "last.pt"  # every epoch: model, optimizer, schedule, history, data position
BEST = "best.pt"  # the epoch the recipe's selection metric liked best: model and job


def save_checkpoint(url: str, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(url, buffer.getvalue())  # temp + rename, or a single PUT


def load_checkpoint(url: str, map_location="cpu") -> dict | None:
    if not storage.exists(url):
        return None
    return torch.load(io.BytesIO(storage.read_bytes(url)), map_location=map_location, weights_only=True)
