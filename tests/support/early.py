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


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def compile_package(config: pytest.Config) -> None:
    """Write runpod_manager's bytecode once when the environment forbids Python to (PYTHONDONTWRITEBYTECODE):
    otherwise each of the suite's hundreds of `rpm` and sandbox subprocesses compiles the package again.
    Without that variable the first subprocess writes the same files, so this changes nothing there. Under
    pytest-xdist the controller does it, before its workers run anything."""
    if sys.dont_write_bytecode and not _is_xdist_worker(config):
        compileall.compile_dir(ROOT / "runpod_manager", quiet=1)


def schedule_first(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, move the mypy test's file to the front of the collection (every worker collects
    the same order, so they agree): the first worker starts mypy at once and it runs beside the other files,
    where last it would add its whole time to the run's end. A serial run keeps its order (`start` below)."""
    if not _is_xdist_worker(config):
        return
    mypy_file = MYPY_TEST.partition("::")[0]
    first = [item for item in items if item.nodeid.partition("::")[0] == mypy_file]
    if first:
        items[:] = first + [item for item in items if item not in first]


def start(session: pytest.Session) -> None:
    """Start mypy in the background when the run includes its test (not for a run of other tests). Under
    pytest-xdist every worker collects every test and no worker knows which one will run it, so there the
    test starts mypy itself when it runs (`schedule_first` makes that the start of the run): once."""
    if _is_xdist_worker(session.config):
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
