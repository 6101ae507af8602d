"""The shard tar reader: the same samples as WebDataset's own iterator on the same archives
(ours, ``tarfile``'s USTAR / GNU / PAX), and a clear refusal of what a shard must not hold."""

from __future__ import annotations

import io
import tarfile

import pytest
from webdataset.tariterators import group_by_keys, tar_file_iterator

from tasks.data import shards
from tasks.data.tarstream import TarFormatError, members, samples


def _tar(entries, fmt=tarfile.USTAR_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _webdataset(blob: bytes) -> list[dict]:
    members_ = ({**m, "__url__": "x"} for m in tar_file_iterator(io.BytesIO(blob)))
    return [{k: v for k, v in s.items() if k != "__url__"} for s in group_by_keys(members_)]


ENTRIES = [("a/000.png", b"\x89PNG" * 100), ("a/000.cls", b"3"), ("a/000.seg.png", b""),
           ("a/001.png", b"x" * 513), ("a/001.cls", b"4"), ("b" * 120 + "/002.json", b"{}")]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_same_samples_as_webdataset(fmt):
    blob = _tar(ENTRIES, fmt) if fmt != tarfile.USTAR_FORMAT else _tar(ENTRIES[:-1])
    assert list(samples(io.BytesIO(blob))) == _webdataset(blob)


def test_reads_what_the_shard_writer_writes(tmp_path):
    path = tmp_path / "s.tar"
    written = [{"__key__": f"k{i:03d}", "png": bytes([i]) * i, "cls": i} for i in range(40)]
    shards.write_tar(written, path)
    got = list(samples(io.BytesIO(path.read_bytes())))
    assert got == [{"__key__": s["__key__"], "png": s["png"], "cls": str(s["cls"]).encode()} for s in written]


def test_a_stream_that_returns_short_reads_is_read_whole():
    class Trickle(io.BytesIO):
        def read(self, n=-1):
            return super().read(min(n, 7) if n and n > 0 else n)

    blob = _tar(ENTRIES[:5])
    assert list(members(Trickle(blob))) == list(members(io.BytesIO(blob)))


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b[:700], "ends inside member data"),
    (lambda b: b[:100] + b"X" + b[101:], "bad header checksum"),
    (lambda b: b"not a tar at all".ljust(512, b"!"), "bad header checksum"),
])
def test_damaged_archives_are_refused_with_the_byte_offset(damage, reason):
    with pytest.raises(TarFormatError, match=reason):
        list(members(io.BytesIO(damage(_tar(ENTRIES[:2])))))


@pytest.mark.parametrize("name", ["/etc/passwd.x", "../up.png", "a/../../b.png"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(TarFormatError, match="unsafe member name"):
        list(members(io.BytesIO(_tar([(name, b"1")]))))


def test_links_and_directories_are_refused():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        link = tarfile.TarInfo("a.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    with pytest.raises(TarFormatError, match="not a regular file"):
        list(members(io.BytesIO(out.getvalue())))


def test_a_member_without_extension_or_a_repeated_field_is_refused():
    with pytest.raises(TarFormatError, match="no extension"):
        list(samples(io.BytesIO(_tar([("README", b"1")]))))
    with pytest.raises(TarFormatError, match="holds 'png' twice"):
        list(samples(io.BytesIO(_tar([("a.png", b"1"), ("a.png", b"2")]))))
