"""The dashboard's words and times: human durations, local clocks in the config's zone, the state words,
and when a last action's reason is shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from runpod_manager.proxy.controller import PodView
from runpod_manager.proxy.dashboard import (
    cost_svg,
    human_duration,
    local_clock,
    local_day_start,
    reason_explains_state,
    relative_time,
    state_words,
)

NOW = datetime(2026, 11, 29, 11, 30, 15, 123456, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")  # UTC+1 in November
TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "0 s"), (0.4, "0 s"), (45, "45 s"), (59.6, "1 min"), (60, "1 min"), (12 * 60 + 59, "12 min"),
    (3600, "1 h"), (3 * 3600 + 5 * 60 + 30, "3 h 5 min"), (86400, "1 d"), (2 * 86400 + 4 * 3600 + 60, "2 d 4 h"),
    (-720, "12 min"),
])
def test_human_duration(seconds: float, words: str) -> None:
    assert human_duration(seconds) == words


def test_relative_time_says_in_or_ago() -> None:
    assert relative_time(NOW + timedelta(minutes=12, seconds=10), NOW) == "in 12 min"
    assert relative_time(NOW - timedelta(hours=3, minutes=5), NOW) == "3 h 5 min ago"
    assert relative_time(NOW + timedelta(milliseconds=300), NOW) == "now"


def test_local_clock_in_the_config_zone_without_microseconds() -> None:
    assert local_clock(NOW, NOW, BERLIN) == "12:30"
    assert local_clock(NOW, NOW, BERLIN, seconds=True) == "12:30:15"
    assert local_clock(NOW, NOW, UTC) == "11:30"
    assert local_clock(NOW + timedelta(days=1), NOW, BERLIN) == "Mon 12:30"
    assert local_clock(NOW + timedelta(days=30), NOW, BERLIN) == "2026-12-29 12:30"
    # Tokyo is already on the next day: the same instant is "today" there.
    assert local_clock(NOW + timedelta(hours=3), NOW, TOKYO) == "23:30"


def test_the_spend_day_starts_at_the_zones_midnight() -> None:
    assert local_day_start(NOW, BERLIN) == datetime(2026, 11, 29, tzinfo=BERLIN)
    assert local_day_start(NOW, TOKYO) == datetime(2026, 11, 29, tzinfo=TOKYO)
    assert local_day_start(datetime(2026, 11, 29, 23, 30, tzinfo=UTC), BERLIN) == datetime(2026, 11, 30,
                                                                                            tzinfo=BERLIN)


@pytest.mark.parametrize(("view", "waking", "words"), [
    (PodView(name="a", pod_id="p", status="RUNNING", ready=True, lease_open=True), False, "running · ready"),
    (PodView(name="a", pod_id="p", status="RUNNING", lease_open=True), False, "running · starting"),
    (PodView(name="a", pod_id="p", status="EXITED", last_action="stop",
             last_reason="idle for 900 s (idle_timeout_seconds 900)"), False, "stopped (idle)"),
    (PodView(name="a", pod_id="p", status="EXITED", last_action="stop",
             last_reason="daily cutoff 22:00 passed"), False, "stopped (cutoff)"),
    (PodView(name="a", pod_id="p", status="EXITED"), False, "stopped"),
    (PodView(name="a", pod_id="p", status="EXITED"), True, "waking…"),
    (PodView(name="a"), False, "no pod"),
    (PodView(name="a", last_action="terminate", last_reason="runtime limit 14400 s reached"), False,
     "no pod (runtime)"),
    (PodView(name="a", pod_id="p", status="PROVISIONING", lease_open=True), False, "provisioning"),
])
def test_state_words(view: PodView, waking: bool, words: str) -> None:
    assert state_words(view, waking=waking) == words


def test_a_stale_reason_is_not_shown_beside_a_ready_pod() -> None:
    stale = "lease open and no pod"
    ready = PodView(name="a", pod_id="p", status="RUNNING", ready=True, lease_open=True, last_action="create",
                    last_reason=stale)
    assert not reason_explains_state(ready, waking=False)
    stopped = PodView(name="a", pod_id="p", status="EXITED", last_action="stop", last_reason="idle for 900 s")
    assert reason_explains_state(stopped, waking=False)
    assert not reason_explains_state(stopped, waking=True)
    assert not reason_explains_state(PodView(name="a"), waking=False)


def test_cost_chart_names_both_amounts() -> None:
    svg = cost_svg(1.5, 12.0)
    assert svg.startswith("<svg") and "$1.50" in svg and "$12.00" in svg and "always-on" in svg
