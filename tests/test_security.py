"""Security rules as tests: nothing the project reads back is unpickled."""

import ast
import io
import pickle
from pathlib import Path

import pytest
import torch

from tasks.data import storage
from tasks.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("tasks", "flows", "models", "bench") for p in (ROOT / d).rglob("*.py"))


def _calls(name: str):
    """(file, line, call) of every call ``<anything>.<name>(…)`` or ``<name>(…)`` in the sources."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    yield path.relative_to(ROOT), node.lineno, node


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_every_torch_load_refuses_pickle():
    loads = [(f, line, c) for f, line, c in _calls("load") if isinstance(c.func, ast.Attribute)
             and getattr(c.func.value, "id", None) == "torch"]
    assert loads, "the scan found no torch.load at all: it is broken"
    unsafe = [f"{f}:{line}" for f, line, c in loads if _keyword(c, "weights_only") is not True]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_every_numpy_load_refuses_pickle():
    loads = [(f, line, c) for f, line, c in _calls("load") if isinstance(c.func, ast.Attribute)
             and getattr(c.func.value, "id", None) == "np"]
    assert loads
    unsafe = [f"{f}:{line}" for f, line, c in loads if _keyword(c, "allow_pickle") is not False]
    assert not unsafe, f"np.load without allow_pickle=False: {unsafe}"


def test_nothing_calls_pickle_loads():
    found = [f"{f}:{line}" for name in ("load", "loads", "Unpickler") for f, line, c in _calls(name)
             if isinstance(c.func, ast.Attribute) and getattr(c.func.value, "id", None) in ("pickle", "cloudpickle", "dill")]
    assert not found, f"unpickling in the sources: {found}"


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    url = str(tmp_path / "last.pt")
    buffer = io.BytesIO()
    torch.save({"model": {}, "payload": _Exploit(marker)}, buffer)  # what a hostile last.pt holds
    storage.write_bytes(url, buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(url)
    assert not marker.exists(), "loading the checkpoint ran its payload"
