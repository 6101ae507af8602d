"""Pure torch models, registered by name. No I/O, logging, device logic or Prefect here.

    import models
    net = models.build("mnist_convnet", num_classes=10)
    models.names()   # every registered builder
"""

# Importing a model module registers its builders.
from models import mnist, pconv, resnet, rfpose, vgg  # noqa: F401
from models.registry import build, names, register

__all__ = ["build", "names", "register"]
