"""Irregular masks and mask shard sets: statistics measured from pixels, bucket and border edges,
determinism across runs and processes, 1-bit PNGs with 1 = hole, and importing a folder."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.data import shards
from tasks.inpaint import mask_sets, masks

ROOT = Path(__file__).resolve().parents[3]
SIZE, PER_BUCKET, TRAIN = 128, 3, 12


def _generate(url: Path, seed: int = 0) -> dict:
    return mask_sets.generate(str(url), size=SIZE, train=TRAIN, test_per_bucket=PER_BUCKET, seed=seed,
                              shard_size=10)


@pytest.fixture(scope="module")
def mask_set(tmp_path_factory) -> tuple[Path, dict]:
    url = tmp_path_factory.mktemp("a") / "masks"
    return url, _generate(url)


def test_stored_statistics_are_those_of_the_pixels(mask_set):
    url, manifest = mask_set
    margin = masks.margin_for(SIZE)
    test = list(mask_sets.load(str(url), "test"))
    assert len(test) == len(masks.BUCKETS) * 2 * PER_BUCKET == manifest["splits"]["test"]["samples"]
    for i, (key, hole, meta) in enumerate(test):
        assert key == f"test-{i:06d}" and hole.shape == (SIZE, SIZE) and hole.dtype == bool
        measured = masks.stats(hole, margin)
        assert (meta["hole_ratio"], meta["bucket"], meta["border"]) == \
            (measured["hole_ratio"], measured["bucket"], measured["border"])
        assert meta["hole_ratio"] == np.count_nonzero(hole) / SIZE**2
        bucket, border = masks.BUCKETS[i // (2 * PER_BUCKET)], (i // PER_BUCKET) % 2 == 0
        assert (meta["bucket"], meta["border"]) == (bucket, border), key
        lo, hi = masks.bucket_range(bucket)
        assert lo < meta["hole_ratio"] <= hi
        assert border == bool(hole[:margin].any() or hole[-margin:].any()
                              or hole[:, :margin].any() or hole[:, -margin:].any())
        assert meta["index"] == i and meta["seed"] == 0 and meta["draws"] >= 1
    train = list(mask_sets.load(str(url), "train"))
    assert [m["bucket"] for _, _, m in train] == [masks.BUCKETS[i % 6] for i in range(TRAIN)]
    for i, (_, hole, meta) in enumerate(train):
        assert meta == {**masks.stats(hole, margin), "seed": 0, "index": i, "draws": meta["draws"]}


def test_manifest_records_parameters_draws_and_ratio_summary(mask_set):
    url, manifest = mask_set
    params = manifest["params"]
    assert (params["size"], params["seed"], params["margin"]) == (SIZE, 0, 12)
    assert (params["train"], params["test_per_bucket"]) == (TRAIN, PER_BUCKET)
    assert [s["name"] for s in manifest["splits"]["test"]["shards"]] == \
        ["test-000000.tar", "test-000001.tar", "test-000002.tar", "test-000003.tar"]
    metas = {split: [m for _, _, m in mask_sets.load(str(url), split)] for split in ("test", "train")}
    draws = params["draws"]
    assert set(draws["test"]) == {f"{b}/{f}" for b in masks.BUCKETS for f in masks.BORDER_FLAGS}
    for group, cell in draws["test"].items():
        bucket, flag = group.split("/")
        mine = [m for m in metas["test"] if m["bucket"] == bucket and m["border"] == (flag == "border")]
        assert cell == {"masks": PER_BUCKET, "draws": sum(m["draws"] for m in mine)}
    assert sum(c["draws"] for c in draws["train"].values()) == sum(m["draws"] for m in metas["train"])
    summary = params["hole_ratio"]["test"]
    ratios = [m["hole_ratio"] for m in metas["test"]]
    assert summary["buckets"] == {**{b: 2 * PER_BUCKET for b in masks.BUCKETS}, "none": 0}
    assert (summary["min"], summary["max"], summary["border"]) == (min(ratios), max(ratios), 6 * PER_BUCKET)
    assert summary["mean"] == pytest.approx(np.mean(ratios))


def test_same_seed_same_bytes_and_a_rerun_only_fills_what_is_missing(tmp_path, mask_set):
    url, manifest = mask_set
    again = _generate(tmp_path / "masks")
    assert shards.manifest_checksum(again) == shards.manifest_checksum(manifest)
    for name in ("test-000000.tar", "train-000001.tar", "manifest.json"):
        assert (tmp_path / "masks" / name).read_bytes() == (url / name).read_bytes()
    # A crash before the manifest, one shard lost: the re-run rebuilds that shard alone, identically.
    (tmp_path / "masks" / "manifest.json").unlink()
    (tmp_path / "masks" / "test-000002.tar").unlink()
    kept = (tmp_path / "masks" / "test-000001.tar").stat().st_mtime_ns
    assert _generate(tmp_path / "masks") == manifest
    assert (tmp_path / "masks" / "test-000002.tar").read_bytes() == (url / "test-000002.tar").read_bytes()
    assert (tmp_path / "masks" / "test-000001.tar").stat().st_mtime_ns == kept
    with pytest.raises(shards.ShardError, match="other inputs or parameters"):
        _generate(tmp_path / "masks", seed=1)


_CHILD = """
import hashlib, sys
from tasks.inpaint import masks  # masks alone: no torch, no storage
for arg in sys.argv[1:]:
    index, bucket, border = arg.split(":")
    rng = masks.mask_rng(0, "test", int(index))
    hole, _ = masks.draw_in({size}, bucket, border == "True", rng)
    print(index, hashlib.sha256(masks.encode_png(hole)).hexdigest())
"""


def test_a_mask_redrawn_in_another_process_is_identical(mask_set):
    url, _ = mask_set
    stored = {int(k.split("-")[1]): hashlib.sha256(masks.encode_png(h)).hexdigest()
              for k, h, _ in mask_sets.load(str(url), "test")}
    picks = [0, 7, 20, 35]
    args = ["{}:{}:{}".format(i, *mask_sets.slot("test", i, PER_BUCKET)) for i in picks]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", _CHILD.format(size=SIZE), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    redrawn = dict(line.split() for line in out.stdout.splitlines())
    assert {int(k): v for k, v in redrawn.items()} == {i: stored[i] for i in picks}


def test_the_stored_png_is_the_mask_of_its_own_rng(mask_set):
    url, _ = mask_set
    key, hole, meta = next(iter(mask_sets.load(str(url), "train")))
    bucket, border = mask_sets.slot("train", 0, PER_BUCKET)
    redrawn, draws = masks.draw_in(SIZE, bucket, border, masks.mask_rng(0, "train", 0))
    assert np.array_equal(redrawn, hole) and draws == meta["draws"]


def test_another_seed_split_or_index_draws_another_mask():
    def mask(seed, split, index):
        return masks.draw(SIZE, masks.mask_rng(seed, split, index), target=0.3)

    base = mask(0, "test", 5)
    assert np.array_equal(base, mask(0, "test", 5))
    for other in (mask(1, "test", 5), mask(0, "train", 5), mask(0, "test", 6)):
        assert not np.array_equal(base, other)
        assert np.count_nonzero(base ^ other) > 0.05 * SIZE**2


@pytest.mark.parametrize("size, margin", [(512, 50), (256, 25), (128, 12), (1024, 100)])
def test_margin_scales_with_size(size, margin):
    assert masks.margin_for(size) == margin


@pytest.mark.parametrize("edge", ["top", "bottom", "left", "right"])
def test_a_hole_at_margin_minus_one_is_border_and_at_margin_is_not(edge):
    size, margin = 128, masks.margin_for(128)

    def one_pixel(distance):
        hole = np.zeros((size, size), bool)
        near, far = distance, size - 1 - distance
        y, x = {"top": (near, 64), "bottom": (far, 64), "left": (64, near), "right": (64, far)}[edge]
        hole[y, x] = True
        return masks.stats(hole, margin)["border"]

    assert one_pixel(0) and one_pixel(margin - 1)
    assert not one_pixel(margin) and not one_pixel(64)


def test_an_empty_mask_is_no_border_and_in_no_bucket():
    assert masks.stats(np.zeros((64, 64), bool), 6) == {"hole_ratio": 0.0, "bucket": None, "border": False}


@pytest.mark.parametrize("ratio, bucket", [
    (0.0, None), (0.01, None), (0.0100001, "r01-10"), (0.1, "r01-10"), (0.1000001, "r10-20"),
    (0.2, "r10-20"), (0.35, "r30-40"), (0.5, "r40-50"), (0.6, "r50-60"), (0.6000001, None), (1.0, None),
])
def test_buckets_are_left_open_and_right_closed(ratio, bucket):
    assert masks.bucket_of(ratio) == bucket


def test_an_exact_tenth_of_the_pixels_is_in_the_first_bucket():
    hole = np.zeros((100, 100), bool)
    hole.flat[:1000] = True
    assert masks.stats(hole, 10)["bucket"] == "r01-10"
    hole.flat[1000] = True
    assert masks.stats(hole, 10)["bucket"] == "r10-20"


def test_png_is_one_bit_with_one_for_hole():
    hole = np.random.default_rng(0).random((40, 56)) < 0.3
    data = masks.encode_png(hole)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 1  # IHDR bit depth
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "1" and im.size == (56, 40)
        gray = np.asarray(im.convert("L"))
    assert np.array_equal(gray == 255, hole) and np.array_equal(gray == 0, ~hole)
    assert np.array_equal(masks.decode_png(data), hole)


def test_from_image_reads_white_as_hole_and_resizes_by_nearest_neighbour():
    gray = np.zeros((4, 4), np.uint8)
    gray[0, 0], gray[1, 1], gray[2, 2] = 255, 128, 127
    assert np.argwhere(masks.from_image(gray, 127)).tolist() == [[0, 0], [1, 1]]
    rgb = np.stack([gray] * 3, axis=-1)
    assert np.array_equal(masks.from_image(rgb, 127), masks.from_image(gray, 127))
    big = masks.from_image(gray, 127, size=8)
    assert big.shape == (8, 8) and big[:2, :2].all() and big[2:4, 2:4].all() and big.sum() == 8
    assert np.array_equal(masks.from_image(gray, 127, invert=True), ~masks.from_image(gray, 127))


def test_every_bucket_and_flag_is_reachable_at_the_test_size():
    for i, bucket in enumerate(masks.BUCKETS):
        for border in (True, False):
            hole, draws = masks.draw_in(SIZE, bucket, border, masks.mask_rng(9, "probe", i), max_draws=50)
            assert masks.stats(hole, masks.margin_for(SIZE)) | {"hole_ratio": 0} == \
                {"hole_ratio": 0, "bucket": bucket, "border": border}


def test_draw_in_names_the_bucket_when_it_gives_up(monkeypatch):
    monkeypatch.setattr(masks, "draw", lambda size, rng, **kw: np.zeros((size, size), bool))
    with pytest.raises(masks.MaskError, match=r"bucket r30-40 \(no-border\) after 5 draws"):
        masks.draw_in(64, "r30-40", False, np.random.default_rng(0), max_draws=5)
    with pytest.raises(masks.MaskError, match="unknown bucket 'r60-70'"):
        masks.draw_in(64, "r60-70", None, np.random.default_rng(0))


def _png(array: np.ndarray, mode: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).convert(mode).save(out, format="PNG")
    return out.getvalue()


def test_import_folder_measures_masks_and_rejects_a_corrupt_file(tmp_path):
    src = tmp_path / "masks"
    (src / "sub").mkdir(parents=True)
    inner = np.zeros((128, 128), np.uint8)
    inner[20:60, 30:90] = 255  # 2400 px: r10-20, every hole 20 px from the edge
    corner = np.zeros((256, 256), np.uint8)
    corner[:64, :64] = 255  # → [:32, :32] at 128: 1024 px, r01-10, border
    mostly = np.full((128, 128), 255, np.uint8)
    mostly[:32] = 0  # 75 % hole: in no bucket, kept
    (src / "00000.png").write_bytes(_png(inner, "L"))
    (src / "00001.png").write_bytes(_png(corner, "RGB"))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (src / "sub" / "00002.png").write_bytes(_png(mostly, "L"))
    (src / "README.txt").write_text("not a mask")
    manifest = mask_sets.import_folder(src, str(tmp_path / "out"), size=128, shard_size=2)

    got = {m["source"]: (k, h, m) for k, h, m in mask_sets.load(str(tmp_path / "out"), "test")}
    assert sorted(got) == ["00000.png", "00001.png", "sub/00002.png"]
    expect = {"00000.png": (2400, "r10-20", False), "00001.png": (1024, "r01-10", True),
              "sub/00002.png": (96 * 128, None, True)}
    for source, (pixels, bucket, border) in expect.items():
        key, hole, meta = got[source]
        assert (meta["hole_ratio"], meta["bucket"], meta["border"]) == (pixels / 128**2, bucket, border)
        assert np.count_nonzero(hole) == pixels
    assert got["00001.png"][1][:32, :32].all()
    assert [k for k, _, _ in got.values()] == ["test-000000", "test-000001", "test-000003"]
    assert manifest["rejects"] == 1 and manifest["splits"]["test"]["samples"] == 3
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["path"] == "broken.png" and rejects[0]["split"] == "test"
    assert rejects[0]["reason"] in ("not-an-image", "corrupt", "truncated") and rejects[0]["detail"]
    assert manifest["params"]["hole_ratio"]["test"]["buckets"]["none"] == 1
    assert mask_sets.import_folder(src, str(tmp_path / "out"), size=128, shard_size=2) == manifest
