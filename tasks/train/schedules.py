"""Per-step learning-rate schedules and progressive-resizing phases (pure Python).

A `Schedule` describes the LR curve as a *factor* of the base LR over float epochs; an
`LRSchedule` is its runtime over a run of `total_epochs`. The engine sets every param group's LR
to `base_lr * factor(t)` before each optimizer step, with `t = epoch + fraction of the epoch
done`: float epochs keep the curve per step even when the steps per epoch change between phases
(a bigger batch means fewer steps), which a torch scheduler counting steps cannot do.

    sched = LRSchedule(recipe_schedule.scaled(epochs / recipe_epochs), epochs)
    sched.load_state_dict(checkpoint["lr_schedule"])           # when resuming
    for epoch in range(start_epoch, epochs):
        phase = phase_at(phases, epoch)                         # image size, batch, variant
        for i, batch in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = base_lr * sched.factor(epoch + i / steps_per_epoch)
            ...
        sched.end_epoch(epoch, {"val/top1": top1})              # "plateau" decays here
        checkpoint["lr_schedule"] = sched.state_dict()          # JSON-able, weights_only-safe

`Phase`s are progressive resizing (fast.ai's DAWNBench ImageNet runs, Howard et al. 2018): a run
starts on small, cheap images with big batches and moves to full-size ones near the end.
`scale_phases` and `Schedule.scaled` stretch a recipe's epochs to a shorter (or longer) run.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Literal, Sequence

# Epoch boundaries compared with this slack: scaled epochs are inexact floats (30 * 0.1 is
# 3.0000000000000004) and a step or a jump due at epoch 3 must still happen at t = 3.0.
_EPS = 1e-9

KINDS = ("constant", "step", "multistep", "cosine", "onecycle", "piecewise", "plateau")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------
# Progressive resizing


@dataclass(frozen=True)
class Phase:
    """From `start_epoch` until the next phase starts (epochs counted from 0)."""

    start_epoch: float
    image_size: int | None = None  # train crop side
    batch_size: int | None = None  # GLOBAL batch size for this phase (None: the run's)
    # dataset variant (e.g. "short160": the ingest's --variants 160 version suffix)
    variant: str | None = None
    min_scale: float | None = None  # RandomResizedCrop's smallest area fraction
    val_size: int | None = None  # validation side (None: image_size)
    rect_val: bool = False  # rectangular validation (DAWNBench's last phase)

    def __post_init__(self):
        _check(_finite(self.start_epoch) and self.start_epoch >= 0,
               f"Phase.start_epoch must be a finite number >= 0, got {self.start_epoch!r}")
        for name in ("image_size", "batch_size", "val_size"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value > 0),
                   f"Phase.{name} must be a positive int or None, got {value!r}")
        _check(self.variant is None or (isinstance(self.variant, str) and self.variant != ""),
               f"Phase.variant must be a non-empty string or None, got {self.variant!r}")
        # RandomResizedCrop's scale=(min_scale, 1): an area fraction, so (0, 1].
        _check(self.min_scale is None or (_finite(self.min_scale) and 0 < self.min_scale <= 1),
               f"Phase.min_scale must be in (0, 1] or None, got {self.min_scale!r}")
        _check(isinstance(self.rect_val, bool),
               f"Phase.rect_val must be a bool, got {self.rect_val!r}")


def _check_phases(phases: Sequence[Phase]) -> None:
    _check(len(phases) > 0, "no phases: give at least one, starting at epoch 0")
    _check(all(isinstance(p, Phase) for p in phases), "phases must all be Phase instances")
    _check(phases[0].start_epoch == 0,
           f"the first phase must start at epoch 0, got {phases[0].start_epoch}")
    starts = [p.start_epoch for p in phases]
    _check(all(a < b for a, b in zip(starts, starts[1:])),
           f"phase start epochs must be strictly increasing, got {starts}")


def phase_at(phases: Sequence[Phase], epoch: int) -> Phase:
    """The phase active at `epoch`: the last one starting at or before it."""
    _check_phases(phases)
    _check(_finite(epoch) and epoch >= 0, f"epoch must be a number >= 0, got {epoch!r}")
    return phases[bisect_right([p.start_epoch for p in phases], epoch + _EPS) - 1]


def scale_phases(phases: Sequence[Phase], factor: float) -> tuple[Phase, ...]:
    """Start epochs times `factor`, rounded to whole epochs (a phase changes the data loader, so
    it can only start at an epoch boundary). Phases that land on the same epoch collapse into the
    later one: a phase too short to last an epoch is skipped rather than run for zero epochs."""
    _check_phases(phases)
    _check(_finite(factor) and factor > 0,
           f"scale factor must be a finite number > 0, got {factor!r}")
    scaled: dict[int, Phase] = {}
    for p in phases:
        # Half up, not Python's round-half-to-even: 18.5 and 19.5 should both move later.
        start = math.floor(p.start_epoch * factor + 0.5 + _EPS)
        scaled[start] = replace(p, start_epoch=start)  # dicts keep first-insertion order
    return tuple(scaled.values())


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules


@dataclass(frozen=True)
class Schedule:
    kind: Literal["constant", "step", "multistep", "cosine", "onecycle", "piecewise",
                  "plateau"] = "constant"
    # Linear warmup from warmup_start (a factor) to the schedule's value, on top of any kind but
    # "onecycle" and "piecewise" (they ramp themselves). Goyal et al. 2017 warm up for 5 epochs
    # from a small LR so that a large batch's linearly scaled LR does not diverge early.
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0
    step_size: float = 30.0  # "step": times gamma every step_size epochs (ResNet: 0.1 per 30)
    milestones: tuple[float, ...] = ()  # "multistep": multiply by gamma at each of these epochs
    gamma: float = 0.1  # step / multistep / plateau factor
    min_factor: float = 0.0  # cosine floor (as a factor of base)
    # "onecycle" (Smith & Topin 2018), as torch.optim.lr_scheduler.OneCycleLR with
    # anneal_strategy="cos"; the base LR is its max_lr.
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    # "piecewise": (epoch, factor) points, linear in between, constant after the last; two knots
    # at the same epoch make a jump, the second holding from that epoch on (fast.ai's DAWNBench
    # schedule is written this way).
    knots: tuple[tuple[float, float], ...] = ()
    # "plateau": decay by gamma when `monitor` stops improving (Krizhevsky et al. 2012, Simonyan &
    # Zisserman 2014: "decreased by a factor of 10 when the validation set accuracy stopped
    # improving. In total, the learning rate was decreased 3 times").
    monitor: str = "val/top1"  # the metric watched at epoch end
    mode: Literal["max", "min"] = "max"
    patience: int = 5  # bad epochs tolerated, the next one decays (as torch ReduceLROnPlateau)
    # relative improvement needed (like torch ReduceLROnPlateau threshold_mode="rel")
    threshold: float = 1e-4
    max_decays: int = 3  # VGG paper: LR decreased 3 times in total

    def __post_init__(self):
        # Lists from JSON/YAML configs become tuples, so the frozen dataclass stays hashable.
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "knots", tuple(tuple(k) for k in self.knots))
        _check(self.kind in KINDS, f"Schedule.kind must be one of {KINDS}, got {self.kind!r}")
        _check(_finite(self.warmup_epochs) and self.warmup_epochs >= 0,
               f"Schedule.warmup_epochs must be a finite number >= 0, got {self.warmup_epochs!r}")
        _check(self.warmup_epochs == 0 or self.kind not in ("onecycle", "piecewise"),
               f'Schedule.warmup_epochs must be 0 for kind="{self.kind}", which has its own ramp; '
               f"got {self.warmup_epochs}")
        _check(_finite(self.warmup_start) and 0 <= self.warmup_start <= 1,
               f"Schedule.warmup_start must be a factor in [0, 1], got {self.warmup_start!r}")
        _check(_finite(self.step_size) and self.step_size > 0,
               f"Schedule.step_size must be a finite number > 0, got {self.step_size!r}")
        _check(all(_finite(m) and m >= 0 for m in self.milestones),
               f"Schedule.milestones must be finite numbers >= 0, got {self.milestones}")
        _check(all(a < b for a, b in zip(self.milestones, self.milestones[1:])),
               f"Schedule.milestones must be strictly increasing, got {self.milestones}")
        _check(self.kind != "multistep" or self.milestones,
               'Schedule.milestones must not be empty for kind="multistep"')
        _check(_finite(self.gamma) and self.gamma > 0,
               f"Schedule.gamma must be a finite number > 0, got {self.gamma!r}")
        _check(self.kind != "plateau" or self.gamma < 1,
               f'Schedule.gamma must be < 1 for kind="plateau" (it decays), got {self.gamma}')
        _check(_finite(self.min_factor) and 0 <= self.min_factor <= 1,
               f"Schedule.min_factor must be in [0, 1], got {self.min_factor!r}")
        _check(_finite(self.pct_start) and 0 < self.pct_start < 1,
               f"Schedule.pct_start must be in (0, 1), got {self.pct_start!r}")
        for name in ("div_factor", "final_div_factor"):
            value = getattr(self, name)
            _check(_finite(value) and value > 0,
                   f"Schedule.{name} must be a finite number > 0, got {value!r}")
        self._check_knots()
        _check(isinstance(self.monitor, str) and self.monitor != "",
               f"Schedule.monitor must be a non-empty metric name, got {self.monitor!r}")
        _check(self.mode in ("max", "min"),
               f'Schedule.mode must be "max" or "min", got {self.mode!r}')
        _check(_is_int(self.patience) and self.patience >= 0,
               f"Schedule.patience must be an int >= 0, got {self.patience!r}")
        _check(_finite(self.threshold) and self.threshold >= 0,
               f"Schedule.threshold must be a finite number >= 0, got {self.threshold!r}")
        _check(_is_int(self.max_decays) and self.max_decays >= 0,
               f"Schedule.max_decays must be an int >= 0, got {self.max_decays!r}")

    def _check_knots(self) -> None:
        knots = self.knots
        _check(all(len(k) == 2 and _finite(k[0]) and _finite(k[1]) for k in knots),
               f"Schedule.knots must be (epoch, factor) pairs of finite numbers, got {knots}")
        _check(all(e >= 0 and f >= 0 for e, f in knots),
               f"Schedule.knots epochs and factors must be >= 0, got {knots}")
        epochs = [e for e, _ in knots]
        _check(all(a <= b for a, b in zip(epochs, epochs[1:])),
               f"Schedule.knots must be sorted by epoch, got epochs {epochs}")
        # Two knots at one epoch are a jump; a third would be a value that is never used.
        _check(all(a != c for a, c in zip(epochs, epochs[2:])),
               f"Schedule.knots: at most two knots may share an epoch, got epochs {epochs}")
        if self.kind == "piecewise":
            _check(len(knots) > 0, 'Schedule.knots must not be empty for kind="piecewise"')
            _check(epochs[0] == 0, f"Schedule.knots must start at epoch 0, got {epochs[0]}")

    def scaled(self, factor: float) -> Schedule:
        """The same curve over `factor` times the epochs (patience is left alone: it counts
        validation rounds, which stay one per epoch)."""
        _check(_finite(factor) and factor > 0,
               f"scale factor must be a finite number > 0, got {factor!r}")
        return replace(self, warmup_epochs=self.warmup_epochs * factor,
                       step_size=self.step_size * factor,
                       milestones=tuple(m * factor for m in self.milestones),
                       knots=tuple((e * factor, f) for e, f in self.knots))


def _cos_anneal(start: float, end: float, pct: float) -> float:
    # torch OneCycleLR._annealing_cos: from start at pct=0 to end at pct=1, half a cosine.
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class LRSchedule:
    """The stateful runtime of a Schedule over `total_epochs`."""

    def __init__(self, schedule: Schedule, total_epochs: int):
        _check(isinstance(schedule, Schedule),
               f"schedule must be a Schedule, got {type(schedule).__name__}")
        _check(_is_int(total_epochs) and total_epochs >= 1,
               f"total_epochs must be an int >= 1, got {total_epochs!r}")
        _check(schedule.warmup_epochs <= total_epochs,
               f"warmup_epochs ({schedule.warmup_epochs}) is longer than the run "
               f"({total_epochs} epochs)")
        _check(schedule.kind != "cosine" or schedule.warmup_epochs < total_epochs,
               f"cosine: warmup_epochs ({schedule.warmup_epochs}) leaves no epochs of the "
               f"{total_epochs} to anneal over")
        self.schedule = schedule
        self.total_epochs = total_epochs
        # "plateau" state; the rest of the kinds are pure functions of t.
        self.decays = 0
        self.best: float | None = None  # None, not ±inf: the state must stay valid JSON
        self.bad_epochs = 0
        self.last_epoch: int | None = None  # the last epoch passed to end_epoch

    def factor(self, t: float) -> float:
        """The multiplier for the base LR at `t` = epoch + fraction of the epoch done."""
        _check(_finite(t) and t >= 0, f"t must be a finite number of epochs >= 0, got {t!r}")
        s = self.schedule
        f = self._main(t)
        if t < s.warmup_epochs:
            f *= s.warmup_start + (1 - s.warmup_start) * t / s.warmup_epochs
        return f

    def _main(self, t: float) -> float:
        s, total = self.schedule, self.total_epochs
        if s.kind == "constant":
            return 1.0
        if s.kind == "step":
            return s.gamma ** math.floor(t / s.step_size + _EPS)
        if s.kind == "multistep":
            return s.gamma ** bisect_right(s.milestones, t + _EPS)
        if s.kind == "plateau":
            return s.gamma ** self.decays
        if s.kind == "cosine":
            # SGDR without restarts (Loshchilov & Hutter 2017), once warmup is over.
            pct = min(max(t - s.warmup_epochs, 0.0) / (total - s.warmup_epochs), 1.0)
            return s.min_factor + (1 - s.min_factor) * (1 + math.cos(math.pi * pct)) / 2
        if s.kind == "onecycle":
            # OneCycleLR's two "cos" phases, in factors of max_lr and float epochs instead of
            # steps (torch ends each phase one step early: at step pct*T - 1 and T - 1).
            initial = 1 / s.div_factor
            low = initial / s.final_div_factor
            peak = s.pct_start * total
            if t <= peak:
                return _cos_anneal(initial, 1.0, t / peak)
            return _cos_anneal(1.0, low, min((t - peak) / (total - peak), 1.0))
        # piecewise: the last knot at or before t (the second of a jump pair), then interpolate.
        knots = s.knots
        j = bisect_right([e for e, _ in knots], t + _EPS)
        if j == len(knots):
            return knots[-1][1]
        (e0, f0), (e1, f1) = knots[j - 1], knots[j]
        return f0 + (f1 - f0) * min(max((t - e0) / (e1 - e0), 0.0), 1.0)

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Called once per finished epoch. For "plateau", True if the LR was decayed now."""
        s = self.schedule
        if s.kind != "plateau":
            return False
        _check(_is_int(epoch) and epoch >= 0, f"epoch must be an int >= 0, got {epoch!r}")
        _check(self.last_epoch is None or epoch > self.last_epoch,
               f"end_epoch({epoch}) after end_epoch({self.last_epoch}): "
               "each epoch ends once, in order")
        if s.monitor not in metrics:
            raise KeyError(f'plateau schedule monitors "{s.monitor}", which is not among the '
                           f"epoch's metrics {sorted(metrics)}")
        value = float(metrics[s.monitor])
        self.last_epoch = epoch
        # torch ReduceLROnPlateau, threshold_mode="rel". A NaN or inf (a diverged run) never
        # improves, which also keeps `best` finite and the state valid JSON.
        if not math.isfinite(value):
            better = False
        elif self.best is None:
            better = True
        elif s.mode == "max":
            better = value > self.best * (1 + s.threshold)
        else:
            better = value < self.best * (1 - s.threshold)
        if better:
            self.best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= s.patience or self.decays >= s.max_decays:
            return False
        # Like torch, the best stays: after a decay the metric must beat the old best again.
        self.decays += 1
        self.bad_epochs = 0
        return True

    _STATE = ("decays", "best", "bad_epochs", "last_epoch")

    def state_dict(self) -> dict:
        """Plain numbers and None: safe for json and for torch.load(weights_only=True)."""
        return {"decays": self.decays, "best": self.best, "bad_epochs": self.bad_epochs,
                "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        _check(isinstance(state, dict) and set(state) == set(self._STATE),
               f"LR schedule state must have exactly the keys {list(self._STATE)}, got "
               f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        for name in ("decays", "bad_epochs"):
            _check(_is_int(state[name]) and state[name] >= 0,
                   f"LR schedule state: {name} must be an int >= 0, got {state[name]!r}")
        _check(state["best"] is None or _finite(state["best"]),
               f"LR schedule state: best must be a finite number or None, got {state['best']!r}")
        last = state["last_epoch"]
        _check(last is None or (_is_int(last) and last >= 0),
               f"LR schedule state: last_epoch must be an int >= 0 or None, got {last!r}")
        self.decays, self.bad_epochs, self.last_epoch = state["decays"], state["bad_epochs"], last
        self.best = None if state["best"] is None else float(state["best"])
