"""Epoch plans: the even split, the replay of what was handed out, and re-planning what is left."""

import numpy as np
import pytest

from tasks.data.plan import EpochPlan, consumed, expand, plan_epoch, replan, to_intervals, yield_order

ORDER = {"seed": 3, "epoch": 2, "shuffle": True, "buffer": 8}


def _positions(plan):
    return sorted(int(p) for part in plan.parts for p in expand(part))


def test_intervals_round_trip():
    positions = np.array([0, 1, 2, 5, 6, 9])
    assert to_intervals(positions) == ((0, 3), (5, 7), (9, 10))
    assert expand(to_intervals(positions)).tolist() == positions.tolist()


@pytest.mark.parametrize("world, workers", [(1, 1), (3, 2), (4, 3)])
def test_padded_plan_gives_every_rank_the_same_share(world, workers):
    plan = plan_epoch(23, world, workers, "pad")
    shares = {plan.rank_samples(r) for r in range(world)}
    assert len(shares) == 1
    assert plan.padding == shares.pop() * world - 23
    assert sorted(set(p % 23 for p in _positions(plan))) == list(range(23))


def test_plan_survives_a_checkpoint_round_trip():
    plan = replan(plan_epoch(50, 2, 2, "pad"), {0: 5, 3: 2}, 3, 1, **ORDER)
    assert EpochPlan.from_dict(plan.to_dict()) == plan


def test_consumed_is_the_prefix_each_part_handed_out():
    plan = plan_epoch(40, 2, 2, "pad")
    taken = {0: 3, 1: 0, 2: 7, 3: 10}
    done = consumed(plan, taken, **ORDER)
    expected = sorted(int(p) for part, n in taken.items() for p in yield_order(plan, part, **ORDER)[:n])
    assert done.tolist() == expected and len(done) == 20


@pytest.mark.parametrize("world, workers", [(1, 1), (3, 2), (5, 1)])
def test_replan_covers_exactly_what_is_left_with_explicit_padding(world, workers):
    plan = plan_epoch(37, 2, 1, "pad")  # 37 → 38: one padding repeat
    taken = {0: 6, 1: 11}
    new = replan(plan, taken, world, workers, **ORDER)
    done = set(consumed(plan, taken, **ORDER).tolist())
    left = [p for p in _positions(plan) if p not in done]
    real = [p for p in _positions(new) if p < 2 * 37 and p in set(left)]
    assert sorted(real) == left  # nothing of what was left is lost or repeated
    assert {new.rank_samples(r) for r in range(world)} == {-(-len(left) // world)}
    assert new.padding - plan.padding == new.rank_samples(0) * world - len(left)
    assert new.generation == 1


def test_replanning_an_empty_remainder_plans_nothing():
    plan = plan_epoch(10, 2, 1, "drop")
    new = replan(plan, {0: 5, 1: 5}, 3, 1, **ORDER)
    assert [new.rank_samples(r) for r in range(3)] == [0, 0, 0]
