"""Epoch plans: which positions of an epoch's sample sequence each rank's DataLoader workers read,
and what is left of an epoch after a stop, re-split for any world size.

An epoch's sample sequence is the split's shards in the order of (seed, epoch), concatenated;
position ``p`` is sample ``p % total`` of it, so positions at or past ``total`` are padding
(repeats that make the ranks' shares equal, as DDP needs). A plan assigns every position to one
*part* (part = rank × workers + worker) as sorted intervals; each part reads its positions in
stream order and shuffles them through a buffer seeded by (seed, epoch, rank, worker, generation).

Mid-epoch resume (``tasks/train/engine.py``): a checkpoint records how many samples each part has
handed to training. With the same world size, workers and batch the plan is kept and each part
skips what it handed out (bit-for-bit the uninterrupted run). Otherwise the consumed positions are
replayed from those counts (the shuffle is a pure function of its seed, no data is read), and
the rest is re-planned: ``replan`` splits it evenly over the new ranks, padding made explicit.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

Intervals = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class EpochPlan:
    total: int              # samples in the split; positions >= total are padding
    world_size: int
    workers: int            # DataLoader workers per rank (0 and 1 both read in one part)
    parts: tuple[Intervals, ...]  # [rank * workers + worker] → sorted [start, stop) intervals
    padding: int = 0        # padding positions in the plan
    generation: int = 0     # 0: the epoch's own plan; n: re-planned n times after stops

    def part(self, rank: int, worker: int) -> int:
        return rank * self.workers + worker

    def rank_samples(self, rank: int) -> int:
        return sum(size(self.parts[self.part(rank, w)]) for w in range(self.workers))

    def to_dict(self) -> dict:
        return {"total": self.total, "world_size": self.world_size, "workers": self.workers,
                "parts": [[list(i) for i in p] for p in self.parts], "padding": self.padding,
                "generation": self.generation}

    @classmethod
    def from_dict(cls, d: dict) -> EpochPlan:
        parts = tuple(tuple((int(a), int(b)) for a, b in p) for p in d["parts"])
        return cls(int(d["total"]), int(d["world_size"]), int(d["workers"]), parts,
                   int(d["padding"]), int(d["generation"]))


def size(intervals: Iterable[tuple[int, int]]) -> int:
    return sum(b - a for a, b in intervals)


def expand(intervals: Iterable[tuple[int, int]]) -> np.ndarray:
    pieces = [np.arange(a, b, dtype=np.int64) for a, b in intervals]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def to_intervals(positions: np.ndarray) -> Intervals:
    """Sorted unique positions → maximal [start, stop) runs."""
    if len(positions) == 0:
        return ()
    breaks = np.nonzero(np.diff(positions) != 1)[0] + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(positions)]])
    return tuple((int(positions[a]), int(positions[b - 1]) + 1) for a, b in zip(starts, stops))


def _cuts(n: int, k: int) -> list[int]:
    return [n * i // k for i in range(k + 1)]


def _split(positions: np.ndarray, world_size: int, workers: int) -> tuple[Intervals, ...]:
    """Contiguous, even shares: per rank, then per worker within the rank."""
    parts = []
    rank_cuts = _cuts(len(positions), world_size)
    for r in range(world_size):
        mine = positions[rank_cuts[r]:rank_cuts[r + 1]]
        worker_cuts = _cuts(len(mine), workers)
        parts += [to_intervals(mine[worker_cuts[w]:worker_cuts[w + 1]]) for w in range(workers)]
    return tuple(parts)


def plan_epoch(total: int, world_size: int, workers: int, policy: str) -> EpochPlan:
    """The epoch's own plan: ``pad`` repeats the first samples so every rank gets
    ceil(total / world); ``drop`` leaves the remainder out; ``exact`` reads each sample once,
    ranks differing by at most one (evaluation)."""
    workers = max(1, workers)
    if policy == "exact":
        return EpochPlan(total, world_size, workers, _split(np.arange(total, dtype=np.int64), world_size, workers))
    per_rank = math.ceil(total / world_size) if policy == "pad" else total // world_size
    n = per_rank * world_size
    return EpochPlan(total, world_size, workers, _split(np.arange(n, dtype=np.int64), world_size, workers),
                     padding=max(0, n - total))


def shuffled(items: Iterator, size_: int, rng: random.Random) -> Iterator:
    """A bounded shuffle buffer: items leave in a random order no more than ``size_`` behind."""
    buffer: list = []
    for item in items:
        if len(buffer) < size_:
            buffer.append(item)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def part_rng(seed: int, epoch: int, plan: EpochPlan, part: int) -> random.Random:
    rank, worker = divmod(part, plan.workers)
    suffix = f":g{plan.generation}" if plan.generation else ""
    return random.Random(f"{seed}:{epoch}:{rank}:{worker}{suffix}")


def yield_order(plan: EpochPlan, part: int, *, seed: int, epoch: int, shuffle: bool, buffer: int) -> np.ndarray:
    """The positions part ``part`` hands out, in the order it hands them out."""
    positions = expand(plan.parts[part])
    if not shuffle:
        return positions
    return np.fromiter(shuffled(iter(positions.tolist()), buffer, part_rng(seed, epoch, plan, part)),
                       np.int64, len(positions))


def consumed(plan: EpochPlan, taken: dict[int, int], **order) -> np.ndarray:
    """Sorted positions the parts had handed out, given how many each handed out (``taken``)."""
    done = [yield_order(plan, part, **order)[:n] for part, n in taken.items() if n]
    return np.sort(np.concatenate(done)) if done else np.zeros(0, np.int64)


def replan(plan: EpochPlan, taken: dict[int, int], world_size: int, workers: int, **order) -> EpochPlan:
    """What ``plan`` has left after the parts handed out ``taken`` samples, split evenly over
    ``world_size`` ranks of ``workers`` workers. Shares are made equal with explicit padding:
    repeats of the first positions left, at positions past every one in use."""
    workers = max(1, workers)
    everything = np.sort(expand(i for p in plan.parts for i in p))
    left = np.setdiff1d(everything, consumed(plan, taken, **order), assume_unique=True)
    per_rank = math.ceil(len(left) / world_size)
    padding = per_rank * world_size - len(left)
    if padding:
        base = (int(everything[-1]) // plan.total + 1) * plan.total  # past every position in use
        repeats = np.resize(left, padding) % plan.total + base
        left = np.concatenate([left, np.sort(repeats)])
    return EpochPlan(plan.total, world_size, workers, _split(left, world_size, workers),
                     plan.padding + padding, plan.generation + 1)
