"""Images for inpainting from an ImageFolder-shaped tree of real photographs: every image lands in
exactly one split or in the rejects, test samples pair every test mask with a test image, and a
mask set of another size is refused by name."""

import json
import random

import pytest

from tasks.data import shards
from tasks.data.reader import read_shard, shards_of
from tasks.imagenet import ilsvrc_sample
from tasks.inpaint import images, mask_sets


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    photos = ilsvrc_sample.load_photos(ilsvrc_sample.find_photos()[:3], max_side=600)
    assert photos, "the wallpaper package's photographs are needed (make test installs them)"
    rng = random.Random(0)
    for i in range(40):
        folder = root / f"class{i % 3}"
        folder.mkdir(exist_ok=True)
        ilsvrc_sample.cut(photos[i % len(photos)], (96, 80), rng).save(folder / f"{i:03d}.jpg", quality=90)
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    return root


@pytest.fixture(scope="module")
def mask_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("masks") / "m" / "v1")
    mask_sets.generate(url, size=64, train=12, test_per_bucket=1, seed=3)
    return url


def test_every_image_is_in_one_split_or_rejected_and_test_pairs_cover_every_mask(tree, mask_url, tmp_path):
    out = str(tmp_path / "inpaint" / "v1")
    manifest = images.prepare(str(tree), mask_url, out, size=64, shard_size=16)
    samples = {split: [s for ref in shards_of(out, split) for s in read_shard(ref.url)]
               for split in ("train", "val", "test")}
    sources = {split: {json.loads(s["json"])["source"] for s in items} for split, items in samples.items()}
    assert not (sources["train"] & sources["val"]) and not (sources["train"] & sources["test"])
    assert not (sources["val"] & sources["test"])
    assert len(sources["train"] | sources["val"] | sources["test"]) == 40  # all but the broken file
    rejects = [json.loads(line) for line in open(f"{out}/rejects.jsonl")]
    assert manifest["rejects"] == 1 and rejects[0]["source"] == "class0/broken.jpg" and rejects[0]["reason"]
    masks_in_test = [json.loads(s["json"])["mask"] for s in samples["test"]]
    assert masks_in_test == [f"test-{i:06d}" for i in range(12)]  # every test mask, in its order
    assert all("mask.png" in s for s in samples["test"] + samples["val"])
    assert not any("mask.png" in s for s in samples["train"])
    assert shards.read_manifest(out)["params"]["masks"] == mask_url
    for split in sources:  # the split is a function of the name alone
        assert all(images.split_of(name) == split for name in sources[split])


def test_masks_of_another_size_are_refused(tree, mask_url, tmp_path):
    with pytest.raises(images.InpaintDataError, match="masks are 64² but the images are to be 128²"):
        images.prepare(str(tree), mask_url, str(tmp_path / "x" / "v1"), size=128)


def test_a_source_without_images_says_so(tmp_path, mask_url):
    (tmp_path / "empty").mkdir()
    with pytest.raises(images.InpaintDataError, match="no images"):
        images.prepare(str(tmp_path / "empty"), mask_url, str(tmp_path / "y" / "v1"), size=64)
