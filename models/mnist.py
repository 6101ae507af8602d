"""The MNIST seed's two networks: a small ConvNet and a 784-200-200-10 MLP."""

from __future__ import annotations

from torch import nn

from models.registry import register


class MnistConvNet(nn.Module):
    """conv5x5-32, pool, conv5x5-64, pool, dropout, fc 3136→1000→10.

    The seed's text gives the flattened size as 3164; 7·7·64 = 3136 is what the layers produce.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(7 * 7 * 64, 1000),
            nn.ReLU(inplace=True),
            nn.Linear(1000, num_classes),
        )

    def forward(self, x):  # x: (B, 1, 28, 28)
        return self.classifier(self.features(x))


class MnistMLP(nn.Module):
    """784-200-200-10 with ReLU; returns log-probabilities (pair it with NLL loss)."""

    def __init__(self, num_classes: int = 10, hidden: int = 200):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
            nn.LogSoftmax(dim=1),
        )

    def forward(self, x):  # x: (B, 1, 28, 28)
        return self.net(x)


@register("mnist_convnet")
def mnist_convnet(**kwargs) -> MnistConvNet:
    return MnistConvNet(**kwargs)


@register("mnist_mlp")
def mnist_mlp(**kwargs) -> MnistMLP:
    return MnistMLP(**kwargs)
