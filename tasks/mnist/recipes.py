"""The MNIST recipes: the seed's ConvNet and MLP, as the one engine trains them."""

from __future__ import annotations

import torch

from tasks.classify.recipe import CrossEntropy, ImagesToDevice, evaluator, nll, num_classes
from tasks.data.reader import decode_class, decode_image
from tasks.train.recipe import Optimizer, Recipe
from tasks.train.schedules import Phase

# Per-pixel statistics of the MNIST training set (the usual normalisation).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def decode_mnist(sample: dict) -> tuple[torch.Tensor, int]:
    return decode_image(sample["png"], mode="L"), decode_class(sample["cls"])


def decoder(phase: Phase, train: bool):
    return decode_mnist


def model_kwargs(manifest: dict, width: float) -> dict:
    if width != 1.0:
        raise ValueError("the MNIST models have no width multiplier; leave width at 1")
    return {"num_classes": num_classes(manifest)}


def example_input(kwargs: dict, phase: Phase) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(2, 1, 28, 28),)


_COMMON = dict(experiment="mnist", model_kwargs=model_kwargs, decoder=decoder,
               to_device=ImagesToDevice((MNIST_MEAN,), (MNIST_STD,)), evaluator=evaluator,
               example_input=example_input, batch_size=100, val_split="test")

# The seed's ConvNet: Adam 1e-3, batch 100; it reports 99.03% on MNIST after 6 epochs.
CONVNET = Recipe("mnist_convnet", model="mnist_convnet", loss=CrossEntropy(), optimizer=Optimizer("adam"),
                 lr=1e-3, epochs=6, **_COMMON)
# The seed's MLP ends in log-softmax, hence NLL; SGD 0.01 with momentum 0.9.
MLP = Recipe("mnist_mlp", model="mnist_mlp", loss=nll, optimizer=Optimizer("sgd", momentum=0.9), lr=0.01,
             epochs=10, **_COMMON)
