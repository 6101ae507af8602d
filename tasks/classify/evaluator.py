"""The classifier's evaluator: top-k accuracy, per-class accuracy, the confusion among the most
confused classes, and a grid of misclassified samples named by class.

Sufficient statistics are a confusion matrix and top-k hit counts, summed across DDP ranks, so
the numbers are exact whatever the split of the samples over ranks.
"""

from __future__ import annotations

import csv
import io

import torch

from tasks.track.plots import figure_png, pyplot
from tasks.train.evaluator import sum_across_ranks
from tasks.train.recipe import EvalContext

GRID = 36  # misclassified samples shown
MOST_CONFUSED = 20  # classes in the confusion plot


def metric_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-. " else "_" for ch in name).replace(" ", "_")


class ClassificationEvaluator:
    def __init__(self, ctx: EvalContext, top_k: tuple[int, ...] = (1, 5), detailed: bool = False):
        self.classes = list(ctx.classes)
        n = len(self.classes)
        self.top_k = tuple(k for k in top_k if k <= n)
        self.confusion = torch.zeros(n, n, dtype=torch.int64, device=ctx.device)  # [true, predicted]
        self.hits = torch.zeros(len(self.top_k), dtype=torch.int64, device=ctx.device)
        self.keep = GRID if detailed else 0
        self.detailed = detailed
        self.wrong: list[tuple[torch.Tensor, int, int]] = []

    def update(self, logits: torch.Tensor, targets: torch.Tensor, inputs: tuple) -> None:
        n = len(self.classes)
        if logits.shape[-1] != n:
            raise ValueError(f"the model predicts {logits.shape[-1]} classes, the dataset has {n}")
        ranked = logits.topk(max(self.top_k), dim=1).indices  # (B, k)
        for i, k in enumerate(self.top_k):
            self.hits[i] += (ranked[:, :k] == targets[:, None]).any(dim=1).sum()
        predicted = ranked[:, 0]
        self.confusion += torch.bincount(targets * n + predicted, minlength=n * n).view(n, n)
        for i in torch.nonzero(predicted != targets).flatten().tolist()[: self.keep - len(self.wrong)]:
            self.wrong.append((inputs[0][i].detach().float().cpu(), int(targets[i]), int(predicted[i])))

    def compute(self) -> dict[str, float]:
        self.confusion = sum_across_ranks(self.confusion).long()
        hits = sum_across_ranks(self.hits)
        total = max(int(self.confusion.sum()), 1)
        out = {f"top{k}": hits[i].item() / total for i, k in enumerate(self.top_k)}
        if self.detailed and len(self.classes) <= 100:  # more would swamp the run page
            out.update({f"acc/{metric_safe(c)}": v for c, v in zip(self.classes, self.per_class().tolist())})
        return out

    def per_class(self) -> torch.Tensor:
        counts = self.confusion.sum(dim=1).clamp(min=1)
        return self.confusion.diagonal().double() / counts

    def artifacts(self) -> dict[str, bytes]:
        return {"per_class_accuracy.csv": self._per_class_csv(),
                "confusion_matrix.png": self._confusion_png(),
                "misclassified.png": self._misclassified_png()}

    def _per_class_csv(self) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["class", "samples", "accuracy"])
        for name, count, acc in zip(self.classes, self.confusion.sum(dim=1).tolist(), self.per_class().tolist()):
            writer.writerow([name, count, f"{acc:.4f}"])
        return out.getvalue().encode()

    def most_confused(self, limit: int = MOST_CONFUSED) -> list[int]:
        """Classes with the most errors (as truth or as prediction), at most ``limit``."""
        errors = self.confusion.clone().cpu()
        errors.fill_diagonal_(0)
        score = errors.sum(dim=0) + errors.sum(dim=1)
        order = sorted(range(len(self.classes)), key=lambda c: (-int(score[c]), c))
        return sorted(order[:limit])

    def _confusion_png(self) -> bytes:
        plt = pyplot()
        keep = self.most_confused()
        matrix = self.confusion.cpu()[keep][:, keep]
        names = [self.classes[c] for c in keep]
        fig, ax = plt.subplots(figsize=(1 + 0.6 * len(keep), 1 + 0.6 * len(keep)))
        ax.imshow(matrix.numpy(), cmap="Blues")
        ax.set_xticks(range(len(keep)), names, rotation=90)
        ax.set_yticks(range(len(keep)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        title = "confusion" if len(keep) == len(self.classes) else f"the {len(keep)} most confused classes"
        ax.set_title(title)
        peak = max(int(matrix.max()), 1)
        for r in range(len(keep)):
            for c in range(len(keep)):
                n = int(matrix[r, c])
                ax.text(c, r, str(n), ha="center", va="center", fontsize=7,
                        color="white" if n > peak / 2 else "black")
        return figure_png(fig)

    def _misclassified_png(self) -> bytes:
        plt = pyplot()
        cols = 6
        rows = max(1, -(-len(self.wrong) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (image, true, predicted) in zip(axes.flat, self.wrong):
            # the model's (normalised) input, stretched back to [0, 1] for display
            image = (image - image.min()) / (image.max() - image.min()).clamp(min=1e-6)
            ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")  # (C, H, W) → (H, W[, C])
            ax.set_title(f"{self.classes[true]} → {self.classes[predicted]}", fontsize=7)
        return figure_png(fig)
