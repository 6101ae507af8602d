"""ResNet-50 (torchvision's) with the DAWNBench / Goyal et al. (2017) large-batch options.

    import models
    from models.resnet import param_groups
    net = models.build("resnet50", num_classes=1000).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(net, weight_decay=5e-5), lr=..., momentum=0.9)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from models.registry import register
from models.width import scale

if TYPE_CHECKING:
    from torchvision.models import ResNet

# torchvision is imported where a ResNet is built: importing it costs 1.7 s on a small CPU (its
# model zoo pulls in torch._dynamo), paid by every training process, MNIST's included.


@register("resnet50")
def resnet50(*, num_classes: int = 1000, zero_init_residual: bool = True, width: float = 1.0) -> "ResNet":
    from torchvision.models import resnet50 as torchvision_resnet50

    # zero_init_residual sets the last BN gamma of every bottleneck to 0, so each residual block
    # starts as the identity: the trick that keeps large-batch (8k+) SGD stable in the first
    # epochs (Goyal et al., Sec. 5.1). torchvision's layers are channels_last friendly as they are.
    net = torchvision_resnet50(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
    if width != 1.0:
        narrow(net, width, num_classes, zero_init_residual)
    return net


def narrow(net: "ResNet", width: float, num_classes: int, zero_init_residual: bool) -> None:
    """Rebuild ``net``'s stem, stages and head with every channel count times ``width`` (the same
    depth and topology, at CPU size). torchvision fixes the stage widths at 64…512."""
    from torchvision.models.resnet import Bottleneck

    stem = scale(64, width)
    net.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(stem)
    net.inplanes = stem
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        setattr(net, f"layer{i + 1}", net._make_layer(Bottleneck, scale(planes, width), blocks,
                                                      stride=1 if i == 0 else 2))
    net.fc = nn.Linear(scale(512, width) * Bottleneck.expansion, num_classes)
    for m in net.modules():  # torchvision's own initialisation, for the new layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in net.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)


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
