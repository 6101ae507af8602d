"""The dataset layout on storage, and how shards are written and committed.

A dataset lives at ``<root>/<dataset>/<version>/``::

    train-000000.tar …      WebDataset shards: members ``<key>.<ext>``
    _commits/<shard>.json   one commit record per shard (samples, bytes, sha256, its rejects)
    rejects.jsonl           every input that could not be read, and why
    manifest.json           written LAST: the commit point of the whole dataset

Shard ``i`` of a split is a pure function of the sorted input list and the parameters (see
``plan``), and tar bytes are deterministic (fixed mtime, owner and mode), so a re-run skips
every shard whose commit record and checksum still match and a crash loses at most the shards
that were in flight. Shards are built in a local staging folder per dataset and user
(``staging_dir``) before upload; the manifest's commit removes it with any temp a killed
writer left beside the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tasks.data import storage
from tasks.errors import BadInput

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
FORMAT = "visionflow.dataset/1"

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(/[A-Za-z0-9][A-Za-z0-9_\-]*)*$")
_EXT = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")


class ShardError(BadInput):
    """A shard, sample or manifest is malformed; the message names it."""


def dataset_url(root: str, dataset: str, version: str) -> str:
    for part, what in ((dataset, "dataset name"), (version, "version")):
        if not _KEY.match(part) or "/" in part:
            raise ShardError(f"{what} {part!r} must be letters, digits, '-' or '_'")
    return storage.join(root, dataset, version)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True)
class ShardSpec:
    """What one shard holds: its split, its index, and the inputs it is built from."""

    split: str
    index: int
    inputs: tuple  # JSON-able references (paths, record indices, …) in shard order

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def plan(split: str, inputs: Sequence, shard_size: int) -> list[ShardSpec]:
    """Cut a (sorted) input list into consecutive shards of ``shard_size`` inputs."""
    if shard_size < 1:
        raise ShardError(f"shard_size must be positive, got {shard_size}")
    return [
        ShardSpec(split, i, tuple(inputs[start : start + shard_size]))
        for i, start in enumerate(range(0, len(inputs), shard_size))
    ]


def plan_digest(spec: ShardSpec, params: dict) -> str:
    """Identity of a shard's content: the same digest means the same bytes."""
    blob = json.dumps({"spec": [spec.split, spec.index, list(spec.inputs)], "params": params},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- writing -------------------------------------------------------------------------------


def encode_sample(sample: dict[str, Any]) -> list[tuple[str, bytes]]:
    """``{"__key__": k, "png": b"…", "cls": 3}`` → ordered tar members ``k.png``, ``k.cls``."""
    key = sample.get("__key__")
    if not isinstance(key, str) or not _KEY.match(key):
        raise ShardError(f"sample key {key!r} is not a safe tar member name")
    members = []
    for ext in sorted(k for k in sample if k != "__key__"):
        if not _EXT.match(ext):
            raise ShardError(f"sample {key}: extension {ext!r} is not a safe tar member suffix")
        value = sample[ext]
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        elif isinstance(value, str):
            data = value.encode()
        elif isinstance(value, int):
            data = str(value).encode()
        elif isinstance(value, (dict, list)):
            data = json.dumps(value, sort_keys=True).encode()
        else:
            raise ShardError(f"sample {key}.{ext}: cannot store a {type(value).__name__}")
        members.append((f"{key}.{ext}", data))
    return members


def write_tar(samples: Iterable[dict], path: Path) -> int:
    """Write samples to a tar with deterministic headers; returns the sample count. The bytes are
    those of ``tarfile`` (USTAR, mode 0444, uid/gid 0, mtime 0, padded to 10 KiB records), with
    the headers made here: ``tarfile`` spends more on them than the ingest spends on encoding."""
    count = written = 0
    with open(path, "wb") as f:
        for sample in samples:
            for name, data in encode_sample(sample):
                padding = -len(data) % tarfile.BLOCKSIZE
                f.write(_ustar_header(name, len(data)))
                f.write(data)
                f.write(bytes(padding))
                written += tarfile.BLOCKSIZE + len(data) + padding
            count += 1
        end = 2 * tarfile.BLOCKSIZE  # the end-of-archive marker, then zeros to a whole record
        f.write(bytes(end + -(written + end) % tarfile.RECORDSIZE))
    return count


def _ustar_header(name: str, size: int) -> bytes:
    raw = name.encode()
    if len(raw) > 100:  # needs USTAR's prefix field: tarfile knows where to split
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o444, 0, 0, "", ""
        return info.tobuf(tarfile.USTAR_FORMAT)
    fields = (raw.ljust(100, b"\0"), b"0000444\0", b"0000000\0", b"0000000\0", b"%011o\0" % size,
              b"00000000000\0", b" " * 8, tarfile.REGTYPE, bytes(100), tarfile.POSIX_MAGIC)
    header = b"".join(fields).ljust(tarfile.BLOCKSIZE, b"\0")  # empty uname, gname, dev numbers, prefix
    return header[:148] + b"%06o\0" % sum(header) + header[155:]  # checksum over blanks, as tarfile


@dataclass
class ShardRecord:
    """The commit record of one shard; its rejects travel with it so none are lost on resume."""

    name: str
    split: str
    samples: int
    bytes: int
    sha256: str
    digest: str
    rejects: list[dict] = field(default_factory=list)


Builder = Callable[[ShardSpec], tuple[Iterable[dict], list[dict]]]


def staging_dir(url: str) -> Path:
    """The local folder where this user's shards of ``url`` are built before upload. It is
    named by the dataset, not by the writer, so the commit finds (and removes) the half-built
    shards of a writer that was killed: a private temp folder would stay behind forever."""
    root = Path(tempfile.gettempdir(), f"vf-staging-{os.getuid()}")
    root.mkdir(mode=0o700, exist_ok=True)
    if root.is_symlink() or root.stat().st_uid != os.getuid():
        raise ShardError(f"{root}: belongs to another user; remove it or set TMPDIR elsewhere")
    key = url if storage.is_s3(url) else str(Path(url).resolve())
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def commit_shard(url: str, spec: ShardSpec, params: dict, build: Builder,
                 scratch: Path | None = None) -> tuple[ShardRecord, bool]:
    """Build, upload and commit one shard unless an identical one is already committed.

    ``build(spec)`` returns ``(samples, rejects)``; samples may be a generator that appends to
    ``rejects`` as it goes. Returns the record and whether the shard was (re)written. The shard
    is built under ``scratch`` when given (the caller's to clean), else in ``staging_dir(url)``.
    """
    digest = plan_digest(spec, params)
    record_url = storage.join(url, "_commits", spec.name + ".json")
    shard_url = storage.join(url, spec.name)
    committed = _committed_record(record_url, shard_url, digest)
    if committed is not None:
        return committed, False
    if scratch is None:
        scratch = staging_dir(url)
        scratch.mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="vf-shard-") as tmp:
        local = Path(tmp, spec.name)
        samples, rejects = build(spec)
        count = write_tar(samples, local)
        checksum = _sha256_file(local)
        storage.upload_file(local, shard_url, checksum=checksum)
        record = ShardRecord(spec.name, spec.split, count, local.stat().st_size, checksum, digest,
                             list(rejects))
    storage.write_bytes(record_url, json.dumps(asdict(record), sort_keys=True).encode())
    return record, True


def _committed_record(record_url: str, shard_url: str, digest: str) -> ShardRecord | None:
    """The shard's commit record (its rejects with it) when it and the shard are intact; None
    (rebuild the shard) for a damaged record: one that is not JSON, lacks a field or holds one of
    the wrong type, or names another shard. A field is never defaulted: a record without its
    rejects would drop them from rejects.jsonl."""
    if not storage.exists(record_url):
        return None
    try:
        fields = json.loads(storage.read_bytes(record_url))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not _well_formed_record(fields, shard_url.rstrip("/").rsplit("/", 1)[-1]):
        return None
    record = ShardRecord(**fields)
    if record.digest != digest or not storage.exists(shard_url):
        return None
    return record if storage.sha256(shard_url) == record.sha256 else None


_RECORD_TYPES = {"name": str, "split": str, "samples": int, "bytes": int, "sha256": str, "digest": str, "rejects": list}


def _well_formed_record(fields, shard: str) -> bool:
    return (isinstance(fields, dict) and fields.keys() == _RECORD_TYPES.keys()
            and all(type(fields[k]) is t for k, t in _RECORD_TYPES.items())  # type(): True is no sample count
            and fields["samples"] >= 0 and fields["bytes"] >= 0 and fields["name"] == shard
            and fields["name"].rsplit("-", 1)[0] == fields["split"]
            and all(isinstance(r, dict) for r in fields["rejects"]))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- the manifest ----------------------------------------------------------------------------


def write_manifest(url: str, *, dataset: str, version: str, specs: Sequence[ShardSpec],
                   records: Sequence[ShardRecord], classes: list[str], params: dict,
                   source_fingerprint: str) -> dict:
    """Write ``rejects.jsonl`` and then ``manifest.json`` (the commit point) for a full plan."""
    by_name = {r.name: r for r in records}
    missing = [s.name for s in specs if s.name not in by_name]
    if missing:
        raise ShardError(f"{url}: cannot commit the manifest, shards not written: {missing[:5]}")
    splits: dict[str, dict] = {}
    rejects: list[dict] = []
    for spec in sorted(specs, key=lambda s: (s.split, s.index)):
        record = by_name[spec.name]
        split = splits.setdefault(spec.split, {"samples": 0, "shards": []})
        split["samples"] += record.samples
        split["shards"].append({"name": record.name, "samples": record.samples,
                                "bytes": record.bytes, "sha256": record.sha256})
        rejects.extend(record.rejects)
    manifest = {
        "format": FORMAT,
        "dataset": dataset,
        "version": version,
        "splits": splits,
        "classes": classes,
        "params": params,
        "source_fingerprint": source_fingerprint,
        "rejects": len(rejects),
    }
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects)
    storage.sweep_temps(url)  # every shard is committed: any temp left is a killed writer's,
    shutil.rmtree(staging_dir(url), ignore_errors=True)  # as is any shard still staged
    storage.write_bytes(storage.join(url, REJECTS), lines.encode())
    storage.write_bytes(storage.join(url, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def read_manifest(url: str) -> dict:
    manifest_url = storage.join(url, MANIFEST)
    if not storage.exists(manifest_url):
        raise ShardError(f"{url}: no {MANIFEST} (the dataset was never ingested, or its ingest "
                         "did not finish; run the ingest flow again to complete it)")
    try:
        manifest = json.loads(storage.read_bytes(manifest_url))
    except ValueError as exc:
        raise ShardError(f"{manifest_url}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{manifest_url}: not a manifest (a JSON {type(manifest).__name__}, not an object)")
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{manifest_url}: unknown format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def manifest_checksum(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def check_compatible(url: str, params: dict, source_fingerprint: str) -> dict | None:
    """The existing manifest at ``url`` if it was built from the same inputs and parameters.

    A manifest built from anything else is an error: a version is immutable once committed.
    """
    if not storage.exists(storage.join(url, MANIFEST)):
        return None
    manifest = read_manifest(url)
    params = json.loads(json.dumps(params, sort_keys=True, default=str))
    if manifest["params"] != params or manifest["source_fingerprint"] != source_fingerprint:
        raise ShardError(f"{url} already holds a dataset built from other inputs or parameters; "
                         "choose another version")
    return manifest


def class_names(manifest: dict) -> list[str]:
    """Readable class names: the manifest's ``params.class_names`` (ImageNet's synset names, first
    synonym: "tench") where present, else its class ids; a name two classes share (ImageNet has
    two "crane"s) keeps its id beside it."""
    ids = manifest["classes"]
    names = (manifest.get("params") or {}).get("class_names") or ids
    short = [str(n).split(",")[0].strip() or i for n, i in zip(names, ids)]
    return [f"{s} ({i})" if short.count(s) > 1 else s for s, i in zip(short, ids)]
