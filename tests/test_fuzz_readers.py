"""Fuzzed readers, the second half of issue 13 (``test_fuzz.py`` has IDX, tar, manifest, masks):
the rejects loader (a shard's commit record, which carries its rejects across a resume), the JPEG
header reader (and the resize it steers), the RF-Pose session reader and the HuPR reader.

Each starts from a valid input, damages it (bytes flipped, cut or appended; arrays of the wrong
shape, dtype or order, NaN, pickled objects; clocks out of order; JSON keys dropped, added or of
the wrong type; files missing, empty or extra) and checks that the reader either gives the right
answer — what the damaged file really says, with nothing silently dropped — or its documented
error, naming the input. Seeded (derandomized), bounded (a timeout per test), in the normal
suite; the number of cases tried per target is printed at the end of the module::

    pytest -q tests/test_fuzz_readers.py
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tasks.data import imaging, shards
from tasks.rfpose.hupr import SEQUENCE_ID, read_hupr
from tasks.rfpose.sessions import SCENES, SessionError, read_session
from tasks.rfpose.simulator import simulate_session


def fuzz(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


TIMEOUT = pytest.mark.timeout(120)  # a hang fails the test instead of the suite
OVERFLOWS = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 1e300 → float32 and the like: refused after
TRIED: Counter = Counter()  # (target, outcome) → cases, printed when the module is done


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = []
    for target in sorted({t for t, _ in TRIED}):
        outcomes = {o: n for (t, o), n in sorted(TRIED.items()) if t == target}
        lines.append(f"{target} {sum(outcomes.values())} ({', '.join(f'{o} {n}' for o, n in outcomes.items())})")
    if lines and reporter is not None:
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            reporter.write_line("\nfuzz cases tried: " + "; ".join(lines))


# --- damage ----------------------------------------------------------------------------------


@st.composite
def damaged(draw, valid: bytes, head: int = 160):
    """A valid file with bytes flipped (anywhere, or in its first ``head`` bytes, where headers
    live), cut or appended — or plain noise."""
    data = bytearray(valid)
    kind = draw(st.sampled_from(["flip", "flip-head", "cut", "append", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=2048))
    if kind == "cut":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "append":
        return bytes(data) + draw(st.binary(min_size=1, max_size=64))
    end = min(head, len(data)) if kind == "flip-head" else len(data)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, end - 1))] = draw(st.integers(0, 255))
    return bytes(data)


EDGE_NUMBERS = [0, -1, 2 ** 63, -2 ** 63 - 1, 10 ** 30, 10 ** 400, -10 ** 400, float("nan"), float("inf"),
                -float("inf"), 1e-300]
JSON_LEAVES = st.one_of(st.sampled_from(EDGE_NUMBERS), st.sampled_from(EDGE_NUMBERS), st.none(), st.booleans(),
                        st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=4), kids, max_size=3), max_leaves=6)
DEEP = "[" * 5_000 + "]" * 5_000  # deeper than the parser recurses
LONG = "\0 a number too long to parse"


def dumps(doc) -> str:
    """JSON text, with ``LONG`` written as a number of 5000 digits: more than Python parses."""
    return json.dumps(doc).replace(json.dumps(LONG), "9" * 5000)


def _paths(doc, at=()):
    yield at
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _paths(value, (*at, key))


@st.composite
def mutated_json(draw, valid: str) -> str:
    """A JSON document with one value replaced (by any value, or a number by an edge case: NaN,
    infinity, beyond int64 or float, too many digits to parse), one key or item dropped or
    added, or the whole document replaced (by a random value or by nesting too deep to parse)."""
    doc = json.loads(valid)
    op = draw(st.sampled_from(["replace", "replace", "edge", "edge", "digits", "delete", "insert", "whole", "deep"]))
    if op == "deep":
        return DEEP
    if op == "whole":
        return json.dumps(draw(JSON_VALUES))
    paths = list(_paths(doc))
    if op in ("edge", "digits"):
        paths = [p for p in paths if type(_at(doc, p)) in (int, float)] or paths
    if op == "insert":
        paths = [p for p in paths if isinstance(_at(doc, p), (dict, list))]
    elif op == "delete":
        paths = paths[1:]
    path = draw(st.sampled_from(paths))
    value = draw(st.sampled_from(EDGE_NUMBERS) if op == "edge" else JSON_VALUES) if op != "digits" else LONG
    if op == "insert":
        target = _at(doc, path)
        if isinstance(target, dict):
            target[draw(st.text(max_size=6))] = value
        else:
            target.insert(draw(st.integers(0, len(target))), value)
    elif op == "delete":
        del _at(doc, path[:-1])[path[-1]]
    elif path:
        _at(doc, path[:-1])[path[-1]] = value
    else:
        doc = value
    return dumps(doc)


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def replaced_array(draw, original: np.ndarray, clock: bool = False) -> np.ndarray:
    """``original`` with another shape, dtype or memory order, a NaN or infinity, object
    (pickled) items — or, for a clock, its timestamps reordered, repeated or rescaled."""
    kinds = ["shape", "empty", "dtype", "nonfinite", "pickled", "fortran"] + ["clock"] * 3 * clock
    kind = draw(st.sampled_from(kinds))
    a = np.array(original)
    if kind == "shape":
        op = draw(st.sampled_from(["resize", "add", "drop"]))
        axis = draw(st.integers(0, a.ndim - 1))
        if op == "add":
            return np.repeat(np.expand_dims(a, axis), draw(st.integers(1, 2)), axis=axis)
        if op == "drop" and a.ndim > 1:
            return np.take(a, 0, axis=axis)
        size = draw(st.integers(1, a.shape[axis] + 3))
        return np.take(a, np.arange(size) % a.shape[axis], axis=axis)
    if kind == "empty":
        return np.take(a, [], axis=draw(st.integers(0, a.ndim - 1)))
    if kind == "dtype":
        dtype = draw(st.sampled_from(["complex64", "complex128", "float32", "float64", "float16", "int32",
                                      "uint8", "bool", ">f4", ">c8", ">f8", "<U3"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex → real drops the imaginary part, as asked
            return a.astype(dtype)
    if kind == "nonfinite":
        flat = a.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return a
    if kind == "pickled":
        return np.array([{"frame": i} for i in range(len(a))], dtype=object)
    if kind == "fortran":
        return np.asfortranarray(a)
    op = draw(st.sampled_from(["reverse", "repeat", "swap", "constant", "rescale", "shuffle"]))
    i = draw(st.integers(1, len(a) - 1))
    if op == "reverse":
        return a[::-1].copy()
    if op == "repeat":
        a[i] = a[i - 1]
    elif op == "swap":
        a[[i - 1, i]] = a[[i, i - 1]]
    elif op == "constant":
        a[:] = a[0]
    elif op == "rescale":
        a = a[0] + (a - a[0]) * draw(st.sampled_from([0.5, 0.7, 1.3, 2.0, 10.0]))
    else:
        a = a[draw(st.permutations(range(len(a))))]
    return a


def npy_reference(data: bytes) -> np.ndarray | None:
    """What a .npy file holds, read independently of the readers under test: None unless it has
    a readable header, no pickled objects, and exactly the bytes its header describes."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            return None
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if dtype.hasobject or f.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize != len(data):
            return None
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, OverflowError, SyntaxError, TypeError):
        return None


def relink(src: Path, dst: Path) -> Path:
    """A copy of a tree made of hard links: cheap; a file to damage is unlinked first."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def replace(path: Path, data: bytes | np.ndarray | str | None) -> None:
    """Put ``data`` at ``path`` without touching the linked original: None deletes the file."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if isinstance(data, np.ndarray):
        np.save(path, data, allow_pickle=True)  # pickled object arrays too: the reader must refuse them
    elif isinstance(data, str):
        path.write_text(data)
    elif data is not None:
        path.write_bytes(data)


# --- the rejects loader: shard commit records ------------------------------------------------

SPEC = shards.ShardSpec("train", 0, ("a", "b"))
PARAMS = {"format": "fuzz/1"}
SHARD_REJECTS = [{"split": "train", "path": "n01/c.JPEG", "reason": "truncated", "detail": "OSError: cut"}]


def _build(spec):
    return [{"__key__": f"s{i}", "txt": name} for i, name in enumerate(spec.inputs)], list(SHARD_REJECTS)


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN


def _record_damage(draw, valid: bytes) -> bytes:
    if draw(st.booleans()):
        return draw(damaged(valid))
    return draw(mutated_json(valid.decode())).encode()


@TIMEOUT
@fuzz(200)
@given(data=st.data())
def test_rejects_loader(tmp_path_factory, data):
    """A damaged commit record is loaded exactly as written and well-typed, or the shard is
    rebuilt: its rejects reach rejects.jsonl unchanged, never lost, never garbled."""
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as url:
        first, _ = shards.commit_shard(url, SPEC, PARAMS, _build)
        record = Path(url, "_commits", SPEC.name + ".json")
        broken = _record_damage(data.draw, record.read_bytes())
        replace(record, broken)
        again, rewritten = shards.commit_shard(url, SPEC, PARAMS, _build)
        TRIED["rejects loader", "rebuilt" if rewritten else "kept"] += 1
        if rewritten:
            assert asdict(again) == asdict(first) == json.loads(record.read_bytes())
        else:  # kept: what the file says, with the fields it must have, of the types they must have
            assert _same(asdict(again), json.loads(broken))
            assert (again.name, again.split, again.digest, again.sha256) == (first.name, first.split, first.digest,
                                                                                first.sha256)
            assert all(type(getattr(again, f)) is int and getattr(again, f) >= 0 for f in ("samples", "bytes"))
            assert isinstance(again.rejects, list) and all(isinstance(r, dict) for r in again.rejects)
        manifest = shards.write_manifest(url, dataset="d", version="v1", specs=[SPEC], records=[again], classes=[],
                                         params=PARAMS, source_fingerprint="x")
        lines = Path(url, shards.REJECTS).read_text().splitlines()
        assert _same([json.loads(line) for line in lines], again.rejects) and manifest["rejects"] == len(again.rejects)
        assert manifest["splits"]["train"]["samples"] == again.samples


# Found by the fuzz: records the loader used to accept (rejects: null crashed write_manifest; the
# others reached the manifest as they were) or crash on (RecursionError); "rejects dropped" was
# found reading the loader.
BROKEN_RECORDS = {
    "rejects null": lambda r: r.update(rejects=None),
    "rejects dropped": lambda r: r.pop("rejects"),  # was defaulted to []: the shard's rejects lost
    "a reject not an object": lambda r: r.update(rejects=[1]),
    "name null": lambda r: r.update(name=None),
    "another shard's name": lambda r: r.update(name="train-000001.tar"),
    "bytes null": lambda r: r.update(bytes=None),
    "samples true": lambda r: r.update(samples=True),
    "samples negative": lambda r: r.update(samples=-1),
    "nested too deeply": None,
}


@pytest.mark.parametrize("case", BROKEN_RECORDS)
def test_a_damaged_commit_record_rebuilds_its_shard_and_keeps_its_rejects(tmp_path, case):
    url = str(tmp_path)
    first, _ = shards.commit_shard(url, SPEC, PARAMS, _build)
    record = Path(url, "_commits", SPEC.name + ".json")
    if BROKEN_RECORDS[case] is None:
        record.write_text(DEEP)
    else:
        fields = json.loads(record.read_text())
        BROKEN_RECORDS[case](fields)
        record.write_text(json.dumps(fields))
    again, rewritten = shards.commit_shard(url, SPEC, PARAMS, _build)
    assert rewritten and asdict(again) == asdict(first)
    shards.write_manifest(url, dataset="d", version="v1", specs=[SPEC], records=[again], classes=[], params=PARAMS,
                          source_fingerprint="x")
    assert [json.loads(line) for line in Path(url, shards.REJECTS).read_text().splitlines()] == SHARD_REJECTS


def test_an_intact_commit_record_is_kept(tmp_path):
    first, written = shards.commit_shard(str(tmp_path), SPEC, PARAMS, _build)
    again, rewritten = shards.commit_shard(str(tmp_path), SPEC, PARAMS, _build)
    assert written and not rewritten and asdict(again) == asdict(first) and again.rejects == SHARD_REJECTS


# --- the JPEG header reader ------------------------------------------------------------------


def _jpeg(mode: str, size: tuple[int, int], **options) -> bytes:
    rng = np.random.default_rng(len(mode) + size[0])
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(pixels[..., 0] if mode == "L" else pixels)
    f = io.BytesIO()
    (im.convert("CMYK") if mode == "CMYK" else im).save(f, "JPEG", **options)
    return f.getvalue()


JPEGS = [_jpeg("RGB", (40, 30), quality=90), _jpeg("L", (24, 24)), _jpeg("RGB", (32, 20), progressive=True),
         _jpeg("RGB", (20, 36), subsampling=0, exif=b"Exif\0\0" + bytes(32)), _jpeg("CMYK", (16, 16))]


@st.composite
def damaged_jpeg(draw, valid: bytes | None = None) -> bytes:
    """A damaged JPEG (``valid``, or one of ``JPEGS``); besides plain byte damage, its declared
    size (0, huge), another field of its frame header (precision, components) or a segment
    length rewritten."""
    valid = draw(st.sampled_from(JPEGS)) if valid is None else valid
    kind = draw(st.sampled_from(["bytes", "bytes", "size", "frame", "segment"]))
    if kind == "bytes":
        return draw(damaged(valid, head=400))
    data = bytearray(valid)
    if kind == "segment":
        data[4:6] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")  # the first APPn's length
        return bytes(data)
    sof = min(i for i in (data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) if i > 0)
    if kind == "size":  # height, width
        for field in (5, 7):
            data[sof + field:sof + field + 2] = draw(st.sampled_from([0, 1, 0xFFFF]) | st.integers(0, 0xFFFF)
                                                     ).to_bytes(2, "big")
        return bytes(data)
    field, width = draw(st.sampled_from([(4, 1), (5, 2), (7, 2), (9, 1)]))  # precision, height, width, components
    data[sof + field:sof + field + width] = draw(st.integers(0, 256 ** width - 1)).to_bytes(width, "big")
    return bytes(data)


def _pillow(data: bytes):
    """Pillow's (width, height, layers) of a JPEG it decodes in full, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return (im.width, im.height, len(im.getbands())) if im.format == "JPEG" else None
    except Exception:  # noqa: BLE001 — any refusal: the reference has no opinion
        return None


@TIMEOUT
@fuzz(600)
@given(data=damaged_jpeg())
def test_jpeg_header_reader(data):
    """None, or the frame's (width, height, components) as a full decode reads them."""
    header = imaging.jpeg_header(data)
    TRIED["jpeg header reader", "none" if header is None else "read"] += 1
    if header is None:
        return
    width, height, components = header
    assert all(type(v) is int for v in header) and width > 0 and height > 0 and 0 <= components <= 255
    reference = _pillow(data)
    assert reference is None or reference == header


@TIMEOUT
@fuzz(200)
@given(data=damaged_jpeg())
def test_jpeg_resize_on_damaged_files(data):
    """Through the header reader's fast path or Pillow: ``Rejected`` with a documented reason,
    or images of the asked size whose recorded geometry is the file's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            images, info = imaging.resize(data, [imaging.Transform(8)])
    except imaging.Rejected as rejected:
        TRIED["jpeg resize", "rejected"] += 1
        assert rejected.reason in ("empty", "not-an-image", "truncated", "corrupt", "decompression-bomb")
        return
    TRIED["jpeg resize", "read"] += 1
    assert [(im.mode, im.size) for im in images] == [("RGB", (8, 8))]
    with Image.open(io.BytesIO(data)) as im:
        assert (info["width"], info["height"]) == im.size


# --- the RF-Pose session reader --------------------------------------------------------------

SESSION_FILES = ["session.json", "keypoints.json", "rf/horizontal.npy", "rf/vertical.npy", "rf/timestamps.npy",
                 "rgb/timestamps.npy", "rgb/000000.jpg"]
EXTRA_FRAMES = ["².jpg", "abc.jpg", "-1.jpg", "0.jpg", ".jpg", "000999.jpg"]


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    return simulate_session(tmp_path_factory.mktemp("rfpose") / "walk", seed=3, seconds=2, rf_size=(8, 8),
                            image_size=(32, 24))


@pytest.fixture(scope="module")
def valid_session(session):
    return read_session(session)


def as_planes(a: np.ndarray) -> np.ndarray:
    """The (N, C, H, W) float32 a reader must make of a valid heatmap array."""
    if np.iscomplexobj(a):
        return np.stack([a.real, a.imag], axis=1).astype(np.float32)
    return a if a.ndim == 4 else a[:, None]


def damage_session(draw, path: Path) -> tuple[str, object]:
    """Damage one file of the session at ``path``; → (file, what it now holds)."""
    kind = draw(st.sampled_from(["bytes", "bytes", "array", "json", "file"]))
    if kind == "file":
        op = draw(st.sampled_from(["delete", "empty", "directory", "extra"]))
        if op == "extra":
            name = draw(st.sampled_from(EXTRA_FRAMES))
            shutil.copyfile(path / "rgb/000000.jpg", path / "rgb" / name)
            return f"rgb/{name}", "extra"
        file = draw(st.sampled_from(SESSION_FILES))
        replace(path / file, b"" if op == "empty" else None)
        if op == "directory":
            (path / file).mkdir()
        return file, op
    if kind == "json":
        file = draw(st.sampled_from(["session.json", "keypoints.json"]))
        text = draw(mutated_json((path / file).read_text()))
        replace(path / file, text)
        return file, text.encode()
    if kind == "array":
        file = draw(st.sampled_from([f for f in SESSION_FILES if f.endswith(".npy")]))
        a = draw(replaced_array(np.load(path / file), clock=file.endswith("timestamps.npy")))
        replace(path / file, a)
        return file, (path / file).read_bytes()
    file = draw(st.sampled_from(SESSION_FILES + ["rgb/000000.jpg"]))  # twice: its header holds the image size
    valid = (path / file).read_bytes()
    data = draw(damaged_jpeg(valid) if file.endswith(".jpg") else damaged(valid))
    replace(path / file, data)
    return file, data


def check_session(s, valid, file: str, holds) -> None:
    """A session read from a damaged copy of ``valid``: well-formed, nothing dropped, and the
    damaged file's content what the file really says."""
    n, m = len(valid.rf_t), len(valid.rgb_t)
    assert s.horizontal.shape[0] == s.vertical.shape[0] == len(s.rf_t) == n  # never fewer frames, silently
    assert len(s.rgb_paths) == len(s.rgb_t) == m
    for frames in (s.horizontal, s.vertical):
        assert frames.dtype == np.float32 and frames.ndim == 4 and frames.shape[1] in (1, 2)
        assert np.isfinite(frames).all()
    assert s.rf_t.dtype == s.rgb_t.dtype == np.float64 and np.isfinite(s.rf_t).all() and np.isfinite(s.rgb_t).all()
    assert s.scene in SCENES and s.rf_fps > 0 and s.rgb_fps > 0 and np.isfinite([s.rf_fps, s.rgb_fps]).all()
    for frame, people in s.labels.items():
        assert 0 <= frame < m
        for p in people:
            assert p["keypoints"].shape == (14, 3) and np.isfinite(p["keypoints"]).all()
            assert len(p["bbox"]) == 4 and np.isfinite(p["bbox"]).all()
    if holds == "delete" and file == "keypoints.json":
        assert s.labels == {}
    if not isinstance(holds, bytes):
        return
    if file.endswith(".npy"):
        reference = npy_reference(holds)
        assert reference is not None, f"{file} is not a valid .npy file, yet it was read"
        got = {"rf/horizontal.npy": s.horizontal, "rf/vertical.npy": s.vertical, "rf/timestamps.npy": s.rf_t,
               "rgb/timestamps.npy": s.rgb_t}[file]
        assert np.array_equal(got, reference if file.endswith("timestamps.npy") else as_planes(reference))
    elif file == "session.json":
        meta = json.loads(holds)
        assert (s.scene, s.rf_fps, s.rgb_fps, s.width, s.height, s.clock_offset_s) == (
            meta["scene"], meta["rf"]["fps"], meta["rgb"]["fps"], meta["rgb"]["width"], meta["rgb"]["height"],
            meta.get("clock_offset_s"))
    elif file == "keypoints.json":
        frames = json.loads(holds)["frames"]
        assert sorted(s.labels) == sorted(f["frame"] for f in frames)
        assert sum(map(len, s.labels.values())) == sum(len(f["people"]) for f in frames)
    elif file.endswith(".jpg"):
        with Image.open(io.BytesIO(holds)) as im:
            assert im.size == (s.width, s.height)


@TIMEOUT
@OVERFLOWS
@fuzz(300)
@given(data=st.data())
def test_rf_session_reader(session, valid_session, tmp_path_factory, data):
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        path = relink(session, Path(tmp, "walk"))
        file, holds = damage_session(data.draw, path)
        try:
            s = read_session(path)
        except SessionError as error:
            TRIED["rf session reader", "refused"] += 1
            message = str(error)
            assert message.startswith("session walk: ") and "\n" not in message, message
            assert holds == "extra" or file in message or (file.endswith(".jpg") and holds == "delete"), message
            return
        TRIED["rf session reader", "read"] += 1
        check_session(s, valid_session, file, holds)


def _edit(file: str, change):
    return lambda p: replace(p / file, change((p / file).read_bytes()))


def _meta(change):
    def edit(p):
        meta = json.loads((p / "session.json").read_text())
        change(meta)
        replace(p / "session.json", dumps(meta))
    return edit


def _keypoints(change):
    def edit(p):
        doc = json.loads((p / "keypoints.json").read_text())
        change(next(f["people"] for f in doc["frames"] if f["people"]))
        replace(p / "keypoints.json", json.dumps(doc))
    return edit


def _huge_frame(data: bytes) -> bytes:
    sof = data.find(b"\xff\xc0")
    return data[:sof + 5] + b"\xff\xff\xff\xff" + data[sof + 9:]  # 65535 × 65535: a decompression bomb


# Found by the fuzz: crashes (TypeError and OverflowError on numbers beyond int64 or float,
# ValueError on a 5000-digit number or a frame named ².jpg, tokenize.TokenError on a damaged .npy
# header, RecursionError, PIL's DecompressionBombError) and a padded .npy read as if whole.
BROKEN_SESSIONS = {
    "fps beyond int64": (_meta(lambda m: m["rf"].update(fps=-2 ** 63 - 1)), "session.json",
                         "rf.fps must be a positive number"),
    "fps beyond float": (_meta(lambda m: m["rgb"].update(fps=10 ** 400)), "session.json",
                         "rgb.fps must be a positive number"),
    "offset beyond float": (_meta(lambda m: m.update(clock_offset_s=-10 ** 400)), "session.json",
                            '"clock_offset_s" must be a number'),
    "nested too deeply": (lambda p: replace(p / "session.json", DEEP), "session.json", "nested too deeply"),
    "a number too long to parse": (_meta(lambda m: m["rf"].update(fps=LONG)), "session.json",
                                   "not valid JSON (Exceeds the limit (4300 digits)"),
    "npy header the tokenizer refuses": (_edit("rf/horizontal.npy", lambda b: b.replace(b"{", b"\0", 1)),
                                         "rf/horizontal.npy", "not a readable .npy array (TokenError"),
    "npy padded": (_edit("rf/timestamps.npy", lambda b: b + bytes(8)), "rf/timestamps.npy",
                   "cut, padded or damaged"),
    "npy header shrunk": (_edit("rf/vertical.npy", lambda b: re.sub(rb", 8\)", b", 4)", b, count=1)),
                          "rf/vertical.npy", "cut, padded or damaged"),  # (N, 8, 8) → (N, 8, 4): half the bytes
    "a superscript frame name": (lambda p: shutil.copyfile(p / "rgb/000000.jpg", p / "rgb/².jpg"),
                                 "rgb/timestamps.npy", "timestamps for"),  # one frame more than timestamps
    "decompression bomb": (_edit("rgb/000000.jpg", _huge_frame), "rgb/000000.jpg", "not a readable image"),
    "keypoint beyond float": (_keypoints(lambda people: people[0]["keypoints"][0].__setitem__(0, 10 ** 400)),
                              "keypoints.json", 'needs numeric "keypoints"'),
}


@pytest.mark.parametrize("case", BROKEN_SESSIONS)
def test_a_session_the_fuzz_broke_is_refused_by_name(session, tmp_path, case):
    breaking, file, reason = BROKEN_SESSIONS[case]
    path = relink(session, tmp_path / "walk")
    breaking(path)
    with pytest.raises(SessionError) as caught:
        read_session(path)
    assert str(caught.value).startswith(f"session walk: {file}: ") and reason in str(caught.value), str(caught.value)


# --- the HuPR reader -------------------------------------------------------------------------

HUPR_FRAMES = {3: 3, 5: 1}  # sequence → frames: one sequence of a single frame
HUPR_SHAPE = (2, 4, 4, 2)  # (Doppler, range, azimuth, elevation)


def write_hupr(root: Path) -> Path:
    """Both annotation forms: the list form for "val" (sequences [3, 5]), COCO's for "test"."""
    rng = np.random.default_rng(0)
    blocks, coco = [], []
    for k, frames in HUPR_FRAMES.items():
        for radar in ("hori", "vert"):
            (root / f"single_{k}" / radar).mkdir(parents=True)
            for i in range(frames):
                x = rng.standard_normal(HUPR_SHAPE) + 1j * rng.standard_normal(HUPR_SHAPE)  # complex128, as HuPR
                np.save(root / f"single_{k}" / radar / f"{i:09d}.npy", x)
        labelled = range(0, frames, 2)
        blocks.append([{"image": f"{i:09d}.jpg", "joints": [[j, 100 + j] for j in range(14)],
                        "bbox": [10, 20, 50, 120]} for i in labelled])
        coco += [{"image_id": k * SEQUENCE_ID + i, "keypoints": [v for j in range(14) for v in (j, 100 + j, 2)],
                  "bbox": [10, 20, 40, 100]} for i in labelled]
    (root / "hrnet_annot_val.json").write_text(json.dumps(blocks))
    (root / "hrnet_annot_test.json").write_text(json.dumps({"images": [], "annotations": coco}))
    return root


@pytest.fixture(scope="module")
def hupr(tmp_path_factory) -> Path:
    return write_hupr(tmp_path_factory.mktemp("hupr"))


# single_5's frames twice: a one-frame sequence has no other frame to compare a shape with
HUPR_FILES = [f"single_3/{r}/{i:09d}.npy" for r in ("hori", "vert") for i in range(3)] + \
             ["single_5/hori/000000000.npy", "single_5/vert/000000000.npy"] * 2
OTHER_FRAME = ("first frame", "one folder only", "no %09d.npy frames")  # errors a damaged frame causes elsewhere
EXTRA_HUPR = ["².npy", "abc.npy", "1.npy", "000000009.npy", "000000001.npy.bak"]


def damage_hupr(draw, root: Path, annotations: str) -> tuple[str, object]:
    kind = draw(st.sampled_from(["bytes", "bytes", "array", "json", "file"]))
    if kind == "file":
        op = draw(st.sampled_from(["delete", "empty", "extra"]))
        if op == "extra":
            folder = draw(st.sampled_from(["single_3/hori", "single_5/vert"]))
            name = draw(st.sampled_from(EXTRA_HUPR))
            shutil.copyfile(root / folder / "000000000.npy", root / folder / name)
            return f"{folder}/{name}", "extra"
        file = draw(st.sampled_from(HUPR_FILES + [annotations]))
        replace(root / file, None if op == "delete" else b"")
        return file, op
    if kind == "json":
        text = draw(mutated_json((root / annotations).read_text()))
        replace(root / annotations, text)
        return annotations, text.encode()
    file = draw(st.sampled_from(HUPR_FILES + [annotations] * (kind == "bytes")))
    if kind == "array":
        replace(root / file, draw(replaced_array(np.load(root / file))))
    else:
        replace(root / file, draw(damaged((root / file).read_bytes())))
    return file, (root / file).read_bytes()


def hupr_people(doc, sequences) -> dict[str, int]:
    """Session → how many labelled people the annotation document holds for it."""
    if isinstance(doc, dict):
        seqs = [int(a["image_id"]) // SEQUENCE_ID for a in doc["annotations"]]
    else:
        seqs = [k for k, blocks in zip(sequences, doc) for _ in blocks]
    return dict(Counter(f"single_{k}" for k in seqs))


def check_hupr(sessions, root: Path, file: str, holds, people: dict[str, int]) -> None:
    assert {s.name: sum(map(len, s.labels.values())) for s in sessions if s.labels} == people  # no one dropped
    for s in sessions:
        frames = sorted(int(p.stem) for p in (s.path / "hori").glob("*.npy") if p.stem.isascii() and p.stem.isdigit())
        assert s.horizontal.shape[0] == s.vertical.shape[0] == len(s.rf_t) == len(frames) > 0
        assert np.array_equal(s.rf_t, np.array(frames) / 10) and np.all(np.diff(s.rf_t) > 0)
        for planes in (s.horizontal, s.vertical):
            assert planes.dtype == np.float32 and planes.ndim == 4 and planes.size > 0 and np.isfinite(planes).all()
        for frame, labelled in s.labels.items():
            assert 0 <= frame < len(frames)
            for p in labelled:
                assert p["keypoints"].shape == (14, 3) and np.isfinite(p["keypoints"]).all()
                assert len(p["bbox"]) == 4 and np.isfinite(p["bbox"]).all()
    if isinstance(holds, bytes) and file.endswith(".npy"):
        reference = npy_reference(holds)
        assert reference is not None, f"{file} is not a valid .npy file, yet it was read"
        assert reference.ndim == 4 and np.iscomplexobj(reference) and reference.size > 0
        seq, radar, name = file.split("/")
        (s,) = [s for s in sessions if s.name == seq]
        planes = s.horizontal if radar == "hori" else s.vertical
        i = list(np.round(s.rf_t * 10).astype(int)).index(int(Path(name).stem))
        if planes.shape[1] == 1:
            assert np.allclose(planes[i, 0], (np.abs(reference) ** 2).sum(axis=(0, 3)), rtol=1e-5)


@TIMEOUT
@OVERFLOWS
@fuzz(300)
@given(data=st.data())
def test_hupr_reader(hupr, tmp_path_factory, data):
    split = data.draw(st.sampled_from(["val", "test"]))
    sequences = [3, 5] if split == "val" else None
    annotations = f"hrnet_annot_{split}.json"
    reduce = data.draw(st.sampled_from(["power", "complex"]))
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        root = relink(hupr, Path(tmp, "hupr")).resolve()
        file, holds = damage_hupr(data.draw, root, annotations)
        try:
            sessions = read_hupr(root, split, sequences=sequences, reduce=reduce)
        except SessionError as error:
            TRIED["hupr reader", "refused"] += 1
            message = str(error)
            assert message.startswith((f"HuPR {root}: {annotations}: ", "session single_")) and "\n" not in message
            if file.endswith(".npy") and holds != "extra":
                relative = file.split("/", 1)[1]
                assert relative in message or any(why in message for why in OTHER_FRAME), message
            return
        TRIED["hupr reader", "read"] += 1
        assert file != annotations or holds not in ("delete", "empty")
        doc = json.loads((root / annotations).read_text())
        check_hupr(sessions, root, file, holds, hupr_people(doc, sequences))


def _annotations(split: str, change):
    def edit(root):
        doc = json.loads((root / f"hrnet_annot_{split}.json").read_text())
        change(doc)
        replace(root / f"hrnet_annot_{split}.json", dumps(doc))
    return edit


def _nan_joint(doc):
    doc[0][0]["joints"][3][0] = float("nan")


# Found by the fuzz: crashes (tokenize.TokenError, ValueError, OverflowError, RecursionError, and
# OSError on a sequence folder named by 400 digits) and silent wrong results (a padded or empty
# frame read, one of two files for a frame picked, NaN joints kept). The COCO bbox of 3 numbers
# was found reading the reader; a negative image_id failed before, now with a clearer message.
BROKEN_HUPR = {
    "frame header the tokenizer refuses": ("val", _edit("single_3/hori/000000001.npy",
                                                        lambda b: b.replace(b"{", b"\0", 1)),
                                           "single_3: hori/000000001.npy: not a readable .npy array (TokenError"),
    "frame padded": ("val", _edit("single_3/vert/000000002.npy", lambda b: b + bytes(16)),
                     "session single_3: vert/000000002.npy: not a readable .npy array"),
    "two files for one frame": ("val", lambda r: shutil.copyfile(r / "single_3/hori/000000002.npy",
                                                                  r / "single_3/hori/1.npy"),
                                "session single_3: hori/: 000000001.npy and 1.npy are both frame 1"),
    "an empty frame": ("val", lambda r: replace(r / "single_5/hori/000000000.npy", np.zeros((2, 0, 4, 2), complex)),
                       "session single_5: hori/000000000.npy: shape (2, 0, 4, 2) is empty"),
    "nested too deeply": ("test", lambda r: replace(r / "hrnet_annot_test.json", DEEP),
                          "hrnet_annot_test.json: cannot read as JSON (nested too deeply)"),
    "a number too long to parse": ("val", _annotations("val", lambda d: d[0][0]["joints"][0].__setitem__(0, LONG)),
                                   "hrnet_annot_val.json: cannot read as JSON (Exceeds the limit (4300 digits)"),
    "image id beyond a folder name": ("test", _annotations("test", lambda d: d["annotations"][0].update(
        image_id=10 ** 400)), "hrnet_annot_test.json: image_id 100000000000… is not sequence × 100000 + frame"),
    "image id negative": ("test", _annotations("test", lambda d: d["annotations"][0].update(image_id=-5)),
                          "hrnet_annot_test.json: image_id -5 is not sequence × 100000 + frame"),
    "image id infinite": ("test", _annotations("test", lambda d: d["annotations"][0].update(image_id=float("inf"))),
                          "hrnet_annot_test.json: not HuPR's annotation format (OverflowError"),
    "joint beyond float": ("val", _annotations("val", lambda d: d[0][0]["joints"][0].__setitem__(0, 10 ** 400)),
                           "hrnet_annot_val.json: not HuPR's annotation format (OverflowError"),
    "joint NaN": ("val", _annotations("val", _nan_joint), "hrnet_annot_val.json: keypoints or bbox hold NaN"),
    "COCO bbox of three numbers": ("test", _annotations("test", lambda d: d["annotations"][0].update(bbox=[1, 2, 3])),
                                   "hrnet_annot_test.json: a bbox of 3 numbers, expected 4"),
}


@pytest.mark.parametrize("case", BROKEN_HUPR)
def test_a_hupr_tree_the_fuzz_broke_is_refused_by_name(hupr, tmp_path, case):
    split, breaking, reason = BROKEN_HUPR[case]
    root = relink(hupr, tmp_path / "hupr").resolve()
    breaking(root)
    with pytest.raises(SessionError) as caught:
        read_hupr(root, split, sequences=[3, 5] if split == "val" else None)
    assert reason in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_a_frame_name_with_a_superscript_digit_is_not_a_frame(hupr, tmp_path):
    root = relink(hupr, tmp_path / "hupr")
    shutil.copyfile(root / "single_3/hori/000000000.npy", root / "single_3/hori/².npy")  # crashed int("²")
    sessions = read_hupr(root, "val", sequences=[3, 5])
    assert [len(s.rf_t) for s in sessions] == [3, 1]
