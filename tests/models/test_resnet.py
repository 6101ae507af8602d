"""ResNet-50, DAWNBench options: zero-init residual BN, no decay on BN/bias, channels_last."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

import models
from models.resnet import param_groups


def test_last_bn_gamma_of_every_bottleneck_starts_at_zero():
    net = models.build("resnet50")
    blocks = [m for m in net.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 3 + 4 + 6 + 3
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert all(torch.count_nonzero(b.bn1.weight) == b.bn1.weight.numel() for b in blocks)
    plain = models.build("resnet50", zero_init_residual=False)
    assert all(torch.all(b.bn3.weight == 1) for b in plain.modules() if isinstance(b, Bottleneck))


def test_zero_init_makes_each_residual_block_the_identity():
    block = models.build("resnet50").layer1[1].eval()  # 256 -> 256 channels, no downsample
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))


def test_param_groups_exempt_bn_and_biases_from_weight_decay():
    net = models.build("resnet50", num_classes=10)
    decay, no_decay = param_groups(net, weight_decay=5e-5)
    assert decay["weight_decay"] == 5e-5 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = [names[id(p)] for p in decay["params"]]
    exempt = [names[id(p)] for p in no_decay["params"]]
    assert len(decayed) == 53 + 1  # 53 convs and the fc weight
    assert len(exempt) == 2 * 53 + 1  # 53 BN gammas and betas, and the fc bias
    assert all(n.endswith(".weight") and "bn" not in n and "downsample.1" not in n
               for n in decayed)
    assert all("bn" in n or "downsample.1" in n or n == "fc.bias" for n in exempt)
    assert sorted(decayed + exempt) == sorted(names.values())


def test_param_groups_skip_frozen_parameters():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[0].requires_grad_(False)
    decay, no_decay = param_groups(net, weight_decay=0.1)
    assert [p.shape for p in decay["params"]] == [(2, 2)]
    assert [p.shape for p in no_decay["params"]] == [(2,)]


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    net = models.build("resnet50", num_classes=10, zero_init_residual=False).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        net = net.to(memory_format=torch.channels_last)
        assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
