"""Windows: inside one segment, overlapping when stride < T, the tail covered by a window
shifted back, short segments rejected, every frame in a window or a reject."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import BadInput
from tasks.rfpose.sync import SyncResult
from tasks.rfpose.windows import plan_windows, reasons, unaccounted, window_session


def test_stride_t_tiles_and_the_tail_is_covered_by_a_shifted_window():
    windows, remainder = plan_windows([(0, 250)], T=100, stride=100)
    assert windows == [(0, 100), (100, 200), (150, 250)] and remainder == []


def test_an_exact_fit_adds_no_extra_window():
    assert plan_windows([(10, 310)], T=100) == ([(10, 110), (110, 210), (210, 310)], [])


def test_stride_below_t_overlaps():
    windows, remainder = plan_windows([(0, 230)], T=100, stride=50)
    assert windows == [(0, 100), (50, 150), (100, 200), (130, 230)] and remainder == []
    hits = np.zeros(230, int)
    for first, stop in windows:
        hits[first:stop] += 1
    assert hits.min() == 1 and hits.max() == 3


def test_windows_never_span_a_gap_and_short_segments_are_remainder():
    segs = [(0, 150), (150, 180), (185, 300), (300, 399)]  # a gap at 150, rejects 180-184, a gap at 300
    windows, remainder = plan_windows(segs, T=100, stride=40)
    for first, stop in windows:
        assert stop - first == 100
        assert sum(a <= first and stop <= b for a, b in segs) == 1
    assert windows == [(0, 100), (40, 140), (50, 150), (185, 285), (200, 300)]
    assert remainder == list(range(150, 180)) + list(range(300, 399))


@pytest.mark.parametrize("T, stride", [(100, 0), (100, 101), (0, None)])
def test_bad_stride_is_bad_input(T, stride):
    with pytest.raises(BadInput, match="1 ≤ stride ≤ T"):
        plan_windows([(0, 10)], T=T, stride=stride)


def test_window_session_accounts_for_every_frame():
    sync = SyncResult(session="s", report={}, rgb_index=np.full(60, -1), label_index=np.full(60, -1),
                      rejects=[{"session": "s", "frame": 25, "reason": "non-monotonic"}],
                      segments=[(0, 25), (26, 40), (40, 60)], t0=0.0)
    windows, rejects = window_session(sync, T=20, stride=10)
    assert windows == [(0, 20), (5, 25), (40, 60)]
    assert [r["frame"] for r in rejects] == list(range(25, 40))
    assert rejects[0] == {"session": "s", "frame": 25, "reason": "non-monotonic"}
    assert reasons(rejects) == {"non-monotonic": 1, "window-remainder": 14}
    assert unaccounted(60, windows, rejects) == []
    assert unaccounted(61, windows, rejects) == [60]                     # a frame nowhere
    assert unaccounted(60, windows, rejects + [rejects[0]]) == [25]      # rejected twice
    assert unaccounted(60, windows + [(20, 30)], rejects) == [25, 26, 27, 28, 29]  # windowed and rejected
