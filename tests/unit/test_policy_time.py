"""The planner's clock edges: time zones, DST, late runs, clock skew and the spend day.

The daily cutoff is a wall time in the configured zone; the planner turns it into UTC instants. These
tests pin what happens when that wall time does not exist (spring forward), happens twice (fall back),
falls on a 23- or 25-hour day, or is passed while the machine sleeps — and that observed times later
than `now` (another machine's clock) never end a pod early.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from runpod_manager import spend
from runpod_manager.policy import (
    STARTS,
    ActionKind,
    limit_view,
    local_day,
    next_cutoff,
    plan,
    start_refusal,
)
from runpod_manager.runpod.models import PodStatus
from runpod_manager.state import PodRecord
from tests.unit.test_policy import MAIN, Scenario, check_sane, summary

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
CLOSED_BY_CUTOFF = ["close_lease:cutoff", f"terminate:{MAIN}"]
CLOSED_BY_RUNTIME = ["close_lease:runtime", f"terminate:{MAIN}"]


def at(zone: str, *wall: int, fold: int = 0) -> datetime:
    """The UTC instant of a wall time in `zone` (fold=1: the second of a repeated wall time)."""
    return datetime(*wall, tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)  # type: ignore[misc]


def wall(instant: datetime, zone: str) -> str:
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M%z")


def lease(zone: str, cutoff: str, opened_at: datetime, **changes: object) -> Scenario:
    """An open lease in `zone` with only the cutoff and runtime limits in play (idle and spend are off)."""
    limits = {"timezone": zone, "daily_cutoff": cutoff, "runtime_seconds": 3 * 24 * 3600,
              "idle_timeout_seconds": 0, "max_daily_spend_usd": 0.0}
    limits.update(changes.pop("limits", {}))  # type: ignore[arg-type]
    return Scenario(limits=limits, opened_at=opened_at, last_request_at=None, listed=False).merged(changes)


def planned(scenario: Scenario, now: datetime) -> list[str]:
    result = scenario.plan(now)
    check_sane(result)
    return summary(result)


def cutoffs_between(scenario: Scenario, start: datetime, end: datetime) -> list[datetime]:
    """Every cutoff instant in (start, end], found by stepping next_cutoff."""
    config = scenario.config()
    found: list[datetime] = []
    instant = next_cutoff(start, config)
    while instant is not None and instant <= end:
        found.append(instant)
        instant = next_cutoff(instant, config)
    return found


# ------------------------------------------------------------------------- "00:00" in many zones

ZONE_MIDNIGHTS = [
    # zone, the local date whose midnight ends the lease, and the UTC instant of that midnight
    ("UTC", (2026, 6, 11), datetime(2026, 6, 11, 0, 0, tzinfo=UTC)),
    ("Europe/Berlin", (2026, 6, 11), datetime(2026, 6, 10, 22, 0, tzinfo=UTC)),  # CEST, +2
    ("Europe/Berlin", (2026, 1, 11), datetime(2026, 1, 10, 23, 0, tzinfo=UTC)),  # CET, +1
    ("America/New_York", (2026, 6, 11), datetime(2026, 6, 11, 4, 0, tzinfo=UTC)),
    ("Asia/Kolkata", (2026, 6, 11), datetime(2026, 6, 10, 18, 30, tzinfo=UTC)),  # +5:30, no DST
    ("Australia/Lord_Howe", (2026, 1, 11), datetime(2026, 1, 10, 13, 0, tzinfo=UTC)),  # +11 in summer
    ("Australia/Lord_Howe", (2026, 6, 11), datetime(2026, 6, 10, 13, 30, tzinfo=UTC)),  # +10:30 in winter
    ("Pacific/Apia", (2026, 6, 11), datetime(2026, 6, 10, 11, 0, tzinfo=UTC)),  # +13
]


@pytest.mark.parametrize(("zone", "day", "midnight"), ZONE_MIDNIGHTS,
                         ids=[f"{zone}-{day[1]:02}" for zone, day, _ in ZONE_MIDNIGHTS])
def test_midnight_cutoff_is_local_midnight(zone: str, day: tuple[int, int, int], midnight: datetime) -> None:
    assert at(zone, *day, 0, 0) == midnight  # the table itself is right
    scenario = lease(zone, "00:00", midnight - timedelta(hours=3))
    assert next_cutoff(midnight - timedelta(hours=3), scenario.config()) == midnight
    assert planned(scenario, midnight - SECOND) == []
    assert planned(scenario, midnight) == CLOSED_BY_CUTOFF
    reason = scenario.plan(midnight).actions[0].reason
    assert reason == "daily cutoff 00:00 passed"


# ------------------------------------------------------------- a cutoff that does not exist that day

SKIPPED = [
    # zone, cutoff, the spring-forward date, the wall time it resolves to, in UTC
    # New York jumps 02:00 → 03:00: 02:30 read with the old offset (-5) is 03:30 EDT.
    ("America/New_York", "02:30", (2026, 3, 8), datetime(2026, 3, 8, 7, 30, tzinfo=UTC)),
    # Lord Howe jumps 02:00 → 02:30 (a 30-minute DST): 02:15 is 02:45.
    ("Australia/Lord_Howe", "02:15", (2026, 10, 4), datetime(2026, 10, 3, 15, 45, tzinfo=UTC)),
    # Havana and Santiago skip midnight itself: "00:00" is 01:00 that day.
    ("America/Havana", "00:00", (2026, 3, 8), datetime(2026, 3, 8, 5, 0, tzinfo=UTC)),
    ("America/Santiago", "00:00", (2026, 9, 6), datetime(2026, 9, 6, 4, 0, tzinfo=UTC)),
    # Apia skipped the whole of 2011-12-30 (UTC-10 → UTC+14): its midnight is the next one.
    ("Pacific/Apia", "00:00", (2011, 12, 30), datetime(2011, 12, 30, 10, 0, tzinfo=UTC)),
]


@pytest.mark.parametrize(("zone", "cutoff", "day", "expected"), SKIPPED, ids=[row[0] for row in SKIPPED])
def test_a_skipped_cutoff_fires_once_just_after_the_jump(
        zone: str, cutoff: str, day: tuple[int, int, int], expected: datetime) -> None:
    opened_at = at(zone, *day) - timedelta(hours=6)  # the evening before
    scenario = lease(zone, cutoff, opened_at)
    config = scenario.config()
    assert next_cutoff(opened_at, config) == expected
    # Not skipped: the lease ends that day, at the first wall time after the jump that is as late as asked.
    assert planned(scenario, expected - SECOND) == []
    assert planned(scenario, expected) == CLOSED_BY_CUTOFF
    # Fires once: the next cutoff is the next day's, ~a day later, not a second one the same day.
    following = next_cutoff(expected, config)
    assert following is not None
    assert timedelta(hours=22) <= following - expected <= timedelta(hours=26)
    hour, minute = (int(part) for part in cutoff.split(":"))
    assert following.astimezone(ZoneInfo(zone)).time().replace(second=0) == datetime(2000, 1, 1, hour, minute).time()
    assert len(cutoffs_between(scenario, opened_at, opened_at + DAY)) == 1


def test_spring_forward_cutoff_reason_shows_the_wall_time_that_exists() -> None:
    scenario = lease("America/New_York", "02:30", at("America/New_York", 2026, 3, 8, 1, 0))
    result = scenario.plan(datetime(2026, 3, 8, 7, 30, tzinfo=UTC))
    assert result.actions[0].reason == "daily cutoff 03:30 passed"


@pytest.mark.parametrize(("opened_wall", "expected_wall"), [
    ((2026, 3, 8, 1, 59), "2026-03-08 03:30-0400"),  # just before the jump: ends the same night
    ((2026, 3, 8, 3, 10), "2026-03-08 03:30-0400"),  # inside the hour that 02:30 was moved to
    ((2026, 3, 8, 3, 45), "2026-03-09 02:30-0400"),  # after it: the next day's 02:30, not skipped to 03:30
])
def test_spring_forward_lease_deadline(opened_wall: tuple[int, ...], expected_wall: str) -> None:
    opened_at = at("America/New_York", *opened_wall)
    scenario = lease("America/New_York", "02:30", opened_at, limits={"runtime_seconds": 2 * 24 * 3600})
    _, record, _, _ = scenario.inputs()
    assert record.lease is not None
    assert wall(record.lease.deadline, "America/New_York") == expected_wall
    assert record.lease.deadline > opened_at


# ------------------------------------------------------------------ a cutoff that happens twice that day

REPEATED = [
    # zone, cutoff, fall-back date, first occurrence, second occurrence (both UTC)
    ("America/New_York", "01:30", (2026, 11, 1),
     datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
    ("Australia/Lord_Howe", "01:45", (2026, 4, 5),
     datetime(2026, 4, 4, 14, 45, tzinfo=UTC), datetime(2026, 4, 4, 15, 15, tzinfo=UTC)),
    # Havana falls back 01:00 → 00:00: midnight happens twice.
    ("America/Havana", "00:00", (2026, 11, 1),
     datetime(2026, 11, 1, 4, 0, tzinfo=UTC), datetime(2026, 11, 1, 5, 0, tzinfo=UTC)),
]


@pytest.mark.parametrize(("zone", "cutoff", "day", "first", "second"), REPEATED, ids=[row[0] for row in REPEATED])
def test_a_repeated_cutoff_fires_at_its_first_occurrence_only(
        zone: str, cutoff: str, day: tuple[int, int, int], first: datetime, second: datetime) -> None:
    hour, minute = (int(part) for part in cutoff.split(":"))
    assert at(zone, *day, hour, minute, fold=0) == first and at(zone, *day, hour, minute, fold=1) == second
    before = lease(zone, cutoff, first - timedelta(hours=2))
    assert planned(before, first - SECOND) == []
    assert planned(before, first) == CLOSED_BY_CUTOFF
    # A run during the second occurrence still ends a lease opened before the first.
    assert planned(before, second) == CLOSED_BY_CUTOFF
    # A lease opened between the two occurrences is not ended by the second one: once a day.
    between = lease(zone, cutoff, first + (second - first) / 2)
    assert planned(between, second) == []
    assert planned(between, second + timedelta(hours=2)) == []
    assert len(cutoffs_between(before, first - timedelta(hours=2), first + DAY - timedelta(hours=2))) == 1
    config = between.config()
    following = next_cutoff(first, config)
    assert following is not None
    assert following.astimezone(ZoneInfo(zone)).date() == (datetime(*day) + DAY).date()  # type: ignore[misc]
    assert following - first == DAY + (second - first)  # the day is longer by the repeated time


# ------------------------------------------------------------------------ "00:00" across a DST change


@pytest.mark.parametrize(("opened_wall", "runtime_hours", "expected_wall", "by"), [
    # 2026-03-29 is 23 hours long in Berlin: a 24-hour runtime is cut by the cutoff.
    ((2026, 3, 29, 0, 30), 24, "2026-03-30 00:00+0200", "cutoff"),
    ((2026, 3, 29, 0, 30), 22, "2026-03-29 23:30+0200", "runtime"),  # 22 h after 00:30 CET is 23:30 CEST
    # 2026-10-25 is 25 hours long: 24 hours from 00:30 is 23:30 the same day, before the cutoff.
    ((2026, 10, 25, 0, 30), 24, "2026-10-25 23:30+0100", "runtime"),
    ((2026, 10, 25, 0, 30), 25, "2026-10-26 00:00+0100", "cutoff"),
    # Opened the evening before the change: the same night's midnight, unaffected by the change at 02:00.
    ((2026, 3, 28, 23, 30), 24, "2026-03-29 00:00+0100", "cutoff"),
])
def test_midnight_cutoff_on_23_and_25_hour_days(
        opened_wall: tuple[int, ...], runtime_hours: int, expected_wall: str, by: str) -> None:
    opened_at = at("Europe/Berlin", *opened_wall)
    scenario = lease("Europe/Berlin", "00:00", opened_at, limits={"runtime_seconds": runtime_hours * 3600})
    _, record, _, _ = scenario.inputs()
    assert record.lease is not None
    deadline = record.lease.deadline
    assert wall(deadline, "Europe/Berlin") == expected_wall
    assert opened_at < deadline <= opened_at + timedelta(hours=runtime_hours)
    assert planned(scenario, deadline - SECOND) == []
    assert planned(scenario, deadline) == (CLOSED_BY_CUTOFF if by == "cutoff" else CLOSED_BY_RUNTIME)


# ---------------------------------------------------------------------------- late runs (laptop asleep)


@pytest.mark.parametrize("late", [timedelta(seconds=1), timedelta(hours=9), timedelta(days=3)],
                         ids=["1s", "9h", "3d"])
@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_a_run_long_after_the_cutoff_still_ends_the_lease(zone: str, late: timedelta) -> None:
    opened_at = at(zone, 2026, 6, 9, 20, 0)
    midnight = at(zone, 2026, 6, 10, 0, 0)
    # The stored deadline is far away (say runtime_seconds was raised since): the cutoff alone ends it.
    scenario = lease(zone, "00:00", opened_at, deadline=opened_at + timedelta(days=30),
                     limits={"runtime_seconds": 30 * 24 * 3600})
    assert planned(scenario, midnight + late) == CLOSED_BY_CUTOFF
    # Also when RunPod cannot be reached on that late run: the pod is ended by id.
    assert planned(scenario.merged({"pod_observed": False}), midnight + late) == CLOSED_BY_CUTOFF
    # And when the pod stopped meanwhile, the closed lease does not resume it.
    stopped = planned(scenario.merged({"pod_status": PodStatus.EXITED}), midnight + late)
    assert stopped[0] == "close_lease:cutoff"
    assert not any(item.startswith(("resume", "replace", "create")) for item in stopped)


def test_a_run_hours_late_over_a_dst_change_still_ends_the_lease() -> None:
    """Asleep from Saturday evening to Sunday noon across Berlin's spring-forward night."""
    opened_at = at("Europe/Berlin", 2026, 3, 28, 21, 0)
    now = at("Europe/Berlin", 2026, 3, 29, 12, 0)
    assert planned(lease("Europe/Berlin", "00:00", opened_at), now) == CLOSED_BY_CUTOFF
    # The same for a cutoff inside the skipped hour.
    assert planned(lease("Europe/Berlin", "02:30", opened_at), now) == CLOSED_BY_CUTOFF


# ------------------------------------------------------------------ opened just before or after the cutoff

KOLKATA_MIDNIGHT = datetime(2026, 6, 10, 18, 30, tzinfo=UTC)  # 2026-06-11 00:00 +05:30


@pytest.mark.parametrize(("opened_offset", "now_offset", "expected"), [
    (-SECOND, timedelta(0), CLOSED_BY_CUTOFF),  # opened 23:59:59: ends a second later
    (-SECOND, -SECOND, []),  # ... not at the very instant it opened
    (timedelta(0), timedelta(0), []),  # opened at 00:00:00 exactly: that cutoff is not "passed" by it
    (timedelta(0), DAY - SECOND, []),  # ... and it runs until the next midnight
    (timedelta(0), DAY, CLOSED_BY_CUTOFF),
    (SECOND, DAY, CLOSED_BY_CUTOFF),  # opened 00:00:01
    (SECOND, DAY - SECOND, []),
])
def test_lease_opened_around_the_cutoff(opened_offset: timedelta, now_offset: timedelta,
                                        expected: list[str]) -> None:
    scenario = lease("Asia/Kolkata", "00:00", KOLKATA_MIDNIGHT + opened_offset)
    assert planned(scenario, KOLKATA_MIDNIGHT + now_offset) == expected


def test_a_lease_opened_at_the_cutoff_gets_a_full_day_not_zero_seconds() -> None:
    scenario = lease("Asia/Kolkata", "00:00", KOLKATA_MIDNIGHT)
    _, record, _, _ = scenario.inputs()
    assert record.lease is not None and record.lease.deadline == KOLKATA_MIDNIGHT + DAY


# --------------------------------------------------------------------------------- deadline sanity

DEADLINE_CASES = [
    ("America/New_York", "02:30", at("America/New_York", 2026, 3, 8, 1, 59)),
    ("America/New_York", "02:30", at("America/New_York", 2026, 3, 8, 3, 0)),
    ("America/New_York", "01:30", at("America/New_York", 2026, 11, 1, 1, 30, fold=0)),
    ("America/New_York", "01:30", at("America/New_York", 2026, 11, 1, 1, 30, fold=1)),
    ("America/New_York", "01:30", at("America/New_York", 2026, 11, 1, 1, 45, fold=1)),
    ("Australia/Lord_Howe", "02:15", at("Australia/Lord_Howe", 2026, 10, 4, 1, 59)),
    ("Australia/Lord_Howe", "01:45", at("Australia/Lord_Howe", 2026, 4, 5, 1, 50, fold=1)),
    ("America/Havana", "00:00", at("America/Havana", 2026, 11, 1, 0, 0, fold=1)),
    ("America/Santiago", "00:00", at("America/Santiago", 2026, 9, 5, 23, 59)),
    ("Pacific/Apia", "00:00", datetime(2011, 12, 30, 9, 59, tzinfo=UTC)),  # the last minute of Dec 29
    ("Pacific/Apia", "23:30", datetime(2011, 12, 30, 9, 0, tzinfo=UTC)),
]


@pytest.mark.parametrize(("zone", "cutoff", "opened_at"), DEADLINE_CASES,
                         ids=[f"{zone}-{cutoff}-{opened:%m%dT%H%M}" for zone, cutoff, opened in DEADLINE_CASES])
@pytest.mark.parametrize("runtime_hours", [1, 30])
def test_deadline_is_never_before_opening_and_at_most_a_day_or_so_away(
        zone: str, cutoff: str, opened_at: datetime, runtime_hours: int) -> None:
    scenario = lease(zone, cutoff, opened_at, limits={"runtime_seconds": runtime_hours * 3600})
    _, record, _, _ = scenario.inputs()
    assert record.lease is not None
    deadline = record.lease.deadline
    assert opened_at < deadline <= opened_at + timedelta(hours=min(runtime_hours, 26))
    assert planned(scenario, opened_at) == []  # a lease is never closed at the instant it opens
    assert planned(scenario, deadline)[0] in ("close_lease:cutoff", "close_lease:runtime")


# ------------------------------------------------------------------------------------------ clock skew

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


def skewed(**changes: object) -> Scenario:
    """A lease in Berlin with all limits on; cutoff at 00:00 Berlin (22:00 UTC), idle after 15 minutes."""
    base = Scenario(limits={"timezone": "Europe/Berlin", "runtime_seconds": 4 * 3600}, listed=False,
                    opened_at=NOW - timedelta(hours=1), last_request_at=NOW - timedelta(minutes=5))
    return base.merged(changes)


@pytest.mark.parametrize(("changes", "latest"), [
    ({"last_request_at": NOW + timedelta(hours=2)}, NOW + timedelta(hours=2)),
    ({"last_gpu_busy_at": NOW + timedelta(hours=2), "last_request_at": NOW - timedelta(hours=3)},
     NOW + timedelta(hours=2)),
    ({"opened_at": NOW + timedelta(minutes=30), "last_request_at": None}, NOW + timedelta(minutes=30)),
    ({"opened_at": NOW + timedelta(minutes=30), "last_request_at": NOW + timedelta(hours=1)},
     NOW + timedelta(hours=1)),
], ids=["request", "gpu", "opened", "opened+request"])
def test_future_activity_is_not_idle_and_not_negative(changes: dict[str, object], latest: datetime) -> None:
    scenario = skewed(limits={"runtime_seconds": 24 * 3600}, **changes)
    assert planned(scenario, NOW) == []
    # A future time counts as "now": no idle stop one idle_timeout after NOW, nor before the future time
    # has been reached and idle_timeout_seconds have passed since.
    assert planned(scenario, NOW + timedelta(seconds=900)) == []
    assert planned(scenario, latest + timedelta(seconds=899)) == []
    assert planned(scenario, latest + timedelta(seconds=900)) == ["close_lease:idle", f"stop:{MAIN}"]
    view = limit_view(NOW, *_view_inputs(scenario))
    assert view.idle_ends_at is not None and view.idle_ends_at >= NOW + timedelta(seconds=900)


def _view_inputs(scenario: Scenario) -> tuple:  # type: ignore[type-arg]
    config, record, _, activity = scenario.inputs()
    return config, record, activity


def test_idle_counts_from_now_when_the_last_request_is_in_the_future() -> None:
    scenario = skewed(last_request_at=NOW + timedelta(hours=2))
    # Evaluated at NOW the future request counts as NOW; the reason never shows a negative idle time.
    for action in scenario.plan(NOW).actions:
        assert "-" not in action.reason
    # Later runs with the same (still future) request time are not idle either.
    assert planned(scenario, NOW + timedelta(minutes=20)) == []


def test_a_lease_stamped_in_the_future_is_not_ended_by_runtime_early() -> None:
    opened_at = NOW + timedelta(hours=1)
    scenario = skewed(opened_at=opened_at, limits={"runtime_seconds": 1800, "idle_timeout_seconds": 0},
                      last_request_at=None)
    assert planned(scenario, NOW) == []
    assert planned(scenario, opened_at + timedelta(seconds=1799)) == []
    assert planned(scenario, opened_at + timedelta(seconds=1800)) == CLOSED_BY_RUNTIME


def test_a_lease_stamped_in_the_future_is_not_ended_early_and_meets_the_cutoff_after_its_stamp() -> None:
    """A clock stepped back: the lease's own stamp is later than now.

    Pinned as it is: no time limit ends it before the clock reaches the stamp (the cutoff is counted
    from min(opened_at, now), whose next cutoff is always after now), and once it does, the first cutoff
    after the stamp ends it. The midnight between now and the stamp does not.
    """
    midnight = at("Europe/Berlin", 2026, 6, 11, 0, 0)  # 22:00 UTC
    stamp = midnight + timedelta(hours=1)
    scenario = skewed(opened_at=stamp, last_request_at=None,
                      limits={"runtime_seconds": 30 * 3600, "idle_timeout_seconds": 0})
    assert planned(scenario, midnight - SECOND) == []
    assert planned(scenario, midnight) == []
    assert planned(scenario, stamp) == []
    next_midnight = midnight + DAY
    assert planned(scenario, next_midnight - SECOND) == []
    assert planned(scenario, next_midnight) == CLOSED_BY_CUTOFF


@pytest.mark.parametrize("status", [PodStatus.RUNNING, PodStatus.EXITED])
def test_pod_times_in_the_future_do_not_crash_or_end_the_pod(status: PodStatus) -> None:
    config, record, observation, activity = skewed(pod_status=status).inputs()
    assert observation.pod is not None
    future = NOW + timedelta(hours=3)
    observation = replace(observation, pod=replace(observation.pod, created_at=future, started_at=future))
    result = plan(NOW, config, record, observation, activity)
    check_sane(result)
    kinds = result.kinds()
    assert ActionKind.CLOSE_LEASE not in kinds
    assert ActionKind.TERMINATE not in kinds and ActionKind.STOP not in kinds
    if status is PodStatus.EXITED:
        assert kinds == [ActionKind.RESUME]  # the open lease still gets its pod back


# --------------------------------------------------------------------------------- spend day rollover


def capped(zone: str, cap_day: str) -> tuple[Scenario, PodRecord]:
    """A record whose ledger holds the $20 cap spent on `cap_day` (the pod that spent it ended)."""
    scenario = Scenario(limits={"timezone": zone, "max_daily_spend_usd": 20.0}, opened_at=None, pod_id=None,
                        pod_status=None, listed=False)
    _, record, _, _ = scenario.inputs()
    record.spend_cap_day = record.spend_day = cap_day
    record.spend_usd = record.spend_of_ended_pods_usd = 20.0
    return scenario, record


def spent(record: PodRecord, now: datetime, scenario: Scenario) -> float:
    """Today's spend as every caller of start_refusal passes it: the ledger's, 0 once its day is over."""
    return spend.today_usd(record, local_day(now, scenario.config().zone))


@pytest.mark.parametrize(("zone", "last_capped_instant", "rollover"), [
    ("Asia/Kolkata", datetime(2026, 6, 10, 18, 29, 59, tzinfo=UTC), datetime(2026, 6, 10, 18, 30, tzinfo=UTC)),
    # The UTC date changes four hours before New York's.
    ("America/New_York", datetime(2026, 6, 11, 3, 59, 59, tzinfo=UTC), datetime(2026, 6, 11, 4, 0, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2026, 6, 10, 13, 29, 59, tzinfo=UTC), datetime(2026, 6, 10, 13, 30,
                                                                                      tzinfo=UTC)),
    ("UTC", datetime(2026, 6, 10, 23, 59, 59, tzinfo=UTC), datetime(2026, 6, 11, 0, 0, tzinfo=UTC)),
])
def test_spend_cap_refuses_starts_until_the_local_day_rolls_over(
        zone: str, last_capped_instant: datetime, rollover: datetime) -> None:
    scenario, record = capped(zone, "2026-06-10")
    config = scenario.config()
    assert local_day(last_capped_instant, config.zone).isoformat() == "2026-06-10"
    assert local_day(rollover, config.zone).isoformat() == "2026-06-11"
    # The cap day's spend refuses until the local day changes; the new day's ledger starts empty.
    refusal = start_refusal(last_capped_instant, config, record, spent(record, last_capped_instant, scenario))
    assert refusal is not None and "spend cap reached" in refusal
    assert start_refusal(rollover, config, record, spent(record, rollover, scenario)) is None
    # But a day's own spend over the cap refuses on the new day too.
    assert start_refusal(rollover, config, record, 20.0) is not None


def test_spend_day_rolls_over_when_midnight_is_skipped() -> None:
    """Havana skips 00:00 on 2026-03-08: the new day starts at 01:00 and the cap day is over."""
    scenario, record = capped("America/Havana", "2026-03-07")
    config = scenario.config()
    just_before = datetime(2026, 3, 8, 4, 59, 59, tzinfo=UTC)  # 23:59:59 -05:00 on the 7th
    assert start_refusal(just_before, config, record, spent(record, just_before, scenario)) is not None
    assert start_refusal(just_before + SECOND, config, record, spent(record, just_before + SECOND, scenario)) is None


def test_spend_cap_closes_the_lease_and_no_start_follows_on_the_same_local_day() -> None:
    # 23:30 in New York is already the next day in UTC: the cap still holds for New York's day.
    now = at("America/New_York", 2026, 6, 10, 23, 30)
    scenario = Scenario(limits={"timezone": "America/New_York"}, opened_at=now - timedelta(hours=1),
                        spend=20.0, pod_status=PodStatus.EXITED, listed=False)
    result = scenario.plan(now)
    check_sane(result)
    assert summary(result) == ["close_lease:spend_cap", f"terminate:{MAIN}"]
    assert not STARTS & set(result.kinds())
    _, record = capped("America/New_York", local_day(now, scenario.config().zone).isoformat())
    assert record.spend_day == "2026-06-10"
    for minutes, refused in ((29, True), (30, False)):
        later = now + timedelta(minutes=minutes)
        assert (start_refusal(later, scenario.config(), record, spent(record, later, scenario)) is not None) is refused
