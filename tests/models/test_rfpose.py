"""RF-Pose student: shapes for 100- and 8-frame windows, its layers, the BCE loss, keypoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models.rfpose import ENCODER_CHANNELS, confidence_map_bce, join_by_range, keypoints_from_maps, resampling


def windows(t: int, h: int = 32, w: int = 32, batch: int = 1):
    return torch.randn(batch, 1, t, h, w), torch.randn(batch, 1, t, h, w)


def test_full_width_short_window_gives_per_frame_maps_for_14_keypoints():
    torch.manual_seed(0)
    net = models.build("rfpose_student").eval()
    with torch.no_grad():
        assert net(*windows(8)).shape == (1, 14, 8, 16, 16)


def test_papers_100_frame_window_trains():
    torch.manual_seed(0)
    net = models.build("rfpose_student", width=1 / 16)
    logits = net(*windows(100, 64, 96))
    assert logits.shape == (1, 14, 100, 32, 48)
    confidence_map_bce(logits, torch.rand_like(logits)).backward()
    assert net.horizontal[0].weight.grad.abs().sum() > 0
    assert net.vertical[0].weight.grad.abs().sum() > 0


def test_layers_follow_the_paper():
    net = models.build("rfpose_student")
    for encoder in (net.horizontal, net.vertical):
        convs = [m for m in encoder if isinstance(m, nn.Conv3d)]
        assert len(convs) == 10
        assert {c.kernel_size for c in convs} == {(9, 5, 5)}
        assert [c.stride for c in convs] == [(1, 1, 1), (1, 2, 2)] * 5
        assert sum(isinstance(m, nn.BatchNorm3d) for m in encoder) == 10
    deconvs = [m for m in net.decoder if isinstance(m, nn.ConvTranspose3d)]
    assert len(deconvs) == 4
    assert {d.kernel_size for d in deconvs} == {(3, 6, 6)}
    assert {d.stride for d in deconvs} == {(1, 2, 2)}
    assert deconvs[0].in_channels == 2 * ENCODER_CHANNELS[-1]  # both streams, concatenated
    assert net.decoder[-1] is deconvs[-1]  # logits: no BN or ReLU after the last layer
    assert deconvs[-1].out_channels == 14


def test_parameter_count_layer_by_layer():
    enc = [1, *ENCODER_CHANNELS]
    encoder = sum(9 * 5 * 5 * a * b + 2 * b for a, b in zip(enc, enc[1:]))  # conv + BN
    dec = [256, 128, 64, 32]
    decoder = sum(3 * 6 * 6 * a * b + 2 * b for a, b in zip(dec, dec[1:]))
    decoder += 3 * 6 * 6 * 32 * 14 + 14  # output layer with bias
    net = models.build("rfpose_student")
    assert sum(p.numel() for p in net.parameters()) == 2 * encoder + decoder == 37_428_238


def test_streams_of_different_shapes_are_refused():
    net = models.build("rfpose_student", width=1 / 16)
    with pytest.raises(ValueError, match=r"same shape.*\(1, 1, 8, 32, 32\).*\(1, 1, 8, 32, 64\)"):
        net(torch.randn(1, 1, 8, 32, 32), torch.randn(1, 1, 8, 32, 64))


def test_bce_is_the_per_pixel_binary_cross_entropy():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    teacher = torch.tensor([[0.5, 1.0], [0.0, 0.25]])
    p = torch.sigmoid(logits)
    expected = -(teacher * p.log() + (1 - teacher) * (1 - p).log()).mean()
    torch.testing.assert_close(confidence_map_bce(logits, teacher), expected)
    with pytest.raises(ValueError, match="differ in shape"):
        confidence_map_bce(logits, teacher[:1])


def gaussian(h: int, w: int, x0: float, y0: float, sigma: float = 1.5) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma**2))


def test_keypoints_recover_the_peak_of_a_gaussian_map():
    xy, score = keypoints_from_maps(gaussian(24, 32, x0=13, y0=7))
    assert xy.tolist() == [13.0, 7.0] and score.item() == 1.0
    xy, _ = keypoints_from_maps(gaussian(24, 32, x0=13.3, y0=6.8))
    assert xy.tolist() == [13.25, 6.75]  # argmax (13, 7), a quarter pixel towards the peak
    xy, _ = keypoints_from_maps(gaussian(24, 32, x0=0, y0=23))
    assert xy.tolist() == [0.0, 23.0]  # no shift at the border


def test_keypoints_keep_the_leading_dimensions():
    centres = torch.randint(1, 15, (2, 3, 14, 2))  # (B, T, K, 2)
    maps = torch.stack([torch.stack([torch.stack([0.8 * gaussian(16, 16, *map(float, c))
                                                  for c in frame]) for frame in clip])
                        for clip in centres])  # (B, T, K, 16, 16)
    xy, score = keypoints_from_maps(maps)
    assert xy.shape == (2, 3, 14, 2) and score.shape == (2, 3, 14)
    assert torch.equal(xy, centres.float())
    torch.testing.assert_close(score, torch.full((2, 3, 14), 0.8))


# --- the range-matched student (the rfpose_student recipe's model) ------------------------------

def test_range_matched_student_gives_half_size_maps_per_frame():
    torch.manual_seed(0)
    net = models.build("rfpose_range_matched", in_channels=2, width=1 / 8)
    logits = net(torch.randn(2, 2, 5, 64, 64), torch.randn(2, 2, 5, 64, 64))
    assert logits.shape == (2, 14, 5, 32, 32)
    confidence_map_bce(logits, torch.rand_like(logits)).backward()
    assert net.horizontal[0].weight.grad.abs().sum() > 0 and net.vertical[0].weight.grad.abs().sum() > 0
    assert net.rows.grad.abs().sum() > 0 and net.columns.grad.abs().sum() > 0


def test_range_matched_student_strides_range_and_keeps_every_angle_bin():
    net = models.build("rfpose_range_matched")
    convs = [m for m in net.horizontal if isinstance(m, nn.Conv3d)]
    assert [c.stride for c in convs] == [(1, 2, 1)] * 3 + [(1, 1, 1)]
    assert net.rows.shape == (32, 64) and net.columns.shape == (32, 64)


def test_only_features_at_the_same_range_meet():
    h, v = torch.zeros(1, 1, 1, 8, 6), torch.zeros(1, 1, 1, 8, 4)
    h[..., 2, 5] = 1.0   # something at range 2, azimuth 5
    v[..., 2, 1] = 1.0   # something at range 2, elevation 1
    v[..., 6, 3] = 1.0   # something else at range 6, elevation 3
    joined = join_by_range(h, v)[0, 0, 0]  # (E, A)
    assert joined[1, 5] == pytest.approx(1 / 8)
    assert joined.sum() == pytest.approx(1 / 8)  # range 6 found no partner


def test_the_warps_start_as_plain_resampling():
    w = resampling(2, 4)
    assert torch.allclose(w, torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]))
    assert torch.allclose(resampling(4, 4), torch.eye(4))


def test_range_matched_student_refuses_other_angle_bins():
    net = models.build("rfpose_range_matched", width=1 / 16)
    with pytest.raises(ValueError, match=r"A=64, E=64.*\(1, 1, 4, 64, 32\)"):
        net(torch.randn(1, 1, 4, 64, 32), torch.randn(1, 1, 4, 64, 64))
