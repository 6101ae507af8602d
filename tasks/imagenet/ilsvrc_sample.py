"""A small ILSVRC-2012-shaped tree cut from real photographs, for tests, benchmarks and demos.

The photographs are Debian's desktop wallpapers (``apt-get install mate-backgrounds``); crops of
them are resized to ImageNet's size distribution (mostly Flickr's "medium" 500 px on the longer
side, some smaller, a few large, a few tiny) and saved as JPEGs at Flickr-like qualities. With
``odd=True`` the tree also holds the awkward files real ImageNet has or a scrape picks up: a CMYK
JPEG, a PNG named ``.JPEG``, grayscale, palette and alpha PNGs, a truncated and an empty file,
a text file named ``.JPEG`` and a decompression bomb (a PNG that claims 10¹⁰ pixels).

    from tasks.imagenet import ilsvrc_sample
    tree = ilsvrc_sample.make_tree(Path("/tmp/ilsvrc"), classes=4, train_per_class=8,
                                   val_per_class=2, val_layout="flat", labels="csv")
    tree.expected_rejects   # {"train/n01440764/….JPEG": "truncated", …}
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PHOTO_DIRS = (Path("/usr/share/backgrounds/mate/nature"), Path("/usr/share/backgrounds/mate/abstract"))
PHOTO_PACKAGE = "mate-backgrounds"

# Imagenette's ten classes: real wnids with their LOC_synset_mapping.txt names.
SYNSETS = [
    ("n01440764", "tench, Tinca tinca"),
    ("n02102040", "English springer, English springer spaniel"),
    ("n02979186", "cassette player"),
    ("n03000684", "chain saw, chainsaw"),
    ("n03028079", "church, church building"),
    ("n03394916", "French horn, horn"),
    ("n03417042", "garbage truck, dustcart"),
    ("n03425413", "gas pump, gasoline pump, petrol pump, island dispenser"),
    ("n03445777", "golf ball"),
    ("n03888257", "parachute, chute"),
]
# Their ILSVRC2012_ID in the devkit's meta.mat (1-based, not sorted by wnid).
DEVKIT_IDS = {"n01440764": 449, "n02102040": 216, "n02979186": 482, "n03000684": 491,
              "n03028079": 497, "n03394916": 566, "n03417042": 569, "n03425413": 571,
              "n03445777": 574, "n03888257": 701}


@dataclass
class Tree:
    root: Path
    wnids: list[str]
    images: dict[str, int] = field(default_factory=dict)  # split → files written (good and odd)
    expected_rejects: dict[str, str] = field(default_factory=dict)  # relative path → reason


def find_photos(dirs=PHOTO_DIRS) -> list[Path]:
    """The photographic JPEGs of the wallpaper package (empty when it is not installed)."""
    return sorted(p for d in dirs if d.is_dir() for p in d.glob("*.jpg"))


def load_photos(paths: list[Path], max_side: int = 2600):
    """Decode each photo once (cheaply, via JPEG draft) into RGB images of at most ``max_side``."""
    from PIL import Image

    photos = []
    for path in paths:
        with Image.open(path) as im:
            im.draft("RGB", (max_side // 2, max_side // 2))
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            photos.append(im)
    if not photos:
        raise FileNotFoundError(f"no photographs in {', '.join(map(str, PHOTO_DIRS))}; "
                                f"install them with `apt-get install {PHOTO_PACKAGE}`")
    return photos


def imagenet_size(rng: random.Random) -> tuple[int, int]:
    """(width, height) drawn from a rough ImageNet distribution."""
    kind = rng.random()
    if kind < 0.75:
        longer = 500  # Flickr "medium": most of ILSVRC-2012
    elif kind < 0.90:
        longer = rng.randint(200, 499)
    elif kind < 0.97:
        longer = rng.randint(800, 2600)
    else:
        longer = rng.randint(40, 150)
    aspect = rng.choices([4 / 3, 3 / 2, 1.0, 16 / 9, 5 / 4], weights=[55, 20, 10, 8, 7])[0]
    shorter = max(8, round(longer / aspect))
    return (longer, shorter) if rng.random() < 0.75 else (shorter, longer)


def cut(photo, size: tuple[int, int], rng: random.Random):
    """A random crop of ``photo`` with the aspect of ``size``, resized to ``size``."""
    from PIL import Image

    w, h = size
    scale = min(photo.width / w, photo.height / h) * rng.uniform(0.35, 1.0)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    x, y = rng.randint(0, photo.width - cw), rng.randint(0, photo.height - ch)
    return photo.resize(size, Image.Resampling.LANCZOS, box=(x, y, x + cw, y + ch))


def jpeg_bytes(im, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 100_000) -> bytes:
    """A valid PNG header claiming ``side``² pixels over a few bytes of data: opening it is
    cheap, decoding it would not be."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    rows = zlib.compress(b"\x00" * (1 + side // 8) * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def odd_files(photo, rng: random.Random) -> list[tuple[str, bytes, str | None]]:
    """(file name, bytes, expected reject reason or None) for every awkward input."""
    from PIL import Image

    base = cut(photo, (500, 375), rng)
    good = jpeg_bytes(base, 90)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    return [
        ("odd_cmyk.JPEG", jpeg_bytes(base.convert("CMYK"), 90), None),
        ("odd_png_named_jpeg.JPEG", png_bytes(base), None),
        ("odd_gray.JPEG", jpeg_bytes(base.convert("L"), 90), None),
        ("odd_palette_alpha.png", png_bytes(palette), None),
        ("odd_rgba.png", png_bytes(rgba), None),
        ("odd_tiny.JPEG", jpeg_bytes(base.resize((31, 23)), 90), None),
        ("odd_truncated.JPEG", good[: len(good) * 3 // 5], "truncated"),
        ("odd_empty.JPEG", b"", "empty"),
        ("odd_text.JPEG", b"<html><body>404 Not Found</body></html>\n", "not-an-image"),
        ("odd_bomb.JPEG", png_bomb(), "decompression-bomb"),
    ]


def make_tree(root: Path, *, classes: int = 4, train_per_class: int = 8, val_per_class: int = 2,
              val_layout: Literal["flat", "folder"] = "flat",
              labels: Literal["csv", "devkit"] = "csv", odd: bool = True, seed: int = 0,
              photos: list | None = None, photos_per_class: int | None = None) -> Tree:
    """Write ``root/train/<wnid>/*.JPEG``, ``root/val/…`` and the label files; returns what a
    correct ingest must find. Odd files go to the first class of train; with ``odd`` the
    last val image is truncated.

    By default every image is a crop of any photograph, so labels carry no signal (enough for
    ingest tests). With ``photos_per_class=k`` class i is cut from its own k photographs only
    (disjoint between classes; train and val are different crops of them), so a classifier can
    learn it: what the CPU-sized training runs use."""
    rng = random.Random(seed)
    photos = photos if photos is not None else load_photos(find_photos())
    synsets = SYNSETS[:classes]
    tree = Tree(Path(root), [wnid for wnid, _ in synsets])
    tree.root.mkdir(parents=True, exist_ok=True)
    (tree.root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in synsets))

    def write(rel: str, data: bytes, reason: str | None = None):
        path = tree.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        tree.images[rel.split("/")[0]] = tree.images.get(rel.split("/")[0], 0) + 1
        if reason:
            tree.expected_rejects[rel] = reason

    if photos_per_class and photos_per_class * classes > len(photos):
        raise ValueError(f"{classes} classes × {photos_per_class} photographs need {photos_per_class * classes}; "
                         f"{len(photos)} found")

    def photo_jpeg(c: int) -> bytes:
        pool = photos[c * photos_per_class:(c + 1) * photos_per_class] if photos_per_class else photos
        return jpeg_bytes(cut(rng.choice(pool), imagenet_size(rng), rng), rng.randint(75, 95))

    for c, (wnid, _) in enumerate(synsets):
        for i in range(train_per_class):
            write(f"train/{wnid}/{wnid}_{1000 + i}.JPEG", photo_jpeg(c))
    if odd:
        for name, data, reason in odd_files(photos[0], rng):
            write(f"train/{synsets[0][0]}/{name}", data, reason)

    count = classes * val_per_class + (1 if odd and val_per_class else 0)
    val = [(f"ILSVRC2012_val_{n:08d}", synsets[(n - 1) % classes][0]) for n in range(1, count + 1)]
    for n, (stem, wnid) in enumerate(val, start=1):
        folder = f"val/{wnid}" if val_layout == "folder" else "val"
        truncated = odd and n == count  # the last one: cut off after 300 bytes
        image = photo_jpeg((n - 1) % classes)
        write(f"{folder}/{stem}.JPEG", image[:300] if truncated else image,
              "truncated" if truncated else None)
    if val_layout == "flat":
        write_labels(tree.root, val, labels)
    return tree


def write_labels(root: Path, val: list[tuple[str, str]], labels: Literal["csv", "devkit"]) -> None:
    """Flat val ground truth as Kaggle's LOC_val_solution.csv or the ILSVRC2012 devkit's files."""
    if labels == "csv":
        rows = "".join(f"{stem},{wnid} 10 20 300 200 {wnid} 5 5 100 100\n" for stem, wnid in val)
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + rows)
        return
    import numpy as np
    from scipy.io import savemat

    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True, exist_ok=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    synsets = np.zeros((len(SYNSETS) + 1,), dtype=[(f, object) for f in fields])
    for i, (wnid, words) in enumerate(SYNSETS):
        synsets[i] = (DEVKIT_IDS[wnid], wnid, words, "", 0, np.zeros(0), 0, 1300)
    synsets[-1] = (1001, "n00001740", "entity", "", 1, np.array([1]), 18, 0)  # an inner node
    savemat(data / "meta.mat", {"synsets": synsets})
    # One ILSVRC2012_ID per line, for val images 1, 2, … in order.
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{DEVKIT_IDS[wnid]}\n" for _, wnid in val))


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.imagenet.ilsvrc_sample OUT --classes 10 --photos-per-class 1``: a
    learnable tree of real photographs for a CPU-sized ``visionflow pipeline imagenet``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--photos-per-class", type=int, default=1)
    parser.add_argument("--odd", action="store_true", help="add the awkward files (rejected by the ingest)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tree = make_tree(args.out, classes=args.classes, train_per_class=args.train_per_class,
                     val_per_class=args.val_per_class, odd=args.odd, seed=args.seed,
                     photos_per_class=args.photos_per_class, val_layout="folder")
    print(f"{tree.root}: {tree.images}")


if __name__ == "__main__":
    main()
