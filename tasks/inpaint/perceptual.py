"""Where the PConv loss's frozen VGG16 comes from: ``--perceptual``.

- ``models:/imagenet-vgg16@latest`` (any ``models:/`` or ``runs:/`` URI): a VGG16 registered in
  MLflow, such as the one ``visionflow pipeline imagenet --recipe vgg16`` registers; ``resolve``
  fetches it once, before training, into a state-dict file the training processes load;
- a state-dict file, local or ``s3://``: torchvision's ``vgg16-397923af.pth``, or a visionflow
  checkpoint (``best.pt``) of a ``vgg16`` run;
- ``random``: an untrained VGG16, which makes the perceptual and style terms noise: smoke runs only.

Only the convolutions up to pool3 are used, at whatever width the weights have.
"""

from __future__ import annotations

import hashlib
import io
import re

from tasks.data import storage
from tasks.errors import BadInput

RANDOM = "random"
REGISTRY_SCHEMES = ("models:/", "runs:/")


class PerceptualError(BadInput):
    pass


def load(ref: str):
    """A state dict with ``features.N`` keys, or None for ``random``."""
    import torch

    if ref == RANDOM:
        return None
    if ref.startswith(REGISTRY_SCHEMES):
        raise PerceptualError(f"--perceptual {ref}: an MLflow URI is fetched by the pipeline before "
                              "training (tasks.inpaint.perceptual.resolve); pass the file it saved")
    if not storage.exists(ref):
        raise PerceptualError(f"--perceptual {ref}: no such file (a VGG16 state dict, e.g. torchvision's "
                              "vgg16-397923af.pth), nor 'random' or a models:/ URI")
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(ref)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable file is the same user error
        raise PerceptualError(f"--perceptual {ref}: not a torch state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a visionflow checkpoint
    if not isinstance(state, dict) or not any(str(k).startswith("features.") for k in state):
        raise PerceptualError(f"--perceptual {ref}: holds no VGG 'features.N' weights")
    return state


def resolve(ref: str, tracking_uri: str, cache_dir: str) -> str:
    """``ref`` as the training processes take it: a registry URI becomes a state-dict file
    under ``cache_dir`` (named after the URI and the model version's run); anything else is
    checked and returned as it is."""
    if not ref.startswith(REGISTRY_SCHEMES):
        load(ref)  # fail here, before any training process starts
        return ref
    import mlflow.pytorch
    import torch
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pytorch.load_model(ref, map_location="cpu")
    except MlflowException as exc:
        raise PerceptualError(
            f"--perceptual {ref}: not found in {tracking_uri} ({str(exc).splitlines()[0]}); train one "
            "with `visionflow pipeline imagenet --recipe vgg16`, or pass a VGG16 state-dict file "
            "(torchvision's vgg16-397923af.pth) or 'random' for a smoke run") from None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith("features.")}
    if not state:
        raise PerceptualError(f"--perceptual {ref}: the model has no VGG 'features.N' weights")
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", ref.split(":/", 1)[1]).strip("-")
    out = storage.join(cache_dir, f"{name}-{digest}.pt")
    if not storage.exists(out):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        storage.write_bytes(out, buffer.getvalue())
    return out

