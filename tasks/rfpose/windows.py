"""Cut a session's synchronized RF frames into T-frame windows (RF-Pose: T = 100, 3.3 s at 30 fps).

    windows, rejects = window_session(synchronize(session), T=100, stride=50)

A window lies inside one segment (``SyncResult.segments``), so it never spans a gap or a
rejected frame. Windows start every ``stride`` frames (1 ≤ stride ≤ T; below T they overlap);
when the last one stops short of the segment's end, one more window ending exactly at the end is
shifted back over the tail, so a segment of at least T frames loses nothing. A segment shorter
than T cannot hold a window: its frames are rejected as ``window-remainder``. Every RF frame
ends up in a window or in the rejects, never both (``unaccounted`` checks it).
"""

from __future__ import annotations

from collections import Counter

from tasks.errors import BadInput
from tasks.rfpose.sync import SyncResult

REMAINDER = "window-remainder"


def plan_windows(segments: list[tuple[int, int]], T: int = 100, stride: int | None = None
                 ) -> tuple[list[tuple[int, int]], list[int]]:
    """→ (windows as half-open (first, stop) frame ranges, frames no window can hold)."""
    stride = T if stride is None else stride
    if T < 1 or not 1 <= stride <= T:
        raise BadInput(f"windows need T ≥ 1 and 1 ≤ stride ≤ T, got T={T}, stride={stride}")
    windows: list[tuple[int, int]] = []
    remainder: list[int] = []
    for first, stop in segments:
        if stop - first < T:
            remainder.extend(range(first, stop))
            continue
        starts = list(range(first, stop - T + 1, stride))
        if starts[-1] + T < stop:
            starts.append(stop - T)  # the tail, covered by a window shifted back
        windows.extend((s, s + T) for s in starts)
    return windows, remainder


def window_session(sync: SyncResult, T: int = 100, stride: int | None = None
                   ) -> tuple[list[tuple[int, int]], list[dict]]:
    """→ (windows, every rejected RF frame as ``{"session", "frame", "reason"}``, by frame)."""
    windows, remainder = plan_windows(sync.segments, T, stride)
    rejects = sync.rejects + [{"session": sync.session, "frame": i, "reason": REMAINDER} for i in remainder]
    return windows, sorted(rejects, key=lambda r: r["frame"])


def reasons(rejects: list[dict]) -> dict[str, int]:
    """The report's ``"rejected"`` counts."""
    return dict(Counter(r["reason"] for r in rejects))


def unaccounted(n_frames: int, windows: list[tuple[int, int]], rejects: list[dict]) -> list[int]:
    """Frames in no window and no reject, or in both: empty when the books balance."""
    covered = [False] * n_frames
    for first, stop in windows:
        covered[first:stop] = [True] * (stop - first)
    rejected = [r["frame"] for r in rejects]
    both = {i for i in rejected if covered[i]}
    missing = set(range(n_frames)) - {i for i in range(n_frames) if covered[i]} - set(rejected)
    return sorted(both | missing | {i for i, c in Counter(rejected).items() if c > 1})
