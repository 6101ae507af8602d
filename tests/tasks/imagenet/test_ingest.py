"""ImageNet ingest core: layouts, the transform against torchvision's, odd inputs, shards on local
disk and S3, and kill-and-resume. The corpus is cut from real photos (Debian's mate-backgrounds)
at ImageNet's size distribution, odd files included."""

import io
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.imagenet import ilsvrc_sample, ingest as imagenet
from tasks.data import imaging, shards, storage
from tasks.imagenet.config import ImagenetIngestConfig
from tasks.imagenet.ingest import ImagenetError
from tasks.data.imaging import Rejected, Transform
from tasks.data.reader import read_shard

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def photos():
    found = ilsvrc_sample.find_photos()
    if not found:
        pytest.skip(f"needs the photos of `apt-get install {ilsvrc_sample.PHOTO_PACKAGE}`")
    return ilsvrc_sample.load_photos(found, max_side=1600)


@pytest.fixture(scope="module")
def flat_tree(photos, tmp_path_factory):
    """Train with every odd input, flat val labelled by LOC_val_solution.csv."""
    return ilsvrc_sample.make_tree(tmp_path_factory.mktemp("flat"), classes=3, train_per_class=6,
                                   val_per_class=2, photos=photos)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def torchvision_reference(image: Image.Image, size: int = 256) -> np.ndarray:
    from torchvision import transforms

    return np.asarray(transforms.CenterCrop(size)(transforms.Resize(size)(image.convert("RGB"))))


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)))


# --- layouts -------------------------------------------------------------------------------------


def test_scan_finds_classes_labels_and_names(flat_tree):
    source = imagenet.scan(flat_tree.root)
    assert source.wnids == sorted(flat_tree.wnids)
    assert source.names[0] == "tench, Tinca tinca"
    assert {s: len(v) for s, v in source.splits.items()} == flat_tree.images
    truth = {row.split(",")[0]: row.split(",")[1].split()[0]
             for row in (flat_tree.root / "LOC_val_solution.csv").read_text().splitlines()[1:]}
    for rel, cls, key in source.splits["val"]:
        assert source.wnids[cls] == truth[Path(rel).stem] and key == Path(rel).stem
    for rel, cls, key in source.splits["train"]:
        assert rel.split("/")[1] == source.wnids[cls] and key == rel[len("train/"):].rsplit(".", 1)[0]
    assert [r for r, _, _ in source.splits["train"]] == sorted(r for r, _, _ in source.splits["train"])


def test_val_folder_devkit_and_kaggle_layouts_label_alike(photos, tmp_path):
    folder = ilsvrc_sample.make_tree(tmp_path / "folder", classes=3, train_per_class=1, val_per_class=2,
                                     val_layout="folder", odd=False, photos=photos)
    devkit = ilsvrc_sample.make_tree(tmp_path / "devkit", classes=3, train_per_class=1, val_per_class=2,
                                     labels="devkit", odd=False, photos=photos)
    kaggle = tmp_path / "kaggle"
    shutil.copytree(devkit.root, kaggle / "ILSVRC" / "Data" / "CLS-LOC")
    shutil.move(kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "ILSVRC2012_devkit_t12", kaggle)

    def labels(root):
        return {Path(rel).stem: cls for rel, cls, _ in imagenet.scan(root).splits["val"]}

    expected = {f"ILSVRC2012_val_{n:08d}": (n - 1) % 3 for n in range(1, 7)}
    assert labels(folder.root) == labels(devkit.root) == labels(kaggle) == expected
    assert imagenet.scan(folder.root).splits["val"][0][2] == "n01440764/ILSVRC2012_val_00000001"


def test_source_fingerprint_follows_the_files(photos, tmp_path):
    tree = ilsvrc_sample.make_tree(tmp_path, classes=2, train_per_class=2, val_per_class=1, odd=False,
                                   photos=photos)
    before = imagenet.scan(tree.root).fingerprint
    assert imagenet.scan(tree.root).fingerprint == before
    with open(tree.root / "train" / tree.wnids[0] / f"{tree.wnids[0]}_1000.JPEG", "ab") as f:
        f.write(b"\0")
    assert imagenet.scan(tree.root).fingerprint != before


def test_a_dangling_link_is_an_unreadable_reject_not_a_crash(photos, tmp_path):
    tree = ilsvrc_sample.make_tree(tmp_path / "root", classes=2, train_per_class=2, val_per_class=0,
                                   odd=False, photos=photos)
    (tree.root / "train" / tree.wnids[1] / "gone.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    cfg = ImagenetIngestConfig(source=str(tree.root), shard_size=8)
    summary = imagenet.ingest(cfg.source, str(tmp_path / "out"), cfg)
    assert summary.images == {"train": 4} and summary.rejects == {"unreadable": 1}
    assert summary.rejected_paths[0]["path"] == f"train/{tree.wnids[1]}/gone.JPEG"


@pytest.mark.parametrize("files, message", [
    (None, "no such directory"),
    (["images/a.JPEG"], "neither train/ nor val/"),
    (["train/a.JPEG"], "found no class folders"),
    (["train/n01440764/a.JPEG", "val/ILSVRC2012_val_00000001.JPEG"], "LOC_val_solution.csv"),
])
def test_layouts_it_cannot_read_are_named(tmp_path, files, message):
    for rel in files or []:
        (tmp_path / "root" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / rel).write_bytes(b"x")
    with pytest.raises(ImagenetError, match=message):
        imagenet.scan(tmp_path / "root")


def test_unsafe_file_names_become_unique_safe_keys():
    keys = imagenet._keys(["a b/x.y.JPEG", "a_b/x_y.JPEG", ".hidden/-z.png"])
    assert keys == ["a_b/x_y", "a_b/x_y-1", "x_hidden/x-z"]


# --- one image -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (500, 333), (333, 500), (500, 500),
                                  (300, 257), (640, 427), (120, 90), (41, 30)])
def test_transform_matches_torchvision_resize_and_center_crop(photos, size):
    data = ilsvrc_sample.jpeg_bytes(ilsvrc_sample.cut(photos[1], size, random.Random(size[0])), 95)
    (image,), info = imaging.resize(data, [Transform(256)])
    ours, reference = np.asarray(image).astype(int), torchvision_reference(Image.open(io.BytesIO(data)))
    assert ours.shape == reference.shape == (256, 256, 3)
    assert np.abs(ours - reference).max() <= 1  # one resize of the crop box = resize, then crop
    assert info == {"width": size[0], "height": size[1], "mode": "RGB", "format": "JPEG"}


def test_jpeg_encoding_is_pillows_from_any_thread_or_forked_child(photos):
    images = [photos[i % len(photos)].resize((256, 256)) for i in range(6)]
    expected = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
        expected.append(buf.getvalue())
    imaging.encode_jpeg(images[0], 95)  # this thread's in-memory file exists before the fork
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda im: imaging.encode_jpeg(im, 95), images * 3)) == expected * 3

    reader, writer = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=lambda: writer.send([imaging.encode_jpeg(im, 95) for im in images * 5]))
    child.start()
    mine = [imaging.encode_jpeg(im, 95) for im in images * 5]  # while the child encodes too
    assert reader.poll(60) and reader.recv() == expected * 5 and mine == expected * 5
    child.join(10)


def test_libjpeg_to_torch_path_gives_pillows_pixels(photos, monkeypatch):
    data = ilsvrc_sample.jpeg_bytes(ilsvrc_sample.cut(photos[3], (500, 333), random.Random(3)), 90)
    gray = ilsvrc_sample.jpeg_bytes(ilsvrc_sample.cut(photos[4], (375, 500), random.Random(4)).convert("L"), 90)
    transforms = [Transform(256), Transform(160, crop=False)]
    decoded = []
    real = imaging._decode_tensor
    monkeypatch.setattr(imaging, "_decode_tensor", lambda d: decoded.append(real(d)) or decoded[-1])
    fast = [imaging.resize(d, transforms)[0] for d in (data, gray)]
    assert len(decoded) == 2 and [tuple(t.shape) for t in decoded] == [(3, 333, 500), (1, 500, 375)]
    monkeypatch.setattr(imaging, "_decode_tensor", lambda d: None)  # what Pillow alone makes
    slow = [imaging.resize(d, transforms)[0] for d in (data, gray)]
    for ours, pillows in zip(sum(fast, []), sum(slow, [])):
        assert ours.mode == pillows.mode == "RGB" and ours.size == pillows.size
        assert np.abs(np.asarray(ours).astype(int) - np.asarray(pillows)).max() <= 1
    monkeypatch.setattr(imaging, "_decode_tensor", lambda d: pytest.fail("bicubic is Pillow's"))
    imaging.resize(data, [Transform(256, resample="bicubic")])


def test_jpeg_header_agrees_with_pillow_or_leaves_the_file_to_it(photos):
    odd = {name: data for name, data, _ in ilsvrc_sample.odd_files(photos[0], random.Random(1))}
    progressive = io.BytesIO()
    photos[1].resize((333, 500)).save(progressive, format="JPEG", progressive=True, quality=80)
    for name, data in [*odd.items(), ("progressive.JPEG", progressive.getvalue())]:
        header = imaging.jpeg_header(data)
        try:
            im = Image.open(io.BytesIO(data))
        except Exception:  # empty, text, …: never read as a JPEG frame either
            assert header is None, name
            continue
        if im.format == "JPEG":
            assert header == (*im.size, len(im.mode)), name
        else:
            assert header is None, name
    assert imaging.jpeg_header(odd["odd_cmyk.JPEG"])[2] == 4  # a frame, but CMYK: Pillow's path


def test_jpeg_draft_on_large_images_keeps_fidelity(photos):
    data = ilsvrc_sample.jpeg_bytes(photos[2].resize((1600, 1200)), 92)
    assert imaging.draft_scale(1600, 1200, Transform(256)) == 2  # 800×600; 400×300 is under 1.5 × 256
    assert imaging.draft_scale(1000, 760, Transform(256)) == 1
    assert imaging.draft_scale(1600, 1200, Transform(256, draft=False)) == 1
    (drafted,), _ = imaging.resize(data, [Transform(256)])
    (exact,), _ = imaging.resize(data, [Transform(256, draft=False)])
    reference = torchvision_reference(Image.open(io.BytesIO(data)))
    assert np.abs(np.asarray(exact).astype(int) - reference).max() <= 1
    assert psnr(np.asarray(drafted), reference) > 35


def test_shorter_side_variants_keep_the_aspect(photos):
    data = ilsvrc_sample.jpeg_bytes(ilsvrc_sample.cut(photos[0], (500, 375), random.Random(0)), 90)
    outs, _ = imagenet.render(data, [Transform(256), Transform(160, crop=False), Transform(352, crop=False)])
    assert [Image.open(io.BytesIO(o)).size for o in outs] == [(256, 256), (213, 160), (469, 352)]


def test_odd_but_readable_inputs_become_rgb(photos):
    odd = {name: data for name, data, reason in ilsvrc_sample.odd_files(photos[0], random.Random(1))
           if reason is None}
    reference = decode(imagenet.render(ilsvrc_sample.png_bytes(
        Image.open(io.BytesIO(odd["odd_png_named_jpeg.JPEG"]))), [Transform(256)])[0][0])
    for name, data in odd.items():
        (jpeg,), info = imagenet.render(data, [Transform(256)])
        out = Image.open(io.BytesIO(jpeg))
        assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (256, 256)), name
        pixels = np.asarray(out).astype(int)
        if name == "odd_gray.JPEG":
            assert info["mode"] == "L" and np.abs(pixels[..., 0] - pixels[..., 2]).max() <= 3
        if name == "odd_cmyk.JPEG":
            assert info["mode"] == "CMYK" and psnr(np.asarray(out), reference) > 25
        if name == "odd_rgba.png":  # alpha ramps 0 → 255 top to bottom: the top row is the white canvas
            assert info["mode"] == "RGBA" and pixels[0].min() >= 250
    assert imagenet.render(odd["odd_png_named_jpeg.JPEG"], [Transform(256)])[1]["format"] == "PNG"


@pytest.mark.parametrize("name, reason", [
    ("odd_truncated.JPEG", "truncated"), ("odd_empty.JPEG", "empty"),
    ("odd_text.JPEG", "not-an-image"), ("odd_bomb.JPEG", "decompression-bomb")])
def test_unreadable_inputs_are_rejected_with_their_reason(photos, name, reason):
    data = {n: d for n, d, _ in ilsvrc_sample.odd_files(photos[0], random.Random(1))}[name]
    with pytest.raises(Rejected) as caught:
        imagenet.render(data, [Transform(256)])
    assert caught.value.reason == reason


def test_pixel_limit_is_configurable(photos):
    data = ilsvrc_sample.jpeg_bytes(photos[0].resize((500, 375)), 90)
    imagenet.render(data, [Transform(256, max_pixels=500 * 375)])
    with pytest.raises(Rejected, match="decompression-bomb: 500×375 = 187500 pixels"):
        imagenet.render(data, [Transform(256, max_pixels=500 * 375 - 1)])


# --- whole ingests -------------------------------------------------------------------------------


def test_ingest_writes_every_image_or_its_reject(flat_tree, storage_root):
    cfg = ImagenetIngestConfig(source=str(flat_tree.root), shard_size=8, variants=(160,))
    summary = imagenet.ingest(cfg.source, storage_root, cfg)
    main, variant = summary.urls
    assert variant.endswith("imagenet/v1-short160")
    good = {s: n - sum(1 for p in flat_tree.expected_rejects if p.startswith(s))
            for s, n in flat_tree.images.items()}
    assert summary.images == good and summary.shards_written == summary.shards == 2 * (4 + 1)  # 28 train, 7 val
    assert summary.rejects == {"truncated": 2, "empty": 1, "not-an-image": 1, "decompression-bomb": 1}

    manifest = shards.read_manifest(main)
    assert manifest["classes"] == flat_tree.wnids and manifest["params"]["class_names"][1].startswith("English")
    rejects = [json.loads(line) for line in storage.read_bytes(storage.join(main, shards.REJECTS)).splitlines()]
    assert {r["path"]: r["reason"] for r in rejects} == flat_tree.expected_rejects

    seen, fidelity = [], []
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            for sample in read_shard(storage.join(main, shard["name"])):
                meta = json.loads(sample["json"])
                assert meta["wnid"] == flat_tree.wnids[int(sample["cls"])]
                pixels = decode(sample["jpg"])
                assert pixels.shape == (256, 256, 3)
                original = Image.open(flat_tree.root / meta["source"])
                assert (meta["width"], meta["height"]) == original.size
                if meta["mode"] not in ("RGBA", "P"):  # torchvision drops alpha; we composite on white
                    fidelity.append(psnr(pixels, torchvision_reference(original)))
                seen.append(meta["source"])
    assert sorted(seen) == sorted(r for s in imagenet.scan(flat_tree.root).splits.values() for r, _, _ in s
                                  if r not in flat_tree.expected_rejects)
    assert min(fidelity) > 35 and np.mean(fidelity) > 40  # JPEG quality 95 against exact pixels

    short = shards.read_manifest(variant)
    assert short["params"]["transform"] == "resize-shorter"
    assert short["splits"]["train"]["samples"] == good["train"]
    first = next(read_shard(storage.join(variant, short["splits"]["train"]["shards"][0]["name"])))
    assert min(Image.open(io.BytesIO(first["jpg"])).size) == 160


def test_rerun_keeps_committed_shards_and_versions_are_immutable(flat_tree, tmp_path):
    cfg = ImagenetIngestConfig(source=str(flat_tree.root), shard_size=16)
    first = imagenet.ingest(cfg.source, str(tmp_path), cfg)
    again = imagenet.ingest(cfg.source, str(tmp_path), cfg)
    assert again.shards_written == 0 and again.images == first.images and again.images_per_s == 0
    with pytest.raises(shards.ShardError, match="choose another version"):
        imagenet.ingest(cfg.source, str(tmp_path), cfg.model_copy(update={"quality": 80}))


_SLOW_INGEST = """
import sys, time
from tasks.imagenet import ingest as imagenet
from tasks.imagenet.config import ImagenetIngestConfig

fast = imagenet.render
def slow(data, transforms):  # slow enough for the test to kill it between shards
    time.sleep(0.08)
    return fast(data, transforms)
imagenet.render = slow
cfg = ImagenetIngestConfig.model_validate_json(sys.argv[1])
imagenet.ingest(cfg.source, sys.argv[2], cfg)
"""


def test_killed_ingest_resumes_to_the_same_dataset(flat_tree, tmp_path):
    cfg = ImagenetIngestConfig(source=str(flat_tree.root), shard_size=5)
    reference = imagenet.ingest(cfg.source, str(tmp_path / "whole"), cfg)
    url = reference.urls[0].replace("whole", "killed")
    commits = Path(url, "_commits")

    command = [sys.executable, "-c", _SLOW_INGEST, cfg.model_dump_json(), str(tmp_path / "killed")]
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not (commits.is_dir() and len(list(commits.iterdir())) >= 2) and proc.poll() is None:
        assert time.monotonic() < deadline, "the ingest subprocess committed nothing"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not Path(url, shards.MANIFEST).exists(), "the ingest finished before it could be killed"
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(url).glob("*.tar")
            if (commits / (p.name + ".json")).exists()}
    assert kept

    resumed = imagenet.ingest(cfg.source, str(tmp_path / "killed"), cfg)
    assert resumed.shards_written == resumed.shards - len(kept)
    assert shards.read_manifest(url) == shards.read_manifest(reference.urls[0])
    assert Path(url, shards.REJECTS).read_bytes() == Path(reference.urls[0], shards.REJECTS).read_bytes()
    assert {name: (Path(url, name).stat().st_ino, Path(url, name).stat().st_mtime_ns) for name in kept} == kept
