"""Fixtures for the model tests."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn


@pytest.fixture
def torchvision_vgg():
    """Build a torchvision VGG with random weights, fast: no pretrained weights exist offline,
    and torchvision's own init of the 100M-parameter classifier takes seconds on a small CPU."""

    def build(name: str) -> nn.Module:
        with torch.device("meta"):
            net = getattr(torchvision.models, name)()
        net.to_empty(device="cpu")
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for key, tensor in net.state_dict().items():
                if key.endswith("num_batches_tracked"):
                    tensor.zero_()
                elif key.endswith("running_var"):
                    tensor.uniform_(0.5, 1.5, generator=generator)
                elif tensor.dim() > 1:  # He-scaled, so activations stay O(1) through the stack
                    tensor.normal_(0.0, (2.0 / tensor[0].numel()) ** 0.5, generator=generator)
                else:
                    tensor.normal_(0.0, 0.1, generator=generator)
        return net.eval()

    return build
