"""Fuzzed parsers: any input ends in the parser's documented error or a correct result, never a
crash, a hang or a silent wrong answer. Seeded (derandomized) and bounded, in the normal suite."""

import gzip
import io
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.data import shards, storage, tarstream
from tasks.inpaint import masks
from tasks.mnist.idx import IdxError, read_idx

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _idx(shape) -> bytes:
    return struct.pack(">HBB", 0, 8, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + bytes(int(np.prod(shape)))


@st.composite
def damaged(draw, valid: bytes):
    """A valid file with bytes flipped, cut or appended — or plain noise."""
    data = bytearray(valid)
    kind = draw(st.sampled_from(["flip", "cut", "append", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=2048))
    if kind == "cut":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "append":
        return bytes(data) + draw(st.binary(min_size=1, max_size=64))
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


VALID_IDX = _idx((3, 4, 5))


@FUZZ
@given(data=damaged(VALID_IDX), gz=st.booleans())
def test_idx_parser(tmp_path, data, gz):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        array = read_idx(path, expect_dims=3)
    except IdxError as error:
        assert str(path) in str(error)
        return
    shape = struct.unpack(">3I", data[4:16])
    assert array.shape == shape and array.dtype == np.uint8  # what it returns is what the header says


@FUZZ
@given(data=st.binary(max_size=512).map(lambda b: b"\x1f\x8b" + b))
def test_idx_parser_on_broken_gzip(tmp_path, data):
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(data)
    with pytest.raises(IdxError, match="labels-idx1-ubyte.gz"):
        read_idx(path, expect_dims=1)


def _tar(tmp) -> bytes:
    shards.write_tar(({"__key__": f"s{i}", "txt": "x" * (i * 37), "cls": i} for i in range(3)), tmp)
    return tmp.read_bytes()


VALID_TAR = _tar(__import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "t.tar")


@FUZZ
@given(data=damaged(VALID_TAR))
def test_tar_reader(data):
    try:
        found = list(tarstream.samples(io.BytesIO(data)))
    except tarstream.TarFormatError:
        return
    for sample in found:  # whatever it accepts has the shape of a sample
        assert isinstance(sample["__key__"], str) and all(isinstance(v, bytes) for k, v in sample.items() if k != "__key__")


VALID_MANIFEST = json.dumps({"format": shards.FORMAT, "dataset": "d", "version": "v1", "splits": {},
                             "classes": [], "params": {}, "source_fingerprint": "x", "rejects": 0}).encode()


@FUZZ
@given(data=damaged(VALID_MANIFEST))
def test_manifest_loader(tmp_path, data):
    storage.write_bytes(str(tmp_path / shards.MANIFEST), data)
    try:
        manifest = shards.read_manifest(str(tmp_path))
    except shards.ShardError as error:
        assert str(tmp_path) in str(error)
        return
    assert manifest["format"] == shards.FORMAT


VALID_MASK = masks.encode_png(np.eye(16, dtype=bool))


@FUZZ
@given(data=damaged(VALID_MASK))
def test_mask_decoder(data):
    try:
        hole = masks.decode_png(data)
    except masks.MaskError:
        return
    assert hole.dtype == bool and hole.ndim == 2
