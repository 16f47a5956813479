"""The pieces of the management API that need no server: the event log's pages and the dashboard's keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runpod_manager import events
from runpod_manager.events import EventLog
from runpod_manager.keys import KeyLimits, KeyRecord, KeyUsage, UsageReport, UsageRow
from runpod_manager.proxy.dashboard import _key_rows, _keys_html

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _log(tmp_path: Path, count: int) -> EventLog:
    moments = iter(START + timedelta(seconds=n) for n in range(count))
    log = EventLog(tmp_path / "events.jsonl", clock=lambda: next(moments))
    for n in range(count):
        log.write("tick", n=n)
    return log


def test_a_page_after_a_time_is_the_oldest_events_after_it_and_says_whether_more_follow(tmp_path: Path) -> None:
    log = _log(tmp_path, 10)
    page = log.page(START + timedelta(seconds=3), 4)
    assert [e["n"] for e in page.events] == [4, 5, 6, 7] and page.more and page.complete
    last = log.page(START + timedelta(seconds=7), 4)
    assert [e["n"] for e in last.events] == [8, 9] and not last.more
    assert [e["n"] for e in log.page(None, 3).events] == [7, 8, 9]
    assert log.page(START + timedelta(days=1), 5).events == []
    assert [e["n"] for e in log.tail(2)] == [8, 9]


def test_a_page_reads_only_the_end_of_a_large_log_and_says_it_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    line = json.dumps({"time": "2026-03-01T00:00:00Z", "event": "filler", "pad": "x" * 200}) + "\n"
    path.write_text(line * (events.TAIL_BYTES // len(line) + 50))
    page = EventLog(path).page(None, 1000)
    assert not page.complete and 0 < len(page.events) <= events.TAIL_BYTES // len(line)
    assert all(e["event"] == "filler" for e in page.events)  # the cut first line is not half an event


def test_the_dashboard_lists_each_keys_use_today_escaped_and_without_secrets() -> None:
    record = KeyRecord(name="dev<b>", digest="d" * 64, limits=KeyLimits(daily_budget_usd=2.0))
    report = UsageReport(day="2026-03-01", rows=(UsageRow(record=record, status="active",
                                                          today=KeyUsage(requests=3, tokens=40, spend_usd=0.5),
                                                          last_used_at=None),))
    rows = _key_rows(report)
    assert rows == {"day": "2026-03-01", "rows": [{"name": "dev<b>", "role": "user", "status": "active", "requests": 3,
                                                   "tokens": 40, "spend_usd": 0.5, "refused": 0,
                                                   "daily_budget_usd": 2.0}]}
    page = _keys_html(rows)
    assert "dev&lt;b&gt;" in page and "<b>" not in page and "d" * 64 not in page
    assert _keys_html(_key_rows(None)) == ""


def test_a_keys_repeated_reads_are_one_event_line_a_minute_with_the_reads_folded_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from runpod_manager.proxy import manage

    now = [1000.0]
    monkeypatch.setattr(manage.time, "monotonic", lambda: now[0])
    reads: dict[tuple[str, str, str | None], list[float]] = {}
    polled = ("script", "list pods", None)
    assert manage._fold_read(reads, polled) == 0  # the first read is written
    for _ in range(11):  # a poll every 5 s for the rest of the minute: folded
        now[0] += 5
        assert manage._fold_read(reads, polled) is None
    assert manage._fold_read(reads, ("admin", "list pods", None)) == 0  # another key: its own line
    now[0] += 5  # a minute after the first line: written, counting the 11 folded into it
    assert manage._fold_read(reads, polled) == 11
    assert manage._fold_read(reads, polled) is None


def test_a_stop_refused_by_the_pods_lock_is_a_409_naming_the_lock() -> None:
    from runpod_manager.errors import PodLocked
    from runpod_manager.proxy.manage import _control_error

    error = _control_error(PodLocked("RunPod refused to stop pod p1: the pod is locked", pod_id="p1",
                                     status="RUNNING"), "coder")

    assert (error.status, error.code) == (409, "pod_locked") and "locked" in error.message
