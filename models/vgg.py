"""VGG (Simonyan & Zisserman, 2015): the six configurations of Table 1 as data, one builder.

    import models
    net = models.build("vgg16", num_classes=1000)          # config D
    net = models.build("vgg16_c")                          # config C, 1x1 convs in blocks 3-5
    tiny = models.build("vgg11", num_classes=10, width=1 / 16, hidden=64)   # CPU smoke size

Configs A, B, D, E (with and without batch norm) use torchvision's module layout, so a
torchvision ``vgg16-*.pth`` state dict loads into ``models.build("vgg16")`` unchanged.
"""

from __future__ import annotations

import functools

from torch import nn

from models.registry import register
from models.width import scale

# An int is a 3x3 conv (stride 1, pad 1) with that many output channels, followed by ReLU;
# (c, 1) is config C's 1x1 conv with c channels; "M" is 2x2 max-pool, stride 2; "LRN" is local
# response normalisation (config A-LRN only, after the first conv's ReLU).
VGG_CFGS: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M",
          512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

# registry name -> (config, batch norm). The paper has no BN; the BN variants are torchvision's
# (A, B, D, E) so that their weights files load.
VGG_VARIANTS: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False),
    "vgg11_lrn": ("A-LRN", False),
    "vgg13": ("B", False),
    "vgg16_c": ("C", False),
    "vgg16": ("D", False),
    "vgg19": ("E", False),
    "vgg11_bn": ("A", True),
    "vgg13_bn": ("B", True),
    "vgg16_bn": ("D", True),
    "vgg19_bn": ("E", True),
}


def local_response_norm() -> nn.LocalResponseNorm:
    # The paper uses Krizhevsky et al.'s LRN: n=5, alpha=1e-4, beta=0.75, k=2, with
    # b = a / (k + alpha * sum a^2)^beta. torch divides alpha by n inside the sum, so the same
    # layer is alpha = 1e-4 * 5 here.
    return nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)


def make_layers(cfg: list, batch_norm: bool = False, width: float = 1.0,
                in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "LRN":
            layers.append(local_response_norm())
        else:
            channels, kernel = item if isinstance(item, tuple) else (item, 3)
            channels = scale(channels, width)
            layers.append(nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Conv stack, 7x7 adaptive average pool, classifier FC-4096, FC-4096, FC-num_classes.

    At 224x224 the last pool already yields 7x7, so the adaptive pool is the identity there and
    the network is the paper's; smaller inputs (CIFAR-sized smoke tests) still run.
    """

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5,
                 hidden: int = 4096):
        super().__init__()
        last_channels = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        # Dropout 0.5 on the first two FC layers (paper, Sec. 3.1).
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper draws N(0, 1e-2) and needed config A's weights to start the deeper nets; it
        # notes that Glorot-style init removes that need. He init (fan_out) is the variant of
        # that idea for ReLU nets and lets every config train from scratch.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):  # x: (B, 3, H, W)
        x = self.avgpool(self.features(x))  # (B, C, 7, 7)
        return self.classifier(x.flatten(1))  # (B, C*49) -> (B, num_classes)


def vgg(cfg: str, *, batch_norm: bool = False, num_classes: int = 1000, dropout: float = 0.5,
        width: float = 1.0, hidden: int = 4096, in_channels: int = 3) -> VGG:
    features = make_layers(VGG_CFGS[cfg], batch_norm=batch_norm, width=width,
                           in_channels=in_channels)
    return VGG(features, num_classes=num_classes, dropout=dropout, hidden=hidden)


for _name, (_cfg, _bn) in VGG_VARIANTS.items():
    register(_name)(functools.partial(vgg, _cfg, batch_norm=_bn))
