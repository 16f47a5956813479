"""Slow, self-contained checks started when collection ends, so they run beside the rest of the suite.

`mypy --strict` is the suite's longest single test and uses one core for its whole run, while the e2e tests
mostly wait on subprocesses and sockets: started early, its time overlaps theirs instead of adding to it.
The test still asserts on its full result; only its start moves.
"""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MYPY_TEST = "tests/test_lint.py::test_mypy_strict_finds_nothing"
_MYPY = pytest.StashKey[subprocess.Popen[str]]()


def _find_mypy() -> str | None:
    return shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")


def _spawn() -> subprocess.Popen[str]:
    mypy = _find_mypy()
    assert mypy is not None, "mypy is a test dependency: pip install -e '.[test]'"
    return subprocess.Popen([mypy, "--strict", "--no-incremental", "runpod_manager"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def compile_package() -> None:
    """Write runpod_manager's bytecode once when the environment forbids Python to (PYTHONDONTWRITEBYTECODE):
    otherwise each of the suite's hundreds of `rpm` and sandbox subprocesses compiles the package again.
    Without that variable the first subprocess writes the same files, so this changes nothing there."""
    if sys.dont_write_bytecode:
        compileall.compile_dir(ROOT / "runpod_manager", quiet=1)


def start(session: pytest.Session) -> None:
    """Start mypy in the background when the run includes its test (not for a run of other tests). Under
    pytest-xdist every worker collects every test, so there the test starts mypy itself when it runs."""
    if hasattr(session.config, "workerinput"):
        return
    if any(item.nodeid == MYPY_TEST for item in session.items) and _find_mypy() is not None:
        session.config.stash[_MYPY] = _spawn()


def mypy_result(config: pytest.Config, timeout_seconds: float) -> tuple[int, str]:
    """The early mypy's exit code and output, or a run started now if none was started early."""
    process = config.stash.get(_MYPY, None)
    if process is None:
        process = _spawn()
    try:
        output, _ = process.communicate(timeout=timeout_seconds)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, output


def stop(config: pytest.Config) -> None:
    """Never leave mypy running after the session (its test was deselected by -x, or the run was interrupted)."""
    process = config.stash.get(_MYPY, None)
    if process is not None and process.poll() is None:
        process.kill()
        process.communicate()
