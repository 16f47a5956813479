"""`rpm report`'s arithmetic on hand-made logs: a day of a pod, checked against numbers worked out by hand.

The recorded session against the emulator (its billing computed independently) is tests/e2e/test_report.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runpod_manager.errors import UsageError
from runpod_manager.report import (
    DEFAULT_BOOT_SECONDS,
    Event,
    assemble,
    build_timeline,
    local_days,
    oracle_sessions,
    parse_since,
    percentile,
)
from runpod_manager.requestlog import LoggedRequest, RequestLog, read_requests
from runpod_manager.runpod.models import BillingRecord

UTC_ZONE = ZoneInfo("UTC")
DAY_START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
T = DAY_START.timestamp()
H = 3600.0
RATE = 0.72  # $/h: 0.0002 $/s


def event(offset: float, name: str, **fields: Any) -> Event:
    return Event(T + offset, name, "coder", {"config": "coder", **fields})


def request(offset: float, *, duration: float = 2.0, cold: float | None = None, pod_id: str | None = "p1",
            status: int = 200, cache: str = "miss", tokens: tuple[int, int] = (10, 20)) -> LoggedRequest:
    return LoggedRequest(at=T + offset, pod="coder", pod_id=pod_id, model="m", route="/v1/chat/completions",
                         status=status, duration_seconds=duration, ttfb_seconds=0.1, cold_start_seconds=cold,
                         tokens_in=tokens[0], tokens_out=tokens[1], cache=cache, error=None, key=None)


# 09:00 `rpm start` creates p1 (ready 09:02); requests 09:05-09:10; idle stop at 09:25.
# 13:00 a request wakes it (resume 13:00:01, ready 13:00:31, the request waited 31 s); requests until 13:20;
# idle stop 13:35. A failed wake at 15:00 (closed before ready).
EVENTS = [
    event(9 * H, "lease_opened", opened_by="start"),
    event(9 * H + 1, "created", pod_id="p1", cost_per_hour=RATE),
    event(9 * H + 1, "create", ok=True),
    event(9 * H + 121, "ready", pod_id="p1"),
    event(9 * H + 1500, "close_lease", ok=True),
    event(9 * H + 1501, "stop", pod_id="p1", ok=True),
    event(13 * H, "lease_opened", opened_by="wake"),
    event(13 * H + 1, "resume", pod_id="p1", ok=True),
    event(13 * H + 31, "ready", pod_id="p1"),
    event(13 * H + 2100, "close_lease", ok=True),
    event(13 * H + 2101, "stop", pod_id="p1", ok=True),
    event(15 * H, "lease_opened", opened_by="wake"),
    event(15 * H + 1, "resume", pod_id="p1", ok=False),  # refused: billing never started
    event(15 * H + 2, "lease_closed", reason="start failed"),
]
REQUESTS = [
    request(9 * H + 300), request(9 * H + 600, duration=4.0),  # ends 09:10:04
    request(13 * H - 0.2, cold=31.5, duration=3.0),  # arrived just before the lease opened
    request(13 * H + 5, cold=26.0), request(13 * H + 1200, duration=1.0),  # ends 13:20:01
    request(15 * H - 0.1, cold=2.1, status=503, pod_id=None),  # the failed wake's request
    request(16 * H, cache="hit", pod_id=None),  # a cache hit: activity, but no GPU
]
UNTIL = DAY_START + timedelta(hours=20)


def report_of(records: list[BillingRecord] | None = None, *, since: datetime = DAY_START,
              until: datetime = UNTIL, zone: ZoneInfo = UTC_ZONE) -> Any:
    timeline = build_timeline(EVENTS, until=until.timestamp())
    return assemble(timeline, REQUESTS, records, since=since, until=until, zone=zone, zone_name=str(zone),
                    pods=["coder"])


def test_gpu_hours_come_from_the_billed_stretches_of_the_event_log() -> None:
    [pod] = report_of().pods
    # 09:00:01-09:25:01 and 13:00:01-13:35:01; the refused resume at 15:00 billed nothing.
    assert [(b.start - T, b.end - T, b.ended_by) for b in pod.billed] == [
        (9 * H + 1, 9 * H + 1501, "stop"), (13 * H + 1, 13 * H + 2101, "stop")]
    assert pod.total.gpu_hours == pytest.approx((1500 + 2100) / H)


def test_without_billing_the_cost_is_hours_times_rate_and_marked_estimated() -> None:
    report = report_of(None)
    [pod] = report.pods
    assert pod.rate_usd_per_hour == RATE
    assert pod.total.cost_usd == pytest.approx(3600 / H * RATE)
    assert pod.total.cost_source == "estimate" and not report.billing_read


def test_billing_is_the_cost_per_local_day_and_disk_is_storage() -> None:
    def record(hour: float, total: float, disk: float, pod_id: str = "p1") -> BillingRecord:
        start = DAY_START + timedelta(hours=hour)
        return BillingRecord(pod_id=pod_id, start=start, end=start + timedelta(hours=1), total_amount_usd=total,
                             disk_amount_usd=disk)

    records = [record(9, 0.31, 0.01), record(13, 0.43, 0.01), record(14, 0.02, 0.02),
               record(10, 99.0, 0.0, pod_id="someone-elses-pod")]
    [pod] = report_of(records).pods
    assert pod.total.cost_usd == pytest.approx(0.30 + 0.42 + 0.0)
    assert pod.total.storage_usd == pytest.approx(0.04)
    assert pod.total.cost_source == "billing"
    assert pod.total.to_json()["saved_vs_always_on_usd"] == pytest.approx(RATE * 11 - 0.76)


def test_cold_starts_are_the_wakes_and_each_waits_as_long_as_its_longest_request() -> None:
    [pod] = report_of().pods
    first, failed = pod.wakes
    assert (first.started_by, first.boot_seconds, first.wait_seconds) == ("resume", 30.0, 31.5)
    assert (failed.ready_at, failed.wait_seconds) == (None, 2.1)  # it failed, and its request felt it
    row = pod.total.to_json()
    assert row["cold_starts"] == 2  # `rpm start` at 09:00 is not a cold start felt
    assert (row["wait_p50_seconds"], row["wait_p95_seconds"], row["wait_max_seconds"]) == (
        pytest.approx(16.8), pytest.approx(2.1 + 0.95 * 29.4), 31.5)


def test_requests_and_tokens_count_what_reached_the_pod_or_the_cache() -> None:
    total = report_of().pods[0].total
    assert (total.requests, total.failed_requests) == (7, 1)
    assert (total.tokens_in, total.tokens_out) == (70, 140)


def test_every_proxied_request_of_an_http_pod_counts(tmp_path: Path) -> None:
    # As the proxy writes them: a pass-through request has no cache outcome ("-"), whatever its route.
    log = RequestLog(tmp_path / "requests.jsonl", keep_days=30, clock=lambda: T + 20 * H)
    for offset, route in ((9 * H + 300, "/pods/coder"), (9 * H + 600, "listen:coder"), (13 * H + 5, "/pods/coder")):
        log.append((T + offset + 2.0, 2.0, "coder", "p1", None, False, "POST", route, 200, 0.1, None, 0.0, "-",
                    None, None, None, None))
    log.append((T + 9 * H + 700, 0.01, None, None, None, False, "GET", "other", 404, None, None, 0.0, "-", None,
                None, None, None))  # answered by the proxy itself: no pod reached
    log.close()
    requests = read_requests(tmp_path / "requests.jsonl")

    report = assemble(build_timeline(EVENTS, until=UNTIL.timestamp()), requests, None, since=DAY_START,
                      until=UNTIL, zone=UTC_ZONE, zone_name="UTC", pods=["coder"])

    assert report.pods[0].total.requests == 3


def test_idle_billed_runs_from_the_last_request_to_the_end_of_billing() -> None:
    # 09:25:01 - 09:10:04 = 897 s; 13:35:01 - 13:20:01 = 900 s.
    assert report_of().pods[0].total.idle_billed_hours == pytest.approx((897 + 900) / H)


def test_always_on_runs_from_the_pods_first_record_to_the_end_of_the_window() -> None:
    [pod] = report_of().pods
    assert pod.window_start == T + 9 * H  # the first event, later than --since
    assert pod.total.always_on_usd == pytest.approx(RATE * 11)
    [pod] = report_of(since=DAY_START + timedelta(hours=10)).pods
    assert pod.total.always_on_usd == pytest.approx(RATE * 10)


def test_the_oracle_bills_the_serving_sessions_plus_one_measured_boot_each() -> None:
    [pod] = report_of().pods
    assert pod.boot_seconds == 30.0  # the median of the window's wakes' boots (resume → ready)
    # Requests that reached the pod, each its own session (gaps far above a boot): 2 + 4 + 3 + 2 + 1 s,
    # and five boots.
    assert pod.oracle_sessions == [(T + 9 * H + 300, T + 9 * H + 302), (T + 9 * H + 600, T + 9 * H + 604),
                                   (T + 13 * H - 0.2, T + 13 * H + 7), (T + 13 * H + 1200, T + 13 * H + 1201)]
    assert pod.total.oracle_usd == pytest.approx(RATE * (2 + 4 + 7.2 + 1 + 4 * 30) / H)


def test_without_a_measured_start_the_oracle_assumes_the_default_boot() -> None:
    timeline = build_timeline([], until=UNTIL.timestamp())
    report = assemble(timeline, [request(60.0)], None, since=DAY_START, until=UNTIL, zone=UTC_ZONE,
                      zone_name="UTC", pods=["coder"], state_rates={"coder": 1.0})
    assert report.pods[0].boot_seconds == DEFAULT_BOOT_SECONDS
    assert report.pods[0].total.oracle_usd == pytest.approx((2 + DEFAULT_BOOT_SECONDS) / H)


def test_days_are_local_days_of_the_configs_timezone() -> None:
    berlin = ZoneInfo("Europe/Berlin")  # UTC+1 in March: the 13:00 UTC wake is at 14:00 local
    late = [*EVENTS, event(22 * H + 30 * 60, "lease_opened", opened_by="wake"),  # 23:30 local
            event(22 * H + 30 * 60 + 1, "resume", pod_id="p1", ok=True),
            event(22 * H + 30 * 60 + 31, "ready", pod_id="p1"),
            event(23 * H + 30 * 60, "stop", pod_id="p1", ok=True)]  # 00:30 local, the next day
    until = DAY_START + timedelta(hours=24)
    report = assemble(build_timeline(late, until=until.timestamp()), REQUESTS, None, since=DAY_START, until=until,
                      zone=berlin, zone_name="Europe/Berlin", pods=["coder"])
    days = report.pods[0].days
    assert [row.day for row in days] == ["2026-03-02", "2026-03-03"]
    assert days[0].gpu_hours == pytest.approx((1500 + 2100 + 30 * 60 - 1) / H)
    assert days[1].gpu_hours == pytest.approx(30 * 60 / H)
    assert [row.cold_starts for row in days] == [3, 0]


def test_only_the_asked_pod_is_reported() -> None:
    timeline = build_timeline([*EVENTS, Event(T + 10 * H, "created", "chat", {"pod_id": "c1", "cost_per_hour": 2.0})],
                              until=UNTIL.timestamp())
    both = assemble(timeline, REQUESTS, None, since=DAY_START, until=UNTIL, zone=UTC_ZONE, zone_name="UTC")
    assert [pod.pod for pod in both.pods] == ["chat", "coder"]
    only = assemble(timeline, REQUESTS, None, since=DAY_START, until=UNTIL, zone=UTC_ZONE, zone_name="UTC",
                    only_pod="chat")
    assert [pod.pod for pod in only.pods] == ["chat"] and only.pods[0].pod_ids == ["c1"]


def test_oracle_sessions_merge_gaps_shorter_than_a_boot() -> None:
    assert oracle_sessions([(0, 1), (10, 12), (50, 51), (11, 20)], 30) == [(0, 20), (50, 51)]
    assert oracle_sessions([(0, 1), (40, 41)], 30) == [(0, 1), (40, 41)]
    assert oracle_sessions([], 30) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("7d", timedelta(days=7)), ("36h", timedelta(hours=36)), ("90m", timedelta(minutes=90)),
    ("2w", timedelta(weeks=2)), ("1.5d", timedelta(hours=36))])
def test_since_takes_durations(text: str, expected: timedelta) -> None:
    now = datetime(2026, 3, 9, 12, tzinfo=UTC)
    assert parse_since(text, now, UTC_ZONE) == now - expected


def test_since_takes_dates_in_the_configs_zone() -> None:
    now = datetime(2026, 3, 9, 12, tzinfo=UTC)
    assert parse_since("2026-03-02", now, ZoneInfo("Europe/Berlin")) == datetime(2026, 3, 1, 23, tzinfo=UTC)
    assert parse_since("2026-03-02T09:00+00:00", now, ZoneInfo("Europe/Berlin")) == datetime(2026, 3, 2, 9,
                                                                                            tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "7", "-3d", "2030-01-01"])
def test_since_refuses_what_it_cannot_read_or_the_future(text: str) -> None:
    with pytest.raises(UsageError, match="--since"):
        parse_since(text, datetime(2026, 3, 9, 12, tzinfo=UTC), UTC_ZONE)


def test_local_days_are_clipped_to_the_window_and_dst_safe() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    since = datetime(2026, 3, 28, 12, tzinfo=UTC)  # the clocks go forward on 2026-03-29
    days = local_days(since, since + timedelta(days=2), berlin)
    assert [day for day, _, _ in days] == ["2026-03-28", "2026-03-29", "2026-03-30"]
    assert days[0][1] == since.timestamp()
    assert days[1][2] - days[1][1] == 23 * H


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 0.0], 0.95) == pytest.approx(9.5)


def test_a_wake_soon_after_another_takes_only_its_own_requests_waits() -> None:
    # Two wakes 3 s apart (a 1 s idle timeout): the first one's request arrived within the lead before the
    # second lease opened, but it waited for the first.
    events = [event(0, "lease_opened", opened_by="wake"), event(0.01, "resume", pod_id="p1", ok=True),
              event(0.2, "ready", pod_id="p1"), event(2.5, "stop", pod_id="p1", ok=True),
              event(3.0, "lease_opened", opened_by="wake"), event(3.01, "resume", pod_id="p1", ok=True),
              event(3.15, "ready", pod_id="p1")]
    requests = [request(-0.01, cold=0.21, duration=0.3), request(2.99, cold=0.16, duration=0.3)]
    report = assemble(build_timeline(events, until=UNTIL.timestamp()), requests, None, since=DAY_START,
                      until=UNTIL, zone=UTC_ZONE, zone_name="UTC", pods=["coder"])
    assert [wake.wait_seconds for wake in report.pods[0].wakes] == [0.21, 0.16]
