"""The request log's writer and reader (requestlog.py): lines, modes, rotation, retention, partial lines.

The proxy's side (what a request puts in its line, flushing on stop, no secrets) is in
tests/e2e/test_proxy.py, through the real proxy.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.requestlog import (
    LoggedRequest,
    RequestEntry,
    RequestLog,
    format_line,
    log_files,
    parse_line,
    read_requests,
    usage_tokens,
)
from tests.support.clock import Clock

DAY = 86400.0
T0 = 1_767_261_600.0  # 2026-01-01T10:00:00Z
ANSWER = json.dumps({"id": "x", "choices": [{"index": 0, "message": {"content": "hi"}}],
                     "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}).encode()


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def entry(ended_at: float = T0 + 1.5, *, duration: float = 0.5, status: int = 200, model: Any = "m",
          stream: bool = False, route: str = "/v1/chat/completions", cold: float | None = None,
          wake_wait: float = 0.0, cache: str = "miss", error: str | None = None,
          usage: bytes | None = ANSWER, first_byte_after: float | None = 0.2, pod_id: str | None = "pod1",
          wake: float | None = None) -> RequestEntry:
    return (ended_at, duration, "coder", pod_id, model, stream, "POST", route, status, first_byte_after, cold,
            wake_wait, cache, error, usage, None, wake)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_flushed_entry_is_one_json_line_with_every_field(paths: Paths) -> None:
    log = RequestLog(paths.request_log, keep_days=30, clock=Clock(T0))
    log.append(entry())
    assert not paths.request_log.exists()  # appending is not writing: nothing happens on the request path
    log.close()
    [line] = lines_of(paths.request_log)
    assert line == {
        "time": "2026-01-01T10:00:01.000Z", "pod": "coder", "pod_id": "pod1", "model": "m", "method": "POST",
        "route": "/v1/chat/completions", "status": 200, "duration_ms": 500.0, "ttfb_ms": 200.0,
        "cold_start_s": None, "wake_s": None, "tokens_in": 11, "tokens_out": 7, "stream": False, "cache": "miss",
        "error": None, "key": None}


def test_the_log_file_is_0600_in_a_0700_directory_whatever_the_umask(paths: Paths) -> None:
    old = os.umask(0)
    try:
        log = RequestLog(paths.request_log, keep_days=30, clock=Clock(T0))
        log.append(entry())
        log.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths.request_log.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.log_dir.stat().st_mode) == 0o700


def test_a_loose_file_left_by_hand_is_tightened(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True)
    paths.request_log.write_text("")
    paths.request_log.chmod(0o644)
    log = RequestLog(paths.request_log, keep_days=30, clock=Clock(T0))
    log.append(entry())
    log.close()
    assert stat.S_IMODE(paths.request_log.stat().st_mode) == 0o600


def test_the_flush_thread_writes_without_close(paths: Paths) -> None:
    log = RequestLog(paths.request_log, keep_days=30, flush_interval_seconds=0.01)
    log.start()
    try:
        log.append(entry())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not paths.request_log.exists():
            time.sleep(0.01)
        assert len(lines_of(paths.request_log)) == 1
    finally:
        log.close()


def test_a_full_batch_is_written_before_the_interval(paths: Paths) -> None:
    log = RequestLog(paths.request_log, keep_days=30, flush_interval_seconds=3600, batch_lines=3)
    log.start()
    try:
        for _ in range(3):
            log.append(entry())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not paths.request_log.exists():
            time.sleep(0.01)
        assert len(lines_of(paths.request_log)) == 3
    finally:
        log.close()


def test_rotation_by_size_keeps_every_line_and_each_file_bounded(paths: Paths) -> None:
    line_bytes = len(format_line(entry())) + 1
    log = RequestLog(paths.request_log, keep_days=30, max_file_bytes=3 * line_bytes, clock=Clock(T0))
    for _ in range(7):  # one batch each: the size is checked per batch
        log.append(entry())
        log.flush()
    log.close()
    files = log_files(paths.request_log)
    assert len(files) == 3 and files[-1] == paths.request_log
    assert [len(lines_of(file)) for file in files] == [3, 3, 1]
    assert all(stat.S_IMODE(file.stat().st_mode) == 0o600 for file in files)
    assert len(read_requests(paths.request_log)) == 7


def test_a_new_utc_day_starts_a_new_file(paths: Paths) -> None:
    clock = Clock(T0)
    log = RequestLog(paths.request_log, keep_days=30, clock=clock)
    log.append(entry())
    log.flush()
    clock.now += DAY
    log.append(entry(T0 + DAY))
    log.flush()
    log.close()
    rotated, current = log_files(paths.request_log)
    assert rotated.name == "requests.jsonl.20260102T100000Z"
    assert [line["time"][:10] for line in lines_of(rotated) + lines_of(current)] == ["2026-01-01", "2026-01-02"]


def test_retention_deletes_files_last_written_before_keep_days(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True)
    old = paths.log_dir / "requests.jsonl.20251101T000000Z"
    recent = paths.log_dir / "requests.jsonl.20251230T000000Z"
    other = paths.log_dir / "events.jsonl"
    for file, written in ((old, T0 - 31 * DAY), (recent, T0 - 2 * DAY), (other, T0 - 400 * DAY)):
        file.write_text("{}\n")
        os.utime(file, (written, written))
    log = RequestLog(paths.request_log, keep_days=30, clock=Clock(T0))
    log.start()
    log.close()
    assert not old.exists()
    assert recent.exists() and other.exists()  # within the window; not a request log


def test_rotation_applies_retention_too(paths: Paths) -> None:
    clock = Clock(T0)
    log = RequestLog(paths.request_log, keep_days=1, clock=clock)
    for _day in range(4):
        log.append(entry(clock.now))
        log.flush()
        os.utime(paths.request_log, (clock.now, clock.now))  # written at the fake clock's time
        clock.now += DAY
    log.close()
    assert len(log_files(paths.request_log)) == 2  # yesterday's rotated file and today's


def test_keep_days_zero_writes_nothing_and_deletes_what_was_kept(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True)
    paths.request_log.write_text(format_line(entry()) + "\n")
    log = RequestLog(paths.request_log, keep_days=0, clock=Clock(T0))
    log.start()
    log.append(entry())
    log.close()
    assert log_files(paths.request_log) == []


def test_a_line_cut_short_by_a_crash_hides_no_other_line(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True)
    whole = format_line(entry(T0 + 1))
    paths.request_log.write_text(whole + "\n" + whole[: len(whole) // 2])  # the crash cut the second line
    os.utime(paths.request_log, (T0 + 2, T0 + 2))  # written today (by the fake clock): no rotation
    log = RequestLog(paths.request_log, keep_days=30, clock=Clock(T0))
    log.append(entry(T0 + 3))
    log.close()
    read = read_requests(paths.request_log)
    assert [request.at for request in read] == [T0 + 0.5, T0 + 2.5]  # the partial line alone is skipped
    assert paths.request_log.read_text().count("\n") == 3  # the new line did not join the partial one


@pytest.mark.parametrize("line", [b"", b"not json", b"[1, 2]", b'{"time": "yesterday", "status": 200}',
                                  b'{"time": "2026-01-01T00:00:00Z", "status": "200", "duration_ms": 1}',
                                  b'{"time": "2026-01-01T00:00:00Z", "status": 200, "duration_ms": -1}',
                                  b'{"time": "2026-01-01T00:00:00Z", "status": 200}', b"\xff\xfe"])
def test_lines_that_are_not_requests_are_skipped(line: bytes) -> None:
    assert parse_line(line) is None


def test_reading_filters_by_window_and_pod_and_sorts_by_arrival(paths: Paths) -> None:
    log = RequestLog(paths.request_log, keep_days=30, clock=Clock(T0))
    for ended in (T0 + 30, T0 + 10, T0 + 20):
        log.append(entry(ended))
    log.append((T0 + 40, 0.5, "chat", None, "m", False, "POST", "/v1/chat/completions", 200, None, None, 0.0,
                "miss", None, None, "script", None))
    log.close()
    assert [r.key for r in read_requests(paths.request_log)] == [None, None, None, "script"]
    assert [r.at for r in read_requests(paths.request_log)] == [T0 + 9.5, T0 + 19.5, T0 + 29.5, T0 + 39.5]
    assert [r.at for r in read_requests(paths.request_log, since=T0 + 15, until=T0 + 35)] == [T0 + 19.5, T0 + 29.5]
    assert [r.pod for r in read_requests(paths.request_log, pod="chat")] == ["chat"]


def test_a_request_that_ended_while_waiting_for_a_wake_logs_its_wait_as_its_cold_start() -> None:
    line = json.loads(format_line(entry(cold=None, wake_wait=12.5, error="queue_timeout", status=504,
                                        usage=None, first_byte_after=None, pod_id=None)))
    assert line["cold_start_s"] == 12.5 and line["ttfb_ms"] is None and line["tokens_in"] is None
    served = json.loads(format_line(entry(cold=8.25, wake_wait=8.3)))
    assert served["cold_start_s"] == 8.25
    quick = json.loads(format_line(entry(cold=None, wake_wait=0.001)))  # no wake: a look at the state
    assert quick["cold_start_s"] is None


def test_a_retry_that_joined_an_older_wake_logs_its_own_wait_and_the_wakes_length_which_the_report_uses() -> None:
    line = json.loads(format_line(entry(cold=87.0, wake_wait=87.0, wake=329.0)))
    assert (line["cold_start_s"], line["wake_s"]) == (87.0, 329.0)
    parsed = parse_line(format_line(entry(cold=87.0, wake_wait=87.0, wake=329.0)).encode())
    assert parsed is not None and (parsed.cold_start_seconds, parsed.wake_seconds) == (87.0, 329.0)
    assert parsed.felt_wait_seconds == 329.0
    older = parse_line(b'{"time": "2026-01-01T10:00:00Z", "status": 200, "duration_ms": 5, "cold_start_s": 8}')
    assert older is not None and older.felt_wait_seconds == 8.0  # a line from before wake_s


def test_only_a_string_model_is_logged_and_it_is_bounded() -> None:
    assert json.loads(format_line(entry(model={"a": "b"})))["model"] is None
    assert len(json.loads(format_line(entry(model="x" * 5000)))["model"]) == 200


@pytest.mark.parametrize(("source", "expected"), [
    (ANSWER, (11, 7)),
    (b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}\n\n', (5, 6)),
    (b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n', (None, None)),  # a stream without include_usage
    (b'{"usage": null}', (None, None)),
    (b'{"usage": {"prompt_tokens": true, "completion_tokens": -1}}', (None, None)),
    (b'{"usage": {"prompt_tokens": 3}}', (3, None)),  # embeddings
    (b'{"usage": {"prompt_tok', (None, None)),
    (None, (None, None)),
    (b"x" * 100_000 + b'"usage": {"prompt_tokens": 1, "completion_tokens": 2}}', (1, 2)),  # only the tail is read
])
def test_usage_tokens_come_from_the_last_usage_object(source: bytes | None,
                                                      expected: tuple[int | None, int | None]) -> None:
    assert usage_tokens(source) == expected


def test_activity_is_what_the_proxy_counts_for_idle_stop() -> None:
    def request(route: str, cache: str) -> LoggedRequest:
        record = parse_line(format_line(entry(route=route, cache=cache)).encode())
        assert record is not None
        return record

    assert request("/v1/chat/completions", "miss").activity
    assert request("/v1/chat/completions", "hit").activity
    assert not request("/v1/models", "bypass").activity  # editors list models on a timer
    assert not request("/v1/chat/completions", "-").activity  # refused locally (unknown model, 405, 415)
    assert not request("/v1/other", "local").activity
