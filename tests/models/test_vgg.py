"""VGG: Table 1's configurations, torchvision weight compatibility, the LRN of config A-LRN."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import models
from models.vgg import VGG_CFGS

TORCHVISION_NAMES = ["vgg11", "vgg13", "vgg16", "vgg19",
                     "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]


def meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return models.build(name, **kwargs)


def conv_kernels_per_block(net: nn.Module) -> list[list[int]]:
    blocks, block = [], []
    for layer in net.features:
        if isinstance(layer, nn.Conv2d):
            block.append(layer.kernel_size[0])
        elif isinstance(layer, nn.MaxPool2d):
            blocks.append(block)
            block = []
    return blocks


@pytest.mark.parametrize("name, weight_layers", [
    ("vgg11", 11), ("vgg11_lrn", 11), ("vgg13", 13), ("vgg16_c", 16), ("vgg16", 16), ("vgg19", 19),
])
def test_weight_layers_match_the_config_names(name, weight_layers):
    net = meta(name)
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules()) == weight_layers


def test_config_c_ends_blocks_3_to_5_with_a_1x1_conv_and_d_does_not():
    assert conv_kernels_per_block(meta("vgg16_c")) == [[3, 3], [3, 3], [3, 3, 1], [3, 3, 1],
                                                        [3, 3, 1]]
    assert conv_kernels_per_block(meta("vgg16")) == [[3, 3], [3, 3], [3, 3, 3], [3, 3, 3],
                                                      [3, 3, 3]]
    one_by_one = [m for m in meta("vgg16_c").features
                  if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [m.padding for m in one_by_one] == [(0, 0)] * 3


def test_classifier_has_two_dropouts_of_one_half():
    dropouts = [m for m in meta("vgg16").classifier if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.5, 0.5]


def test_a_lrn_normalises_after_the_first_conv_like_krizhevsky():
    net = meta("vgg11_lrn")
    assert [type(m) for m in net.features[:4]] == [nn.Conv2d, nn.ReLU, nn.LocalResponseNorm,
                                                   nn.MaxPool2d]
    lrn = models.vgg.local_response_norm()
    a = torch.rand(1, 64, 3, 3) * 30
    # AlexNet's formula: b_c = a_c / (2 + 1e-4 * sum_{|c'-c|<=2} a_c'^2) ** 0.75
    squares = nn.functional.pad(a**2, (0, 0, 0, 0, 2, 2))  # channel padding: (1, 68, 3, 3)
    window = sum(squares[:, i:i + 64] for i in range(5))
    expected = a / (2 + 1e-4 * window) ** 0.75
    torch.testing.assert_close(lrn(a), expected)
    assert not torch.allclose(lrn(a), a / 2**0.75)  # the sum term matters at this scale


def test_cfgs_a_and_a_lrn_differ_only_by_the_lrn():
    assert [x for x in VGG_CFGS["A-LRN"] if x != "LRN"] == VGG_CFGS["A"]


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_state_dict_loads_unchanged(name):
    with torch.device("meta"):
        theirs = getattr(torchvision.models, name)()
    ours = meta(name)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"])
def test_with_torchvision_weights_it_computes_what_torchvision_computes(name, torchvision_vgg):
    theirs = torchvision_vgg(name)
    ours = meta(name)
    ours.to_empty(device="cpu")
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected)
    assert expected.abs().mean() > 1e-2  # the comparison is not between two near-zero outputs


def test_224_input_needs_no_adaptive_pooling_and_small_inputs_still_work():
    net = models.build("vgg11", num_classes=5, width=1 / 32, hidden=16).eval()
    with torch.no_grad():
        assert net.features(torch.randn(1, 3, 224, 224)).shape == (1, 16, 7, 7)
        assert net(torch.randn(1, 3, 40, 48)).shape == (1, 5)


def test_width_scales_channels_but_keeps_the_topology():
    full, tiny = meta("vgg16_bn"), meta("vgg16_bn", width=1 / 16, hidden=8)
    assert [type(m) for m in full.features] == [type(m) for m in tiny.features]
    assert [m.out_channels for m in tiny.features if isinstance(m, nn.Conv2d)] == \
        [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
