"""The IDX parser: good files in both encodings, and every way a file can be broken."""

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from idxfiles import write_idx
from tasks.mnist import idx as mnist
from tasks.mnist.idx import IdxError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_reads_raw_and_gzipped_files(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    raw = mnist.read_idx(write_idx(tmp_path / "raw", array), 3)
    packed = mnist.read_idx(write_idx(tmp_path / "packed", array, gz=True), 3)
    assert raw.shape == (2, 28, 28) and np.array_equal(raw, array) and np.array_equal(packed, array)


def test_split_pairs_images_with_labels(idx_dir):
    data = mnist.load_split(idx_dir, "train")
    assert data.images.shape == (600, 28, 28) and data.labels.shape == (600,)
    assert int(data.labels.max()) <= 9


@pytest.mark.parametrize("blob, reason", [
    (b"", "too short for an IDX header"),
    (b"\x01\x02\x08\x03" + struct.pack(">3I", 1, 28, 28) + bytes(784), "bad magic number"),
    (b"\x00\x00\x0d\x03" + struct.pack(">3I", 1, 28, 28) + bytes(784 * 4), "is not unsigned byte"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + bytes(5), "has 1 dimensions, expected 3"),
    (b"\x00\x00\x08\x03" + struct.pack(">2I", 1, 28), "truncated inside the header"),
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + bytes(784), "truncated or padded"),
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 1, 28, 28) + bytes(785), "truncated or padded"),
    (gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 1, 28, 28) + bytes(784))[:-12],
     "gzip stream is truncated"),
])
def test_corrupt_files_name_the_file_and_the_problem(tmp_path, blob, reason):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(IdxError) as err:
        mnist.read_idx(path, 3)
    assert str(path) in str(err.value) and reason in str(err.value)


def test_image_and_label_counts_must_agree(tmp_path, idx_dir):
    for f in idx_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(199, np.uint8))
    with pytest.raises(IdxError, match="holds 200 images but .* holds 199 labels"):
        mnist.load_split(tmp_path, "test")


def test_labels_out_of_range_are_refused(tmp_path, idx_dir):
    for f in idx_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(200, 12, np.uint8))
    with pytest.raises(IdxError, match="label 12 is out of range"):
        mnist.load_split(tmp_path, "test")


def test_missing_file_says_what_was_expected(tmp_path):
    with pytest.raises(IdxError, match="no train-images-idx3-ubyte .*dataset-fashion-mnist"):
        mnist.load_split(tmp_path, "train")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_parses():
    train, test = mnist.load_split(FASHION, "train"), mnist.load_split(FASHION, "test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    assert mnist.guess_dataset(FASHION) == "fashion-mnist"
