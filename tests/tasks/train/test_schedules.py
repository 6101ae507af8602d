"""LR schedules and progressive-resizing phases: hand-computed values, torch's schedulers as
references, plateau decays, resume, and fast.ai's DAWNBench 16-machine ImageNet table."""

import json
import math

import pytest
import torch

from tasks.train.schedules import LRSchedule, Phase, Schedule, phase_at, scale_phases


def _factors(schedule, total, ts):
    run = LRSchedule(schedule, total)
    return [run.factor(t) for t in ts]


def _sgd(lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


# ------------------------------------------------------------------------------------------
# Each kind at chosen t, by hand


def test_constant():
    assert _factors(Schedule(), 10, [0, 3.7, 9.99, 10]) == [1.0, 1.0, 1.0, 1.0]


def test_step():
    s = Schedule(kind="step", step_size=30, gamma=0.1)
    # floor(t / 30): 0, 0, 1, 2  →  0.1**0, 0.1**0, 0.1**1, 0.1**2
    assert _factors(s, 90, [0, 29.99, 30, 65]) == pytest.approx([1, 1, 0.1, 0.01], rel=1e-12)


def test_multistep():
    s = Schedule(kind="multistep", milestones=(30, 60, 80), gamma=0.2)
    # milestones <= t: 0, 1, 2, 3  →  1, 0.2, 0.04, 0.008
    assert _factors(s, 90, [29.5, 30, 60.5, 85]) == pytest.approx([1, 0.2, 0.04, 0.008], rel=1e-12)


def test_cosine():
    s = Schedule(kind="cosine", min_factor=0.1)
    # 0.1 + 0.9 * (1 + cos(pi * t / 10)) / 2
    #   t=0: 1;  t=2.5: 0.1 + 0.9 * (1 + 0.70710678) / 2 = 0.86819805;  t=5: 0.1 + 0.45 = 0.55
    #   t=10: 0.1;  t=12 (past the end): stays 0.1
    assert _factors(s, 10, [0, 2.5, 5, 10, 12]) == pytest.approx(
        [1, 0.86819805, 0.55, 0.1, 0.1], abs=1e-8)


def test_cosine_starts_after_warmup():
    s = Schedule(kind="cosine", warmup_epochs=2)
    # t=1: warmup (0 + 1 * 1/2) * cosine at its start (1) = 0.5
    # t=4: cosine over [2, 10]: pct = 2/8 → (1 + cos(pi/4)) / 2 = 0.85355339
    # t=6: pct = 4/8 → 0.5
    assert _factors(s, 10, [1, 2, 4, 6, 10]) == pytest.approx(
        [0.5, 1, 0.85355339, 0.5, 0], abs=1e-8)


def test_onecycle_by_hand():
    s = Schedule(kind="onecycle", pct_start=0.3, div_factor=25, final_div_factor=1e4)
    # starts at 1/25 = 0.04; peak 1 at 0.3 * 10 = 3; ends at 0.04 / 1e4 = 4e-6 at 10.
    # t=1.5: halfway up: 1 + (0.04 - 1) / 2 * (cos(pi/2) + 1) = 1 - 0.48 = 0.52
    # t=6.5: halfway down ((6.5 - 3) / 7 = 0.5): 4e-6 + (1 - 4e-6) / 2 = 0.500002
    assert _factors(s, 10, [0, 1.5, 3, 6.5, 10]) == pytest.approx(
        [0.04, 0.52, 1, 0.500002, 4e-6], rel=1e-9)


def test_piecewise_linear_with_a_jump():
    s = Schedule(kind="piecewise", knots=((0, 1.0), (4, 2.0), (4, 0.5), (10, 0.1)))
    # t=2: 1 + (2 - 1) * 2/4 = 1.5;  t=3.999: 1 + 3.999/4 = 1.99975;  t=4: the jump, 0.5
    # t=7: 0.5 + (0.1 - 0.5) * 3/6 = 0.3;  t=10 and after: 0.1
    assert _factors(s, 12, [0, 2, 3.999, 4, 7, 10, 11.5]) == pytest.approx(
        [1, 1.5, 1.99975, 0.5, 0.3, 0.1, 0.1], rel=1e-12)


# ------------------------------------------------------------------------------------------
# Warmup


def test_warmup_multiplies_the_schedule():
    s = Schedule(kind="step", step_size=2, gamma=0.5, warmup_epochs=5, warmup_start=0.1)
    # t=1: (0.1 + 0.9 * 1/5) * 0.5**0 = 0.28;  t=3: (0.1 + 0.9 * 3/5) * 0.5**1 = 0.64 * 0.5 = 0.32
    # t=5: warmup over, 0.5**2 = 0.25
    assert _factors(s, 10, [0, 1, 3, 5]) == pytest.approx([0.1, 0.28, 0.32, 0.25], rel=1e-12)


def test_goyal_warmup_to_a_linearly_scaled_lr():
    # Goyal et al. 2017: batch 8192 → LR 0.1 * 8192/256 = 3.2, reached linearly from 0.1 over 5
    # epochs. As a factor of 3.2: starts at 1/32. t=2.5: 1/32 + (31/32) * 0.5 = 0.515625.
    s = Schedule(kind="multistep", milestones=(30, 60, 80), warmup_epochs=5, warmup_start=1 / 32)
    f = _factors(s, 90, [0, 2.5, 5, 30])
    assert [3.2 * x for x in f] == pytest.approx([0.1, 1.65, 3.2, 0.32], rel=1e-12)


def test_warmup_scales_plateau_decays_too():
    run = LRSchedule(Schedule(kind="plateau", patience=0, warmup_epochs=4), 10)
    run.end_epoch(0, {"val/top1": 0.5})
    assert run.end_epoch(1, {"val/top1": 0.4})  # no improvement, patience 0: decay
    assert run.factor(2) == pytest.approx(0.5 * 0.1)  # warmup 2/4, times gamma**1


# ------------------------------------------------------------------------------------------
# Against torch's schedulers


def test_onecycle_matches_torch_onecycle_lr():
    epochs, steps_per_epoch, max_lr = 8, 500, 0.4
    kw = dict(pct_start=0.25, div_factor=20.0, final_div_factor=1e3)
    opt = _sgd(max_lr)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
        anneal_strategy="cos", cycle_momentum=False, **kw)
    torch_lr = []
    for _ in range(epochs * steps_per_epoch):
        torch_lr.append(opt.param_groups[0]["lr"])  # the LR this step uses
        opt.step()
        ref.step()
    run = LRSchedule(Schedule(kind="onecycle", **kw), epochs)

    def ours(step):
        return max_lr * run.factor(step / steps_per_epoch)

    total, up = epochs * steps_per_epoch, 0.25 * epochs * steps_per_epoch  # 4000, 1000 steps
    # Same formulas, but torch ends each phase one step early (at step up - 1 and total - 1), so
    # at the same step the two differ by at most one step of the steeper (rising) slope:
    # max_lr * (1 - 1/20) * (pi/2) / (up - 1) ≈ 6e-4.
    tol = max_lr * (1 - 1 / kw["div_factor"]) * (math.pi / 2) / (up - 1)
    for step in (0, 1, 250, 500, 999, 1000, 1700, 2500, 3300, 3999):
        assert ours(step) == pytest.approx(torch_lr[step], abs=tol), step
    # Exactly: the start, the peak, the floor, and the falling phase one step shifted.
    assert ours(0) == pytest.approx(torch_lr[0], rel=1e-12)
    assert max_lr * run.factor(epochs * 0.25) == pytest.approx(torch_lr[int(up) - 1], rel=1e-12)
    assert max_lr * run.factor(epochs) == pytest.approx(torch_lr[total - 1], rel=1e-9)
    for step in (1200, 2000, 3000, 3900):
        assert ours(step + 1) == pytest.approx(torch_lr[step], rel=1e-9), step


def test_cosine_matches_torch_cosine_annealing_lr():
    epochs, base = 12, 0.4
    opt = _sgd(base)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=base * 0.05)
    run = LRSchedule(Schedule(kind="cosine", min_factor=0.05), epochs)
    for epoch in range(epochs + 1):
        assert base * run.factor(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), epoch
        opt.step()
        ref.step()


@pytest.mark.parametrize("mode,threshold,patience,metrics", [
    ("max", 1e-4, 2, [0.1, 0.3, 0.3, 0.31, 0.2, 0.2, 0.25, 0.5, 0.5, 0.4, 0.49, 0.5, 0.5, 0.4,
                      0.45, 0.45, 0.3, 0.3, 0.3, 0.3]),
    ("min", 0.05, 1, [2.0, 1.5, 1.45, 1.44, 1.2, 1.3, 1.0, 0.99, 0.98, 0.9, 0.95, 0.94, 0.7,
                      0.7, 0.7, 0.7, 0.7, 0.7]),
])
def test_plateau_matches_torch_reduce_lr_on_plateau(mode, threshold, patience, metrics):
    base = 0.01
    opt = _sgd(base)
    # min_lr stops torch at 3 decays like max_decays=3 (0.01 * 0.1**3 = 1e-5; torch's eps of
    # 1e-8 never blocks a decay at these sizes).
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=0.1, patience=patience, threshold=threshold,
        threshold_mode="rel", min_lr=base * 1e-3)
    run = LRSchedule(Schedule(kind="plateau", monitor="m", mode=mode, patience=patience,
                              threshold=threshold), len(metrics))
    decays = 0
    for epoch, value in enumerate(metrics):
        decays += run.end_epoch(epoch, {"m": value})
        ref.step(value)
        assert base * run.factor(epoch + 1) == pytest.approx(opt.param_groups[0]["lr"]), epoch
    assert decays >= 2  # the sequences do exercise the decays


# ------------------------------------------------------------------------------------------
# Plateau


def _plateau(**kw):
    return LRSchedule(Schedule(kind="plateau", **kw), 100)


def _fired(run, values, key="val/top1"):
    return [run.end_epoch(epoch, {key: v}) for epoch, v in enumerate(values)]


def test_plateau_fires_after_patience_epochs_without_improvement():
    run = _plateau(patience=2, threshold=0.0)
    # best 0.5, better 0.6, then 3 epochs not above 0.6: the first 2 are tolerated, the 3rd decays
    assert _fired(run, [0.5, 0.6, 0.6, 0.59, 0.58]) == [False, False, False, False, True]
    assert run.factor(5) == pytest.approx(0.1)
    # the count restarts after a decay: 2 more tolerated, then the 2nd decay
    assert [run.end_epoch(e, {"val/top1": 0.55}) for e in (5, 6, 7)] == [False, False, True]
    assert run.factor(8) == pytest.approx(0.01)


def test_plateau_improvement_resets_the_count():
    run = _plateau(patience=2, threshold=0.0)
    # bad, bad, better (resets), bad, bad: never 3 in a row
    assert not any(_fired(run, [0.5, 0.5, 0.5, 0.7, 0.6, 0.6, 0.71, 0.7, 0.7]))
    assert run.factor(9) == 1.0


def test_plateau_decays_at_most_max_decays_times():
    run = _plateau(patience=1)
    # getting worse every epoch: a decay every 2nd bad epoch (epochs 2, 4, 6), then no more
    fired = _fired(run, [1.0 - 0.01 * e for e in range(30)])
    assert [e for e, f in enumerate(fired) if f] == [2, 4, 6]
    assert run.factor(30) == pytest.approx(1e-3)  # 0.1**3


def test_plateau_max_decays_is_configurable():
    run = _plateau(patience=0, max_decays=1, gamma=0.5)
    assert _fired(run, [3, 2, 1, 0]) == [False, True, False, False]
    assert run.factor(4) == 0.5


def test_plateau_min_mode():
    run = _plateau(monitor="val/loss", mode="min", patience=1, threshold=0.0)
    # best 1.0, better 0.9, bad 0.95, bad 0.91 (not below 0.9) → decay, better 0.8
    assert _fired(run, [1.0, 0.9, 0.95, 0.91, 0.8], key="val/loss") == [
        False, False, False, True, False]
    assert run.factor(5) == pytest.approx(0.1)


def test_plateau_relative_threshold():
    run = _plateau(patience=0, threshold=0.01)
    # best 0.5; 0.504 is not above 0.5 * 1.01 = 0.505 → decay; 0.5051 is → new best;
    # 0.51 is not above 0.5051 * 1.01 = 0.510151 → decay
    assert _fired(run, [0.5, 0.504, 0.5051, 0.51]) == [False, True, False, True]
    assert run.factor(4) == pytest.approx(0.01)


def test_plateau_nan_and_inf_never_improve():
    run = _plateau(monitor="val/loss", mode="min", patience=0)
    # inf first: not a best (would be beaten by anything, and is not JSON) → bad → decay
    assert _fired(run, [math.inf, 1.0, math.nan], key="val/loss") == [True, False, True]
    assert run.state_dict()["best"] == 1.0
    json.dumps(run.state_dict(), allow_nan=False)


def test_plateau_missing_metric_names_it():
    run = _plateau(monitor="val/top1")
    with pytest.raises(KeyError, match="val/top1"):
        run.end_epoch(0, {"val/top5": 0.9})


def test_plateau_epochs_end_once_in_order():
    run = _plateau()
    run.end_epoch(3, {"val/top1": 0.1})
    with pytest.raises(ValueError, match="end_epoch"):
        run.end_epoch(3, {"val/top1": 0.2})


def test_other_kinds_ignore_end_epoch():
    run = LRSchedule(Schedule(kind="cosine"), 10)
    assert run.end_epoch(0, {}) is False
    assert run.factor(5) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------
# Resume


_METRICS = [0.1, 0.2, 0.2, 0.2, 0.19, 0.25, 0.24, 0.24, 0.23, 0.3, 0.3, 0.29, 0.28, 0.28, 0.27,
            0.27, 0.26, 0.26, 0.25, 0.25]
_PLATEAU = Schedule(kind="plateau", patience=2, warmup_epochs=1, warmup_start=0.5)


def _trace(run, start, stop):
    """(decayed?, factor mid-epoch, factor at epoch end) for epochs start..stop-1."""
    return [(run.end_epoch(e, {"val/top1": _METRICS[e]}), run.factor(e + 0.5), run.factor(e + 1))
            for e in range(start, stop)]


@pytest.mark.parametrize("k", [0, 3, 5, 8, 12])
def test_resume_through_json_gives_the_same_future(k):
    whole = _trace(LRSchedule(_PLATEAU, len(_METRICS)), 0, len(_METRICS))
    assert sum(d for d, _, _ in whole) == 3  # the sequence does decay, and to the cap

    first = LRSchedule(_PLATEAU, len(_METRICS))
    head = _trace(first, 0, k)
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))  # no inf/nan inside
    resumed = LRSchedule(_PLATEAU, len(_METRICS))
    resumed.load_state_dict(state)
    assert resumed.factor(k) == first.factor(k)
    assert head + _trace(resumed, k, len(_METRICS)) == whole


def test_resume_through_a_weights_only_torch_checkpoint(tmp_path):
    first = LRSchedule(_PLATEAU, len(_METRICS))
    _trace(first, 0, 10)
    torch.save({"lr_schedule": first.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["lr_schedule"]
    resumed = LRSchedule(_PLATEAU, len(_METRICS))
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    assert _trace(resumed, 10, 20) == _trace(first, 10, 20)


def test_load_state_dict_rejects_a_foreign_state():
    run = _plateau()
    with pytest.raises(ValueError, match="keys"):
        run.load_state_dict({"decays": 1})
    with pytest.raises(ValueError, match="decays"):
        run.load_state_dict({"decays": -1, "best": None, "bad_epochs": 0, "last_epoch": None})


# ------------------------------------------------------------------------------------------
# Scaling a recipe to a shorter run


def test_schedule_scaled():
    s = Schedule(kind="multistep", warmup_epochs=5, milestones=(30, 60), step_size=30, patience=4,
                 knots=((0, 1.0), (10, 0.5)))
    half = s.scaled(0.5)
    assert (half.warmup_epochs, half.milestones, half.step_size, half.patience, half.knots) == (
        2.5, (15, 30), 15, 4, ((0, 1.0), (5, 0.5)))
    assert half.kind == "multistep" and half.gamma == s.gamma


def test_scaled_epoch_boundaries_survive_float_error():
    # 50 * 1.1 = 55.00000000000001: the step (and the jump) are still due at t = 55
    s = Schedule(kind="step", step_size=50).scaled(1.1)
    assert s.step_size > 55
    assert LRSchedule(s, 110).factor(55) == pytest.approx(0.1)
    jump = Schedule(kind="piecewise", knots=((0, 1.0), (50, 1.0), (50, 0.1))).scaled(1.1)
    assert jump.knots[1][0] > 55
    assert LRSchedule(jump, 110).factor(55) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------
# Phases


# fast.ai's DAWNBench 16-machine ImageNet run (Howard et al. 2018). A Phase does not inherit
# from the one before (None means the run's value), so the phases at 6 and 19, which only grow
# the batch on the same loader (fast.ai's keep_dl), repeat their size, variant and min_scale.
DAWN_PHASES = (
    Phase(0, image_size=128, batch_size=8192, variant="short160"),
    Phase(6, image_size=128, batch_size=16384, variant="short160"),
    Phase(16, image_size=224, batch_size=8192, variant="short352", min_scale=0.087),
    Phase(19, image_size=224, batch_size=24576, variant="short352", min_scale=0.087),
    Phase(37, image_size=288, batch_size=16384, min_scale=0.5, rect_val=True),
)
# LR per 256 images: 0.05875 rising to 0.1175 over epochs 0-6, then 0.05875 until 19, and a
# tenth of that from 19, 31 and 38.
DAWN_LR = Schedule(kind="piecewise", knots=(
    (0, 0.05875), (6, 0.1175), (6, 0.05875), (19, 0.05875), (19, 0.005875),
    (31, 0.005875), (31, 0.0005875), (38, 0.0005875), (38, 0.00005875)))


def test_phase_at_switches_at_the_right_epochs():
    got = {e: phase_at(DAWN_PHASES, e) for e in range(40)}
    assert [(e, got[e].image_size, got[e].batch_size, got[e].variant)
            for e in (0, 5, 6, 15, 16, 18, 19, 36, 37, 39)] == [
        (0, 128, 8192, "short160"), (5, 128, 8192, "short160"), (6, 128, 16384, "short160"),
        (15, 128, 16384, "short160"), (16, 224, 8192, "short352"), (18, 224, 8192, "short352"),
        (19, 224, 24576, "short352"), (36, 224, 24576, "short352"), (37, 288, 16384, None),
        (39, 288, 16384, None)]
    assert got[16].min_scale == 0.087 and got[15].min_scale is None
    assert got[37].rect_val and got[37].min_scale == 0.5 and got[37].val_size is None
    assert not got[36].rect_val


def test_dawnbench_absolute_lrs():
    # factor × (global batch / 256), fast.ai's table:
    #   0: 0.05875 × 8192/256 (32) = 1.88     6: 0.05875 × 64 = 3.76     16: 0.05875 × 32 = 1.88
    #  19: 0.005875 × 96 = 0.564   31: 0.0005875 × 96 = 0.0564   37: 0.0005875 × 64 = 0.0376
    #  38: 0.00005875 × 64 = 0.00376
    run = LRSchedule(DAWN_LR, 40)

    def lr(t):
        return run.factor(t) * phase_at(DAWN_PHASES, int(t)).batch_size / 256

    table = {0: 1.88, 6: 3.76, 16: 1.88, 19: 0.564, 31: 0.0564, 37: 0.0376, 38: 0.00376}
    assert {e: lr(e) for e in table} == pytest.approx(table, rel=1e-9)
    # mid-ramp: (0.05875 + 0.1175) / 2 × 32 = 2.82; just before the jump at 6: nearly 0.1175 × 32
    assert lr(3) == pytest.approx(2.82, rel=1e-9)
    assert lr(5.999) == pytest.approx(3.76, rel=1e-3)


def test_phase_at_rejects_bad_phase_lists():
    with pytest.raises(ValueError, match="no phases"):
        phase_at((), 0)
    with pytest.raises(ValueError, match="epoch 0"):
        phase_at((Phase(1, image_size=128),), 3)
    with pytest.raises(ValueError, match="increasing"):
        phase_at((Phase(0), Phase(10), Phase(5)), 3)
    with pytest.raises(ValueError, match="increasing"):
        phase_at((Phase(0), Phase(5), Phase(5)), 3)
    with pytest.raises(ValueError, match="epoch"):
        phase_at((Phase(0),), -1)


def test_scale_phases_rounds_half_up():
    # 0, 6, 16, 19, 37 × 0.5 = 0, 3, 8, 9.5, 18.5 → 0, 3, 8, 10, 19
    assert [p.start_epoch for p in scale_phases(DAWN_PHASES, 0.5)] == [0, 3, 8, 10, 19]
    # × 2 = 0, 12, 32, 38, 74
    doubled = scale_phases(DAWN_PHASES, 2)
    assert [p.start_epoch for p in doubled] == [0, 12, 32, 38, 74]
    assert [p.image_size for p in doubled] == [128, 128, 224, 224, 288]


def test_scale_phases_collapses_duplicates_later_wins():
    # × 0.1 = 0, 0.6, 1.6, 1.9, 3.7 → 0, 1, 2, 2, 4: the 24576 batch phase replaces the 8192 one
    short = scale_phases(DAWN_PHASES, 0.1)
    assert [(p.start_epoch, p.image_size, p.batch_size) for p in short] == [
        (0, 128, 8192), (1, 128, 16384), (2, 224, 24576), (4, 288, 16384)]
    assert phase_at(short, 3).batch_size == 24576
    with pytest.raises(ValueError, match="factor"):
        scale_phases(DAWN_PHASES, 0)


# ------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("kw,match", [
    (dict(kind="linear"), "kind"),
    (dict(gamma=0), "gamma"),
    (dict(gamma=-0.1), "gamma"),
    (dict(kind="plateau", gamma=1.0), "gamma"),
    (dict(patience=-1), "patience"),
    (dict(patience=1.5), "patience"),
    (dict(max_decays=-1), "max_decays"),
    (dict(threshold=-1e-4), "threshold"),
    (dict(mode="up"), "mode"),
    (dict(monitor=""), "monitor"),
    (dict(warmup_epochs=-1), "warmup_epochs"),
    (dict(warmup_start=1.5), "warmup_start"),
    (dict(kind="onecycle", warmup_epochs=1), "warmup_epochs"),
    (dict(kind="piecewise", knots=((0, 1),), warmup_epochs=1), "warmup_epochs"),
    (dict(step_size=0), "step_size"),
    (dict(kind="multistep"), "milestones"),
    (dict(kind="multistep", milestones=(60, 30)), "milestones"),
    (dict(min_factor=1.5), "min_factor"),
    (dict(pct_start=0), "pct_start"),
    (dict(pct_start=1), "pct_start"),
    (dict(div_factor=0), "div_factor"),
    (dict(final_div_factor=-1), "final_div_factor"),
    (dict(kind="piecewise"), "knots"),
    (dict(kind="piecewise", knots=((0, 1), (10, 0.5), (5, 0.1))), "sorted"),
    (dict(kind="piecewise", knots=((2, 1), (10, 0.5))), "epoch 0"),
    (dict(kind="piecewise", knots=((0, 1), (5, 1), (5, 0.5), (5, 0.1))), "two knots"),
    (dict(kind="piecewise", knots=((0, 1), (5,))), "pairs"),
    (dict(kind="piecewise", knots=((0, -1),)), ">= 0"),
    (dict(step_size=float("nan")), "step_size"),
])
def test_schedule_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kw)


def test_lists_from_a_config_become_tuples():
    s = Schedule(kind="piecewise", knots=[[0, 1.0], [5, 0.5]], milestones=[1, 2])
    assert s.knots == ((0, 1.0), (5, 0.5)) and s.milestones == (1, 2)
    hash(s)


def test_runtime_validation():
    with pytest.raises(ValueError, match="total_epochs"):
        LRSchedule(Schedule(), 0)
    with pytest.raises(ValueError, match="anneal"):
        LRSchedule(Schedule(kind="cosine", warmup_epochs=5), 5)
    with pytest.raises(ValueError, match="longer than the run"):
        LRSchedule(Schedule(warmup_epochs=6), 5)
    with pytest.raises(ValueError, match="t must be"):
        LRSchedule(Schedule(), 5).factor(-0.1)
    with pytest.raises(ValueError, match="scale factor"):
        Schedule().scaled(0)


@pytest.mark.parametrize("kw,match", [
    (dict(start_epoch=-1), "start_epoch"),
    (dict(image_size=0), "image_size"),
    (dict(batch_size=256.0), "batch_size"),
    (dict(val_size=-224), "val_size"),
    (dict(min_scale=0), "min_scale"),
    (dict(min_scale=1.5), "min_scale"),
    (dict(variant=""), "variant"),
])
def test_phase_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        Phase(**{"start_epoch": 0, **kw})
