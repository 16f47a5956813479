"""A clock that tests set by hand: a callable returning `now`, for the stores that take `clock=`."""

from __future__ import annotations


class Clock:
    """Returns `now` (seconds since the epoch) until a test moves it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
