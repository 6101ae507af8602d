"""Model speed benchmark (not a test): forward+backward samples/s per model, and the PConv U-Net's
512x512 inference latency (Liu et al. 2018 report 0.23 s on a V100).

    python -m bench.model_speed                              # CPU-sized defaults, ~2 minutes
    python -m bench.model_speed --models vgg16 resnet50 --batch 2 --iters 2 --warmup 1
    python -m bench.model_speed --models all --batch 32 --iters 20 --rf-frames 100 --rf-size 64  # GPU
    python bench/model_speed.py --help                       # also runs as a script

Baselines run side by side in the same process: torchvision's own VGG / ResNet-50 next to ours
(ratio ours / torchvision, expected about 1.0), and with ``--amp`` (the default on CUDA) every
model runs a second time under autocast (fp16 on CUDA, bf16 on CPU) with channels_last memory,
printed as its speed-up over fp32 contiguous. The PConv latency is printed against the paper's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python bench/model_speed.py`, this file's folder (bench/) comes first on sys.path:
    # put the repository root there instead, so that `models` and `tasks` are this checkout's.
    # (This file was bench/models.py, which shadowed the `models` package for every bench/ script.)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torchvision
from torch import nn

import models

DEFAULT_MODELS = ["vgg11", "vgg16", "resnet50", "mnist_convnet", "mnist_mlp", "rfpose_student",
                  "pconv_unet"]
PAPER_PCONV_512_S = 0.23  # Liu et al. 2018, one V100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                   help="registered model names, or 'all'")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=2, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved repeats of every measurement; the best one is kept")
    p.add_argument("--image-size", type=int, default=224, help="VGG / ResNet input side")
    p.add_argument("--rf-frames", type=int, default=8, help="RF-Pose window length (paper: 100)")
    p.add_argument("--rf-size", type=int, default=32, help="RF heatmap side")
    p.add_argument("--pconv-size", type=int, default=512, help="PConv U-Net input side")
    p.add_argument("--latency-iters", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_true", default=None,
                     help="also time AMP + channels_last (default on CUDA)")
    amp.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip torchvision's VGG / ResNet-50 runs")
    args = p.parse_args(argv)
    if args.models == ["all"]:
        args.models = models.names()
    if args.amp is None:
        args.amp = args.device.startswith("cuda")
    return args


def pconv_depth(side: int) -> int:
    # 8 layers for the paper's 512x512 network, 7 for 256x256: the bottleneck stays 2x2.
    return max(1, min(8, side.bit_length() - 2))


def build(name: str, args: argparse.Namespace) -> nn.Module:
    if name == "pconv_unet":
        return models.build(name, depth=pconv_depth(args.pconv_size))
    return models.build(name)


def make_inputs(name: str, batch: int, args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    if name.startswith("mnist"):
        return (torch.randn(batch, 1, 28, 28),)
    if name == "rfpose_student":
        shape = (batch, 1, args.rf_frames, args.rf_size, args.rf_size)  # (B, C, T, H, W)
        return torch.randn(shape), torch.randn(shape)
    if name == "pconv_unet":
        side = args.pconv_size
        mask = (torch.rand(batch, 1, side, side) > 0.25).float()
        return torch.rand(batch, 3, side, side) * mask, mask
    return (torch.randn(batch, 3, args.image_size, args.image_size),)


def describe(inputs: tuple[torch.Tensor, ...]) -> str:
    return "x".join(map(str, inputs[0].shape[1:]))


def channels_last(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t


def prepare(net: nn.Module, inputs: tuple[torch.Tensor, ...], device: str, fast: bool):
    net = net.to(device)
    inputs = tuple(t.to(device) for t in inputs)
    if fast:
        five_d = any(t.dim() == 5 for t in inputs)
        net = net.to(memory_format=torch.channels_last_3d if five_d else torch.channels_last)
        inputs = tuple(channels_last(t) for t in inputs)
    return net, inputs


def seconds_per_call(fn: Callable[[], object], iters: int, warmup: int, device: str) -> float:
    def run(n: int) -> None:
        for _ in range(n):
            fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # CUDA kernels are asynchronous: wait for them

    run(warmup)
    start = time.perf_counter()
    run(iters)
    return (time.perf_counter() - start) / iters


def fastest(calls: dict[str, Callable[[], object]], iters: int,
            args: argparse.Namespace) -> dict[str, float]:
    """Best seconds per call of each variant, over ``args.rounds`` interleaved rounds.

    Interleaving and keeping the best matter on CPU: whichever model runs first in a process
    pays for fresh memory pages, which made torchvision look 3x faster than the same layers
    when each ran once, in turn (and shared CPUs add noise of their own).
    """
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(args.rounds):
        for label, call in calls.items():
            best[label] = min(best[label],
                              seconds_per_call(call, iters, args.warmup, args.device))
    return best


def autocast(args: argparse.Namespace, enabled: bool) -> torch.autocast:
    device_type = torch.device(args.device).type
    dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def train_step(net: nn.Module, inputs: tuple[torch.Tensor, ...], args: argparse.Namespace,
               fast: bool) -> Callable[[], None]:
    """One forward + backward; ``fast``: autocast + channels_last."""
    net, inputs = prepare(net.train(), inputs, args.device, fast)

    def step():
        net.zero_grad(set_to_none=True)
        with autocast(args, fast):
            out = net(*inputs)
        # A stand-in loss: the speed question is the model's, not the loss's. No GradScaler is
        # needed for timing: its per-step cost is a few elementwise kernels.
        out.float().square().mean().backward()

    return step


def torchvision_twin(name: str) -> nn.Module | None:
    if name in models.vgg.VGG_VARIANTS and hasattr(torchvision.models, name):
        return getattr(torchvision.models, name)()
    if name == "resnet50":
        return torchvision.models.resnet50()
    return None


def bench_model(name: str, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    inputs = make_inputs(name, args.batch, args)
    steps = {"ours": train_step(build(name, args), inputs, args, fast=False)}
    twin = torchvision_twin(name) if args.baseline else None
    if twin is not None:
        steps["torchvision"] = train_step(twin, inputs, args, fast=False)
    if args.amp:
        steps["fast"] = train_step(build(name, args), inputs, args, fast=True)
    rate = {label: args.batch / s for label, s in fastest(steps, args.iters, args).items()}
    line = f"{name:16s} {describe(inputs):>14s} {rate['ours']:10.2f} samples/s"
    if name == "rfpose_student":
        line += f" ({rate['ours'] * args.rf_frames:.0f} frames/s)"
    if "torchvision" in rate:
        line += (f" | torchvision {rate['torchvision']:8.2f} samples/s, "
                 f"ours/torchvision {rate['ours'] / rate['torchvision']:.2f}")
    if "fast" in rate:
        line += (f" | amp+channels_last {rate['fast']:8.2f} samples/s, "
                 f"speed-up {rate['fast'] / rate['ours']:.2f}x")
    print(line, flush=True)


def pconv_infer(args: argparse.Namespace, fast: bool) -> Callable[[], torch.Tensor]:
    torch.manual_seed(0)
    net = models.build("pconv_unet", depth=pconv_depth(args.pconv_size)).eval()
    net, (image, mask) = prepare(net, make_inputs("pconv_unet", 1, args), args.device, fast)

    def infer():
        with torch.inference_mode(), autocast(args, fast):
            return net(image, mask)

    return infer


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(torch.device(args.device))
    else:
        where = f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; batch {args.batch}; best of {args.rounds} "
          f"interleaved rounds of {args.iters} timed iterations after {args.warmup} warm-up")
    print("== forward + backward ==")
    for name in args.models:
        bench_model(name, args)
    side = args.pconv_size
    print(f"== PConv U-Net {side}x{side} inference, batch 1, depth {pconv_depth(side)} ==")
    calls = {"fp32": pconv_infer(args, fast=False)}
    if args.amp:
        calls["fast"] = pconv_infer(args, fast=True)
    latency = fastest(calls, args.latency_iters, args)
    line = f"latency {latency['fp32']:.3f} s (paper: {PAPER_PCONV_512_S} s on a V100"
    line += f"; ours/paper {latency['fp32'] / PAPER_PCONV_512_S:.2f})" if side == 512 else ")"
    if "fast" in latency:
        line += (f" | amp+channels_last {latency['fast']:.3f} s, "
                 f"speed-up {latency['fp32'] / latency['fast']:.2f}x")
    print(line)


if __name__ == "__main__":
    main()
