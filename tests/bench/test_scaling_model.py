"""bench/scaling_model.py: the ring formula, the overlap rule, and the fast.ai check it prints."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest

from bench import scaling_model as sm

NETS = [sm.RESNET50, sm.VGG16]
COMMS = [sm.Comm(nic_gbps=g, grad_dtype=d) for g in (25.0, 100.0) for d in ("fp32", "bf16")]


def test_ring_formula_on_a_hand_example():
    assert sm.ring_bytes(4, 100.0) == pytest.approx(150.0)  # 2 × 3/4 × 100
    assert sm.ring_bytes(1, 100.0) == 0.0
    # 2 nodes × 8 GPUs over a 10 Gb/s NIC at line rate: 2 × 15/16 × 1 GB / 1.25 GB/s = 1.5 s
    assert sm.allreduce_time(16, 1e9, sm.Comm(nic_gbps=10.0, link_efficiency=1.0)) == pytest.approx(1.5)
    # inside one node NVLink carries it: 2 × 7/8 × 1.3 GB / 130 GB/s = 17.5 ms
    assert sm.allreduce_time(8, 1.3e9, sm.Comm(nvlink_gbytes=130.0)) == pytest.approx(0.0175)
    # ResNet-50's fp16 gradients over 32 GPUs: scale.md §4.2's 99 MB per step
    assert sm.ring_bytes(32, sm.RESNET50.params * 2) == pytest.approx(99.03e6, rel=1e-3)


def test_exposed_comm_last_bucket_and_backlog():
    assert sm.exposed_comm(1.0, 0.6, 1) == 1.0  # one bucket: nothing overlaps
    assert sm.exposed_comm(1.0, 2.0, 4) == pytest.approx(0.25)  # backward hides all but the last bucket
    assert sm.exposed_comm(1.0, 0.6, 4) == pytest.approx(0.55)  # the link is the bottleneck: 1 - 0.6 × 3/4
    assert sm.n_buckets(sm.RESNET50.params, 25.0) == 4  # 102 MB of fp32 gradients in 25 MiB buckets
    assert sm.n_buckets(sm.VGG16.params, 25.0) == 22
    assert sm.n_buckets(sm.VGG16.params, math.inf) == 1


@pytest.mark.parametrize("net", NETS, ids=lambda n: n.name)
@pytest.mark.parametrize("comm", COMMS, ids=lambda c: f"{c.nic_gbps:g}-{c.grad_dtype}")
def test_efficiency_is_one_on_one_gpu_and_never_rises(net, comm):
    assert sm.efficiency(net, 1, comm) == 1.0
    effs = [sm.efficiency(net, n, comm) for n in range(1, 129)]
    assert all(b <= a for a, b in zip(effs, effs[1:]))
    assert effs[-1] < 1.0


@pytest.mark.parametrize("net", NETS, ids=lambda n: n.name)
def test_bf16_halves_the_communication_term(net):
    fp32, bf16 = sm.Comm(grad_dtype="fp32"), sm.Comm(grad_dtype="bf16")
    grad = net.params * sm.WIRE_BYTES["fp32"]
    assert sm.allreduce_time(128, grad / 2, bf16) == pytest.approx(sm.allreduce_time(128, grad, fp32) / 2)
    # with one bucket the whole all-reduce is exposed, so the step's comm share halves exactly
    compute = sm.step_time(net, 1, fp32)
    one = dict(bucket_mib=math.inf)
    comm32 = sm.step_time(net, 128, replace(fp32, **one)) - compute
    comm16 = sm.step_time(net, 128, replace(bf16, **one)) - compute
    assert comm32 > 0 and comm16 == pytest.approx(comm32 / 2)


def test_vgg16_at_25_gbps_needs_compression_and_resnet50_barely():
    slow32, slow16 = sm.Comm(grad_dtype="fp32"), sm.Comm(grad_dtype="bf16")
    assert sm.efficiency(sm.VGG16, 128, slow32) < 0.6 < 0.85 < sm.efficiency(sm.VGG16, 128, slow16)
    assert sm.efficiency(sm.RESNET50, 128, slow32) > 0.9
    assert sm.efficiency(sm.VGG16, 128, sm.Comm(nic_gbps=100.0)) > 0.95


def test_fastai_points_within_ten_percent():
    points = sm.fastai_points()
    assert [round(p.measured, 3) for p in points] == [0.875, 0.733, 2.444]
    assert all(abs(p.error) < 0.10 for p in points), [(p.label, p.error) for p in points]
    # the communication term alone does not reproduce them: the fixed per-epoch time is needed
    alone = sm.fastai_points(overhead_s=0.0)
    assert abs(alone[1].error) > 0.10


def test_main_ends_with_the_max_error(capsys):
    sm.main([])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"max error vs fast\.ai (\d+\.\d)%", last)
    assert match, last
    assert float(match.group(1)) == pytest.approx(100 * max(abs(p.error) for p in sm.fastai_points()), abs=0.05)
