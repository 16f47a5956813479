"""The control plane's test-only clock seam (ports.wall_clock): off unless asked for, never against RunPod."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runpod_manager.config import Config
from runpod_manager.ports import TEST_CLOCK_VARIABLE, utc_now, wall_clock
from tests.support.clock import WallClockFile

EMULATOR = "http://127.0.0.1:41234"
NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _config(base_url: str) -> Config:
    config = Config()
    return dataclasses.replace(config, api=dataclasses.replace(config.api, base_url=base_url))


def test_without_the_variable_it_is_the_real_clock() -> None:
    assert wall_clock(_config(EMULATOR), environ={}) is utc_now


def test_the_file_sets_the_time_at_every_call(tmp_path: Path) -> None:
    file = WallClockFile(tmp_path / "clock", NOON)
    clock = wall_clock(_config(EMULATOR), environ={TEST_CLOCK_VARIABLE: str(file.path)})
    assert clock() == NOON
    file.advance(90)
    assert clock() == datetime(2026, 3, 2, 12, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize("base_url", ["https://rest.runpod.io/v1", "https://rest.runpod.io/v2",
                                      "http://10.0.0.5:8080", "http://localhost.example.com"])
def test_it_is_ignored_unless_the_api_is_on_this_machine(tmp_path: Path, base_url: str) -> None:
    file = WallClockFile(tmp_path / "clock", NOON)
    assert wall_clock(_config(base_url), environ={TEST_CLOCK_VARIABLE: str(file.path)}) is utc_now


def test_an_instant_without_its_offset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    path.write_text("2026-03-02T12:00:00", encoding="utf-8")
    with pytest.raises(ValueError, match="UTC offset"):
        wall_clock(_config("http://localhost:9"), environ={TEST_CLOCK_VARIABLE: str(path)})()
