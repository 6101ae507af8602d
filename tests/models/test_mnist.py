"""The MNIST seed's ConvNet and MLP, layer by layer."""

from __future__ import annotations

import torch
from torch import nn

import models


def test_convnet_layers_are_the_seeds():
    net = models.build("mnist_convnet")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(1, 32, (5, 5), (2, 2)), (32, 64, (5, 5), (2, 2))]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(3136, 1000), (1000, 10)]
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.5]
    with torch.no_grad():  # 28 -> pool -> 14 -> pool -> 7: the 3136 of the seed's (typo'd) text
        assert net.features(torch.zeros(1, 1, 28, 28)).shape == (1, 64, 7, 7)


def test_mlp_is_784_200_200_10_and_returns_log_probabilities():
    net = models.build("mnist_mlp")
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(784, 200), (200, 200),
                                                                      (200, 10)]
    with torch.no_grad():
        log_probs = net(torch.rand(3, 1, 28, 28))
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(3))
    assert torch.all(log_probs <= 0)
