"""End-to-end fixtures: a sandbox subprocess and the rpm CLI pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clock import WallClockFile
from tests.support.proxy_fakes import FakeUpstream
from tests.support.rpm import Rpm, Sandbox, run_sandbox


@pytest.fixture
def sandbox_flags() -> list[str]:
    """Override in a module (or with pytest.mark.parametrize indirect) for fault flags."""
    return []


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[Sandbox]:
    """One default emulator per module: starting a subprocess per test was most of many e2e tests' time."""
    with run_sandbox() as running:
        yield running


@pytest.fixture
def sandbox(sandbox_flags: list[str], request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The module's emulator reset to its starting world (no pods, spend, calls or faults), or, for a test
    with its own flags, a fresh emulator of its own: a flag such as `--seed` promises a world from its start."""
    if sandbox_flags:
        with run_sandbox(*sandbox_flags) as running:
            yield running
        return
    shared: Sandbox = request.getfixturevalue("shared_sandbox")
    assert shared.process.poll() is None, "the module's sandbox exited during an earlier test"
    shared.control("reset", {})
    yield shared


@pytest.fixture
def rpm(sandbox: Sandbox, isolated_home: Path, tmp_path: Path) -> Iterator[Rpm]:
    cli = Rpm(home=isolated_home, sandbox=sandbox, config_path=tmp_path / "pod_config.toml")
    cli.write_config()
    yield cli
    # Never leave a proxy behind, whatever the test did. Without one, the sandbox's reset (or its exit) ends
    # the test's pods, so the `rpm shutdown` subprocess is spent only where a proxy could outlive the test.
    from runpod_manager.paths import resolve_paths
    from runpod_manager.proxy.process import find_proxies

    if find_proxies(resolve_paths(cli.env()), scan=True):
        cli.run("shutdown", timeout=30)


@pytest.fixture
def wall_clock(rpm: Rpm, tmp_path: Path) -> WallClockFile:
    """The test's `rpm` subprocesses (and the proxies they start) read the time from this file, frozen at
    the real time (to the second) when the test began, until the test moves it: limits pass without sleeps."""
    from datetime import UTC, datetime

    from runpod_manager.ports import TEST_CLOCK_VARIABLE

    clock = WallClockFile(tmp_path / "wall-clock", datetime.now(UTC).replace(microsecond=0))
    rpm.extra_env[TEST_CLOCK_VARIABLE] = str(clock.path)
    return clock


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[FakeUpstream]:
    """A vLLM-like upstream for the in-process proxy tests, one per module."""
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream_server.reset()
    yield upstream_server
    upstream_server.hold_streams = False
    upstream_server.release(50)  # never leave a held stream behind for the next test
