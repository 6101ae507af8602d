"""The recipe protocol fits the project's three shapes, each trained by the real engine under
2-rank gloo DDP on tiny shards: dense maps (two 5-D inputs → 14 confidence maps, BCE, keypoints
decoded and gathered across ranks), inpainting (image + mask → image, PConv's loss with a frozen
VGG, PSNR/SSIM summed across ranks) and classification (MNIST). For each, the metrics DDP
validation reports equal those of one process scoring the saved checkpoint with the same
evaluator: the cross-rank reductions are exact."""

from __future__ import annotations

import io
import os
import socket
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from models.pconv_loss import PConvLoss
from models.rfpose import confidence_map_bce, keypoints_from_maps
from tasks import catalog
from tasks.config import EvaluateConfig, TrainConfig
from tasks.data import shards, storage
from tasks.errors import BadInput
from tasks.mnist import idx as mnist
from tasks.train import engine
from tasks.train.engine import CHECKPOINT, Job, load_checkpoint
from tasks.train.evaluation import score
from tasks.train.evaluator import gather_across_ranks, sum_across_ranks
from tasks.train.recipe import EvalContext, Optimizer, Recipe
from tasks.train.schedules import Phase, Schedule

T, SIDE, MAP = 2, 32, 16  # frames per clip, RF heatmap side, confidence map side (SIDE / 2)


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _load(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _write(url: str, samples: dict[str, list[dict]]) -> None:
    specs, records = [], []
    for split, items in samples.items():
        for spec in shards.plan(split, range(len(items)), 5):
            records.append(shards.commit_shard(url, spec, {}, lambda s, items=items: ([items[i] for i in s.inputs], []))[0])
            specs.append(spec)
    shards.write_manifest(url, dataset=url.rsplit("/", 2)[-2], version="v1", specs=specs, records=records,
                          classes=[], params={}, source_fingerprint="test")


# --- dense maps: an RF-Pose-shaped recipe ------------------------------------------------------


def dense_samples(n: int, seed: int) -> list[dict]:
    """A bright blob in both heatmaps; the teacher's 14 maps peak at the blob's place."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y, x = rng.integers(4, SIDE - 4, size=2)
        h = rng.normal(0, 0.1, (1, T, SIDE, SIDE)).astype(np.float32)
        h[..., y - 2:y + 2, x - 2:x + 2] += 1.0
        v = h + rng.normal(0, 0.1, h.shape).astype(np.float32)
        yy, xx = np.mgrid[0:MAP, 0:MAP]
        peak = np.exp(-((yy - y / 2) ** 2 + (xx - x / 2) ** 2) / 2).astype(np.float32)
        maps = np.broadcast_to(peak, (14, T, MAP, MAP)).copy()
        out.append({"__key__": f"s{seed}-{i:04d}", "hori.npy": _npy(h), "vert.npy": _npy(v), "maps.npy": _npy(maps)})
    return out


def decode_dense(phase, train):
    return lambda s: (_load(s["hori.npy"]), _load(s["vert.npy"]), _load(s["maps.npy"]))


def dense_to_device(batch, device):
    h, v, maps = (x.to(device) for x in batch)
    return (h, v), maps  # (B, 1, T, H, W) twice → (B, 14, T, H/2, W/2)


class KeypointError:
    """Mean distance between decoded and teacher keypoints: not a sum of per-rank parts, so the
    records are gathered from every rank (as AP over OKS must be)."""

    def __init__(self, ctx: EvalContext):
        self.records: list[float] = []

    def update(self, logits, maps, inputs):
        predicted, _ = keypoints_from_maps(logits.sigmoid().transpose(1, 2))  # (B, T, 14, 2)
        truth, _ = keypoints_from_maps(maps.transpose(1, 2))
        self.records += (predicted - truth).norm(dim=-1).mean(dim=(1, 2)).tolist()

    def compute(self):
        records = gather_across_ranks(self.records)
        return {"kp_error": float(np.mean(records)), "pck": float(np.mean([r < 1.5 for r in records]))}

    def artifacts(self):
        return {}


DENSE = Recipe(
    "dense", experiment="shapes", model="rfpose_student",
    model_kwargs=lambda manifest, width: {"width": 1 / 8}, decoder=decode_dense, to_device=dense_to_device,
    loss=lambda device: confidence_map_bce, evaluator=KeypointError,
    example_input=lambda kw, phase: (torch.zeros(2, 1, T, SIDE, SIDE),) * 2,
    optimizer=Optimizer("adam"), lr=3e-3, epochs=1, batch_size=4, select="kp_error", select_mode="min")


# --- inpainting: a PConv-shaped recipe ----------------------------------------------------------


def inpaint_samples(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:SIDE, 0:SIDE]
        image = np.stack([(xx * 8) % 256, (yy * 8) % 256, np.full_like(xx, rng.integers(256))], -1).astype(np.uint8)
        mask = np.ones((SIDE, SIDE), np.uint8) * 255
        y, x = rng.integers(0, SIDE - 12, size=2)
        mask[y:y + 12, x:x + 12] = 0  # 0 = hole here, as PConv's masks (1 = known pixel)
        out.append({"__key__": f"i{seed}-{i:04d}", "png": _png(image), "mask.png": _png(mask)})
    return out


def decode_inpaint(phase, train):
    def decode(s):
        image = torch.from_numpy(np.array(Image.open(io.BytesIO(s["png"])))).permute(2, 0, 1)
        mask = torch.from_numpy(np.array(Image.open(io.BytesIO(s["mask.png"])))).unsqueeze(0)
        return image, mask
    return decode


def inpaint_to_device(batch, device):
    image, mask = batch
    image, mask = image.to(device).float() / 255, (mask.to(device) > 0).float()
    return (image * mask, mask), (image, mask)


def pconv_loss(device):
    loss = PConvLoss(None, allow_random_weights=True).to(device)  # a frozen, random VGG16: smoke size
    return lambda output, target: loss(output, *target)["total"]


class ImageQuality:
    """Per-image PSNR and SSIM (data range 1), summed across ranks, then averaged."""

    def __init__(self, ctx: EvalContext):
        self.sums = torch.zeros(3, dtype=torch.float64)

    def update(self, output, target, inputs):
        image, mask = target
        comp = mask * image + (1 - mask) * output.clamp(0, 1)
        psnr = peak_signal_noise_ratio(comp, image, data_range=1.0, reduction="none", dim=(1, 2, 3))
        ssim = structural_similarity_index_measure(comp, image, data_range=1.0, reduction="none")
        self.sums += torch.tensor([psnr.sum().item(), ssim.sum().item(), len(image)], dtype=torch.float64)

    def compute(self):
        psnr, ssim, n = sum_across_ranks(self.sums).tolist()
        return {"psnr": psnr / n, "ssim": ssim / n}

    def artifacts(self):
        return {}


INPAINT = Recipe(
    "inpaint", experiment="shapes", model="pconv_unet",
    model_kwargs=lambda manifest, width: {"depth": 5, "width": 1 / 16}, decoder=decode_inpaint,
    to_device=inpaint_to_device, loss=pconv_loss, evaluator=ImageQuality,
    example_input=lambda kw, phase: (torch.zeros(2, 3, SIDE, SIDE), torch.ones(2, 1, SIDE, SIDE)),
    optimizer=Optimizer("adam"), lr=2e-4, epochs=1, batch_size=4, select="psnr", phases=(Phase(0),))


# --- running the engine in 2 spawned ranks -------------------------------------------------------


def _rank(rank: int, world: int, port: int, job: Job) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    engine.run(job)


def train_ddp(job: Job, world: int = 2) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a forked child of a process that has run autograd cannot run it
    mp.start_processes(_rank, args=(world, port, job), nprocs=world, start_method="spawn")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, idx_dir):
    root = str(tmp_path_factory.mktemp("shapes"))
    dense, inpaint = f"{root}/dense/v1", f"{root}/inpaint/v1"
    _write(dense, {"train": dense_samples(12, 0), "val": dense_samples(7, 1)})
    _write(inpaint, {"train": inpaint_samples(12, 0), "val": inpaint_samples(7, 1)})
    mnist_url = f"{root}/mnist/v1"
    mnist.ingest(idx_dir, mnist_url, "mnist", "v1", shard_size=128)
    return {"dense": dense, "inpaint": inpaint, "mnist": mnist_url}


CASES = {  # recipe reference, dataset, the metrics validation must report
    "dense": (f"{__name__}:DENSE", ("val/kp_error", "val/pck", "val/loss")),
    # PConv's loss is not a mean over samples (its Gram matrices mix a batch), so val/loss
    # depends on how the split is batched; the image metrics do not.
    "inpaint": (f"{__name__}:INPAINT", ("val/psnr", "val/ssim")),
    "classification": (catalog.reference("mnist_mlp"), ("val/top1", "val/top5", "val/loss")),
}


@pytest.mark.parametrize("shape", sorted(CASES))
def test_every_shape_trains_under_ddp_and_its_reduced_metrics_are_exact(shape, datasets, tmp_path):
    ref, expected = CASES[shape]
    data = datasets["mnist" if shape == "classification" else shape]
    cfg = TrainConfig(data=data, epochs=1, nproc=2, num_workers=0, run_name=shape,
                      recipe="mnist_mlp", batch_size=4 if shape != "classification" else 100)
    classes = tuple(map(str, range(10))) if shape == "classification" else ()
    job = Job(cfg, str(tmp_path), ref, classes)
    train_ddp(job)
    state = load_checkpoint(storage.join(str(tmp_path), CHECKPOINT))
    validated = state["history"][-1]
    assert np.isfinite(validated["val/loss"])
    assert set(expected) <= set(validated) and all(np.isfinite(validated[k]) for k in expected)
    # 12 samples / global batch 4 = 3 optimizer steps, the same on both ranks
    if shape != "classification":
        assert state["global_step"] == 3
    # One process, the same evaluator, the same checkpoint (best = last after one epoch).
    _, scored, _ = score(EvaluateConfig(checkpoint_dir=str(tmp_path), split=job.recipe.val_split,
                                        batch_size=3))
    for key in expected:
        split_key = key.replace("val/", f"{job.recipe.val_split}/")
        assert scored[split_key] == pytest.approx(validated[key], rel=1e-4, abs=1e-5), key
    if shape == "classification":  # logits have no orientation to turn back
        with pytest.raises(BadInput, match="recipe mnist_mlp has no self-ensemble"):
            score(EvaluateConfig(checkpoint_dir=str(tmp_path), self_ensemble=True))


def test_a_dense_recipe_learns(datasets, tmp_path):
    """Not only shapes: BCE on the maps moves the decoded keypoints towards the teacher's."""
    cfg = TrainConfig(data=datasets["dense"], epochs=6, nproc=1, num_workers=0, run_name="d",
                      batch_size=4)
    job = Job(cfg, str(tmp_path), f"{__name__}:DENSE")
    engine.run(replace(job))
    history = load_checkpoint(storage.join(str(tmp_path), CHECKPOINT))["history"]
    assert history[-1]["train/loss"] < history[0]["train/loss"]


PLATEAU = replace(DENSE, name="dense-plateau", epochs=4, lr=3e-3,
                  schedule=Schedule("plateau", monitor="val/pck", mode="max", patience=0, gamma=0.5, max_decays=3))


def test_a_resumed_run_continues_its_lr_schedule_as_if_never_stopped(datasets, tmp_path):
    """Plateau decays depend on every epoch before: stop after 2 epochs, resume to 4, and the LR
    and the decay count follow the uninterrupted run's."""
    def run(ckpt, epochs):
        cfg = TrainConfig(data=datasets["dense"], epochs=epochs, nproc=1, num_workers=0, run_name="p", batch_size=4)
        engine.run(Job(cfg, str(ckpt), f"{__name__}:PLATEAU"))
        return load_checkpoint(storage.join(str(ckpt), CHECKPOINT))

    whole = run(tmp_path / "whole", 4)
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 4)
    keys = ("train/lr", "train/lr_decays", "val/pck")
    assert [[h[k] for k in keys] for h in resumed["history"]] == [[h[k] for k in keys] for h in whole["history"]]
    assert resumed["schedule"] == whole["schedule"] and resumed["global_step"] == whole["global_step"] == 12
    assert whole["history"][-1]["train/lr_decays"] >= 1  # the schedule did decay on the way
