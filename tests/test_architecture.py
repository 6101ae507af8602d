"""The shape of the code holds: import-linter's contracts (pyproject.toml) pass on the tree, and
fail on a copy of it where a model imports the task layer; benches run as scripts too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("models/width.py", "import tasks.config", "models import neither tasks nor flows"),
    ("tasks/train/engine.py", "import tasks.mnist.recipes", "the shared planes import no experiment package"),
])
def test_a_violation_breaks_a_contract(tmp_path, module, line, broken):
    for name in ("flows", "tasks", "models"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # a deliberate violation\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout


@pytest.mark.parametrize("bench", sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "__init__.py"))
def test_every_bench_runs_as_a_script(bench):
    """``python bench/x.py`` puts bench/ first on sys.path: no file there may shadow a package."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / bench), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
