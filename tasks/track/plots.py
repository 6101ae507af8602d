"""Figures as PNG bytes, on matplotlib's file-only Agg backend (workers have no display)."""

from __future__ import annotations

import io


def pyplot():
    """pyplot on the Agg backend; imported when first used (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return out.getvalue()
