"""Lint is part of the suite, so CI fails on what `ruff check` finds (the rules live in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import early

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_finds_nothing(pytestconfig: pytest.Config) -> None:
    # Started in the background when collection ended (tests/support/early.py); this waits for its result.
    returncode, output = early.mypy_result(pytestconfig, timeout_seconds=300)
    assert returncode == 0, output


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff is not None, "ruff is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
