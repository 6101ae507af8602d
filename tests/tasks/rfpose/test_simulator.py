"""The RF-Pose simulator writes the session format, deterministically, with a weaker body echo
through the wall and a camera clock that needs syncing; the ground-truth teacher reads it back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tasks.errors import BadInput
from tasks.rfpose import simulator, teacher

SEED, SECONDS = 11, 2.0


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("rfpose-sim")
    return {name: simulator.simulate_session(root / name, SEED, SECONDS, scene)
            for name, scene in (("visible", "visible"), ("again", "visible"), ("wall", "through-wall"))}


def _files(path):
    return sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())


def test_a_session_is_written_in_the_format(sessions):
    path = sessions["visible"]
    meta = json.loads((path / "session.json").read_text())
    assert meta == {"rf": {"fps": 30}, "rgb": {"fps": 15, "width": 160, "height": 120}, "scene": "visible"}
    horizontal, vertical = np.load(path / "rf" / "horizontal.npy"), np.load(path / "rf" / "vertical.npy")
    rf_t = np.load(path / "rf" / "timestamps.npy")
    truth = json.loads((path / "truth.json").read_text())
    n = 60 - len(truth["dropped_rf"])
    assert horizontal.shape == vertical.shape == (n, 64, 64)
    assert horizontal.dtype == vertical.dtype == np.complex64 and rf_t.dtype == np.float64 and rf_t.shape == (n,)
    assert np.isfinite(horizontal).all() and np.isfinite(vertical).all()
    kept = np.setdiff1d(np.arange(60), truth["dropped_rf"])
    np.testing.assert_allclose(rf_t, truth["radio_t0"] + kept / 30, rtol=0, atol=1e-9)   # a frame counter

    rgb_t = np.load(path / "rgb" / "timestamps.npy")
    jpegs = sorted((path / "rgb").glob("*.jpg"))
    assert rgb_t.dtype == np.float64 and len(jpegs) == len(rgb_t) >= 25
    assert [p.name for p in jpegs] == [f"{i:06d}.jpg" for i in range(len(rgb_t))]
    assert (np.diff(rf_t) > 0).all() and (np.diff(rgb_t) > 0).all()
    with Image.open(jpegs[0]) as image:
        assert image.format == "JPEG" and image.size == (160, 120) and image.mode == "RGB"

    frames = json.loads((path / "keypoints.json").read_text())["frames"]
    assert [f["frame"] for f in frames] == list(range(len(rgb_t)))
    people = [p for f in frames for p in f["people"]]
    assert people, "nobody in view"
    kp = np.array([p["keypoints"] for p in people])                          # (P, 14, 3)
    assert kp.shape[1:] == (14, 3) and set(np.unique(kp[..., 2])) <= {0, 1, 2}
    visible = kp[kp[..., 2] == 2]
    assert len(visible) > 0.5 * kp[..., 0].size
    assert ((visible[:, 0] >= 0) & (visible[:, 0] < 160) & (visible[:, 1] >= 0) & (visible[:, 1] < 120)).all()
    for p in people:
        x, y, w, h = p["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 160 + 1e-6 and y + h <= 120 + 1e-6


def test_labels_mark_pixels_the_people_were_drawn_on(sessions):
    """Most v = 2 joints differ from the empty room: the image shows what the labels say."""
    path, truth = sessions["visible"], json.loads((sessions["visible"] / "truth.json").read_text())
    room, cam = simulator._room(SEED, "visible"), simulator._camera((160, 120))
    empty = simulator._background(room, cam, opaque_wall=False)
    frames = json.loads((path / "keypoints.json").read_text())["frames"]
    differs = []
    for f in frames[::5]:
        with Image.open(path / "rgb" / f"{f['frame']:06d}.jpg") as image:
            pixels = np.asarray(image, dtype=np.float64)
        for p in f["people"]:
            for x, y, v in p["keypoints"]:
                if v == 2:
                    differs.append(np.abs(pixels[int(y), int(x)] - empty[int(y), int(x)]).max() > 25)
    assert truth["people"] and np.mean(differs) > 0.8


def test_the_same_seed_gives_the_same_bytes(sessions, tmp_path):
    a, b = sessions["visible"], sessions["again"]
    assert _files(a) == _files(b)
    for name in _files(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = simulator.simulate_session(tmp_path / "other", SEED + 1, SECONDS, "visible")
    assert (other / "rf" / "horizontal.npy").read_bytes() != (a / "rf" / "horizontal.npy").read_bytes()


def _body_echo(path) -> float:
    """Power per cell that changes over time, above the noise floor (the empty first 0.5 m)."""
    h = np.load(path / "rf" / "horizontal.npy")
    moving = np.abs(h - h.mean(0)) ** 2
    return float(moving[:, 16:].mean() - moving[:, :4].mean())


def test_through_the_wall_the_same_people_echo_weaker(sessions):
    visible, wall = sessions["visible"], sessions["wall"]
    truth_v, truth_w = (json.loads((p / "truth.json").read_text()) for p in (visible, wall))
    assert truth_v["people"] == truth_w["people"] and truth_w["room"]["wall_z"] is not None
    assert _body_echo(wall) < 0.5 * _body_echo(visible)
    assert _body_echo(visible) > 0
    # the wall itself is a strong static reflector at its depth
    h = np.load(wall / "rf" / "horizontal.npy")
    row = int(truth_w["room"]["wall_z"] / 8.0 * 64)
    assert np.abs(h.mean(0))[row - 1:row + 2].max() > 5 * np.abs(h.mean(0))[:4].max()


def test_the_camera_clock_is_offset_drifting_and_jittered(sessions, tmp_path):
    path = sessions["visible"]
    truth = json.loads((path / "truth.json").read_text())
    assert truth["offset_s"] != 0 and abs(truth["offset_s"]) <= 2 and abs(truth["drift_ppm"]) <= 50
    assert "clock_offset_s" not in json.loads((path / "session.json").read_text())
    radio = np.array(truth["rgb_radio_times"])
    stamps = np.load(path / "rgb" / "timestamps.npy")
    model = radio + truth["offset_s"] + truth["drift_ppm"] * 1e-6 * (radio - truth["radio_t0"])
    error = stamps - model
    assert np.abs(error).max() <= 3 * truth["jitter_ms"] * 1e-3 + 1e-9 and error.std() > 1e-4
    told = simulator.simulate_session(tmp_path / "told", SEED, 1.0, "visible", clock_offset=True)
    assert json.loads((told / "session.json").read_text())["clock_offset_s"] == truth["offset_s"]


def test_an_opaque_wall_hides_everyone(tmp_path):
    path = simulator.simulate_session(tmp_path / "s", SEED, 1.0, "through-wall", opaque_wall=True)
    frames = json.loads((path / "keypoints.json").read_text())["frames"]
    flags = {v for f in frames for p in f["people"] for _, _, v in p["keypoints"]}
    assert flags and flags <= {0, 1} and 1 in flags


def test_simulate_keeps_what_is_written_and_refuses_strangers(tmp_path):
    paths = simulator.simulate(tmp_path / "out", sessions=2, seconds=1.0, seed=3)
    assert [p.name for p in paths] == ["s000", "s001"]
    assert [json.loads((p / "session.json").read_text())["scene"] for p in paths] == ["visible", "through-wall"]
    stamp = (paths[0] / "rf" / "horizontal.npy").stat().st_mtime_ns
    simulator.simulate(tmp_path / "out", sessions=2, seconds=1.0, seed=3)
    assert (paths[0] / "rf" / "horizontal.npy").stat().st_mtime_ns == stamp
    simulator.simulate(tmp_path / "out", sessions=1, seconds=1.5, seed=3)
    assert len(np.load(paths[0] / "rf" / "timestamps.npy")) > 30
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BadInput, match="not a session"):
        simulator.simulate_session(tmp_path / "mine", 0, 1.0)
    with pytest.raises(BadInput, match="unknown scene"):
        simulator.simulate_session(tmp_path / "x", 0, 1.0, "outdoors")


def test_the_ground_truth_teacher_reads_the_labels_back(sessions):
    path = sessions["visible"]
    people = teacher.from_keypoints_json(path)
    frames = json.loads((path / "keypoints.json").read_text())["frames"]
    assert len(people) == len(np.load(path / "rgb" / "timestamps.npy"))
    assert [len(p) for p in people] == [len(f["people"]) for f in frames]
    first = next(f for f in frames if f["people"])
    assert people[first["frame"]][0]["keypoints"] == first["people"][0]["keypoints"]


def test_keypoint_rcnn_without_weights_says_where_to_get_them(tmp_path):
    with pytest.raises(BadInput, match="download.pytorch.org/models/keypointrcnn"):
        teacher.keypoint_rcnn([tmp_path / "a.jpg"])
    with pytest.raises(BadInput, match="no Keypoint R-CNN weights at"):
        teacher.keypoint_rcnn([tmp_path / "a.jpg"], weights=tmp_path / "missing.pth")


def test_a_reflector_lands_in_its_range_angle_cells():
    # one point 1 m right, 0.5 m above the radio, 3 m out: its range and angle in each plane
    point, field = np.array([[[1.0, simulator.RADIO[1] + 0.5, 3.0]]]), np.ones((1, 1), complex)
    h, v = simulator._heatmaps(point, field, (64, 64), "range-angle")
    ra = simulator.RANGE_ANGLE

    def cell(value, extent):
        return (value - extent[0]) / (extent[1] - extent[0]) * 64 - 0.5

    for plane, across, extent in ((h, 1.0, ra["azimuth_rad"]), (v, 0.5, ra["elevation_rad"])):
        r, a = np.unravel_index(np.abs(plane[0]).argmax(), plane[0].shape)
        assert abs(r - cell(np.hypot(3.0, across), ra["range_m"])) <= 1
        assert abs(a - cell(np.arctan2(across, 3.0), extent)) <= 1
    h, v = simulator._heatmaps(point, field, (64, 64), "cartesian")
    r, a = np.unravel_index(np.abs(h[0]).argmax(), h[0].shape)
    assert abs(r - cell(3.0, simulator.RF_EXTENT["depth_m"])) <= 1 and abs(a - cell(1.0, simulator.RF_EXTENT["x_m"])) <= 1


def test_an_unknown_grid_is_refused(tmp_path):
    with pytest.raises(simulator.SimulationError, match="unknown RF grid 'polar'"):
        simulator.simulate_session(tmp_path / "s", 0, 1.0, grid="polar")
