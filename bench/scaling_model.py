"""Scaling model (not a test, no GPU): data-parallel step time = compute + the part of the gradient
all-reduce that the backward pass does not hide, checked against fast.ai's 2018 DAWNBench runs.

    .venv/bin/python -m bench.scaling_model [--bucket-mib 25] [--link-efficiency 0.8]
    python bench/scaling_model.py --help               # also runs as a script

Model. A step is ``batch / images_per_s`` of compute (a measured or cited per-GPU figure), 2/3 of
it backward. The all-reduce is a ring over all N GPUs, and each node's NIC is its bottleneck
(within one node, NVLink): every GPU, and every node's NIC, sends and receives 2(N-1)/N × the
gradient bytes (nccl-tests doc/PERFORMANCE.md), at ``link_efficiency`` × line rate. DDP starts a
bucket's all-reduce once its gradients exist; gradients become ready at an even rate through the
backward pass, so with k buckets the exposed time is max(T_comm / k, T_comm - T_backward (k-1)/k):
the last bucket never overlaps, and with one bucket nothing does. Time-to-accuracy is epochs ×
steps per epoch × step time (+ any fixed per-epoch time). Parameters and where they come from are
next to each constant; /work/shared/research/scale.md §4 (fast.ai) and §5 (all-reduce) has the
derivations. ``ddp_bucket_mb`` and ``ddp_compression`` in TrainConfig are the knobs this models.

Check. fast.ai (ResNet-50, fp16 model, PyTorch 0.4.1, p3.16xlarge: 8 V100, 25 Gb/s) at 224 px:
4→8 machines 87 %, 8→16 73 %, 2.44 Gbit/s per NIC. Their step time (0.318 s) gives the compute
rate; the one fitted number is a fixed time per epoch (validation, loader start), fitted on the
4-machine epoch alone; the 8- and 16-machine epochs are predictions. The communication term
alone cannot explain their drop: at 25 Gb/s a ring moves almost the same bytes per NIC at 32
GPUs as at 128. The last line is the largest error against fast.ai's points.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 training images
MIB = 1024 * 1024
BACKWARD_SHARE = 2 / 3  # backward ≈ 2 × forward FLOPs (grads w.r.t. inputs and weights); Kaplan et al. 2020 §2.1, C ≈ 6N
WIRE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes per gradient element on the wire


@dataclass(frozen=True)
class Network:
    """One network on one V100: what it costs to compute a step and what it has to all-reduce."""

    name: str
    params: int  # torchvision's num_params (scale.md §5)
    images_per_s: float  # one GPU, forward + backward
    batch: int  # per GPU
    epochs: int  # to the reference accuracy


# NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/README.md, DGX-1 16 GB,
# pytorch-21.03: 1 V100, mixed precision, 1200 img/s; 90 epochs → 76.9 % top-1 (also Goyal et al. 2017).
RESNET50 = Network("ResNet-50", 25_557_032, 1200.0, 256, 90)
NVIDIA_8GPU_IMAGES_PER_S = 8322  # same table, 8 V100 (one DGX-1), mixed precision
# LambdaColdStorage/lambda-tensorflow-benchmark summary/tf-train-throughput-fp16.csv: 1 V100-SXM3-32GB,
# TF 2.2, fp16, 456 img/s (measured at batch 384, tf-train-bs-fp16.csv; 128 is what a 16 GB card holds,
# assumed at the same rate). 74 epochs: Simonyan & Zisserman 2015 §3.1 ("370K iterations (74 epochs)").
VGG16 = Network("VGG16", 138_357_544, 456.0, 128, 74)


@dataclass(frozen=True)
class Comm:
    """How the gradients travel."""

    nic_gbps: float = 25.0  # per node, line rate: p3.16xlarge 25 Gb/s (scale.md §4.1); 100 Gb/s EFA/IB
    grad_dtype: str = "fp32"  # on the wire; bf16 / fp16 = TrainConfig.ddp_compression (a DDP comm hook)
    bucket_mib: float = 25.0  # DDP bucket_cap_mb (PyTorch's default 25; TrainConfig.ddp_bucket_mb)
    # Share of line rate NCCL reaches: "with the protocol overhead (~20%)" (sjeaugey, NVIDIA/nccl-tests#212).
    # Not fitted; 1.0 changes the fast.ai errors by under a point.
    link_efficiency: float = 0.8
    # Intra-node all-reduce bus bandwidth on 8 V100 over NVLink, GB/s: the commonly quoted figure,
    # [unverified] in scale.md §5 (150 GB/s per direction × ~0.8 is consistent). Only 1-node runs use it.
    nvlink_gbytes: float = 130.0
    gpus_per_node: int = 8


def ring_bytes(n_gpus: int, grad_bytes: float) -> float:
    """Bytes each GPU sends (and receives) in one ring all-reduce of ``grad_bytes``: 2(N-1)/N × S.
    In a ring laid out node by node, each node's NIC carries the same."""
    return 2 * (n_gpus - 1) / n_gpus * grad_bytes


def allreduce_time(n_gpus: int, grad_bytes: float, comm: Comm) -> float:
    """Seconds for one ring all-reduce over ``n_gpus``: the ring's bytes over its slowest link (the
    NIC once the ring leaves a node, NVLink inside one). Bandwidth term only: no per-hop latency."""
    if n_gpus == 1:
        return 0.0
    if math.ceil(n_gpus / comm.gpus_per_node) == 1:
        bandwidth = comm.nvlink_gbytes * 1e9
    else:
        bandwidth = comm.nic_gbps * 1e9 / 8 * comm.link_efficiency
    return ring_bytes(n_gpus, grad_bytes) / bandwidth


def n_buckets(params: int, bucket_mib: float) -> int:
    """DDP's bucket count: it sizes buckets by the fp32 gradients (a compression hook then halves
    each one on the wire). math.inf: one bucket, i.e. no overlap."""
    return max(1, math.ceil(params * 4 / (bucket_mib * MIB)))


def exposed_comm(t_comm: float, t_backward: float, buckets: int) -> float:
    """All-reduce time left after the backward pass ends. Bucket i of k is ready at i/k of the
    backward pass and the link sends one bucket after another (T_comm / k each), so the last one
    finishes at max(T_backward + T_comm/k, T_backward/k + T_comm)."""
    return max(t_comm / buckets, t_comm - t_backward * (buckets - 1) / buckets)


def step_time(net: Network, n_gpus: int, comm: Comm, batch: int | None = None) -> float:
    """Seconds per optimizer step on each of ``n_gpus`` GPUs (per-GPU batch ``batch``)."""
    t_compute = (batch or net.batch) / net.images_per_s
    t_comm = allreduce_time(n_gpus, net.params * WIRE_BYTES[comm.grad_dtype], comm)
    return t_compute + exposed_comm(t_comm, BACKWARD_SHARE * t_compute, n_buckets(net.params, comm.bucket_mib))


def efficiency(net: Network, n_gpus: int, comm: Comm) -> float:
    """Per-GPU throughput on ``n_gpus`` over one GPU's, same per-GPU batch (DDP's weak scaling)."""
    return step_time(net, 1, comm) / step_time(net, n_gpus, comm)


def steps_per_epoch(n_gpus: int, batch: int, images: int = IMAGENET_TRAIN) -> int:
    """DistributedSampler pads every rank to ceil(images / N); the last batch may be short."""
    return math.ceil(math.ceil(images / n_gpus) / batch)


def time_to_accuracy(net: Network, n_gpus: int, comm: Comm, epoch_overhead_s: float = 0.0) -> float:
    """Seconds to ``net.epochs`` epochs of ImageNet, assuming the global batch needs no more epochs
    (Goyal et al. 2017 show that holds to 8k; fast.ai needed 38 epochs at 16 machines, 30 at 4)."""
    per_epoch = steps_per_epoch(n_gpus, net.batch) * step_time(net, n_gpus, comm) + epoch_overhead_s
    return net.epochs * per_epoch


# --- fast.ai DAWNBench, Aug 2018 (scale.md §4) -------------------------------------------------------
# cybertronai/imagenet18 README, a 4-machine log line at 224 px, batch 224/GPU, 179 steps/epoch:
# "Time 0.318 (0.368) ... BW 2.444 2.445" (step seconds, its epoch average; Gbit/s received, sent).
FASTAI_STEP_S = 0.318
FASTAI_NIC_GBITS = 2.444
# Seconds per 224-px epoch (per-GPU batch, s/epoch), derived from the DAWNBench TSVs, wall time with
# the per-epoch validation (scale.md §4.3).
FASTAI_EPOCH_S = {4: (224, 69.8), 8: (224, 39.9), 16: (192, 27.2)}
# Pure fp16 model (network_to_half): fp16 gradients. fast.ai ran PyTorch 0.4.1, whose
# DistributedDataParallel with NCCL (torch/nn/parallel/distributed.py, _register_nccl_grad_hook)
# all-reduces "all gradients ... in one single step" from an autograd callback queued to run after
# the backward pass, in nccl_reduce_bucket_size = 256 MiB buckets: for ResNet-50, one, and no overlap.
FASTAI_COMM = Comm(nic_gbps=25.0, grad_dtype="fp16", bucket_mib=256.0)


@dataclass(frozen=True)
class Point:
    """One of fast.ai's measured numbers beside the model's."""

    label: str
    measured: float
    model: float

    @property
    def error(self) -> float:
        return self.model / self.measured - 1


def fastai_resnet50(comm: Comm) -> Network:
    """ResNet-50 at fast.ai's 2018 speed: compute = their 4-machine step time minus the model's
    all-reduce there (all of it exposed)."""
    batch = FASTAI_EPOCH_S[4][0]
    net = Network("ResNet-50 (fast.ai 2018)", RESNET50.params, 1.0, batch, 38)
    t_comm = step_time(net, 4 * comm.gpus_per_node, comm) - step_time(net, 1, comm)
    return replace(net, images_per_s=batch / (FASTAI_STEP_S - t_comm))


def fastai_epoch(net: Network, machines: int, comm: Comm, overhead_s: float) -> float:
    batch = FASTAI_EPOCH_S[machines][0]
    n_gpus = machines * comm.gpus_per_node
    return steps_per_epoch(n_gpus, batch) * step_time(net, n_gpus, comm, batch) + overhead_s


def fastai_epoch_overhead(net: Network, comm: Comm) -> float:
    """The fitted parameter: fixed seconds per epoch (validation, DataLoader start), from the
    4-machine epoch only: its wall time minus its steps × the model's step time."""
    return FASTAI_EPOCH_S[4][1] - fastai_epoch(net, 4, comm, 0.0)


def fastai_points(comm: Comm = FASTAI_COMM, overhead_s: float | None = None) -> list[Point]:
    """fast.ai's scaling (throughput ratio / machine ratio) and NIC rate, measured and modelled.
    ``overhead_s=0`` shows the communication term alone."""
    net = fastai_resnet50(comm)
    overhead = fastai_epoch_overhead(net, comm) if overhead_s is None else overhead_s
    points = []
    for a, b in ((4, 8), (8, 16)):
        measured = FASTAI_EPOCH_S[a][1] / FASTAI_EPOCH_S[b][1] * a / b
        model = fastai_epoch(net, a, comm, overhead) / fastai_epoch(net, b, comm, overhead) * a / b
        points.append(Point(f"{a:>2} → {b:<2} machines", measured, model))
    n_gpus = 4 * comm.gpus_per_node
    grad = net.params * WIRE_BYTES[comm.grad_dtype]
    nic = ring_bytes(n_gpus, grad) * 8 / 1e9 / step_time(net, n_gpus, comm)
    points.append(Point("NIC Gbit/s, 4 machines", FASTAI_NIC_GBITS, nic))
    return points


# --- printing -------------------------------------------------------------------------------------

def _print_fastai(comm: Comm) -> list[Point]:
    net = fastai_resnet50(comm)
    overhead = fastai_epoch_overhead(net, comm)
    t_comm = allreduce_time(4 * comm.gpus_per_node, net.params * 2, comm)
    print("fast.ai DAWNBench 2018: ResNet-50 at 224 px on p3.16xlarge (8 V100, 25 Gb/s), fp16 gradients,")
    print("PyTorch 0.4.1 DDP (all-reduce after the backward pass, nothing overlaps)")
    print(f"  compute {net.images_per_s:.0f} img/s/GPU: their 0.318 s step minus the model's all-reduce "
          f"({t_comm * 1e3:.1f} ms at 32 GPUs, {comm.link_efficiency:.0%} of 25 Gb/s)")
    print(f"  fitted: {overhead:.1f} s fixed per epoch (4 machines: 69.8 s/epoch - 179 steps × 0.318 s)")
    print("    their log agrees: 7 validation batches × 0.432 s ≈ 3 s, and 179 steps × (0.368 - 0.318) s ≈ 9 s")
    print("    of epoch start (the epoch-average step against the steady one)")
    print(f"  {'machines':<8} {'batch/GPU':>9} {'s/epoch measured':>17} {'model':>6}")
    for machines, (batch, seconds) in FASTAI_EPOCH_S.items():
        print(f"  {machines:<8} {batch:>9} {seconds:>17.1f} {fastai_epoch(net, machines, comm, overhead):>6.1f}")
    points = fastai_points(comm)
    print(f"  {'':<24} {'fast.ai measured':>16} {'model':>7} {'error':>7}")
    for p in points:
        unit = ".2f" if p.label.startswith("NIC") else ".1%"
        print(f"  {p.label:<24} {format(p.measured, unit):>16} {format(p.model, unit):>7} {p.error:>+7.1%}")
    alone = ", ".join(f"{p.label.strip()} {p.model:.1%}" for p in fastai_points(comm, overhead_s=0.0)[:2])
    print(f"  communication alone (no per-epoch time): {alone}")
    return points


def _print_network(net: Network, comm: Comm, nodes: list[int]) -> None:
    gpus = [1] + [n * comm.gpus_per_node for n in nodes]
    print(f"\n{net.name}: {net.params / 1e6:.1f} M params, {net.images_per_s:.0f} img/s per V100 at batch "
          f"{net.batch}/GPU, {net.epochs} epochs; DDP buckets {comm.bucket_mib:g} MiB "
          f"({n_buckets(net.params, comm.bucket_mib)} of them)")
    print(f"  {'link':>9} {'grads':<5} {'':<11}" + "".join(f"{'1 GPU' if g == 1 else f'{g // 8}×8':>8}" for g in gpus))
    for gbps in (25.0, 100.0):
        for dtype in ("fp32", "bf16"):
            c = replace(comm, nic_gbps=gbps, grad_dtype=dtype)
            eff = "".join(f"{efficiency(net, g, c):>8.1%}" for g in gpus)
            hours = "".join(f"{time_to_accuracy(net, g, c) / 3600:>8.2f}" for g in gpus)
            print(f"  {gbps:>4.0f} Gb/s {dtype:<5} {'efficiency':<11}{eff}")
            print(f"  {'':>9} {'':<5} {'hours':<11}{hours}")


def _print_buckets(comm: Comm, n_gpus: int) -> None:
    sizes = [5.0, 25.0, 100.0, 256.0, math.inf]
    print(f"\nBucket size at {n_gpus // comm.gpus_per_node}×{comm.gpus_per_node}, 25 Gb/s: efficiency "
          "(the model has no per-call latency, so it cannot say how small is too small)")
    print(f"  {'':<16}" + "".join(f"{'one bucket' if math.isinf(s) else f'{s:g} MiB':>11}" for s in sizes))
    for net in (RESNET50, VGG16):
        for dtype in ("fp32", "bf16"):
            c = replace(comm, nic_gbps=25.0, grad_dtype=dtype)
            row = "".join(f"{efficiency(net, n_gpus, replace(c, bucket_mib=s)):>11.1%}" for s in sizes)
            print(f"  {net.name:<10} {dtype:<5}{row}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket-mib", type=float, default=25.0, help="DDP bucket size for the predictions")
    parser.add_argument("--link-efficiency", type=float, default=0.8,
                        help="share of NIC line rate NCCL reaches (also used for the fast.ai check)")
    args = parser.parse_args(argv)
    points = _print_fastai(replace(FASTAI_COMM, link_efficiency=args.link_efficiency))
    comm = Comm(bucket_mib=args.bucket_mib, link_efficiency=args.link_efficiency)
    _print_network(RESNET50, comm, [1, 2, 4, 8, 16])
    one_node = efficiency(RESNET50, comm.gpus_per_node, replace(comm, grad_dtype="fp32"))
    print(f"  inside one node the model says {one_node:.1%}; NVIDIA measure {NVIDIA_8GPU_IMAGES_PER_S} img/s on "
          f"8 V100 = {NVIDIA_8GPU_IMAGES_PER_S / 8 / RESNET50.images_per_s:.1%} of 8 × 1200:")
    print("  what is lost there is not gradient traffic (input pipeline, clocks), which this model does not have")
    _print_network(VGG16, comm, [1, 2, 4, 8, 16])
    _print_buckets(comm, 16 * comm.gpus_per_node)
    print(f"\nmax error vs fast.ai {max(abs(p.error) for p in points):.1%}")


if __name__ == "__main__":
    main()
