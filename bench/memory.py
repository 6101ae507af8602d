"""Memory benchmark (not a test): peak RSS of the ImageNet ingest, the RF ingest and the training
loader at two dataset sizes 10x apart. Flat in the size is what lets the 1.28 M-image ingest and
a 100-hour RF corpus run on one node.

    python -m bench.memory                  # ~15 minutes on 2 cores the first time, less once the inputs are cached
    python -m bench.memory --quick          # small sizes, a smoke check of a few minutes
    python -m bench.memory --only rf --cache /tmp/vf-memory

Workloads, each at size S and 10 S, each run in a fresh process with a fresh VISIONFLOW_HOME
(Prefect's ephemeral server and the SQLite MLflow store start inside it, as on a node without
``visionflow stack up``; PREFECT_API_URL and MLFLOW_TRACKING_URI are dropped):

- imagenet ingest: ``visionflow ingest imagenet`` (threads, every core) on an ILSVRC-shaped tree
  cut from real photographs (``tasks/imagenet/ilsvrc_sample.py``; needs ``apt-get install
  mate-backgrounds``), S images over 10 classes plus a tenth as many in val; the shard size is
  S/4 at both sizes, so S is 4 shards and 10 S is 40;
- rf ingest: ``visionflow ingest rfpose`` on simulated sessions (``tasks/rfpose/simulator.py``,
  32x32 RF planes), a fixed number of sessions, S or 10 S seconds long each: a longer recording
  is what a 100-hour corpus is made of;
- training loader: one epoch of the engine's own train loader (``tasks/train/engine.py``
  ``make_loader``: ``ShardStream`` + its DataLoader worker + the recipe's decoder and collate),
  iterated without a model, over MNIST-format shards of S or 10 S synthetic digits (MNIST's
  size, well past the shuffle buffer's 1,000 samples at both sizes).

While a run lasts, its whole process tree (the CLI, Prefect's server, DataLoader workers) is
polled every 50 ms with psutil. "peak RSS" is the largest sum of RSS seen, the figure the ratios
use; "anon" the same sum without file-backed and shared pages (RSS - shared: a memory-mapped
recording's pages count in RSS, but the kernel can drop them). "sum HWM" adds up each process's
own high-water mark (VmHWM, kept by the kernel, so a spike between two polls is not missed; as
last read before the process ended; an upper bound on the peak, as the processes need not peak
together). "ru_maxrss" is the kernel's rusage from ``wait4`` on the child, the per-run form of
``getrusage(RUSAGE_CHILDREN)``: the largest process, but it also counts the image the child was
forked from, so inputs are built in processes of their own and this one stays small. Summed RSS
counts pages a forked worker shares with its parent twice, at both sizes alike. Generated inputs
are cached under ``--cache`` (default ``$TMPDIR/vf-bench-memory``); ``--processes`` lists each
run's processes. At these sizes a cost of a few hundred bytes per image cannot show, so one line
measures the ingest's one O(images) structure, its file list and shard plan, at ImageNet's size
(tracemalloc, synthetic paths). The last lines: per workload
``rss ratio 10x/1x: X.XX`` (peak RSS at 10 S over S) and a verdict (flat: every ratio below 1.3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
FLAT = 1.3  # peak(10 S) / peak(S) below this is flat
POLL_S = 0.05
WORKLOADS = ("imagenet", "rf", "loader")
# name: (quick S, default S); rf's S is seconds per session
SIZES = {"imagenet": (100, 300), "rf": (12, 30), "loader": (2000, 6000)}
RF_SESSIONS = 2
ITEM = {"imagenet": "images", "rf": "windows", "loader": "samples"}
SCALE_TO = {"imagenet": (1_281_167, "images (ILSVRC-2012 train)"),
            "rf": (100 * 3600 * 30 // 100, "windows (100 hours at 30 fps, T=100)"),
            "loader": (1_281_167, "samples (an ImageNet epoch)")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: " + ", ".join(
        f"{w} {q}/{10 * q}" for w, (q, _) in SIZES.items()))
    p.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vf-bench-memory",
                   help="generated inputs are kept here for the next run")
    p.add_argument("--processes", action="store_true", help="list each run's processes and their VmHWM")
    p.add_argument("--loader-child", nargs=2, metavar=("DATASET_URL", "RECIPE"), help=argparse.SUPPRESS)
    p.add_argument("--make", nargs=2, metavar=("WORKLOAD", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--listing", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Peak:
    seconds: float = 0.0
    tree_rss: int = 0   # bytes: the largest sum of RSS over the process tree, polled
    tree_anon: int = 0  # the same without file-backed and shared pages
    sum_hwm: int = 0    # the sum over the tree's processes of each one's high-water mark (VmHWM)
    ru_maxrss: int = 0  # wait4's ru_maxrss: the largest process of the tree, by the kernel's count
    output: str = ""
    processes: dict = field(default_factory=dict)  # pid → (VmHWM, command line)


def _hwm(pid: int) -> int:
    """The process's RSS high-water mark, kept by the kernel: nothing between two polls is missed."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict[str, str], log: Path) -> Peak:
    """Run ``cmd`` and follow its process tree's memory until it exits."""
    import psutil

    peak, hwm = Peak(), {}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    while True:
        rss = anon = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                m = p.memory_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            rss, anon = rss + m.rss, anon + m.rss - m.shared
            hwm[p.pid] = max(hwm.get(p.pid, 0), _hwm(p.pid))
            if p.pid not in peak.processes:
                with contextlib.suppress(psutil.Error):
                    peak.processes[p.pid] = " ".join(p.cmdline())[:100]
        peak.tree_rss, peak.tree_anon = max(peak.tree_rss, rss), max(peak.tree_anon, anon)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak.seconds = time.perf_counter() - start
    peak.sum_hwm = sum(hwm.values())
    peak.processes = {pid: (hwm[pid], peak.processes.get(pid, "?")) for pid in hwm}
    # ru_maxrss also counts the image the child was forked from (exec keeps the old mm's high-water
    # mark): this process's own peak is a floor under it, so inputs are made in other processes.
    peak.ru_maxrss = usage.ru_maxrss * 1024  # KiB on Linux
    peak.output = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}:\n{peak.output[-3000:]}")
    return peak


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(VISIONFLOW_HOME=str(home), PREFECT_HOME=str(home / "prefect"), MPLCONFIGDIR=str(home / "mpl"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    return env


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def samples(dataset_dir: Path) -> int:
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    return sum(s["samples"] for s in manifest["splits"].values())


def make(kind: str, cache: Path, size: int) -> None:
    """Build (or find) a workload's input in a process of its own, so that this one stays small."""
    subprocess.run([sys.executable, "-m", "bench.memory", "--make", kind, str(size), "--cache", str(cache)],
                   cwd=ROOT, check=True)


# --- the workloads: inputs (cached), then one measured run ----------------------------------------


def imagenet_corpus(cache: Path, n: int) -> Path:
    from tasks.imagenet import ilsvrc_sample

    root = cache / f"ilsvrc-{n}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        ilsvrc_sample.make_tree(root, classes=10, train_per_class=n // 10, val_per_class=max(1, n // 100), odd=False)
        (root / ".complete").touch()
    return root


def run_imagenet(cache: Path, n: int, small: int) -> tuple[int, Peak]:
    make("imagenet", cache, n)
    corpus = cache / f"ilsvrc-{n}"
    work = fresh(cache / "run")
    cmd = [sys.executable, "-m", "flows.cli", "ingest", "imagenet", str(corpus), "--out", str(work / "out"),
           "--shard-size", str(max(1, small // 4)), "--task-runner", "threads"]
    peak = measure(cmd, child_env(work / "home"), cache / f"imagenet-{n}.log")
    return samples(work / "out" / "imagenet" / "v1"), peak


def rf_sessions(cache: Path, seconds: int) -> Path:
    from tasks.rfpose import simulator

    root = cache / f"rf-{RF_SESSIONS}x{seconds}s"
    simulator.simulate(root, sessions=RF_SESSIONS, seconds=seconds, rf_size=(32, 32))  # keeps what is written
    return root


def run_rf(cache: Path, seconds: int, small: int) -> tuple[int, Peak]:
    make("rf", cache, seconds)
    source = cache / f"rf-{RF_SESSIONS}x{seconds}s"
    work = fresh(cache / "run")
    cmd = [sys.executable, "-m", "flows.cli", "ingest", "rfpose", "--source", str(source), "--out", str(work / "out")]
    peak = measure(cmd, child_env(work / "home"), cache / f"rf-{seconds}.log")
    return samples(work / "out" / "rfpose" / "v1"), peak


def mnist_shards(cache: Path, n: int) -> str:
    """MNIST-format shards of ``n`` training digits (and n/6 test), written by the ingest's core."""
    import gzip
    import struct

    import numpy as np

    from tasks.mnist import idx

    url = str(cache / f"mnist-{n}" / "mnist" / "v1")
    if (Path(url) / "manifest.json").exists():
        return url
    raw = fresh(cache / f"mnist-{n}-idx")
    rng = np.random.default_rng(n)
    for prefix, count in (("train", n), ("t10k", max(1, n // 6))):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):  # a bright bar per class, as in tests/idxfiles.py
            images[i, 4:24, 2 + int(2.5 * c):4 + int(2.5 * c)] = 255
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            blob = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            (raw / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(blob + array.tobytes(), 1))
    idx.ingest(raw, url, "mnist", "v1", shard_size=1000)
    shutil.rmtree(raw)
    return url


def run_loader(cache: Path, n: int, small: int) -> tuple[int, Peak]:
    make("loader", cache, n)
    url = str(cache / f"mnist-{n}" / "mnist" / "v1")
    work = fresh(cache / "run")
    cmd = [sys.executable, "-m", "bench.memory", "--loader-child", url, "mnist_convnet"]
    peak = measure(cmd, child_env(work / "home"), cache / f"loader-{n}.log")
    return int(peak.output.strip().splitlines()[-1].split()[0]), peak


def loader_child(url: str, recipe: str) -> None:
    """One epoch of the engine's train loader, as rank 0 of 1 on the CPU; prints the samples seen."""
    import torch

    from tasks import catalog
    from tasks.config import TrainConfig
    from tasks.data import shards
    from tasks.train.engine import Dist, make_loader
    from tasks.train.job import Job

    cfg = TrainConfig(recipe=recipe, data=url, epochs=1, device="cpu")
    job = Job(cfg, checkpoint_dir=str(Path(tempfile.gettempdir()) / "vf-bench-memory-unused"),
              recipe_ref=catalog.reference(recipe), classes=tuple(shards.class_names(shards.read_manifest(url))))
    phase = job.sized(job.phase(0))
    stream, loader = make_loader(job, phase, job.recipe.train_split, Dist(0, 1, 0, torch.device("cpu")), train=True)
    stream.set_epoch(0)
    seen = 0
    for batch in loader:
        seen += len(batch.keys)
    print(f"{seen} samples in one epoch of {len(stream)}")


def listing(n: int) -> None:
    """What the ImageNet scan holds for ``n`` files, measured with tracemalloc on synthetic
    ILSVRC paths (1,000 classes): the one part of the ingest that is O(images) by design."""
    import tracemalloc

    from tasks.imagenet.ingest import Source, _keys, plan_chunks

    tracemalloc.start()
    wnids = [f"n{1440764 + 1000 * i:08d}" for i in range(1000)]
    items = [(f"train/{wnids[i % 1000]}/{wnids[i % 1000]}_{i:05d}.JPEG", i % 1000) for i in range(n)]
    keys = _keys([rel.split("/", 1)[1] for rel, _ in items])  # as scan() builds it
    source = Source("/r", "/r", wnids, None, {"train": [(r, c, k) for (r, c), k in zip(items, keys)]}, "")
    del items, keys
    specs = plan_chunks(source, 1000)
    held, peak = tracemalloc.get_traced_memory()
    print(f"imagenet: its file list and shard plan at {n:,} images hold {held / MIB:.0f} MiB "
          f"({held / n:.0f} B per image; {peak / MIB:.0f} MiB while built; {len(specs)} shards), "
          "beside the fixed cost above (tracemalloc, synthetic ILSVRC paths)")


RUNNERS = {"imagenet": run_imagenet, "rf": run_rf, "loader": run_loader}
MAKERS = {"imagenet": imagenet_corpus, "rf": rf_sessions, "loader": mnist_shards}


# --- the report -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.loader_child:
        loader_child(*args.loader_child)
        return
    if args.make:
        MAKERS[args.make[0]](args.cache, int(args.make[1]))
        return
    if args.listing:
        listing(args.listing)
        return
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; inputs cached in {args.cache}")
    rows: dict[str, list[tuple[int, int, Peak]]] = {}
    for name in args.only:
        small = SIZES[name][0 if args.quick else 1]
        for size in (small, 10 * small):
            items, peak = RUNNERS[name](args.cache, size, small)
            rows.setdefault(name, []).append((size, items, peak))
            print(f"  {name} at {size}: {items} {ITEM[name]}, {peak.seconds:.0f} s, "
                  f"peak RSS {peak.tree_rss / MIB:.0f} MiB", flush=True)
            if args.processes:
                for pid, (hwm, command) in sorted(peak.processes.items()):
                    print(f"    pid {pid:>7} VmHWM {hwm / MIB:6.0f} MiB  {command}")
    shutil.rmtree(args.cache / "run", ignore_errors=True)

    print()
    print(f"{'workload':<9} {'size':>9} {'items':>7} {'wall s':>7} {'peak RSS MiB':>13} {'anon MiB':>9} "
          f"{'sum HWM MiB':>12} {'ru_maxrss MiB':>14} {'procs':>6}")
    for name, runs in rows.items():
        for size, items, p in runs:
            unit = f"s x{RF_SESSIONS}" if name == "rf" else ""
            print(f"{name:<9} {str(size) + unit:>9} {items:>7} {p.seconds:>7.1f} {p.tree_rss / MIB:>13.0f} "
                  f"{p.tree_anon / MIB:>9.0f} {p.sum_hwm / MIB:>12.0f} "
                  f"{p.ru_maxrss / MIB:>14.0f} {len(p.processes):>6}")
    print()
    ratios = {}
    for name, ((_, n1, p1), (_, n10, p10)) in rows.items():
        ratios[name] = p10.tree_rss / p1.tree_rss
        slope = (p10.tree_rss - p1.tree_rss) / max(1, n10 - n1)  # bytes per extra item
        line = (f"{name}: 10x/1x anon {p10.tree_anon / p1.tree_anon:.2f}, sum HWM {p10.sum_hwm / p1.sum_hwm:.2f}, "
                f"ru_maxrss {p10.ru_maxrss / p1.ru_maxrss:.2f}; {slope / 1024:+.1f} KiB per extra {ITEM[name][:-1]}")
        if ratios[name] >= FLAT:
            target, what = SCALE_TO[name]
            line += f", {(p1.tree_rss + slope * (target - n1)) / MIB:,.0f} MiB at {target:,} {what} if linear"
        print(line)
    if "imagenet" in rows:
        print(subprocess.run([sys.executable, "-m", "bench.memory", "--listing", str(SCALE_TO["imagenet"][0])],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip())
    for name, ratio in ratios.items():
        print(f"{name} rss ratio 10x/1x: {ratio:.2f}")
    grown = [f"{name} {ratio:.2f}" for name, ratio in ratios.items() if ratio >= FLAT]
    if grown:
        print(f"verdict: NOT flat (peak RSS at 10x is {FLAT}x or more of 1x for {', '.join(grown)})")
    else:
        print(f"verdict: flat (peak RSS at 10x within {FLAT}x of 1x for every workload)")

if __name__ == "__main__":
    main()
