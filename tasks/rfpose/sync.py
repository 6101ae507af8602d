"""Put a session's camera frames on the radio's clock and say which RF frame each one labels.

    result = synchronize(read_session(path))
    result.report      # {"offset_s", "drift_ppm", "labelled", "unlabelled", "rejected", "residual_ms", …}
    result.label_index # (N,) the camera frame whose people label RF frame i, or -1
    result.segments    # [(first, stop)] runs of RF frames with no gap and no reject inside

Clock model: ``t_camera = t_radio + offset_s + drift_ppm·1e-6·(t_radio − t0)``, ``t0`` the first
kept RF timestamp; so ``offset_s`` is camera minus radio at the start of the recording.
session.json's ``clock_offset_s`` is used as is (drift 0). Otherwise both are estimated from
motion energy (research note rfpose §5.3): the mean absolute difference of consecutive frames,
RF and camera, each resampled onto a common grid and normalised; the coarse offset is the peak
of their normalised cross-correlation within ±``max_offset_s``, refined between grid steps; the
drift is a line through the offsets of ~10 s sub-windows, then both are polished together by a
2-parameter search on the correlation. A peak below ``min_corr`` is an error: a wrong offset
would label every frame wrongly.

Timestamps are cleaned, never reordered: a timestamp equal to its predecessor is a
``duplicate-timestamp`` (the first is kept); frames outside the longest increasing run are
``non-monotonic``; a step over 1.5 periods (plus one per rejected frame in between) is a gap
where the recorder dropped frames. Each camera frame then labels the nearest
RF frame within ``tolerance`` (default half an RF period), one to one, the closest pair winning.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.optimize import minimize
from scipy.signal import correlate, correlation_lags

from tasks.errors import BadInput
from tasks.rfpose.sessions import Session, fail, in_order

GAP = 1.5  # a step over this many periods means frames were dropped
MIN_CORR = 0.2
DRIFT_MIN_SPAN_S = 20.0  # shorter overlaps fit no drift
SUBWINDOW_S = 10.0
MOTION_SIZE = 64  # camera frames shrink to at most this many pixels a side for motion energy


class OffsetError(BadInput):
    """The motion signals cannot fix the clock offset."""


@dataclass(frozen=True, eq=False)
class SyncResult:
    """``rgb_index``: the camera frame matched to each RF frame (-1: none, or rejected);
    ``label_index``: the same where that camera frame has teacher labels, else -1;
    ``rejects``: ``{"session", "frame", "reason"}`` per rejected RF frame;
    ``segments``: half-open runs of kept RF frames that no gap or reject interrupts."""

    session: str
    report: dict
    rgb_index: np.ndarray
    label_index: np.ndarray
    rejects: list[dict]
    segments: list[tuple[int, int]]
    t0: float


def motion_energy(frames, chunk: int = 256) -> np.ndarray:
    """(N, ...) frames → (N,): ``[i]`` is mean |frame[i] − frame[i−1]|, ``[0]`` is NaN."""
    n = len(frames)
    out = np.full(n, np.nan)
    for start in range(1, n, chunk):
        block = np.asarray(frames[start - 1:start + chunk], dtype=np.float32)
        out[start:start + len(block) - 1] = np.abs(np.diff(block, axis=0)).reshape(len(block) - 1, -1).mean(axis=1)
    return out


def image_motion(paths: list[Path], width: int, height: int, size: int = MOTION_SIZE) -> np.ndarray:
    """``motion_energy`` of the camera frames, read as small grayscale images."""
    scale = min(1.0, size / max(width, height))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    out = np.full(len(paths), np.nan)
    prev = None
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image.draft("L", small)  # JPEG: decode at 1/2…1/8 scale in the DCT domain
                frame = np.asarray(image.convert("L").resize(small, Image.Resampling.BILINEAR), np.float32)
        except (OSError, UnidentifiedImageError) as exc:
            raise OffsetError(f"{path.name}: not a readable image ({exc})") from None
        if prev is not None:
            out[i] = np.abs(frame - prev).mean()
        prev = frame
    return out


def clean_timestamps(t: np.ndarray, period: float) -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    """→ (keep mask (N,), {index: reason} for the others, kept indices that follow a gap)."""
    t = np.asarray(t, dtype=np.float64)
    dup = np.zeros(len(t), dtype=bool)
    dup[1:] = t[1:] == t[:-1]
    rest = np.flatnonzero(~dup)
    ordered = in_order(t[rest])
    keep = np.zeros(len(t), dtype=bool)
    keep[rest[ordered]] = True
    rejects = {int(i): "duplicate-timestamp" for i in np.flatnonzero(dup)}
    rejects |= {int(i): "non-monotonic" for i in rest[~ordered]}
    kept = np.flatnonzero(keep)
    # rejected frames between two kept ones fill their own slots: only time beyond those is a gap
    gaps = kept[1:][np.diff(t[kept]) > (GAP + np.diff(kept) - 1) * period]
    return keep, dict(sorted(rejects.items())), gaps


def segments(keep: np.ndarray, gaps: np.ndarray) -> list[tuple[int, int]]:
    """Half-open runs of consecutive kept indices, split at gaps."""
    kept = np.flatnonzero(keep)
    if not len(kept):
        return []
    breaks = np.flatnonzero((np.diff(kept) != 1) | np.isin(kept[1:], gaps)) + 1
    firsts, lasts = np.r_[0, breaks], np.r_[breaks, len(kept)] - 1
    return [(int(kept[a]), int(kept[b]) + 1) for a, b in zip(firsts, lasts)]


def to_radio_clock(t_camera: np.ndarray, offset_s: float, drift_ppm: float, t0: float) -> np.ndarray:
    """Inverse of the clock model in the module docstring."""
    return t0 + (np.asarray(t_camera) - offset_s - t0) / (1.0 + drift_ppm * 1e-6)


def match(rf_t: np.ndarray, rgb_t: np.ndarray, tolerance: float) -> np.ndarray:
    """(N,) index into ``rgb_t`` (already on the radio clock) per RF frame, or -1: each camera
    frame takes its nearest RF frame within ``tolerance``; where two want one, the closer wins."""
    rf_t, rgb_t = np.asarray(rf_t, np.float64), np.asarray(rgb_t, np.float64)
    out = np.full(len(rf_t), -1)
    if not len(rf_t) or not len(rgb_t):
        return out
    right = np.clip(np.searchsorted(rf_t, rgb_t), 0, len(rf_t) - 1)
    left = np.clip(right - 1, 0, len(rf_t) - 1)
    d_left, d_right = np.abs(rgb_t - rf_t[left]), np.abs(rf_t[right] - rgb_t)
    nearest = np.where(d_right < d_left, right, left)
    distance = np.minimum(d_left, d_right)
    close = np.flatnonzero(distance <= tolerance)
    close = close[np.argsort(distance[close], kind="stable")]
    taken, first = np.unique(nearest[close], return_index=True)  # first = the closest claim
    out[taken] = close[first]
    return out


def estimate_offset(rf_t, rf_motion, rgb_t, rgb_motion, max_offset_s: float = 5.0, grid_s: float = 0.01,
                    min_corr: float = MIN_CORR) -> tuple[float, float]:
    """→ (offset_s, drift_ppm) for the clock model, ``t0 = rf_t[0]``. ``motion[i]`` describes the
    interval (t[i−1], t[i]) as ``motion_energy`` makes it; NaN samples are skipped."""
    offset, drift, _ = estimate(rf_t, rf_motion, rgb_t, rgb_motion, max_offset_s, grid_s, min_corr)
    return offset, drift


def estimate(rf_t, rf_motion, rgb_t, rgb_motion, max_offset_s=5.0, grid_s=0.01, min_corr=MIN_CORR):
    """``estimate_offset`` plus the correlation it reached."""
    t0 = float(rf_t[0])
    radio, camera = samples(rf_t, rf_motion, "RF"), samples(rgb_t, rgb_motion, "camera")
    guess = 0.0 if camera[0][0] < radio[0][-1] and radio[0][0] < camera[0][-1] else camera[0][0] - radio[0][0]
    offset = coarse_offset(radio, camera, guess, max_offset_s, grid_s)
    at = to_radio_clock(camera[0], offset, 0.0, t0)
    overlap = camera[0][(at >= radio[0][0]) & (at <= radio[0][-1])]
    if len(overlap) and overlap[-1] - overlap[0] >= DRIFT_MIN_SPAN_S:
        offset, drift = fit_drift(radio, camera, offset, overlap, t0, grid_s, min_corr)
    else:
        offset, drift = scan(radio, camera, offset, 0.0, t0, 3 * grid_s)[0], 0.0
    r = score(radio, camera, offset, drift, t0)
    if r < min_corr:
        raise OffsetError(f"the motion signals barely correlate (peak r = {r:.2f} < {min_corr})")
    return float(offset), float(drift), float(r)


def samples(t, motion, what: str) -> tuple[np.ndarray, np.ndarray]:
    t, motion = np.asarray(t, np.float64), np.asarray(motion, np.float64)
    mid, value = (t[1:] + t[:-1]) / 2, motion[1:]
    ok = np.isfinite(value)
    if ok.sum() < 4 or np.ptp(value[ok]) == 0:
        raise OffsetError(f"no motion in the {what} stream to align by")
    return mid[ok], value[ok]


def on_grid(stream, step: float) -> tuple[float, np.ndarray]:
    t, x = stream
    grid = np.arange(t[0], t[-1], step)
    v = np.interp(grid, t, x)
    return float(grid[0]), (v - v.mean()) / (v.std() or 1.0)


def coarse_offset(radio, camera, guess: float, max_offset_s: float, step: float) -> float:
    """Peak of the Pearson correlation over lags (each over its own overlap), interpolated."""
    r0, b = on_grid(radio, step)
    c0, a = on_grid(camera, step)
    ones_a, ones_b = np.ones_like(a), np.ones_like(b)
    n = np.rint(correlate(ones_b, ones_a))
    sab, sa, sb = correlate(b, a), correlate(ones_b, a), correlate(b, ones_a)
    sa2, sb2 = correlate(ones_b, a * a), correlate(b * b, ones_a)
    lags = correlation_lags(len(b), len(a))  # camera sample k ↔ radio sample k + lag
    offsets = c0 - r0 - lags * step
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(sa2 - sa ** 2 / n, 0) * np.maximum(sb2 - sb ** 2 / n, 0)
        r = (sab - sa * sb / n) / np.sqrt(var)
    valid = (n >= 0.5 * min(len(a), len(b))) & (np.abs(offsets - guess) <= max_offset_s) & (var > 1e-9)
    if not valid.any():
        raise OffsetError(f"the streams do not overlap for any offset within ±{max_offset_s:g} s of {guess:g} s")
    r = np.where(valid, r, -np.inf)
    k = int(np.argmax(r))
    return float(offsets[k] - peak_shift(r, k) * step)


def peak_shift(values: np.ndarray, k: int) -> float:
    """Sub-sample position of a peak by a parabola through it and its neighbours."""
    if 0 < k < len(values) - 1 and np.isfinite(values[k - 1:k + 2]).all():
        lo, mid, hi = values[k - 1:k + 2]
        curvature = lo - 2 * mid + hi
        if curvature < 0:
            return float(0.5 * (lo - hi) / curvature)
    return 0.0


def score(radio, camera, offset: float, drift: float, t0: float, subset=slice(None)) -> float:
    """Pearson r of the camera motion and the RF motion interpolated at its radio times."""
    tc, xc = camera[0][subset], camera[1][subset]
    at = to_radio_clock(tc, offset, drift, t0)
    inside = (at >= radio[0][0]) & (at <= radio[0][-1])
    if inside.sum() < 4:
        return -1.0
    y, x = np.interp(at[inside], *radio), xc[inside]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return -1.0
    return float(np.corrcoef(x, y)[0, 1])


def scan(radio, camera, centre: float, drift: float, t0: float, half_width: float, subset=slice(None),
         steps: int = 61) -> tuple[float, float]:
    """Best offset within ``centre ± half_width`` for a fixed drift → (offset, r)."""
    offsets = centre + np.linspace(-half_width, half_width, steps)
    r = np.array([score(radio, camera, o, drift, t0, subset) for o in offsets])
    k = int(np.argmax(r))
    return float(offsets[k] + peak_shift(r, k) * (offsets[1] - offsets[0])), float(r[k])


def fit_drift(radio, camera, offset, overlap, t0, step, min_corr) -> tuple[float, float]:
    """Offsets of sub-windows → a line (offset at t0, drift), then a joint polish."""
    count = int(np.clip((overlap[-1] - overlap[0]) // SUBWINDOW_S, 2, 12))
    edges = np.linspace(overlap[0], overlap[-1], count + 1)
    centres, local = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        subset = (camera[0] >= lo) & (camera[0] <= hi)
        o, r = scan(radio, camera, offset, 0.0, t0, 3 * step, subset)
        if r >= min_corr:
            centres.append(float(np.mean(to_radio_clock(camera[0][subset], o, 0.0, t0))) - t0)
            local.append(o)
    drift = 0.0
    if len(local) >= 2:
        slope, offset = np.polyfit(centres, local, 1)
        drift = slope * 1e6
    start = np.array([offset * 1e3, drift])  # (ms, ppm): steps of similar effect
    best = minimize(lambda p: -score(radio, camera, p[0] / 1e3, p[1], t0), start, method="Nelder-Mead",
                    options={"initial_simplex": [start, start + [1.0, 0], start + [0, 20.0]],
                             "xatol": 1e-3, "fatol": 1e-7, "maxiter": 400})
    if -best.fun > score(radio, camera, offset, drift, t0):
        offset, drift = best.x[0] / 1e3, best.x[1]
    return float(offset), float(drift)


def contiguous(motion: np.ndarray, segs: list[tuple[int, int]]) -> np.ndarray:
    """Keep ``motion[i]`` only where frames i−1 and i sit in one segment."""
    valid = np.zeros(len(motion), dtype=bool)
    for first, stop in segs:
        valid[first + 1:stop] = True
    return np.where(valid, motion, np.nan)


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - np.nanmean(x)) / (np.nanstd(x) or 1.0)


def synchronize(session: Session, tolerance: float | None = None, max_offset_s: float = 5.0,
                min_corr: float = MIN_CORR) -> SyncResult:
    name, n = session.name, len(session.rf_t)
    rf_keep, rf_rejects, rf_gaps = clean_timestamps(session.rf_t, 1 / session.rf_fps)
    rgb_keep, rgb_rejects, rgb_gaps = clean_timestamps(session.rgb_t, 1 / session.rgb_fps)
    kept, rgb_kept = np.flatnonzero(rf_keep), np.flatnonzero(rgb_keep)
    if len(kept) < 2 or not len(rgb_kept):
        raise fail(name, "rf/timestamps.npy, rgb/timestamps.npy", "too few frames left after cleaning to sync")
    segs = segments(rf_keep, rf_gaps)
    t0 = float(session.rf_t[kept[0]])
    if session.clock_offset_s is not None:
        offset, drift, peak, source = session.clock_offset_s, 0.0, None, "given"
    else:
        if not session.rgb_paths:
            raise fail(name, "session.json", "no camera frames to estimate the clock offset from; set clock_offset_s")
        try:
            rf_motion = contiguous(zscore(motion_energy(session.horizontal)) + zscore(motion_energy(session.vertical)),
                                   segs)
            rgb_motion = contiguous(image_motion(session.rgb_paths, session.width, session.height),
                                    segments(rgb_keep, rgb_gaps))
            offset, drift, peak = estimate(session.rf_t[kept], rf_motion[kept], session.rgb_t[rgb_kept],
                                           rgb_motion[rgb_kept], max_offset_s, min_corr=min_corr)
        except OffsetError as exc:
            raise fail(name, "rf/, rgb/", f"cannot estimate the clock offset: {exc}; set clock_offset_s "
                       "in session.json") from None
        source = "estimated"
    rgb_radio = to_radio_clock(session.rgb_t[rgb_kept], offset, drift, t0)
    m = match(session.rf_t[kept], rgb_radio, 0.5 / session.rf_fps if tolerance is None else tolerance)
    hit = m >= 0
    rgb_index = np.full(n, -1)
    rgb_index[kept[hit]] = rgb_kept[m[hit]]
    labelled = (rgb_index >= 0) & np.isin(rgb_index, list(session.labels))
    label_index = np.where(labelled, rgb_index, -1)
    lag = session.rf_t[kept[hit]] - rgb_radio[m[hit]]
    report = {
        "offset_s": float(offset), "drift_ppm": float(drift),
        "labelled": int(labelled.sum()), "unlabelled": int(len(kept) - labelled.sum()),
        "rejected": dict(Counter(rf_rejects.values())),
        "residual_ms": float(np.sqrt(np.mean(lag ** 2)) * 1e3) if hit.any() else None,
        "offset_source": source, "xcorr_peak": peak, "gaps": len(rf_gaps),
        "rgb_rejected": dict(Counter(rgb_rejects.values())),
        "labels_unmatched": len(set(session.labels) - set(rgb_index[labelled].tolist())),
    }
    rejects = [{"session": name, "frame": i, "reason": reason} for i, reason in rf_rejects.items()]
    return SyncResult(session=name, report=report, rgb_index=rgb_index, label_index=label_index,
                      rejects=rejects, segments=segs, t0=t0)
