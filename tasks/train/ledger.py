"""The sample ledger: per epoch and rank, the keys of the samples that rank trained on, one per
line, so a user can audit that every epoch saw each sample exactly once.

    <checkpoint_dir>/ledger/epoch-<E>/rank-<R>.txt

Lines are appended as batches are trained on and fsynced with each checkpoint, whose state
records every file's line count. On resume the ledger is cut back to those counts (and later
epochs removed), so it lists exactly the samples whose updates the restored weights contain.
A padding repeat (the sample that evens out the ranks' shares) is written ``<key>\tpadding``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tasks.data import storage

PADDING = "\tpadding"


def root(checkpoint_dir: str) -> Path:
    if storage.is_s3(checkpoint_dir):
        raise ValueError(f"sample_ledger needs a local (or shared-filesystem) checkpoint_dir, not "
                         f"{checkpoint_dir}: its files are appended to and fsynced as training goes")
    return Path(checkpoint_dir) / "ledger"


def epoch_dir(checkpoint_dir: str, epoch: int) -> Path:
    return root(checkpoint_dir) / f"epoch-{epoch}"


class Ledger:
    """One rank's appender for one epoch at a time."""

    def __init__(self, checkpoint_dir: str, rank: int):
        self.checkpoint_dir, self.rank = checkpoint_dir, rank
        self.file = None
        self.name = ""
        self.lines = 0

    def open(self, epoch: int) -> None:
        self.close()
        path = epoch_dir(self.checkpoint_dir, epoch) / f"rank-{self.rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = _count(path)
        self.name = f"epoch-{epoch}/{path.name}"
        self.file = open(path, "a", encoding="utf-8")

    def write(self, keys: list[str], padding: list[bool]) -> None:
        self.file.write("".join(f"{k}{PADDING if p else ''}\n" for k, p in zip(keys, padding)))
        self.lines += len(keys)

    def sync(self) -> dict[str, int]:
        """Make the lines durable; returns {file: lines} for the checkpoint."""
        self.file.flush()
        os.fsync(self.file.fileno())
        return {self.name: self.lines}

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None


def cut(checkpoint_dir: str, epoch: int, lines: dict[str, int]) -> None:
    """Cut the ledger back to a checkpoint of ``epoch``: its files to the recorded line counts
    (files it does not list are emptied), later epochs removed."""
    base = root(checkpoint_dir)
    if not base.exists():
        return
    for folder in base.glob("epoch-*"):
        e = int(folder.name.split("-", 1)[1])
        if e > epoch:
            shutil.rmtree(folder)
        elif e == epoch:
            for path in folder.glob("rank-*.txt"):
                keep = lines.get(f"{folder.name}/{path.name}", 0)
                with open(path, encoding="utf-8") as f:
                    kept = [line for _, line in zip(range(keep), f)]
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(kept), encoding="utf-8")
                os.replace(tmp, path)


def read(checkpoint_dir: str, epoch: int) -> dict[str, list[str]]:
    """{rank file: lines} of one epoch (tests and audits)."""
    folder = epoch_dir(checkpoint_dir, epoch)
    return {p.name: p.read_text(encoding="utf-8").splitlines() for p in sorted(folder.glob("rank-*.txt"))}


def _count(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
