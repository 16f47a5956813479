"""Warm hours: the window derivation (DST-safe), the lead before a window, and the planner's idle rule inside
a window (every other limit still applies, the spend cap wins)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runpod_manager.config import Config, load_config
from runpod_manager.errors import ConfigError
from runpod_manager.policy import (
    WARM_LEAD_SECONDS,
    limit_view,
    next_warm_lease_at,
    warm_lease_due,
    warm_start_due,
    warm_window_at,
)
from runpod_manager.state import PodRecord
from tests.unit.test_policy import CUTOFF, IDLE, MAIN, NOW, SPEND_CAP, Scenario, run

# NOW is Wednesday 2026-06-10 12:00 UTC.
WARM = {"limits": {"warm_hours": "Mon-Fri 08:55-18:00", "warm_idle_timeout_seconds": 3600}}
WEEKEND = {"limits": {"warm_hours": "Sat 10:00-14:00", "warm_idle_timeout_seconds": 3600}}


def zone_config(warm_hours: str, timezone: str = "UTC") -> Config:
    base = Config()
    return replace(base, limits=replace(base.limits, warm_hours=warm_hours, timezone=timezone))


PLANNER_ROWS = [
    ("idle 20 min inside a window: the warm timeout (1 h) keeps the pod", [IDLE, WARM], []),
    ("idle 20 min outside the window (Saturday only): the normal timeout stops it", [IDLE, WEEKEND],
     ["close_lease:idle", f"stop:{MAIN}"]),
    ("idle past the warm timeout inside a window", [WARM, {"opened_at": NOW - timedelta(hours=2),
                                               "last_request_at": NOW - timedelta(minutes=61)}],
     ["close_lease:idle", f"stop:{MAIN}"]),
    ("the spend cap wins inside a window", [WARM, SPEND_CAP], ["close_lease:spend_cap", f"terminate:{MAIN}"]),
    ("the cutoff still applies inside a window", [WARM, CUTOFF], ["close_lease:cutoff", f"terminate:{MAIN}"]),
    ("warm_idle_timeout_seconds 0 disables idle stop inside a window",
     [WARM, {"limits": {"warm_idle_timeout_seconds": 0}, "opened_at": NOW - timedelta(hours=4),
             "last_request_at": NOW - timedelta(hours=3)}], []),
]


@pytest.mark.parametrize(("triggers", "expected"), [row[1:] for row in PLANNER_ROWS],
                         ids=[row[0] for row in PLANNER_ROWS])
def test_planner_inside_and_outside_a_window(triggers: list[dict[str, Any]], expected: list[str]) -> None:
    assert run(*triggers) == expected


def test_idle_reason_names_the_warm_key() -> None:
    scenario = Scenario().merged(WARM).merged({"opened_at": NOW - timedelta(hours=2),
                                               "last_request_at": NOW - timedelta(minutes=61)})
    [close, _stop] = scenario.plan().actions
    assert "warm_idle_timeout_seconds 3600" in close.reason


def test_limit_view_uses_the_warm_timeout_inside_a_window() -> None:
    config, record, _observation, activity = Scenario().merged(WARM).inputs()
    view = limit_view(NOW, config, record, activity)
    assert view.idle_ends_at == NOW - timedelta(minutes=1) + timedelta(hours=1)
    config, record, _observation, activity = Scenario().merged(WEEKEND).inputs()
    assert limit_view(NOW, config, record, activity).idle_ends_at == NOW - timedelta(minutes=1) + timedelta(
        minutes=15)


def test_window_at_and_start_due() -> None:
    config = zone_config("Mon-Fri 08:55-18:00, Sat 10:00-14:00")
    window = (datetime(2026, 6, 10, 8, 55, tzinfo=UTC), datetime(2026, 6, 10, 18, 0, tzinfo=UTC))
    assert warm_window_at(NOW, config) == window
    before = window[0] - timedelta(seconds=WARM_LEAD_SECONDS)
    assert warm_window_at(before, config) is None
    assert warm_start_due(before, config) == window
    assert warm_start_due(before - timedelta(seconds=1), config) is None
    assert warm_start_due(window[1], config) is None  # the end is not inside
    saturday = datetime(2026, 6, 13, 11, 0, tzinfo=UTC)
    assert warm_window_at(saturday, config) == (datetime(2026, 6, 13, 10, tzinfo=UTC),
                                                datetime(2026, 6, 13, 14, tzinfo=UTC))
    assert warm_window_at(datetime(2026, 6, 14, 11, 0, tzinfo=UTC), config) is None  # Sunday
    assert warm_window_at(NOW, zone_config("")) is None


def test_lead_crosses_midnight_into_the_next_day() -> None:
    config = zone_config("Thu 00:02-01:00")
    due = warm_start_due(datetime(2026, 6, 10, 23, 59, tzinfo=UTC), config)  # Wednesday night
    assert due == (datetime(2026, 6, 11, 0, 2, tzinfo=UTC), datetime(2026, 6, 11, 1, 0, tzinfo=UTC))


def test_dst_day_keeps_local_wall_times() -> None:
    """On the spring-forward Sunday in Berlin (2026-03-29) a 08:00-10:00 window is 06:00-08:00 UTC; the day
    before it was 07:00-09:00 UTC."""
    config = zone_config("Sat-Sun 08:00-10:00", "Europe/Berlin")
    assert warm_window_at(datetime(2026, 3, 28, 7, 30, tzinfo=UTC), config) == (
        datetime(2026, 3, 28, 7, tzinfo=UTC), datetime(2026, 3, 28, 9, tzinfo=UTC))
    assert warm_window_at(datetime(2026, 3, 29, 6, 30, tzinfo=UTC), config) == (
        datetime(2026, 3, 29, 6, tzinfo=UTC), datetime(2026, 3, 29, 8, tzinfo=UTC))
    assert warm_window_at(datetime(2026, 3, 29, 8, 30, tzinfo=UTC), config) is None


@pytest.mark.parametrize(("value", "words"), [
    ("Mon-Fri 9-17", "expected HH:MM"),
    ("Mon-Fry 09:00-17:00", "'Fry' is not a weekday"),
    ("Fri-Mon 09:00-17:00", "runs backwards"),
    ("Mon 18:00-09:00", "ends before it starts"),
    ("Mon 09:00-25:00", "hour must be 0-23"),
    ("Mon 09:00-17:00,", "is not of the form"),
])
def test_config_rejects_bad_warm_hours(tmp_path: Path, value: str, words: str) -> None:
    path = tmp_path / "pod_config.toml"
    path.write_text(f'[limits]\nwarm_hours = "{value}"\n')
    with pytest.raises(ConfigError, match="warm_hours") as caught:
        load_config(path, env={})
    assert words in str(caught.value)


def test_config_rejects_bad_warm_hours_per_pod(tmp_path: Path) -> None:
    path = tmp_path / "pod_config.toml"
    path.write_text('[pods.chat]\nmodel = "m"\n[pods.chat.limits]\nwarm_hours = "Mon 9:00"\n')
    with pytest.raises(ConfigError, match=r"\[pods.chat.limits\] warm_hours"):
        load_config(path, env={})


def test_config_accepts_windows_and_per_pod_override(tmp_path: Path) -> None:
    path = tmp_path / "pod_config.toml"
    path.write_text('[limits]\ntimezone = "UTC"\nwarm_hours = "Mon-Fri 08:55-18:00, Sat 10:00-14:00"\n'
                    '[pods.chat]\nmodel = "m"\n[pods.chat.limits]\nwarm_idle_timeout_seconds = 7200\n')
    config = load_config(path, env={}).for_pod("chat")
    assert len(config.warm_windows) == 2
    assert config.limits.warm_idle_timeout_seconds == 7200


def test_the_next_windows_lead_is_not_hidden_by_a_window_already_warmed() -> None:
    """Two windows two minutes apart: at 11:58 the first (opened already) still holds now, and the second's
    lead has begun: its lease is due."""
    config = zone_config("Wed 09:00-12:00, Wed 12:02-18:00")
    first = (datetime(2026, 6, 10, 9, tzinfo=UTC), datetime(2026, 6, 10, 12, tzinfo=UTC))
    second = (datetime(2026, 6, 10, 12, 2, tzinfo=UTC), datetime(2026, 6, 10, 18, tzinfo=UTC))
    at = datetime(2026, 6, 10, 11, 58, tzinfo=UTC)
    assert warm_window_at(at, config) == first
    assert warm_lease_due(at, config, PodRecord(config_name="x")) == first
    assert warm_lease_due(at, config, PodRecord(config_name="x", warm_opened_for=first[0].isoformat())) == second
    # Both leads (08:55, 11:57) have begun today: the next one is a week later.
    assert next_warm_lease_at(at, config) == datetime(2026, 6, 17, 8, 55, tzinfo=UTC)
