"""Name → builder registry: ``models.build("vgg16", num_classes=1000)``.

Builders register themselves with ``@register("name")`` when their module is imported; the
package ``__init__`` imports every model module so that ``build`` sees all of them.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def build(name: str, **kwargs) -> nn.Module:
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(names())}") from None
    return builder(**kwargs)


def names() -> list[str]:
    return sorted(_BUILDERS)
