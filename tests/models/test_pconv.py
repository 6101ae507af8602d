"""PartialConv2d against hand-worked numbers, and the PConv U-Net's structure and masking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models.pconv import PartialConv2d


def pconv_and_conv(in_channels, out_channels, kernel, **kwargs):
    torch.manual_seed(0)
    pconv = PartialConv2d(in_channels, out_channels, kernel, **kwargs)
    conv = nn.Conv2d(in_channels, out_channels, kernel, **kwargs)
    conv.load_state_dict(pconv.state_dict())
    return pconv, conv


@pytest.mark.parametrize("mask_channels", [1, 4])
def test_all_ones_mask_without_padding_is_a_plain_conv(mask_channels):
    pconv, conv = pconv_and_conv(4, 6, 3, stride=2)
    x = torch.randn(2, 4, 9, 9)
    out, mask = pconv(x, torch.ones(2, mask_channels, 9, 9))
    torch.testing.assert_close(out, conv(x))
    assert mask.shape == (2, 1 if mask_channels == 1 else 6, 4, 4) and torch.all(mask == 1)


def test_zero_padding_counts_as_hole_so_the_border_is_renormalised():
    pconv, conv = pconv_and_conv(2, 3, 3, padding=1, bias=False)
    x = torch.randn(1, 2, 5, 5)
    out, mask = pconv(x, torch.ones(1, 1, 5, 5))
    expected = conv(x)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])
    torch.testing.assert_close(out[..., 0, 2], expected[..., 0, 2] * 9 / 6)  # edge: 6 of 9 valid
    torch.testing.assert_close(out[..., 0, 0], expected[..., 0, 0] * 9 / 4)  # corner: 4 of 9
    assert torch.all(mask == 1)


def test_renormalisation_on_a_hand_worked_3x3_window():
    pconv = PartialConv2d(1, 1, 3)
    nn.init.ones_(pconv.weight)
    nn.init.constant_(pconv.bias, 0.5)
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    mask = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 1]]).view(1, 1, 3, 3)
    out, new_mask = pconv(x, mask)
    # valid pixels 1, 3, 5, 9: sum 18, scaled by sum(1)/sum(M) = 9/4, plus the bias
    assert out.item() == 18 * 9 / 4 + 0.5 and new_mask.item() == 1.0


def test_multichannel_mask_counts_every_channel_of_the_window():
    pconv = PartialConv2d(2, 1, 3)
    nn.init.ones_(pconv.weight)
    nn.init.zeros_(pconv.bias)
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3).repeat(1, 2, 1, 1)
    mask = torch.ones(1, 2, 3, 3)
    mask[0, 0] = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 1]])
    out, new_mask = pconv(x, mask)
    # channel 0 keeps 1+3+5+9 = 18 over 4 pixels, channel 1 all 45 over 9: 63 * 18 / 13
    torch.testing.assert_close(out, torch.tensor([[[[63 * 18 / 13]]]]))
    assert new_mask.shape == (1, 1, 1, 1)


def test_a_window_entirely_in_the_hole_gives_zero_and_a_zero_mask():
    pconv = PartialConv2d(3, 4, 3, padding=1)
    nn.init.constant_(pconv.bias, 1.0)  # even the bias is withheld there
    mask = torch.ones(1, 1, 9, 9)
    mask[..., 2:7, 2:7] = 0
    out, new_mask = pconv(torch.randn(1, 3, 9, 9), mask)
    assert torch.all(out[..., 3:6, 3:6] == 0) and torch.all(new_mask[..., 3:6, 3:6] == 0)
    assert new_mask.sum() == 81 - 9  # the hole shrank by one pixel on each side
    assert torch.all(out[..., 0, :] != 0)


def test_hole_values_never_reach_the_output():
    pconv = PartialConv2d(3, 4, 5, padding=2)
    mask = (torch.rand(1, 1, 12, 12) > 0.4).float()
    x = torch.randn(1, 3, 12, 12)
    x_other = torch.where(mask.bool(), x, torch.randn_like(x) * 100)
    torch.testing.assert_close(pconv(x, mask)[0], pconv(x_other, mask)[0])


def test_mask_becomes_all_ones_after_enough_layers():
    layers = [PartialConv2d(3, 3, 3, padding=1) for _ in range(3)]
    x, mask = torch.randn(1, 3, 16, 16), torch.ones(1, 1, 16, 16)
    mask[..., 5:11, 5:11] = 0  # a 6x6 hole: each 3x3 layer fills one pixel from each side
    holes = []
    for layer in layers:
        x, mask = layer(x, mask)
        holes.append(int((mask == 0).sum()))
    assert holes == [16, 4, 0]


def test_nothing_is_cached_between_calls_and_the_mask_kernel_is_a_buffer():
    pconv = PartialConv2d(2, 2, 3, padding=1)
    attributes = dict(vars(pconv))
    assert "mask_kernel" in dict(pconv.named_buffers())
    assert "mask_kernel" not in pconv.state_dict()  # a constant, not a weight
    first_mask = torch.ones(1, 1, 8, 8)
    first_mask[..., :4, :] = 0
    x = torch.randn(1, 2, 8, 8)
    first = pconv(x, first_mask)[0]
    pconv(torch.randn(3, 2, 5, 7), torch.ones(3, 2, 5, 7))  # another size and mask layout
    torch.testing.assert_close(pconv(x, first_mask)[0], first)
    assert vars(pconv).keys() == attributes.keys()


def test_misshapen_mask_is_refused():
    with pytest.raises(ValueError, match=r"mask \(1, 2, 8, 8\) does not fit input \(1, 3, 8, 8\)"):
        PartialConv2d(3, 3, 3)(torch.randn(1, 3, 8, 8), torch.ones(1, 2, 8, 8))


def test_unet_layers_follow_the_paper():
    net = models.build("pconv_unet")
    enc = [block.conv for block in net.encoder]
    assert [c.kernel_size[0] for c in enc] == [7, 5, 5, 3, 3, 3, 3, 3]
    assert [c.out_channels for c in enc] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert {c.stride for c in enc} == {(2, 2)}
    assert [isinstance(b.bn, nn.BatchNorm2d) for b in net.encoder] == [False] + [True] * 7
    assert all(isinstance(b.act, nn.ReLU) for b in net.encoder)
    dec = [block.conv for block in net.decoder]
    assert [(c.in_channels, c.out_channels) for c in dec] == [
        (1024, 512), (1024, 512), (1024, 512), (1024, 512), (768, 256), (384, 128), (192, 64),
        (67, 3)]
    assert {c.kernel_size for c in dec} == {(3, 3)}
    assert [isinstance(b.bn, nn.BatchNorm2d) for b in net.decoder] == [True] * 7 + [False]
    assert [b.act.negative_slope for b in net.decoder[:-1]] == [0.2] * 7
    assert isinstance(net.decoder[-1].act, nn.Identity)


def test_unet_parameter_count_from_the_papers_table():
    # (kernel, in, out, BN): conv weights, a bias where no BN follows, BN gamma and beta
    rows = [(7, 3, 64, False), (5, 64, 128, True), (5, 128, 256, True), (3, 256, 512, True),
            *[(3, 512, 512, True)] * 4,
            *[(3, 1024, 512, True)] * 4, (3, 768, 256, True), (3, 384, 128, True),
            (3, 192, 64, True), (3, 67, 3, False)]
    expected = sum(k * k * a * b + 2 * b if bn else k * k * a * b + b for k, a, b, bn in rows)
    with torch.device("meta"):
        net = models.build("pconv_unet")
    assert sum(p.numel() for p in net.parameters()) == expected == 32_859_796


def test_depth_7_takes_256x256_and_the_bottleneck_mask_is_full():
    torch.manual_seed(0)
    net = models.build("pconv_unet", depth=7, width=1 / 16).eval()
    assert len(net.encoder) == len(net.decoder) == 7
    mask = torch.ones(1, 1, 256, 256)
    mask[..., 40:120, 60:200] = 0
    x = torch.rand(1, 3, 256, 256) * mask
    with torch.no_grad():
        assert net(x, mask).shape == (1, 3, 256, 256)
        feats, m = x, mask.expand(1, 3, 256, 256)
        for block in net.encoder:
            feats, m = block(feats, m)
    assert m.shape == (1, 32, 2, 2) and torch.all(m == 1)
    with pytest.raises(ValueError, match="multiples of 128"):
        net(torch.rand(1, 3, 200, 256), torch.ones(1, 1, 200, 256))


def test_unet_output_ignores_what_is_under_the_hole():
    torch.manual_seed(0)
    net = models.build("pconv_unet", depth=4, width=1 / 16).eval()
    mask = (torch.rand(2, 1, 32, 32) > 0.3).float()
    x = torch.rand(2, 3, 32, 32)
    x_other = torch.where(mask.bool(), x, torch.rand_like(x) * 50)
    with torch.no_grad():
        torch.testing.assert_close(net(x, mask), net(x_other, mask))


def test_frozen_encoder_bn_keeps_its_statistics_while_the_decoder_learns():
    torch.manual_seed(0)
    net = models.build("pconv_unet", depth=3, width=1 / 16).set_encoder_bn_frozen(True)
    net.train()
    encoder_bn = net.encoder[1].bn
    decoder_bn = net.decoder[0].bn
    assert net.training and not encoder_bn.training and decoder_bn.training
    before = encoder_bn.running_mean.clone(), decoder_bn.running_mean.clone()
    net(torch.rand(2, 3, 32, 32), torch.ones(2, 1, 32, 32))
    assert torch.equal(encoder_bn.running_mean, before[0])
    assert not torch.equal(decoder_bn.running_mean, before[1])
    net.set_encoder_bn_frozen(False)
    assert encoder_bn.training
