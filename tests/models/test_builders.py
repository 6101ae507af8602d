"""Every registered builder: output shape on a tiny input, a gradient for every parameter, the
exact parameter count at full size (counted on the meta device, so nothing is allocated)."""

from __future__ import annotations

import pytest
import torch

import models
from models.registry import register

TINY_VGG = dict(num_classes=10, width=1 / 16, hidden=32)


def images(*shape):
    return lambda: (torch.randn(*shape),)


def rf_windows(side: int = 32):
    return torch.randn(2, 1, 4, side, side), torch.randn(2, 1, 4, side, side)


def holed_image():
    mask = torch.ones(2, 1, 32, 32)
    mask[:, :, 8:20, 4:12] = 0
    return torch.rand(2, 3, 32, 32) * mask, mask


# name -> (builder kwargs, inputs, output shape)
SMOKE = {
    **{name: (TINY_VGG, images(2, 3, 32, 32), (2, 10)) for name in models.vgg.VGG_VARIANTS},
    "resnet50": (dict(num_classes=10, zero_init_residual=False), images(2, 3, 32, 32), (2, 10)),
    "mnist_convnet": ({}, images(2, 1, 28, 28), (2, 10)),
    "mnist_mlp": ({}, images(2, 1, 28, 28), (2, 10)),
    "rfpose_student": (dict(width=1 / 8), rf_windows, (2, 14, 4, 16, 16)),
    "rfpose_range_matched": (dict(width=1 / 8), lambda: rf_windows(64), (2, 14, 4, 32, 32)),
    "pconv_unet": (dict(depth=3, width=1 / 8), holed_image, (2, 3, 32, 32)),
}

# Full-size counts: VGG, ResNet-50 and MNIST from the issue (A, B, D, E and ResNet-50 equal
# torchvision's); RF-Pose and PConv U-Net re-derived layer by layer in their own test files.
PARAM_COUNTS = {
    "vgg11": 132_863_336,
    "vgg11_lrn": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16_c": 133_638_952,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "resnet50": 25_557_032,
    "mnist_convnet": 3_199_106,
    "mnist_mlp": 199_210,
    "rfpose_student": 37_428_238,
    "rfpose_range_matched": 1_671_502,
    "pconv_unet": 32_859_796,
}


def test_every_builder_is_covered():
    assert set(SMOKE) == set(models.names()) == set(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_output_shape_and_every_parameter_gets_a_gradient(name):
    kwargs, make_inputs, out_shape = SMOKE[name]
    torch.manual_seed(0)
    net = models.build(name, **kwargs).train()
    out = net(*make_inputs())
    assert out.shape == out_shape
    # A random projection, not out.sum(): a sum right after BN has zero gradient upstream.
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_count(name):
    with torch.device("meta"):
        net = models.build(name)
    assert sum(p.numel() for p in net.parameters()) == PARAM_COUNTS[name]


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(KeyError, match="unknown model 'vgg17'.*vgg16"):
        models.build("vgg17")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="'vgg16' is registered twice"):
        register("vgg16")(lambda: None)
