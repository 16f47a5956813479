"""Clocks that tests set by hand: a callable returning `now`, for the stores that take `clock=`, and the
file that sets the wall clock of `rpm` subprocesses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path


class Clock:
    """Returns `now` (seconds since the epoch) until a test moves it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class WallClockFile:
    """The wall clock of a test's `rpm` and proxy subprocesses (RPM_TEST_CLOCK_FILE, ports.wall_clock):
    frozen at `now` until the test moves it, so a limit is passed by a write instead of a sleep."""

    def __init__(self, path: Path, now: datetime) -> None:
        self.path = path
        self.set(now)

    @property
    def now(self) -> datetime:
        return datetime.fromisoformat(self.path.read_text(encoding="utf-8"))

    def set(self, moment: datetime) -> None:
        # Written aside and renamed: a subprocess reading it at that moment sees the old or the new instant.
        aside = self.path.with_name(self.path.name + ".new")
        aside.write_text(moment.astimezone(UTC).isoformat(), encoding="utf-8")
        aside.replace(self.path)

    def advance(self, seconds: float) -> datetime:
        self.set(self.now + timedelta(seconds=seconds))
        return self.now
