"""Where training is inside an epoch, as a checkpoint records it and a restart continues from it.

A checkpoint taken after step ``s`` of epoch ``E`` stores the epoch's plan (``tasks/data/plan.py``),
how many samples each plan part had handed to training, the DataLoader worker that gave the
last batch, the running loss sums, every rank's RNG states and the ledger's line counts. A
restart with the same world size, DataLoader workers and per-rank batch keeps the plan and skips
what was trained on (the run continues bit for bit); any other shape re-plans what is left of
the epoch for the new ranks (the global batch is kept; padding is explicit and reported).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from tasks.data.plan import EpochPlan, replan


@dataclass
class EpochState:
    """One rank's progress through the epoch it trains."""

    epoch: int
    plan: EpochPlan
    taken: dict[int, int] = field(default_factory=dict)  # part → samples handed to training
    last_part: int | None = None     # the part that gave this rank's last batch
    steps: int = 0                   # optimizer steps done in the epoch, under any plan
    plan_start_step: int = 0         # steps done before the current plan began
    loss_sum: float = 0.0            # every rank's loss × samples before the restart (rank 0 adds it)
    seen: float = 0.0

    def note(self, part: int, n: int) -> None:
        self.taken[part] = self.taken.get(part, 0) + n
        self.last_part = part


@dataclass(frozen=True)
class Resume:
    """How this rank's loader continues a checkpointed epoch."""

    state: EpochState
    skip: dict[int, int]
    rotation: int
    replanned: bool


def rng_state() -> dict:
    np_state, (version, ints, gauss) = np.random.get_state(), random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": [list(ints), version, gauss]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    ints, version, gauss = state["python"]
    random.setstate((version, tuple(ints), gauss))


def gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def snapshot(epoch: EpochState | None, world_size: int, ledger_lines: dict[str, int]) -> tuple[dict | None, list, dict]:
    """Collective: every rank's view merged → (position or None at an epoch end, RNG states per
    rank, ledger line counts per file)."""
    mine = {"rng": rng_state(), "ledger": ledger_lines,
            "taken": dict(epoch.taken) if epoch else {}, "last_part": epoch.last_part if epoch else None}
    views = gather(mine, world_size)
    ledger = {name: n for v in views for name, n in v["ledger"].items()}
    rngs = [v["rng"] for v in views]
    if epoch is None:
        return None, rngs, ledger
    taken: dict[int, int] = {}
    for v in views:
        taken.update(v["taken"])  # each rank reports its own parts
    position = {"epoch": epoch.epoch, "plan": epoch.plan.to_dict(), "taken": taken,
                "last_part": [v["last_part"] for v in views], "steps": epoch.steps,
                "plan_start_step": epoch.plan_start_step, "loss_sum": epoch.loss_sum, "seen": epoch.seen,
                "samples": sum(taken.values())}
    return position, rngs, ledger


def resume(position: dict, rank: int, world_size: int, workers: int, per_rank_batch: int,
           saved_per_rank_batch: int, order: dict) -> Resume:
    """Continue ``position`` on this rank: keep its plan if the shape is the same, else re-plan."""
    plan = EpochPlan.from_dict(position["plan"])
    taken = {int(k): int(v) for k, v in position["taken"].items()}
    workers = max(1, workers)
    carried = dict(loss_sum=float(position["loss_sum"]) if rank == 0 else 0.0,
                   seen=float(position["seen"]) if rank == 0 else 0.0)
    same = (plan.world_size, plan.workers, saved_per_rank_batch) == (world_size, workers, per_rank_batch)
    if same:
        last = position["last_part"][rank]
        rotation = 0 if last is None else (last % workers + 1) % workers
        mine = {p: n for p, n in taken.items() if p // workers == rank}  # each rank reports its own
        state = EpochState(position["epoch"], plan, dict(mine), last, position["steps"],
                           position["plan_start_step"], **carried)
        return Resume(state, mine, rotation, replanned=False)
    new = replan(plan, taken, world_size, workers, epoch=position["epoch"], **order)
    state = EpochState(position["epoch"], new, {}, None, position["steps"], position["steps"], **carried)
    return Resume(state, {}, 0, replanned=True)
