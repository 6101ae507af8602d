"""Inference latency of a trained inpainting network per 512² image (the paper: 0.23 s on a V100),
on this machine's device, logged to the training run as ``test/latency_s_512``.

``bench/pconv_latency.py`` compares eager with torch.compile (and bf16 + channels_last on GPUs);
this is the plain eager fp32 figure of the run's own network.
"""

from __future__ import annotations

import statistics
import time

import torch


@torch.no_grad()
def seconds_per_image(model: torch.nn.Module, size: int = 512, runs: int = 5,
                      device: torch.device = torch.device("cpu")) -> float:
    """Median wall time of one batch-1 forward pass at ``size``², after a warm-up pass."""
    model = model.eval().to(device)
    image, mask = torch.rand(1, 3, size, size, device=device), torch.ones(1, 1, size, size, device=device)
    mask[..., size // 4: size // 2, size // 4: size // 2] = 0
    times = []
    for i in range(runs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(image * mask, mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first pass allocates and warms the kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)

