"""Session readers: the three RF layouts and HuPR's tree read; every way a session can be broken
gives one line naming the session, the file and the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.errors import BadInput
from tasks.rfpose.hupr import HUPR_KEYPOINTS, read_hupr
from tasks.rfpose.sessions import SessionError, find_sessions, read_session
from tasks.rfpose.skeleton import KEYPOINTS
from tasks.rfpose.sync import synchronize

N, M, H, W = 12, 6, 4, 5  # RF frames at 30 fps, camera frames at 15 fps, heatmap size
WIDTH, HEIGHT = 8, 6  # camera frame size


def heatmaps(layout: str, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if layout == "complex":
        return (rng.standard_normal((n, H, W)) + 1j * rng.standard_normal((n, H, W))).astype(np.complex64)
    if layout == "reim":
        return rng.standard_normal((n, 2, H, W)).astype(np.float32)
    return rng.random((n, H, W)).astype(np.float32)


def person(x: float) -> dict:
    return {"keypoints": [[x + k, 2.0 * k, 2] for k in range(14)], "bbox": [x, 1, 3, 4]}


def write_session(root: Path, name: str = "walk", layout: str = "complex", **meta) -> Path:
    """A valid session: N RF frames, M camera frames, labels on camera frames 0 and 2."""
    path = root / name
    (path / "rf").mkdir(parents=True)
    (path / "rgb").mkdir()
    doc = {"rf": {"fps": 30}, "rgb": {"fps": 15, "width": WIDTH, "height": HEIGHT}, "scene": "visible", **meta}
    (path / "session.json").write_text(json.dumps(doc))
    np.save(path / "rf/horizontal.npy", heatmaps(layout, seed=1))
    np.save(path / "rf/vertical.npy", heatmaps(layout, seed=2))
    np.save(path / "rf/timestamps.npy", 1000.0 + np.arange(N) / 30)
    for i in range(M):
        Image.new("RGB", (WIDTH, HEIGHT), (i * 20, 0, 0)).save(path / f"rgb/{i:06d}.jpg")
    np.save(path / "rgb/timestamps.npy", 1000.0 + np.arange(M) / 15)
    frames = [{"frame": 0, "people": [person(1.0)]}, {"frame": 2, "people": [person(2.0), person(3.0)]}]
    (path / "keypoints.json").write_text(json.dumps({"frames": frames}))
    return path


def memory_mapped(a: np.ndarray) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base
    return False


@pytest.mark.parametrize("layout, channels", [("complex", 2), ("reim", 2), ("power", 1)])
def test_every_layout_reads_as_n_c_h_w_float32(tmp_path, layout, channels):
    path = write_session(tmp_path, layout=layout)
    s = read_session(path)
    raw = np.load(path / "rf/horizontal.npy")
    assert s.horizontal.shape == s.vertical.shape == (N, channels, H, W)
    assert s.horizontal.dtype == np.float32 and memory_mapped(s.horizontal)
    if layout == "complex":
        assert np.array_equal(s.horizontal[:, 0], raw.real) and np.array_equal(s.horizontal[:, 1], raw.imag)
    else:
        assert np.array_equal(s.horizontal.reshape(raw.shape), raw)
    assert (s.name, s.scene, s.rf_fps, s.rgb_fps, s.width, s.height) == ("walk", "visible", 30.0, 15.0, WIDTH, HEIGHT)
    assert s.clock_offset_s is None and len(s.rf_t) == N and len(s.rgb_t) == M
    assert [p.name for p in s.rgb_paths] == [f"{i:06d}.jpg" for i in range(M)]
    assert sorted(s.labels) == [0, 2] and len(s.labels[2]) == 2
    assert s.labels[2][1]["keypoints"].shape == (14, 3) and s.labels[2][1]["keypoints"][13, 0] == 3.0 + 13
    assert s.labels[0][0]["bbox"] == [1.0, 1.0, 3.0, 4.0]


def test_optional_fields(tmp_path):
    path = write_session(tmp_path, scene="through-wall", clock_offset_s=-0.25)
    (path / "keypoints.json").unlink()
    s = read_session(path)
    assert s.scene == "through-wall" and s.clock_offset_s == -0.25 and s.labels == {}


def _save(file: str, array):
    return lambda p: np.save(p / file, array)


def _json(file: str, text: str):
    return lambda p: (p / file).write_text(text)


def _reversed_clock(p):
    np.save(p / "rf/timestamps.npy", 1000.0 - np.arange(N) / 30)


def _nan_frame(p):
    a = heatmaps("complex", seed=1)
    a[3, 1, 1] = np.nan
    np.save(p / "rf/horizontal.npy", a)


BROKEN = {
    "wrong shape": (_save("rf/horizontal.npy", np.zeros((N, 3, H, W), np.float32)),
                    "rf/horizontal.npy", "shape (12, 3, 4, 5) with dtype float32; expected"),
    "wrong dtype": (_save("rf/vertical.npy", np.zeros((N, H, W), np.float64)), "rf/vertical.npy", "dtype float64"),
    "complex128": (_save("rf/horizontal.npy", np.zeros((N, H, W), np.complex128)), "rf/horizontal.npy",
                   "dtype complex128"),
    "vertical short": (_save("rf/vertical.npy", heatmaps("complex", N - 1)), "rf/vertical.npy",
                       "11 frames, rf/horizontal.npy has 12"),
    "layouts differ": (_save("rf/vertical.npy", heatmaps("power")), "rf/vertical.npy", "same layout"),
    "timestamps short": (_save("rf/timestamps.npy", np.arange(N - 1) / 30), "rf/timestamps.npy",
                         "11 timestamps for 12 frames"),
    "timestamps float32": (_save("rf/timestamps.npy", np.arange(N, dtype=np.float32)), "rf/timestamps.npy",
                           "dtype float32; expected (12,) float64"),
    "camera timestamps": (_save("rgb/timestamps.npy", np.arange(M + 1) / 15), "rgb/timestamps.npy",
                          "7 timestamps for 6 frames"),
    "NaN heatmap": (_nan_frame, "rf/horizontal.npy", "frame 3 holds NaN or infinite values"),
    "NaN timestamp": (_save("rf/timestamps.npy", np.r_[0, 1, np.nan, np.arange(3, N)] / 30), "rf/timestamps.npy",
                      "timestamp 2 is NaN"),
    "non-monotonic": (_reversed_clock, "rf/timestamps.npy", "not increasing: only 1 of 12 timestamps are in order"),
    "wrong rate": (_save("rf/timestamps.npy", np.arange(N) / 10), "rf/timestamps.npy",
                   "0.1 s apart (median) but session.json says 30 fps"),
    "missing file": (lambda p: (p / "rf/vertical.npy").unlink(), "rf/vertical.npy", "missing"),
    "pickled array": (_save("rf/horizontal.npy", np.array([{"a": 1}] * N, dtype=object)), "rf/horizontal.npy",
                      "not a readable .npy array"),
    "bad json": (_json("session.json", '{"rf": {"fps": 30},'), "session.json", "not valid JSON"),
    "no fps": (_json("session.json", '{"rf": {}, "rgb": {"fps": 15, "width": 8, "height": 6}, "scene": "visible"}'),
               "session.json", "rf.fps must be a positive number, got null"),
    "bad scene": (_json("session.json", '{"rf": {"fps": 30}, "rgb": {"fps": 15, "width": 8, "height": 6}, '
                                        '"scene": "outdoors"}'), "session.json", '"scene" must be one of'),
    "image size": (lambda p: Image.new("RGB", (9, 6)).save(p / "rgb/000000.jpg"), "rgb/000000.jpg",
                   "9×6 pixels but session.json says 8×6"),
    "no frames": (lambda p: [f.unlink() for f in (p / "rgb").glob("*.jpg")], "rgb/", "no .jpg frames"),
    "bad keypoints json": (_json("keypoints.json", "{"), "keypoints.json", "not valid JSON"),
    "keypoint shape": (_json("keypoints.json", json.dumps({"frames": [{"frame": 1, "people": [
        {"keypoints": [[0, 0]] * 14, "bbox": [0, 0, 1, 1]}]}]})), "keypoints.json", "keypoints (14, 2)"),
    "label frame": (_json("keypoints.json", json.dumps({"frames": [{"frame": M, "people": []}]})),
                    "keypoints.json", "frame 6 is not a camera frame index 0…5"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_broken_session_names_session_file_and_reason(tmp_path, case):
    breaking, file, reason = BROKEN[case]
    path = write_session(tmp_path)
    breaking(path)
    with pytest.raises(SessionError) as caught:
        read_session(path)
    message = str(caught.value)
    assert isinstance(caught.value, BadInput) and "\n" not in message
    assert message.startswith(f"session walk: {file}: "), message
    assert reason in message, message


def test_find_sessions(tmp_path):
    one = write_session(tmp_path / "day1", "a")
    two = write_session(tmp_path / "day2", "b")
    assert find_sessions(tmp_path) == [one, two]
    assert find_sessions(one) == [one]
    write_session(tmp_path / "day3", "a")
    with pytest.raises(SessionError, match="two sessions are named a"):
        find_sessions(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SessionError, match="no session.json"):
        find_sessions(tmp_path / "empty")


# --- HuPR ---------------------------------------------------------------------------------------

HUPR_SHAPE = (2, 8, 8, 2)  # (Doppler, range, azimuth, elevation)


def hupr_frame(rng) -> np.ndarray:
    return rng.standard_normal(HUPR_SHAPE) + 1j * rng.standard_normal(HUPR_SHAPE)  # complex128, as HuPR saves


def write_hupr(root: Path, sequences=(3, 5), frames: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    annot = []
    for k in sequences:
        for radar in ("hori", "vert"):
            (root / f"single_{k}" / radar).mkdir(parents=True)
            for i in range(frames):
                np.save(root / f"single_{k}" / radar / f"{i:09d}.npy", hupr_frame(rng))
        # joint j of HuPR's order sits at x = j, so the mapped order can be read off
        annot.append([{"image": f"{i:09d}.jpg", "joints": [[j, 100 + j] for j in range(14)],
                       "bbox": [10, 20, 50, 120]} for i in (0, 2)])
    return annot


def test_hupr_reads_with_crowdpose_order(tmp_path):
    (tmp_path / "hrnet_annot_test.json").write_text(json.dumps(write_hupr(tmp_path)))
    sessions = read_hupr(tmp_path, "test", sequences=[3, 5])
    assert [s.name for s in sessions] == ["single_3", "single_5"]
    s = sessions[0]
    assert (s.scene, s.rf_fps, s.rgb_fps, s.clock_offset_s, s.width, s.height) == ("visible", 10, 10, 0.0, 256, 256)
    assert s.horizontal.shape == s.vertical.shape == (4, 1, 8, 8) and s.horizontal.dtype == np.float32
    raw = np.load(tmp_path / "single_3/vert/000000002.npy")
    assert np.allclose(s.vertical[2, 0], (np.abs(raw) ** 2).sum(axis=(0, 3)), rtol=1e-6)
    assert np.array_equal(s.rf_t, [0, 0.1, 0.2, 0.3]) and np.array_equal(s.rgb_t, s.rf_t)
    assert sorted(s.labels) == [0, 2]
    kp = s.labels[2][0]["keypoints"]
    expected = [HUPR_KEYPOINTS.index(n) for n in
                ["L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow", "L_Wrist", "R_Wrist", "L_Hip", "R_Hip",
                 "L_Knee", "R_Knee", "L_Ankle", "R_Ankle", "Head", "Neck"]]
    assert expected == [8, 11, 9, 12, 10, 13, 3, 0, 4, 1, 5, 2, 7, 6]
    assert np.array_equal(kp[:, 0], expected) and np.array_equal(kp[:, 1], np.add(expected, 100))
    assert np.all(kp[:, 2] == 2) and KEYPOINTS[0] == "left_shoulder"
    assert s.labels[2][0]["bbox"] == [10, 20, 40, 100]  # x0y0x1y1 → xywh
    sync = synchronize(s)  # one clock, paired by index
    assert list(sync.label_index) == [0, -1, 2, -1] and list(sync.rgb_index) == [0, 1, 2, 3]
    assert sync.report["labelled"] == 2 and sync.report["residual_ms"] == 0.0


def test_hupr_complex_reduction_and_coco_form(tmp_path):
    write_hupr(tmp_path, sequences=(7,))
    kp = np.array([[j, 100 + j, 2] for j in range(14)], float).ravel().tolist()
    coco = {"images": [], "annotations": [{"image_id": 7 * 100000 + 1, "keypoints": kp, "bbox": [1, 2, 3, 4]}]}
    (tmp_path / "hrnet_annot_val.json").write_text(json.dumps(coco))
    (s,) = read_hupr(tmp_path, "val", reduce="complex")
    raw = np.load(tmp_path / "single_7/hori/000000001.npy")
    mean = raw.mean(axis=(0, 3))  # D = 2: the middle half is both bins
    assert s.horizontal.shape == (4, 2, 8, 8)
    assert np.allclose(s.horizontal[1, 0], mean.real, atol=1e-6)
    assert np.allclose(s.horizontal[1, 1], mean.imag, atol=1e-6)
    assert list(s.labels) == [1] and s.labels[1][0]["keypoints"][0, 0] == 8 and s.labels[1][0]["bbox"] == [1, 2, 3, 4]


@pytest.mark.parametrize("breaking, reason", [
    (lambda root: None, "HuPR"),  # the release's test split lists 21 sequences, the file 2
    (lambda root: (root / "single_5/vert/000000003.npy").unlink(), "session single_5: hori/, vert/: frame 000000003"),
    (lambda root: np.save(root / "single_3/hori/000000001.npy", np.zeros((8, 8))),
     "session single_3: hori/000000001.npy: shape (8, 8) dtype float64; expected a complex (D, R, A, E) frame"),
    (lambda root: np.save(root / "single_3/hori/000000001.npy", np.zeros((2, 8, 8, 3), complex)),
     "differs from the first frame's (2, 8, 8, 2)"),
])
def test_broken_hupr_trees(tmp_path, breaking, reason):
    (tmp_path / "hrnet_annot_test.json").write_text(json.dumps(write_hupr(tmp_path)))
    breaking(tmp_path)
    sequences = None if reason == "HuPR" else [3, 5]
    with pytest.raises(SessionError) as caught:
        read_hupr(tmp_path, "test", sequences=sequences)
    assert reason in str(caught.value) and "\n" not in str(caught.value)
    if sequences is None:
        assert "2 list of sequences for the 21 in the split list" in str(caught.value)
