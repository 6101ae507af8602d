"""One epoch of the MNIST ConvNet recipe: the seed's plain loop against visionflow's engine.

Baseline: torchvision's FashionMNIST dataset (IDX files in memory) + DataLoader, one process,
the seed's model and hyper-parameters (Adam 1e-3, batch 100), then a pass over the test set.
visionflow: the same recipe through the engine, as the train task launches it, streaming PNG
shards, including the same test-set pass. Both run here, one after the other, in one run, and
both as what a user runs: a fresh Python process, timed from its start to its exit (imports,
data loading, model and optimizer set-up included on both sides). The plain loop's own timer
(its training and test loops alone) and the engine's training epoch are printed beside them.

    .venv/bin/python -m bench.mnist_train [--source /usr/share/datasets/fashion-mnist] [--nproc 2] [--workers 0] [--rounds 2]

On a small CPU machine the engine's defaults are one process using every core and one
DataLoader worker: measured on 2 cores, 2 gloo processes took 1.22x the plain loop's time,
one process with no worker 0.98x, one process with one worker 0.93x.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import models

# The seed's normalisation (the MNIST training set's pixel mean and std).
MEAN, STD = 0.1307, 0.3081


def unpack(source: Path, root: Path) -> None:
    """torchvision wants the unpacked files under <root>/FashionMNIST/raw (its download step; done
    once, untimed, as the engine's ingest is)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in source.iterdir():
        target = raw / f.name.removesuffix(".gz")
        with (gzip.open(f) if f.suffix == ".gz" else open(f, "rb")) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)


def plain_loop(scratch: Path, epochs: int) -> tuple[float, float]:
    """The seed's loop on the unpacked files under ``scratch``; returns (seconds, test accuracy)."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train = datasets.FashionMNIST(str(scratch), train=True, transform=tf)
    test = datasets.FashionMNIST(str(scratch), train=False, transform=tf)
    torch.manual_seed(0)
    model = models.build("mnist_convnet")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        loss_sum, seen = 0.0, 0
        for images, labels in DataLoader(train, batch_size=100, shuffle=True, num_workers=1):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            loss_sum, seen = loss_sum + loss.item() * len(labels), seen + len(labels)
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in DataLoader(test, batch_size=100, num_workers=1):
                correct += (model(images).argmax(1) == labels).sum().item()
    print(f"    last epoch: train loss {loss_sum / seen:.4f}")
    return time.perf_counter() - start, correct / len(test)


def plain_process(scratch: Path, epochs: int) -> tuple[float, float, float]:
    """The plain loop as its own process; returns (process wall s, loop s, test accuracy)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench.mnist_train", "--plain-loop", str(scratch),
                          "--epochs", str(epochs)],
                         check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - start
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, result["loop_s"], result["accuracy"]


def visionflow_engine(url: str, scratch: Path, epochs: int, nproc: int | None,
                      workers: int | None) -> tuple[float, dict]:
    from tasks import catalog
    from tasks.config import TrainConfig
    from tasks.train.engine import Job
    from tasks.train.launch import launch

    cfg = TrainConfig(data=url, epochs=epochs, nproc=nproc, num_workers=workers, run_name="bench")
    shutil.rmtree(scratch / "ckpt", ignore_errors=True)  # each round trains from scratch
    job = Job(cfg, str(scratch / "ckpt"), catalog.reference(cfg.recipe), classes=tuple(map(str, range(10))))
    start = time.perf_counter()
    metrics = launch(job, log=lambda line: print("   ", line))
    return time.perf_counter() - start, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=None, help="visionflow training processes "
                        "(default: the engine's own choice for this machine)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers per process "
                        "(default: the engine's own choice)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (plain loop, engine); the best "
                        "time of each counts (a shared machine's speed drifts by ±10%% within minutes)")
    parser.add_argument("--plain-loop", type=Path, help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.plain_loop:
        loop_s, accuracy = plain_loop(args.plain_loop, args.epochs)
        print(json.dumps({"loop_s": loop_s, "accuracy": accuracy}))
        return
    from tasks.config import TrainConfig
    from tasks.data import shards
    from tasks.mnist import idx as mnist
    from tasks.train.launch import processes_per_node

    nproc = processes_per_node(TrainConfig(data="-", nproc=args.nproc))
    workers = "the engine's default" if args.workers is None else args.workers
    base, vf = [], []
    with tempfile.TemporaryDirectory(prefix="vf-bench-") as tmp:
        scratch = Path(tmp)
        url = shards.dataset_url(str(scratch / "datasets"), "fashion-mnist", "v1")
        mnist.ingest(args.source, url, "fashion-mnist", "v1", shard_size=10_000)  # not timed: done once
        unpack(args.source, scratch / "plain")  # likewise
        for r in range(1, args.rounds + 1):
            print(f"round {r}/{args.rounds}")
            print(f"  plain loop: its own process, torchvision FashionMNIST + DataLoader, {torch.get_num_threads()} threads")
            base_s, loop_s, base_acc = plain_process(scratch / "plain", args.epochs)
            print(f"    {base_s:.1f} s wall (its training and test loops {loop_s:.1f} s), test accuracy {base_acc:.4f}")
            print(f"  visionflow: the engine, {nproc} process(es) ({'torchrun, gloo' if nproc > 1 else 'no torchrun'}), "
                  f"DataLoader workers: {workers}, PNG shards")
            vf_s, metrics = visionflow_engine(url, scratch / "vf", args.epochs, args.nproc, args.workers)
            print(f"    {vf_s:.1f} s wall (train epoch {metrics['perf/epoch_s']:.1f} s), "
                  f"test accuracy {metrics['val/top1']:.4f}")
            base.append(base_s)
            vf.append(vf_s)
    print(f"\nbest of {args.rounds}: plain loop {min(base):.1f} s, visionflow {min(vf):.1f} s, process start to exit "
          f"(rounds: {', '.join(f'{b:.1f}/{v:.1f}' for b, v in zip(base, vf))})")
    print(f"visionflow / plain loop wall-clock ratio: {min(vf) / min(base):.3f}  (target: at most 1.00)")


if __name__ == "__main__":
    main()
