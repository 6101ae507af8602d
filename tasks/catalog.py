"""Every recipe by name, and where it lives: the one list that names the experiment packages.

The config models offer these names (the CLI and the Prefect form list them); the engine is
handed the ``module:attribute`` reference and imports it, so the training plane itself names no
experiment. A new experiment adds its recipes here, as ``models/__init__.py`` adds its builders.
"""

from __future__ import annotations

RECIPES: dict[str, str] = {
    "mnist_convnet": "tasks.mnist.recipes:CONVNET",
    "mnist_mlp": "tasks.mnist.recipes:MLP",
    "vgg11": "tasks.imagenet.recipes:VGG11",
    "vgg11_lrn": "tasks.imagenet.recipes:VGG11_LRN",
    "vgg13": "tasks.imagenet.recipes:VGG13",
    "vgg16_c": "tasks.imagenet.recipes:VGG16_C",
    "vgg16": "tasks.imagenet.recipes:VGG16",
    "vgg19": "tasks.imagenet.recipes:VGG19",
    "resnet50": "tasks.imagenet.recipes:RESNET50",
    "resnet50_dawnbench": "tasks.imagenet.recipes:RESNET50_DAWNBENCH",
    "pconv_unet": "tasks.inpaint.recipes:PCONV_UNET",
    "rfpose_student": "tasks.rfpose.recipes:RFPOSE_STUDENT",
    "rfpose_student_paper": "tasks.rfpose.recipes:RFPOSE_STUDENT_PAPER",
}


def reference(name: str) -> str:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None

