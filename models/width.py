"""Width multiplier shared by the builders that take ``width=``.

``width=1.0`` is always the paper's network (the parameter counts in the tests hold there); a
small width such as ``1/16`` gives the same topology at smoke-test size, for CPU tests and the
tiny end-to-end pipeline runs.
"""

from __future__ import annotations


def scale(channels: int, width: float) -> int:
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(1, round(channels * width))
