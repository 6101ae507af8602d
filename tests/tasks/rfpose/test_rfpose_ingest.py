"""RF-Pose ingest: simulated sessions → window shards; a broken session is rejected alone, every
RF frame is in a window or in rejects.jsonl, samples hold what the docstring says, splits follow
the rule, and two runs give the same bytes."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tasks.data import shards
from tasks.data.reader import read_shard, shards_of
from tasks.errors import BadInput
from tasks.rfpose.ingest import assign_splits, ingest_sessions, ingest_source
from tasks.rfpose.sessions import read_session
from tasks.rfpose.simulator import simulate_session
from tasks.rfpose.sync import synchronize
from tasks.rfpose.windows import unaccounted

T = 32
RF, IMAGE = (16, 16), (48, 36)
VISIBLE = ("v0", "v1", "v2", "v3")


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Four visible sessions (v1 with a duplicate RF timestamp), one through-wall, one shorter
    than a window, one with a broken session.json; ingested with 3 windows a shard."""
    root = tmp_path_factory.mktemp("sessions")
    for i, name in enumerate(VISIBLE):
        simulate_session(root / name, seed=10 + i, seconds=4.0, rf_size=RF, image_size=IMAGE, clock_offset=i % 2 == 0)
    simulate_session(root / "wall", seed=20, seconds=4.0, scene="through-wall", rf_size=RF, image_size=IMAGE,
                     clock_offset=True)
    simulate_session(root / "short", seed=21, seconds=1.0, rf_size=RF, image_size=IMAGE, clock_offset=True)
    stamps = np.load(root / "v1/rf/timestamps.npy")
    stamps[10] = stamps[9]
    np.save(root / "v1/rf/timestamps.npy", stamps)
    shutil.copytree(root / "v0", root / "bad")
    (root / "bad/session.json").write_text('{"rf": {"fps": 30},')
    url = str(tmp_path_factory.mktemp("out") / "rfpose" / "v1")
    manifest = ingest_source(url, source=root, T=T, shard_size=3)
    samples = {split: [s for ref in shards_of(url, split) for s in read_shard(ref.url)] for split in manifest["splits"]}
    rejects = [json.loads(line) for line in Path(url, "rejects.jsonl").read_text().splitlines()]
    return root, url, manifest, samples, rejects


def test_a_malformed_session_is_rejected_alone_with_its_one_line_error(batch):
    root, url, manifest, samples, rejects = batch
    (error,) = [r for r in rejects if r["session"] == "bad"]
    assert set(error) == {"session", "error"} and "\n" not in error["error"]
    assert error["error"].startswith("session bad: session.json: not valid JSON")
    assert manifest["params"]["rejected_sessions"] == {"bad": error["error"]}
    assert sorted(manifest["params"]["sessions"]) == ["short", "v0", "v1", "v2", "v3", "wall"]
    assert manifest["rejects"] == len(rejects)


def test_every_rf_frame_is_in_a_window_or_in_rejects(batch):
    root, url, manifest, samples, rejects = batch
    windows: dict[str, list] = {}
    for sample in (s for split in samples.values() for s in split):
        meta = json.loads(sample["json"])
        windows.setdefault(meta["session"], []).append(tuple(meta["frames"]))
    for name, info in manifest["params"]["sessions"].items():
        mine = [r for r in rejects if r["session"] == name]
        assert info["frames"] == len(np.load(root / name / "rf/timestamps.npy"))
        assert len(windows.get(name, [])) == info["windows"]
        assert unaccounted(info["frames"], windows.get(name, []), mine) == []
        assert manifest["params"]["sync"][name]["rejected"] == dict(Counter(r["reason"] for r in mine))
    assert manifest["params"]["sessions"]["short"]["windows"] == 0
    short = manifest["params"]["sessions"]["short"]["frames"]
    assert manifest["params"]["sync"]["short"]["rejected"] == {"window-remainder": short} and short >= 29
    assert manifest["params"]["sync"]["v1"]["rejected"]["duplicate-timestamp"] == 1


def test_samples_hold_scaled_heatmaps_teacher_keypoints_and_labelled_flags(batch):
    root, url, manifest, samples, rejects = batch
    sessions = {name: read_session(root / name) for name in ("v0", "v1", "v2", "v3", "wall")}
    syncs = {name: synchronize(s) for name, s in sessions.items()}
    seen_unlabelled = False
    for sample in (s for split in samples.values() for s in split):
        meta = json.loads(sample["json"])
        s, sync = sessions[meta["session"]], syncs[meta["session"]]
        first, stop = meta["frames"]
        assert sample["__key__"] == f"{s.name}-{first:06d}" and stop - first == T
        assert (meta["scene"], meta["image"]) == (s.scene, list(IMAGE))
        moving = s.horizontal.astype(np.float64) - s.horizontal.mean(axis=0, dtype=np.float64)
        scale = np.sqrt(np.sum(np.square(moving)) / (len(s.rf_t) * RF[0] * RF[1]))
        assert meta["rf_scale"] == pytest.approx(scale, rel=1e-9)
        assert manifest["params"]["sessions"][s.name]["rf_scale"] == meta["rf_scale"]
        hori, vert = npy(sample["hori.npy"]), npy(sample["vert.npy"])
        assert hori.dtype == vert.dtype == np.float16 and hori.shape == vert.shape == (2, T, *RF)
        for got, stream in ((hori, s.horizontal), (vert, s.vertical)):   # static background out, then scaled
            background = stream.mean(axis=0, dtype=np.float64).astype(np.float32)
            expect = ((stream[first:stop].astype(np.float32) - background) / np.float32(meta["rf_scale"]))
            np.testing.assert_allclose(got.astype(np.float32), expect.transpose(1, 0, 2, 3), rtol=2e-3, atol=2e-3)
        labelled, kp, bbox = npy(sample["labelled.npy"]), npy(sample["kp.npy"]), npy(sample["bbox.npy"])
        assert bbox.shape == (T, meta["people"], 4) and np.isnan(bbox[~labelled]).all()
        index = sync.label_index[first:stop]
        assert labelled.dtype == bool and np.array_equal(labelled, index >= 0)
        people = [s.labels[int(c)] if c >= 0 else [] for c in index]
        assert kp.dtype == np.float32 and kp.shape == (T, meta["people"], 14, 3)
        assert meta["people"] == max(map(len, people))
        for t in range(T):
            n = len(people[t])
            assert np.isnan(kp[t, n:]).all()
            for j, person in enumerate(people[t]):
                assert np.array_equal(kp[t, j], person["keypoints"])
                assert np.allclose(bbox[t, j], person["bbox"])
            seen_unlabelled |= not labelled[t]
        assert np.isnan(kp[~labelled]).all()
    assert seen_unlabelled  # the camera runs at half the radio's rate


def test_splits_keep_through_wall_in_test_and_fill_val_and_test(batch):
    root, url, manifest, samples, rejects = batch
    split_of = {n: info["split"] for n, info in manifest["params"]["sessions"].items()}
    assert split_of == {"v0": "train", "v1": "train", "v2": "test", "v3": "val", "wall": "test", "short": None}
    for split, members in samples.items():
        assert {json.loads(s["json"])["session"] for s in members} == {n for n, sp in split_of.items() if sp == split}
        assert split == "test" or all(json.loads(s["json"])["scene"] == "visible" for s in members)
    assert [s["name"] for s in manifest["splits"]["train"]["shards"]] == ["train-000000.tar", "train-000001.tar",
                                                                          "train-000002.tar"]
    assert manifest["params"]["image"] == list(IMAGE)


def test_split_rule():
    names = [f"s{i}" for i in range(7)]
    assert assign_splits({n: "visible" for n in names}) == {
        "s0": "train", "s1": "train", "s2": "train", "s3": "val", "s4": "test", "s5": "train", "s6": "train"}
    # three visible: val and test each take the last train session; through-wall only ever test
    assert assign_splits({"a": "visible", "b": "visible", "c": "visible", "w": "through-wall"}) == {
        "a": "train", "b": "test", "c": "val", "w": "test"}
    assert assign_splits({"a": "visible", "b": "visible"}) == {"a": "train", "b": "train"}
    assert assign_splits({"a": "visible", "w": "through-wall"}, {"a": "val", "w": "train"}) == {"a": "val", "w": "test"}


def test_manifest_holds_each_sessions_sync_report_and_the_mean_training_pose(batch):
    root, url, manifest, samples, rejects = batch
    for name, report in manifest["params"]["sync"].items():
        assert {"offset_s", "drift_ppm", "labelled", "unlabelled", "rejected", "residual_ms"} <= set(report)
    assert manifest["params"]["sync"]["v0"]["offset_source"] == "given"
    assert manifest["params"]["sync"]["v1"]["offset_source"] == "estimated"
    assert (manifest["params"]["T"], manifest["params"]["stride"]) == (T, T)
    offsets, counts, heights, centres = np.zeros((14, 2)), np.zeros(14), [], []
    for name in ("v0", "v1"):
        s = read_session(root / name)
        index = synchronize(s).label_index
        frames = {int(index[f]) for f in range(len(index)) if index[f] >= 0 and
                  any(first <= f < stop for first, stop in windows_of(samples["train"], name))}
        for c in sorted(frames):
            for p in s.labels[c]:
                x, y, w, h = p["bbox"]
                seen = p["keypoints"][:, 2] > 0
                offsets[seen] += (p["keypoints"][seen, :2] - [x + w / 2, y + h / 2]) / h
                counts += seen
                heights.append(h), centres.append([x + w / 2, y + h / 2])
    pose = manifest["params"]["mean_pose"]
    assert pose["persons"] == len(heights) > 0
    assert np.allclose(pose["offsets"], offsets / counts[:, None]) and len(pose["offsets"]) == 14
    assert pose["height"] == pytest.approx(np.mean(heights)) and np.allclose(pose["center"], np.mean(centres, 0))
    assert pose["offsets"][12][1] < pose["offsets"][13][1] < 0 < pose["offsets"][10][1]  # head above neck, ankles low


def windows_of(samples: list[dict], name: str) -> list[tuple[int, int]]:
    return [tuple(m["frames"]) for m in (json.loads(s["json"]) for s in samples) if m["session"] == name]


def test_two_runs_give_the_same_manifest_and_a_rerun_keeps_committed_shards(batch, tmp_path):
    root, url, manifest, samples, rejects = batch
    again = str(tmp_path / "rfpose" / "v1")
    assert shards.manifest_checksum(ingest_source(again, source=root, T=T, shard_size=3)) == \
        shards.manifest_checksum(manifest)
    assert Path(again, "rejects.jsonl").read_bytes() == Path(url, "rejects.jsonl").read_bytes()
    Path(again, "manifest.json").unlink()  # as if the first run died before its commit point
    written = []
    resumed = ingest_source(again, source=root, T=T, shard_size=3, on_shard=lambda r, w: written.append(w))
    assert written and not any(written)
    assert shards.manifest_checksum(resumed) == shards.manifest_checksum(manifest)
    with pytest.raises(shards.ShardError, match="choose another version"):
        ingest_source(again, source=root, T=T, stride=16, shard_size=3)


def test_bad_window_parameters_fail_the_batch_not_each_session(tmp_path):
    with pytest.raises(BadInput, match="stride"):
        ingest_sessions([tmp_path / "nowhere"], str(tmp_path / "out"), T=8, stride=9)
    with pytest.raises(BadInput, match="no session gave a window"):
        ingest_sessions([tmp_path / "nowhere"], str(tmp_path / "out"), T=8)


# --- HuPR -----------------------------------------------------------------------------------------


def write_hupr(root: Path, split: str, sequences: tuple[int, ...], frames: int = 10) -> None:
    """A COCO-form annotation file (it names its sequences) and (2, 4, 4, 2) complex frames."""
    rng = np.random.default_rng(sequences[0])
    annotations = []
    for k in sequences:
        for radar in ("hori", "vert"):
            (root / f"single_{k}" / radar).mkdir(parents=True)
            for i in range(frames):
                x = rng.standard_normal((2, 4, 4, 2)) + 1j * rng.standard_normal((2, 4, 4, 2))
                np.save(root / f"single_{k}" / radar / f"{i:09d}.npy", x)
        kp = np.array([[100 + j, 50 + 10 * j, 2] for j in range(14)], float).ravel().tolist()
        annotations += [{"image_id": k * 100000 + i, "keypoints": kp, "bbox": [90, 40, 30, 150]}
                        for i in range(0, frames, 2)]
    (root / f"hrnet_annot_{split}.json").write_text(json.dumps({"images": [], "annotations": annotations}))


def test_hupr_sequences_keep_their_release_split_and_a_broken_one_is_rejected(tmp_path):
    write_hupr(tmp_path, "train", (3, 5, 6))
    write_hupr(tmp_path, "val", (9,))
    write_hupr(tmp_path, "test", (7,))
    (tmp_path / "single_6/vert/000000004.npy").unlink()
    url = str(tmp_path / "out")
    manifest = ingest_source(url, hupr=tmp_path, T=4, stride=2)
    split_of = {n: info["split"] for n, info in manifest["params"]["sessions"].items()}
    assert split_of == {"single_3": "train", "single_5": "train", "single_9": "val", "single_7": "test"}
    assert list(manifest["params"]["rejected_sessions"]) == ["single_6"]
    assert "single_6: hori/, vert/: frame 000000004" in manifest["params"]["rejected_sessions"]["single_6"]
    assert manifest["params"]["sessions"]["single_3"]["windows"] == 4  # starts 0, 2, 4, 6 of 10 frames
    (sample, *_) = read_shard(shards_of(url, "val")[0].url)
    assert sample["__key__"] == "single_9-000000" and npy(sample["hori.npy"]).shape == (1, 4, 4, 4)
    assert list(npy(sample["labelled.npy"])) == [True, False, True, False]
    assert json.loads(sample["json"])["image"] == [256, 256] and manifest["params"]["image"] == [256, 256]


def test_a_static_echo_neither_sets_the_scale_nor_reaches_the_windows(tmp_path):
    # the same session with a strong constant reflector added (a wall, 20x the RMS of what moves)
    from tasks.rfpose.ingest import as_source, survey

    plain = simulate_session(tmp_path / "plain", seed=10, seconds=2.0, rf_size=RF, image_size=IMAGE, clock_offset=True)
    walled = tmp_path / "walled"
    shutil.copytree(plain, walled)
    h = np.load(plain / "rf" / "horizontal.npy")
    moving = np.sqrt(np.mean(np.abs(h - h.mean(0)) ** 2))
    np.save(walled / "rf" / "horizontal.npy", (h + 20 * moving).astype(np.complex64))
    a, b = (survey(as_source(p), 8, 8).rf_scale for p in (plain, walled))
    assert a == pytest.approx(moving, rel=1e-4)
    assert b == pytest.approx(a, rel=1e-3)
    urls = [str(tmp_path / "ds" / p.name) for p in (plain, walled)]
    for p, url in zip((plain, walled), urls):
        ingest_sessions([p], url, T=8, split="train")
    hori = [[npy(x["hori.npy"]) for ref in shards_of(url, "train") for x in read_shard(ref.url)] for url in urls]
    assert len(hori[0]) > 0
    for x, y in zip(hori[0], hori[1]):
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=5e-3, rtol=5e-3)
