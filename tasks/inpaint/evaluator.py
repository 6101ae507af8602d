"""The inpainting evaluator: L1 (whole image and holes), PSNR and SSIM of the composite, overall
and per hole-area bucket and border flag, in the layout of the PConv paper's Table 1.

    evaluator = InpaintEvaluator(EvalContext((), device, detailed=True))
    evaluator.update(output, (image, mask, bucket, border), (image * mask, mask))
    evaluator.compute()     # {"psnr": …, "psnr/r01-10/no-border": …, "baseline/telea/psnr": …, …}
    evaluator.artifacts()   # {"inpaint_table.md", "inpaint_table.csv", "inpaint_grid.png"}

The batch: ``output`` (B, 3, H, W), clamped to [0, 1]; ``targets = (image, mask, bucket, border)``
with image (B, 3, H, W) in [0, 1], mask (B, 1, H, W) with 1 = known pixel, bucket (B,) long, an
index into ``BUCKETS`` or -1 for a sample without one (random training-style masks), border (B,)
bool, True where a hole comes near the image border. Metrics follow ``tasks.inpaint.quality``:
per image on the composite (the output in the holes, the ground truth elsewhere), then averaged;
``l1`` and ``l1_hole`` are fractions (the table shows them in %); SSIM filters in float32
(``SSIM_DTYPE``), everything else is float64.

Keys: ``l1``, ``l1_hole``, ``psnr``, ``ssim`` over every sample, and
``<metric>/<bucket>/<border|no-border>`` for each bucket and flag that has samples. A sample
without any hole is no inpainting problem (its PSNR would be infinite): it is left out of every
metric and counted as ``no_hole`` (a key present only when that count is not 0). With
``ctx.detailed`` (the evaluate flow) the same images and masks are also filled by two classical
baselines, reported under ``baseline/mean/…`` and ``baseline/telea/…`` with the same sub-keys.

Sufficient statistics live in one float64 tensor, (methods, buckets + 1, flags, 4 metric sums +
scored + hole-free), summed across DDP ranks, so DDP validation equals one process. The table is
always available; the sample grid (the first ``GRID`` samples this rank sees) only with
``ctx.detailed``, since only the evaluate flow logs artifacts and validation need not copy images.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import torch

from tasks.inpaint import baselines, quality
from tasks.inpaint.masks import BORDER_FLAGS, BUCKETS
from tasks.track.plots import figure_png, pyplot
from tasks.train.evaluator import sum_across_ranks
from tasks.train.recipe import EvalContext

METRICS = ("l1", "l1_hole", "psnr", "ssim")
SCORED, NO_HOLE = len(METRICS), len(METRICS) + 1  # the two count columns after the sums
BORDER, NO_BORDER = BORDER_FLAGS.index("border"), BORDER_FLAGS.index("no-border")
MODEL = "pconv"
BASELINES = ("mean", "telea")
LABELS = {"pconv": "PConv", "mean": "mean fill", "telea": "Telea"}
GRID = 8
# SSIM's filtering precision: float32 is ~6x faster than float64 on a CPU (the evaluate flow's
# device) and within 1e-5 of it; every other metric and every sum is float64.
SSIM_DTYPE = torch.float32


class InpaintEvaluator:
    def __init__(self, ctx: EvalContext):
        self.detailed = ctx.detailed
        self.methods = (MODEL, *BASELINES) if ctx.detailed else (MODEL,)
        shape = (len(self.methods), len(BUCKETS) + 1, len(BORDER_FLAGS), len(METRICS) + 2)
        self.stats = torch.zeros(shape, dtype=torch.float64, device=ctx.device)  # last bucket: none
        self.reduced: torch.Tensor | None = None
        self.samples: list[dict] = []

    def update(self, outputs: torch.Tensor, targets: tuple, inputs: tuple) -> None:
        image, mask, bucket, border = targets
        known = (mask > 0.5).to(image.dtype)  # (B, 1, H, W)
        output = outputs.detach().to(image.dtype).clamp(0, 1)
        composite = known * image + (1 - known) * output
        bucket = bucket.to(self.stats.device).long()
        if bool((bucket >= len(BUCKETS)).any() or (bucket < -1).any()):
            raise ValueError(f"bucket indices must be -1 or 0..{len(BUCKETS) - 1}, got {bucket.tolist()}")
        slot = torch.where(bucket < 0, len(BUCKETS), bucket)
        flag = torch.where(border.to(self.stats.device).bool(), BORDER, NO_BORDER)
        cell = slot * len(BORDER_FLAGS) + flag  # (B,) into the flattened (bucket, flag) grid
        filled = {MODEL: composite}
        if self.detailed:
            filled["mean"] = baselines.mean_fill(image, known)
            filled["telea"] = baselines.telea(image, known)
        for m, name in enumerate(self.methods):
            rows = score_rows(filled[name], image, known).to(self.stats.device)
            self.stats[m].view(-1, self.stats.shape[-1]).index_add_(0, cell, rows)
        if self.detailed:
            self._keep(image, known, output, composite, bucket, border)

    def compute(self) -> dict[str, float]:
        self.reduced = sum_across_ranks(self.stats).cpu()
        out: dict[str, float] = {}
        for m, name in enumerate(self.methods):
            out.update(metric_keys(self.reduced[m], "" if name == MODEL else f"baseline/{name}/"))
        no_hole = self.reduced[0, ..., NO_HOLE].sum().item()
        if no_hole:
            out["no_hole"] = no_hole
        return out

    def artifacts(self) -> dict[str, bytes]:
        stats = (self.reduced if self.reduced is not None else self.stats).cpu()
        out = {"inpaint_table.md": table_markdown(stats, self.methods).encode(),
               "inpaint_table.csv": table_csv(stats, self.methods)}
        if self.samples:
            out["inpaint_grid.png"] = grid_png(self.samples)
        return out

    def _keep(self, image, known, output, composite, bucket, border) -> None:
        def u8(t):  # (C, H, W) in [0, 1] → (H, W, C) uint8
            return (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

        for i in range(min(GRID - len(self.samples), image.shape[0])):
            holes = 1 - known[i]
            self.samples.append({
                "input": u8(image[i] * known[i] + holes),  # holes shown white
                "mask": u8(holes.expand(3, -1, -1)),  # white = hole
                "output": u8(output[i]), "composite": u8(composite[i]), "truth": u8(image[i]),
                "title": (BUCKETS[int(bucket[i])] if bucket[i] >= 0 else "no bucket")
                + ("/border" if bool(border[i]) else "/no-border"),
            })


def score_rows(pred: torch.Tensor, image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(B, 6) float64: the four metrics and 1 for each sample with a hole, zeros and a hole-free
    count of 1 for the others."""
    holes = 1 - known
    has_hole = holes.sum(dim=(1, 2, 3)) > 0  # (B,)
    values = torch.stack([quality.l1(pred, image), quality.l1(pred, image, holes),
                          quality.psnr(pred, image), quality.ssim(pred, image, SSIM_DTYPE)], dim=1)  # (B, 4)
    values = torch.where(has_hole[:, None], values, torch.zeros_like(values))  # no inf PSNR
    counts = torch.stack([has_hole, ~has_hole], dim=1).to(values.dtype)
    return torch.cat([values, counts], dim=1)


def metric_keys(stats: torch.Tensor, prefix: str) -> dict[str, float]:
    """One method's (buckets + 1, flags, 6) statistics → overall and per-cell means."""
    def means(cell: torch.Tensor) -> list[float]:
        n = cell[SCORED].item()
        return [(cell[k] / n).item() if n else float("nan") for k in range(len(METRICS))]

    out = {f"{prefix}{m}": v for m, v in zip(METRICS, means(stats.sum(dim=(0, 1))))}
    for b, bucket in enumerate(BUCKETS):
        for f, flag in enumerate(BORDER_FLAGS):
            if stats[b, f, SCORED]:
                out.update({f"{prefix}{m}/{bucket}/{flag}": v for m, v in zip(METRICS, means(stats[b, f]))})
    return out


# The paper's Table 1: metric blocks, one row per method, columns bucket x (N, B).
ROWS = (("L1 hole (%)", "l1_hole", 100, 2), ("L1 (%)", "l1", 100, 2), ("PSNR", "psnr", 1, 2),
        ("SSIM", "ssim", 1, 3))
COLUMNS = [(b, f, f"{bucket} {letter}") for b, bucket in enumerate(BUCKETS)
           for f, letter in ((NO_BORDER, "N"), (BORDER, "B"))]
TABLE_ORDER = ("telea", "mean", "pconv")


def _cells(stats: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(column label, (6,) statistics) for each bucket/flag column and the overall one."""
    return [(label, stats[b, f]) for b, f, label in COLUMNS] + [("all", stats.sum(dim=(0, 1)))]


def table_markdown(stats: torch.Tensor, methods: tuple[str, ...]) -> str:
    order = [m for m in TABLE_ORDER if m in methods]
    header = ["metric", "method"] + [label for label, _ in _cells(stats[0])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append("| samples | | " + " | ".join(str(int(c[SCORED])) for _, c in _cells(stats[0])) + " |")
    for title, metric, factor, digits in ROWS:
        k = METRICS.index(metric)
        for name in order:
            values = ["–" if not c[SCORED] else f"{factor * c[k].item() / c[SCORED].item():.{digits}f}"
                      for _, c in _cells(stats[methods.index(name)])]
            lines.append(f"| {title} | {LABELS[name]} | " + " | ".join(values) + " |")
    lines.append("")
    lines.append("N: no hole within 50 px of the border; B: holes near the border. "
                 "Per image on the composite, data range 1, SSIM over the valid region.")
    return "\n".join(lines) + "\n"


def table_csv(stats: torch.Tensor, methods: tuple[str, ...]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "bucket", "flag", "samples", *METRICS])
    cells = [(bucket, flag, (b, f)) for b, bucket in enumerate(BUCKETS) for f, flag in enumerate(BORDER_FLAGS)]
    for m, name in enumerate(methods):
        rows = [(bucket, flag, stats[m][index]) for bucket, flag, index in cells]
        rows.append(("all", "all", stats[m].sum(dim=(0, 1))))
        for bucket, flag, cell in rows:
            n = int(cell[SCORED])
            values = [f"{cell[k].item() / n:.6f}" if n else "" for k in range(len(METRICS))]
            writer.writerow([name, bucket, flag, n, *values])
    return out.getvalue().encode()


def grid_png(samples: list[dict]) -> bytes:
    plt = pyplot()
    columns = ("input", "mask", "output", "composite", "truth")
    titles = ("input", "mask (white: hole)", "output", "composite", "ground truth")
    fig, axes = plt.subplots(len(samples), len(columns), figsize=(2 * len(columns), 2.1 * len(samples)),
                             squeeze=False)
    for r, sample in enumerate(samples):
        for c, name in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(np.asarray(sample[name]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(sample["title"], fontsize=7)
    return figure_png(fig)
