"""ImageNet training-loader benchmark (not a test): images/s of decode + RandomResizedCrop(224) +
flip + normalisation, visionflow's loader against two baselines, side by side in one run.

    python bench/imagenet_loader.py                      # 2,000 timed images, 2 workers, 3 rounds: ~2 minutes
    python -m bench.imagenet_loader --images 500 --rounds 1      # a quick look
    python -m bench.imagenet_loader --source /data/ILSVRC2012 --images 20000 --workers 8

Without ``--source`` an ILSVRC-shaped train tree of real photos at ImageNet's sizes is built in a
temp dir (``tasks/imagenet/ilsvrc_sample.py``, 10 classes; needs ``apt-get install
mate-backgrounds``) and ingested to 256² JPEG shards by the ingest's core
(``tasks/imagenet/ingest.py``, no Prefect). ``--source`` takes an existing ILSVRC root (with
train/) or a plain ImageFolder tree, ingested the same way (``--work DIR`` keeps the corpus and
the shards for the next run). The contenders, each with the same batch size and DataLoader
workers:

- imagefolder: torchvision ``ImageFolder`` on the raw JPEG train tree with ``RandomResizedCrop(224)``
  + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` (what one writes without this project);
- webdataset: ``webdataset.WebDataset`` over the same shards, ``.decode("pil")`` and the same
  torchvision transforms;
- visionflow: ``ShardStream`` + ``TrainPreset(224)`` (uint8 out of the workers, batched by
  ``transforms.collate``), and ``normalize`` on each batch in the main process (here the CPU is
  the device), counted in the time.

Each contender's first batch (worker start-up) is a warm-up; the time runs from it to the last of
the timed images, and the CPU seconds of the main process and its workers are summed meanwhile
(on shared CPUs a neighbour changes the wall time much more than the CPU time per image).
Contenders run once per round, interleaved, and their best round counts. On CUDA a second half
times the GPU path (JPEG bytes through the loader, ``decode_batch`` with nvjpeg +
``GpuTrainPreset`` + ``normalize`` on the GPU) and ResNet-50 training steps in bf16 autocast +
channels_last against fp32. The last two lines are
``ratio vs imagefolder X`` and ``ratio vs webdataset Y`` (visionflow's images/s over theirs;
targets: X >= 3, Y >= 1.5).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

if __package__ in (None, ""):
    # Run as `python bench/imagenet_loader.py`: bench/ would come first on sys.path; the
    # repository root goes there instead, so that `tasks` and `models` are this checkout's.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from torch.utils.data import DataLoader

CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000,
                   help="timed images per contender, after one warm-up batch (a built corpus holds this "
                   "plus a batch, rounded up to whole classes, and each contender then reads all of it)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--source", type=Path, help="an existing ILSVRC root (train/<wnid>/…) or ImageFolder tree")
    p.add_argument("--work", type=Path, help="keep (and reuse) the corpus and shards here instead of a temp dir")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each contender's best counts")
    p.add_argument("--shard-size", type=int, default=100, help="images per shard of the ingest")
    p.add_argument("--size", type=int, default=224, help="training crop side")
    p.add_argument("--gpu-steps", type=int, default=20, help="timed ResNet-50 steps per precision (CUDA)")
    return p.parse_args(argv)


# --- the data ------------------------------------------------------------------------------------


def make_corpus(work: Path, source: Path | None, images: int, batch: int) -> Path:
    """An ingestable root holding train/: ``source`` itself, a root linking to it (a plain
    ImageFolder), or a new ilsvrc_sample tree of enough images for a warm-up batch plus
    ``images``."""
    if source is not None:
        source = source.expanduser().resolve()
        if (source / "train").is_dir() or (source / "ILSVRC").is_dir():
            return source
        root = work / "source"
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "train").exists():
            (root / "train").symlink_to(source, target_is_directory=True)
        return root
    root = work / "corpus"
    per_class = math.ceil((images + batch) / CLASSES)
    if not (root / "train").is_dir():
        from tasks.imagenet import ilsvrc_sample

        print(f"building an ILSVRC-shaped corpus of {per_class * CLASSES} photos in {root} …", flush=True)
        ilsvrc_sample.make_tree(root, classes=CLASSES, train_per_class=per_class, val_per_class=0, odd=False)
    return root


def _ingest_config(**kwargs):
    from tasks.imagenet.config import ImagenetIngestConfig

    return ImagenetIngestConfig(**kwargs)


def ingest(corpus: Path, work: Path, shard_size: int, workers: int) -> str:
    """The corpus → 256² shards by the ingest's core on a thread pool; returns the dataset URL."""
    from tasks.data import shards
    from tasks.imagenet import ingest as imagenet

    out = work / "shards"
    cfg = _ingest_config(source=str(corpus), out=str(out), dataset="bench", version="v1", shard_size=shard_size)
    url = shards.dataset_url(str(out), cfg.dataset, cfg.version)
    if (Path(url) / "manifest.json").is_file():
        return url
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        summary = imagenet.ingest(str(corpus), str(out), cfg, map_chunks=pool.map)
    print(f"ingested {sum(summary.images.values())} images in {time.perf_counter() - start:.1f} s "
          f"({summary.shards} shards, {summary.bytes / 2**20:.0f} MiB, rejects {summary.rejects or 0})", flush=True)
    return summary.urls[0]


def train_dir(corpus: Path) -> Path:
    from tasks.imagenet.ingest import KAGGLE_IMAGES

    return corpus / "train" if (corpus / "train").is_dir() else corpus / KAGGLE_IMAGES / "train"


# --- the contenders ------------------------------------------------------------------------------


def _torchvision_train(size: int):
    from torchvision import transforms

    from tasks.imagenet.transforms import IMAGENET_MEAN, IMAGENET_STD

    return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the DataLoader does this too; said here so that it stays so


def imagefolder_loader(corpus: Path, args) -> DataLoader:
    from torchvision import datasets

    dataset = datasets.ImageFolder(str(train_dir(corpus)), _torchvision_train(args.size))
    return DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                      worker_init_fn=_one_thread)


def _shard_urls(url: str) -> list[str]:
    from tasks.data.reader import shards_of

    return [ref.url for ref in shards_of(url, "train")]


def webdataset_loader(url: str, args) -> DataLoader:
    import webdataset as wds

    transform = _torchvision_train(args.size)
    dataset = (wds.WebDataset(_shard_urls(url), shardshuffle=100, empty_check=False)
               .shuffle(1000).decode("pil").to_tuple("jpg", "cls").map_tuple(transform, int))
    return DataLoader(dataset, batch_size=args.batch, num_workers=args.workers, worker_init_fn=_one_thread)


def visionflow_loader(url: str, args, decoder=None, collate_fn=None) -> DataLoader:
    """ShardStream + TrainPreset in the workers (or ``decoder``, e.g. one shipping JPEG bytes)."""
    from tasks.data.reader import ShardStream, shards_of
    from tasks.imagenet import transforms as T

    decoder = decoder or T.ShardDecoder(T.TrainPreset(args.size))
    stream = ShardStream(shards_of(url, "train"), decoder, seed=0, shuffle=True)
    return DataLoader(stream, batch_size=args.batch, num_workers=args.workers,
                      collate_fn=collate_fn or T.collate, worker_init_fn=_one_thread)


def visionflow_on_batch() -> Callable:
    """What the training loop does with each batch on the device (here the CPU): normalise it,
    into a buffer kept from batch to batch (a fresh 38 MB float batch costs more in page faults
    than the arithmetic), on one thread (the DataLoader workers keep the other cores busy; a
    second thread here only takes turns with them: measured 20% slower end to end)."""
    from tasks.imagenet.transforms import normalize

    buffer: dict = {}

    def on_batch(batch) -> None:
        images, _labels = batch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            buffer[images.shape] = normalize(images, channels_last=True, out=buffer.get(images.shape))
        finally:
            torch.set_num_threads(threads)

    return on_batch


@dataclass
class Timing:
    """Images timed, their wall seconds, and the CPU seconds of the main process and its
    DataLoader workers meanwhile (less sensitive than wall time to neighbours on shared CPUs)."""

    images: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def _cpu_seconds(pids: list[int]) -> float:
    """User + system seconds of this process and of the live processes ``pids`` (from /proc)."""
    t = os.times()
    total = t.user + t.system
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def time_loader(loader: Iterable, images: int, on_batch: Callable | None = None,
                sync: Callable[[], None] | None = None) -> Timing:
    """The first batch is a warm-up (worker start-up), then up to ``images`` images are timed."""
    it = iter(loader)
    try:
        first = next(it)
        if on_batch:
            on_batch(first)
        if sync:
            sync()
        pids = [w.pid for w in getattr(it, "_workers", [])]
        count, start, cpu = 0, time.perf_counter(), _cpu_seconds(pids)
        for batch in it:
            if on_batch:
                on_batch(batch)
            count += len(batch[1])
            if count >= images:
                break
        if sync:
            sync()
        return Timing(count, time.perf_counter() - start, _cpu_seconds(pids) - cpu)
    finally:
        del it  # shuts the workers down


# --- the CUDA half -------------------------------------------------------------------------------


def gpu_half(url: str, args, device: torch.device | str = "cuda") -> None:
    """The GPU path's loader images/s, then ResNet-50 training images/s in bf16 autocast +
    channels_last against fp32 (torch's defaults: cuDNN convolutions in TF32), on one batch of
    that loader. (Runs on any device; only CUDA's numbers mean anything.)"""
    from tasks.imagenet import transforms as T

    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"cuda: {torch.cuda.get_device_name(device)}, torch {torch.__version__}" if cuda
          else f"GPU half on {device} (only CUDA's numbers mean anything)")
    gpu_preset = T.GpuTrainPreset(args.size)
    generator = torch.Generator().manual_seed(0)
    last: dict = {}

    def on_batch(batch) -> None:
        datas, labels = batch
        images = T.decode_batch(datas, device)
        x = T.normalize(gpu_preset(images, generator), channels_last=True)
        if "batch" not in last or len(labels) > len(last["batch"][1]):  # a full one, not the tail
            last["batch"] = (x, labels.to(device, non_blocking=True))

    # The workers only read the shards: JPEG bytes (uint8 tensors) through the loader.
    loader = visionflow_loader(url, args, decoder=T.ShardDecoder(None), collate_fn=T.collate_bytes)
    t = time_loader(loader, args.images, on_batch, sync)
    print(f"{'visionflow-gpu':14s} {t.images:7d} {t.seconds:8.2f} {t.rate:9.1f} {1e3 * t.cpu / t.images:9.2f}  "
          f"ShardStream bytes + decode_batch (nvjpeg) + GpuTrainPreset + normalize, on {device}")

    import models

    x, y = last["batch"]
    model = models.build("resnet50", num_classes=CLASSES).to(device)
    torch.backends.cudnn.benchmark = True

    def steps(amp: bool) -> float:
        net = model.to(memory_format=torch.channels_last if amp else torch.contiguous_format)
        inputs = x.contiguous(memory_format=torch.channels_last if amp else torch.contiguous_format)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(net(inputs), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(5):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(args.gpu_steps):
            step()
        sync()
        return args.gpu_steps * len(y) / (time.perf_counter() - start)

    fp32, bf16 = steps(False), steps(True)
    tf32 = "TF32" if torch.backends.cudnn.allow_tf32 else "no TF32"
    print(f"ResNet-50 training, batch {len(y)}, {args.gpu_steps} steps: fp32 ({tf32} cuDNN convolutions) "
          f"{fp32:.1f} images/s, bf16 autocast + channels_last {bf16:.1f} images/s, ratio {bf16 / fp32:.2f}")


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="vf-bench-loader-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = make_corpus(work, args.source, args.images, args.batch)
        url = ingest(corpus, work, args.shard_size, args.workers)
        files = sum(1 for _ in train_dir(corpus).rglob("*") if _.is_file())
        print(f"{files} train JPEGs, shards at {url}; batch {args.batch}, {args.workers} workers, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)

        contenders: dict[str, Callable[[], Timing]] = {
            "imagefolder": lambda: time_loader(imagefolder_loader(corpus, args), args.images),
            "webdataset": lambda: time_loader(webdataset_loader(url, args), args.images),
            "visionflow": lambda: time_loader(visionflow_loader(url, args), args.images, visionflow_on_batch()),
        }
        best: dict[str, Timing] = {}
        for r in range(args.rounds):
            for name, run in contenders.items():
                t = run()
                if name not in best or t.rate > best[name].rate:
                    best[name] = t
                print(f"  round {r + 1}/{args.rounds} {name:12s} {t.rate:8.1f} images/s, "
                      f"{1e3 * t.cpu / t.images:.2f} CPU ms/image, load average {os.getloadavg()[0]:.2f}", flush=True)

        labels = {"imagefolder": "ImageFolder (raw JPEGs) + RandomResizedCrop/flip/ToTensor/Normalize",
                  "webdataset": "WebDataset (shards) .decode('pil') + the same torchvision transforms",
                  "visionflow": "ShardStream (shards) + TrainPreset uint8 + normalize per batch"}
        print(f"{'loader':14s} {'images':>7s} {'seconds':>8s} {'images/s':>9s} {'CPU ms/im':>9s}  "
              f"(best round of {args.rounds}; CPU: main process + workers)")
        for name, t in best.items():
            print(f"{name:14s} {t.images:7d} {t.seconds:8.2f} {t.rate:9.1f} {1e3 * t.cpu / t.images:9.2f}  {labels[name]}")
        cpu = {name: t.cpu / t.images for name, t in best.items()}
        print(f"CPU per image: imagefolder {cpu['imagefolder'] / cpu['visionflow']:.2f}x visionflow's, "
              f"webdataset {cpu['webdataset'] / cpu['visionflow']:.2f}x (wall-clock ratios below)")
        if torch.cuda.is_available():
            gpu_half(url, args)
        else:
            print("cuda: not available, GPU half skipped")
        print(f"ratio vs imagefolder {best['visionflow'].rate / best['imagefolder'].rate:.2f}")
        print(f"ratio vs webdataset {best['visionflow'].rate / best['webdataset'].rate:.2f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
