"""ResNet-50 (torchvision's) with the DAWNBench / Goyal et al. (2017) large-batch options.

    import models
    from models.resnet import param_groups
    net = models.build("resnet50", num_classes=1000).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(net, weight_decay=5e-5), lr=..., momentum=0.9)
"""

from __future__ import annotations

from torch import nn
from torchvision.models import ResNet, resnet50 as torchvision_resnet50

from models.registry import register


@register("resnet50")
def resnet50(*, num_classes: int = 1000, zero_init_residual: bool = True) -> ResNet:
    # zero_init_residual sets the last BN gamma of every bottleneck to 0, so each residual block
    # starts as the identity: the trick that keeps large-batch (8k+) SGD stable in the first
    # epochs (Goyal et al., Sec. 5.1). torchvision's layers are channels_last friendly as they are.
    return torchvision_resnet50(weights=None, num_classes=num_classes,
                                zero_init_residual=zero_init_residual)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: weights with ``weight_decay``, BN parameters and biases without.

    Decaying BN gammas and biases only adds noise at large batch (DAWNBench's fast.ai/Goyal
    recipe); every 1-D parameter is one of those, so ``ndim`` tells them apart.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
