"""Clock sync on hand-built streams: offset and drift recovered within a tenth of an RF frame,
every broken timestamp rejected with its reason, every RF frame accounted for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from tasks.rfpose.sessions import Session, SessionError
from tasks.rfpose.sync import clean_timestamps, estimate_offset, match, motion_energy, segments, synchronize
from tasks.rfpose.windows import reasons, unaccounted, window_session

RF_FPS, RGB_FPS = 30.0, 15.0
TENTH = 0.1 / RF_FPS  # the accuracy asked of the clock estimate


def activity(rng, seconds: float, sigma_s: float = 0.05):
    """A smooth random, non-negative "how much is moving" function of true time."""
    hz = 1000
    x = np.abs(gaussian_filter1d(rng.standard_normal(int((seconds + 20) * hz)), sigma_s * hz))
    x /= x.std()
    return lambda t: np.interp(t, np.arange(len(x)) / hz - 10, x)


def motion(a, true_t, rng, noise=0.05):
    """What ``motion_energy`` would give: [i] describes (t[i-1], t[i]); [0] is NaN."""
    out = np.full(len(true_t), np.nan)
    mid = (true_t[1:] + true_t[:-1]) / 2
    out[1:] = a(mid) * (1 + noise * rng.standard_normal(len(mid)))
    return out


def clocks(rng, seconds, offset, drift_ppm, t0=5000.0):
    """RF frames stamped on the radio clock (= true time + t0, 1 ms jitter); camera frames on a
    clock ``offset`` ahead of it, running ``drift_ppm`` fast."""
    rf_true = np.arange(int(seconds * RF_FPS)) / RF_FPS + rng.normal(0, 1e-3, int(seconds * RF_FPS))
    rgb_true = np.arange(int(seconds * RGB_FPS)) / RGB_FPS + rng.uniform(0, 1 / RGB_FPS)
    rf_t = t0 + rf_true
    rgb_t = t0 + rgb_true + offset + drift_ppm * 1e-6 * (rgb_true - rf_true[0])
    return rf_true, rf_t, rgb_true, rgb_t


@pytest.mark.parametrize("seed, offset, drift_ppm", [(0, 1.2345, 80.0), (1, -3.71, -150.0), (2, 0.0123, 0.0)])
def test_offset_and_drift_recovered_within_a_tenth_of_a_frame(seed, offset, drift_ppm):
    rng = np.random.default_rng(seed)
    seconds = 60
    rf_true, rf_t, rgb_true, rgb_t = clocks(rng, seconds, offset, drift_ppm)
    a = activity(rng, seconds)
    got_offset, got_drift = estimate_offset(rf_t, motion(a, rf_true, rng), rgb_t, motion(a, rgb_true, rng))
    assert abs(got_offset - offset) < TENTH
    # the correction the estimate makes at the end of the recording is right as well
    assert abs((got_offset + got_drift * 1e-6 * seconds) - (offset + drift_ppm * 1e-6 * seconds)) < TENTH


def test_a_short_recording_fits_the_offset_only():
    rng = np.random.default_rng(3)
    rf_true, rf_t, rgb_true, rgb_t = clocks(rng, 12, -0.42, 0.0)
    a = activity(rng, 12)
    got_offset, got_drift = estimate_offset(rf_t, motion(a, rf_true, rng), rgb_t, motion(a, rgb_true, rng))
    assert abs(got_offset + 0.42) < TENTH and got_drift == 0.0


def test_clean_timestamps_rejects_with_reasons_and_finds_gaps():
    p = 1 / RF_FPS
    t = np.arange(20) * p
    t[5] = t[4]            # duplicate: stuck clock
    t[6] = t[4]            # a second copy of it
    t[9] = t[3]            # one frame stamped in the past
    t[12] = 99.0           # one frame stamped far in the future
    t[15:] += 3 * p        # dropped frames before 15
    keep, rejects, gaps = clean_timestamps(t, p)
    assert rejects == {5: "duplicate-timestamp", 6: "duplicate-timestamp", 9: "non-monotonic", 12: "non-monotonic"}
    assert list(np.flatnonzero(~keep)) == sorted(rejects)
    assert list(gaps) == [15]
    # a window may not span a reject nor a gap: 0-5 | 7-9 | 10-12 | 13-15 | 15-20
    assert segments(keep, gaps) == [(0, 5), (7, 9), (10, 12), (13, 15), (15, 20)]


def test_match_is_one_to_one_nearest_within_tolerance():
    rf_t = np.arange(10) / RF_FPS
    rgb_t = np.array([0.001, 0.010, 2 / 30 + 0.016, 5 / 30 - 0.002, 9 / 30 + 0.02])
    got = match(rf_t, rgb_t, tolerance=0.5 / RF_FPS)
    # 0.010 loses frame 0 to the closer 0.001; 0.32 s is beyond the tolerance of frame 9
    assert list(got) == [0, -1, 2, -1, -1, 3, -1, -1, -1, -1]


def test_motion_energy_is_mean_absolute_change():
    frames = np.zeros((4, 2, 3, 3), np.float32)
    frames[2] += 1.0
    frames[3, 0] -= 2.0
    got = motion_energy(frames, chunk=2)
    assert np.isnan(got[0]) and np.allclose(got[1:], [0.0, 1.0, 2.0])


def session(tmp_path: Path, rf_t, rgb_t, *, offset=None, rgb_paths=None, frames=None, labels=None) -> Session:
    n = len(rf_t)
    frames = np.zeros((n, 1, 4, 4), np.float32) if frames is None else frames
    paths = rgb_paths if rgb_paths is not None else [tmp_path / f"never-read-{i}.jpg" for i in range(len(rgb_t))]
    return Session(name="s", path=tmp_path, scene="visible", rf_fps=RF_FPS, rgb_fps=RGB_FPS, width=32, height=24,
                   clock_offset_s=offset, horizontal=frames, vertical=frames, rf_t=np.asarray(rf_t, float),
                   rgb_t=np.asarray(rgb_t, float), rgb_paths=paths, labels=labels or {})


def test_a_given_clock_offset_is_used_as_is(tmp_path):
    rf_t = 100.0 + np.arange(30) / RF_FPS
    rgb_t = 100.0 + 0.75 + np.arange(15) / RGB_FPS  # camera 0.75 s ahead
    labels = {k: [] for k in range(0, 15, 3)}
    result = synchronize(session(tmp_path, rf_t, rgb_t, offset=0.75, labels=labels))  # images are never opened
    report = result.report
    assert (report["offset_s"], report["drift_ppm"], report["offset_source"]) == (0.75, 0.0, "given")
    assert list(result.rgb_index[::2]) == list(range(15)) and list(result.rgb_index[1::2]) == [-1] * 15
    assert list(np.flatnonzero(result.label_index >= 0)) == [0, 6, 12, 18, 24]
    assert report["labelled"] == 5 and report["unlabelled"] == 25 and report["rejected"] == {}
    assert report["residual_ms"] < 1e-6 and result.segments == [(0, 30)]


def test_every_rf_frame_is_accounted_for(tmp_path):
    p = 1 / RF_FPS
    t = 100.0 + np.arange(400) * p
    t[50] = t[49]            # duplicate
    t[120] = t[100]          # backwards
    t[300:] += 10 * p        # dropped frames before 300
    t[390] = t[385]          # backwards, close to the end
    rgb_t = 100.0 + np.arange(200) / RGB_FPS
    result = synchronize(session(tmp_path, t, rgb_t, offset=0.0, labels={k: [] for k in range(200)}))
    assert result.report["rejected"] == {"duplicate-timestamp": 1, "non-monotonic": 2}
    assert result.segments == [(0, 50), (51, 120), (121, 300), (300, 390), (391, 400)]
    assert result.report["gaps"] == 1  # the drop before 300; holes left by rejects are no gaps
    windows, rejects = window_session(result, T=100, stride=50)
    assert unaccounted(400, windows, rejects) == []
    assert all(any(a <= w0 and w1 <= b for a, b in result.segments) for w0, w1 in windows)
    assert reasons(rejects) == {"duplicate-timestamp": 1, "non-monotonic": 2, "window-remainder": 50 + 69 + 90 + 9}
    assert {r["reason"] for r in rejects if r["frame"] in (50, 120, 390)} == {"duplicate-timestamp", "non-monotonic"}
    assert all(r["session"] == "s" for r in rejects)
    assert result.label_index[50] == result.label_index[120] == -1  # rejected frames carry no label


def test_estimated_end_to_end_from_frames_and_images(tmp_path):
    """Heatmaps and JPEGs that change as much as a shared activity: synchronize finds the offset."""
    rng = np.random.default_rng(7)
    seconds, offset = 30, 0.6
    rf_true, rf_t, rgb_true, rgb_t = clocks(rng, seconds, offset, 0.0, t0=200.0)
    a = activity(rng, seconds, sigma_s=0.08)

    def blend(true_t, shape, scale):
        # each frame moves part of the way to fresh noise: the change tracks the activity
        out = np.empty((len(true_t), *shape), np.float32)
        out[0] = rng.random(shape) * scale
        mid = (true_t[1:] + true_t[:-1]) / 2
        for i, alpha in enumerate(np.clip(0.15 * a(mid), 0, 1), start=1):
            out[i] = (1 - alpha) * out[i - 1] + alpha * rng.random(shape) * scale
        return out

    frames = blend(rf_true, (1, 16, 16), 1.0)
    images = blend(rgb_true, (24, 32), 255.0)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i:06d}.jpg")
        Image.fromarray(image.astype(np.uint8)).save(paths[-1], quality=95)
    result = synchronize(session(tmp_path, rf_t, rgb_t, rgb_paths=paths, frames=frames,
                                 labels={k: [] for k in range(len(rgb_t))}))
    report = result.report
    assert report["offset_source"] == "estimated" and report["xcorr_peak"] > 0.8
    assert abs(report["offset_s"] - offset) < TENTH, report
    assert report["labelled"] == len(rgb_t) - report["labels_unmatched"] >= 0.95 * len(rgb_t)


def test_no_motion_is_an_error_naming_the_session(tmp_path):
    rf_t = 100.0 + np.arange(60) / RF_FPS
    paths = []
    for i in range(30):
        paths.append(tmp_path / f"{i:06d}.jpg")
        Image.new("L", (32, 24), 128).save(paths[-1])
    with pytest.raises(SessionError, match=r"^session s: rf/, rgb/: cannot estimate the clock offset: no motion"):
        synchronize(session(tmp_path, rf_t, 100.0 + np.arange(30) / RGB_FPS, rgb_paths=paths))
