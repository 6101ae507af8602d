"""PConv U-Net inference latency (not a test): one 512x512 image through the paper's network
(depth 8, width 1.0), against Liu et al. 2018's 0.23 s per image on a V100.

    python -m bench.pconv_latency                      # CPU eager vs torch.compile (+ the GPU if any)
    python bench/pconv_latency.py --runs 5 --no-compile
    python bench/pconv_latency.py --size 256           # depth follows the side (7 for 256)

CPU: eager fp32 against ``torch.compile`` (inductor, default options) fp32. GPU, where CUDA is
available: eager fp32, bf16 autocast + channels_last, and that compiled. Every figure is the
median of ``--runs`` timed calls, interleaved across variants so that load on a shared machine
hits them alike, after warm-up calls that are not counted; a compiled variant's first call (the
compilation; much shorter when inductor's on-disk cache already holds the kernels) is printed
on its own. The last line holds the CPU figures, the line before it the GPU's ("GPU: not
available" without one).

Measured on 2 CPU cores shared with other jobs (torch 2.14): eager 0.89 s/image when quiet (up
to 3.2 s under load), compiled 0.72-2.2 s; the speed-up over five runs was 0.89-1.45x, no
clearer than the load's noise. Compiling took 57 s with inductor's cache cold, 3-7 s warm.
Inductor's ``freezing`` option (weights as constants, prepacked for oneDNN) was no better.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python bench/pconv_latency.py`: put the repository root first on sys.path, so
    # `models` is this checkout's (bench/ itself would come first otherwise).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

import models

PAPER_S = 0.23  # Liu et al. 2018: 0.23 s per 512x512 image on one V100
PAPER_SIDE = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=PAPER_SIDE, help="image side (a multiple of 2**depth)")
    p.add_argument("--runs", type=int, default=5, help="timed calls per variant (the median is kept)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (after compiling)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    return p.parse_args(argv)


def depth_for(side: int) -> int:
    # 8 encoder layers at 512 (the paper's network), 7 at 256: the bottleneck stays 2x2.
    return max(1, min(8, side.bit_length() - 2))


def inputs(side: int, device: str, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 1, side, side, generator=g) > 0.25).float()
    image = torch.rand(1, 3, side, side, generator=g) * mask
    image, mask = image.to(device), mask.to(device)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
        mask = mask.contiguous(memory_format=torch.channels_last)
    return image, mask


def variant(side: int, device: str, bf16: bool = False, compiled: bool = False) -> Callable[[], torch.Tensor]:
    """One batch-1 inference call of a fresh network (fp32, or bf16 autocast + channels_last)."""
    torch.manual_seed(0)
    net = models.build("pconv_unet", depth=depth_for(side), width=1.0).eval().to(device)
    if bf16:
        net = net.to(memory_format=torch.channels_last)
    image, mask = inputs(side, device, channels_last=bf16)
    forward = torch.compile(net) if compiled else net

    def call() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            out = forward(image, mask)
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # kernels run asynchronously: wait for them
        return out

    return call


def timed(call: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(calls: dict[str, Callable[[], torch.Tensor]], args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per call of each variant. The first call (compilation, for a compiled one)
    is printed apart; timed runs are interleaved across variants, so a load change on a shared
    machine hits all of them alike."""
    for label, call in calls.items():
        first = timed(call)
        if "compiled" in label:
            print(f"  {label}: first call (compiling) {first:.1f} s", flush=True)
        for _ in range(args.warmup):
            call()
    times: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(args.runs):
        for label, call in calls.items():
            times[label].append(timed(call))
    medians = {label: statistics.median(t) for label, t in times.items()}
    for label, median in medians.items():
        print(f"  {label:34s} {median:.4f} s/image {versus_paper(median, args.size)}", flush=True)
    return medians


def versus_paper(seconds: float, side: int) -> str:
    if side != PAPER_SIDE:
        return f"(paper: {PAPER_S} s at {PAPER_SIDE}x{PAPER_SIDE})"
    return f"({seconds / PAPER_S:.2f}x the paper's {PAPER_S} s on a V100)"


def bench_cpu(args: argparse.Namespace) -> str:
    print(f"CPU ({torch.get_num_threads()} threads):", flush=True)
    calls = {"eager fp32": variant(args.size, "cpu")}
    if args.compile:
        calls["compiled fp32"] = variant(args.size, "cpu", compiled=True)
    s = measure(calls, args)
    line = f"CPU: eager fp32 {s['eager fp32']:.3f} s/image"
    if args.compile:
        line += (f", compiled {s['compiled fp32']:.3f} s/image, "
                 f"speed-up {s['eager fp32'] / s['compiled fp32']:.2f}x")
    return line + f" {versus_paper(s['eager fp32'], args.size)}"


def bench_gpu(args: argparse.Namespace) -> str:
    if not torch.cuda.is_available():
        return "GPU: not available"
    torch.backends.cudnn.benchmark = True
    print(f"GPU ({torch.cuda.get_device_name()}):", flush=True)
    calls = {"eager fp32": variant(args.size, "cuda"),
             "bf16 + channels_last": variant(args.size, "cuda", bf16=True)}
    if args.compile:
        calls["bf16 + channels_last, compiled"] = variant(args.size, "cuda", bf16=True, compiled=True)
    s = measure(calls, args)
    eager = s["eager fp32"]
    line = (f"GPU: eager fp32 {eager:.4f} s/image, bf16+channels_last {s['bf16 + channels_last']:.4f} s/image "
            f"({eager / s['bf16 + channels_last']:.2f}x)")
    if args.compile:
        compiled = s["bf16 + channels_last, compiled"]
        line += f", compiled {compiled:.4f} s/image ({eager / compiled:.2f}x)"
    return line + f" {versus_paper(eager, args.size)}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"torch {torch.__version__}; PConv U-Net depth {depth_for(args.size)}, {args.size}x{args.size}, "
          f"batch 1; median of {args.runs} runs after {args.warmup} warm-up", flush=True)
    gpu = bench_gpu(args)
    cpu = bench_cpu(args)
    print(gpu)
    print(cpu)


if __name__ == "__main__":
    main()
