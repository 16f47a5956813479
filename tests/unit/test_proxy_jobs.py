"""The job store and the job helpers (proxy/jobs.py): order, positions, bounds, TTL, cancel, restart recovery,
private files, what is stored of a request. The runner itself is tested over HTTP in tests/e2e/test_proxy_jobs.py."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from runpod_manager.proxy.jobs import wants_async
from runpod_manager.proxy.jobstore import (
    DB_FILENAME,
    INTERRUPTED,
    JobsFull,
    JobState,
    JobStore,
    JobStoreBusy,
    PodJobs,
    is_job_id,
    new_job_id,
    stored_headers,
)
from tests.support.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


def open_store(directory: Path, clock: Clock, **bounds: float) -> JobStore:
    store = JobStore(directory, max_count=int(bounds.get("max_count", 100)),
                     max_bytes=int(bounds.get("max_bytes", 1 << 20)), ttl_seconds=bounds.get("ttl_seconds", 60.0),
                     clock=clock)
    store.open()
    return store


def add(store: JobStore, pod: str = "chat", body: bytes = b"{}", path: str = "/v1/chat/completions") -> str:
    job_id = new_job_id()
    store.body_path(job_id).write_bytes(body)
    store.add(job_id, pod=pod, method="POST", path=path, headers=(("Content-Type", "application/json"),),
              request_bytes=len(body))
    return job_id


def test_jobs_run_per_pod_in_submission_order_and_positions_count_only_that_pods_queue(
        tmp_path: Path, clock: Clock) -> None:
    store = open_store(tmp_path / "jobs", clock)
    first, other, second, third = add(store), add(store, "coder"), add(store), add(store)
    positions = {job_id: store.position(store.get(job_id)) for job_id in (first, other, second, third)}  # type: ignore[arg-type]
    assert positions == {first: 1, other: 1, second: 2, third: 3}
    assert sorted(store.queued_pods()) == ["chat", "coder"]
    next_job = store.next_queued("chat")
    assert next_job is not None and next_job.id == first
    assert store.mark_running(first) and not store.mark_running(first)  # only a queued job starts
    assert store.next_queued("chat").id == second  # type: ignore[union-attr]
    assert store.position(store.get(third)) == 2  # type: ignore[arg-type]
    clock.now += 5
    assert store.summary() == {"chat": PodJobs(queued=2, running=1, oldest_queued_at=clock.now - 5),
                               "coder": PodJobs(queued=1, running=0, oldest_queued_at=clock.now - 5)}


def test_a_finished_job_keeps_its_result_until_the_ttl_then_is_gone_with_its_files(
        tmp_path: Path, clock: Clock) -> None:
    store = open_store(tmp_path / "jobs", clock, ttl_seconds=60)
    job_id = add(store, body=b"request")
    store.mark_running(job_id)
    store.result_path(job_id).write_bytes(b"answer")
    store.finish(job_id, status=201, headers=(("Content-Type", "text/plain"),), result_bytes=6)
    assert not store.body_path(job_id).exists()  # sent once: the request body is not kept
    job = store.get(job_id)
    assert job is not None and (job.state, job.status, job.result_bytes) == (JobState.DONE, 201, 6)
    assert job.response_headers == (("Content-Type", "text/plain"),)
    clock.now += 59
    assert store.get(job_id) is not None
    clock.now += 1
    assert store.get(job_id) is None
    assert not store.result_path(job_id).exists()
    assert store.totals() == (0, 0)


def test_bounds_count_jobs_and_the_bytes_of_bodies_and_results(tmp_path: Path, clock: Clock) -> None:
    store = open_store(tmp_path / "jobs", clock, max_count=2, max_bytes=2048)
    add(store, body=b"x" * 1000)
    store.check_room(extra_bytes=1048)
    with pytest.raises(JobsFull, match="jobs_max_bytes = 2048"):
        store.check_room(extra_bytes=1049)
    add(store, body=b"x" * 10)
    with pytest.raises(JobsFull, match="jobs_max_count = 2"):
        store.check_room()


def test_cancel_removes_a_queued_job_and_its_body(tmp_path: Path, clock: Clock) -> None:
    store = open_store(tmp_path / "jobs", clock)
    first, second = add(store), add(store)
    store.delete(first)
    assert store.get(first) is None and not store.body_path(first).exists()
    assert store.position(store.get(second)) == 1  # type: ignore[arg-type]
    assert not store.mark_running(first)


def test_reopening_fails_the_jobs_that_were_running_and_keeps_the_queued_ones_in_order(
        tmp_path: Path, clock: Clock) -> None:
    store = open_store(tmp_path / "jobs", clock)
    running, queued_1, queued_2 = add(store), add(store), add(store)
    store.mark_running(running)
    assert store.mark_sent(running)  # its request left toward the pod: it may have reached the service
    store.close()
    (tmp_path / "jobs" / "job_stray.request.part").write_bytes(b"half a body")  # the proxy died mid-upload

    reopened = JobStore(tmp_path / "jobs", max_count=100, max_bytes=1 << 20, ttl_seconds=60, clock=clock)
    assert reopened.open() == [running]
    failed = reopened.get(running)
    assert failed is not None and failed.state == JobState.FAILED and failed.error == INTERRUPTED
    assert not reopened.body_path(running).exists()
    assert [reopened.next_queued("chat").id] == [queued_1]  # type: ignore[union-attr]
    assert reopened.position(reopened.get(queued_2)) == 2  # type: ignore[arg-type]
    assert not (tmp_path / "jobs" / "job_stray.request.part").exists()
    assert reopened.body_path(queued_1).read_bytes() == b"{}"


def test_a_job_whose_request_never_left_the_proxy_is_queued_again_first_in_line_after_a_restart(
        tmp_path: Path, clock: Clock) -> None:
    """Killed while its pod woke (never sent): it runs after the restart, before the jobs queued behind it."""
    store = open_store(tmp_path / "jobs", clock)
    waking, queued = add(store, body=b"waking"), add(store)
    store.mark_running(waking)
    store.close()

    reopened = JobStore(tmp_path / "jobs", max_count=100, max_bytes=1 << 20, ttl_seconds=60, clock=clock)
    assert reopened.open() == []  # none failed
    job = reopened.get(waking)
    assert job is not None and (job.state, job.started_at, job.sent_at, job.error) == (JobState.QUEUED, None, None,
                                                                                        None)
    assert reopened.body_path(waking).read_bytes() == b"waking"
    assert [reopened.next_queued("chat").id] == [waking]  # type: ignore[union-attr]
    assert reopened.position(reopened.get(queued)) == 2  # type: ignore[arg-type]


def test_marking_sent_is_refused_once_the_job_is_no_longer_running(tmp_path: Path, clock: Clock) -> None:
    """The replay marks its job sent just before the request leaves; a job put back in the queue (the proxy
    stopping) or finished in the meantime is not sent: the mark and the state are one row."""
    store = open_store(tmp_path / "jobs", clock)
    job_id = add(store)
    assert not store.mark_sent(job_id)  # queued: not running
    store.mark_running(job_id)
    assert store.interrupt(job_id) is False  # never sent: queued again (False: it did not fail)
    assert store.get(job_id).state == JobState.QUEUED  # type: ignore[union-attr]
    assert not store.mark_sent(job_id)
    store.mark_running(job_id)
    clock.now += 1
    assert store.mark_sent(job_id) and store.mark_sent(job_id)  # a second attempt (the pod went away) is fine
    assert store.get(job_id).sent_at == clock.now  # type: ignore[union-attr]
    assert store.interrupt(job_id) is True  # sent: it may have reached the service
    failed = store.get(job_id)
    assert failed is not None and failed.state == JobState.FAILED and failed.error == INTERRUPTED


def test_a_store_written_before_sent_at_is_upgraded_in_place_keeping_every_job(tmp_path: Path, clock: Clock) -> None:
    """The first schema had no sent_at: its running jobs may have been sent (they fail, as they did), queued and
    finished ones stay as they were."""
    directory = tmp_path / "jobs"
    directory.mkdir(mode=0o700)
    db = sqlite3.connect(directory / DB_FILENAME)
    db.executescript(OLD_SCHEMA)
    rows = [("job_" + "r" * 32, "running", 5.0), ("job_" + "q" * 32, "queued", None),
            ("job_" + "d" * 32, "done", 5.0)]
    for job_id, state, started_at in rows:
        db.execute("INSERT INTO jobs (id, pod, method, path, headers, request_bytes, state, created_at, started_at) "
                   "VALUES (?, 'chat', 'POST', '/v1/chat/completions', '[]', 2, ?, 1.0, ?)",
                   (job_id, state, started_at))
        (directory / f"{job_id}.request").write_bytes(b"{}")
    db.commit()
    db.close()

    store = JobStore(directory, max_count=100, max_bytes=1 << 20, ttl_seconds=60, clock=clock)
    assert store.open() == ["job_" + "r" * 32]
    assert store.get("job_" + "r" * 32).error == INTERRUPTED  # type: ignore[union-attr]
    assert store.get("job_" + "q" * 32).state == JobState.QUEUED  # type: ignore[union-attr]
    assert store.get("job_" + "d" * 32).state == JobState.DONE  # type: ignore[union-attr]
    store.mark_running("job_" + "q" * 32)
    assert store.mark_sent("job_" + "q" * 32)
    store.close()
    assert JobStore(directory, max_count=100, max_bytes=1 << 20, ttl_seconds=60, clock=clock).open() == [
        "job_" + "q" * 32]  # upgraded once; the new column is used from then on


OLD_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, pod TEXT NOT NULL, owner TEXT,
    method TEXT NOT NULL, path TEXT NOT NULL, headers TEXT NOT NULL, request_bytes INTEGER NOT NULL,
    state TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, expires_at REAL,
    status INTEGER, response_headers TEXT, result_bytes INTEGER NOT NULL DEFAULT 0, error TEXT
);
CREATE INDEX jobs_queue ON jobs (pod, state, seq);
"""


def test_one_process_at_a_time_opens_a_store(tmp_path: Path, clock: Clock) -> None:
    store = open_store(tmp_path / "jobs", clock)
    running = add(store)
    store.mark_running(running)
    store.mark_sent(running)
    other = JobStore(tmp_path / "jobs", max_count=100, max_bytes=1 << 20, ttl_seconds=60, clock=clock)
    with pytest.raises(JobStoreBusy, match="another proxy"):
        other.open()
    assert store.get(running).state == JobState.RUNNING  # type: ignore[union-attr]
    store.close()
    assert other.open() == [running]


def test_the_store_and_its_files_are_private(tmp_path: Path, clock: Clock) -> None:
    store = open_store(tmp_path / "jobs", clock)
    add(store)
    assert stat.S_IMODE((tmp_path / "jobs").stat().st_mode) == 0o700
    for path in (tmp_path / "jobs").iterdir():
        if path.name.endswith(".sqlite3") or path.name.endswith(("-wal", "-shm")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_no_credential_header_is_stored() -> None:
    headers = [("Authorization", "Bearer sk-1"), ("Cookie", "session=2"), ("X-Api-Key", "3"),
               ("X-Auth-Token", "4"), ("Proxy-Authorization", "5"), ("X-RPM-Job-Token", "6"),
               ("Prefer", "respond-async"), ("Content-Length", "10"), ("Host", "x"), ("Connection", "close"),
               ("Content-Type", "application/json"), ("Accept", "*/*"), ("X-Request-Id", "r-1"),
               ("Sec-Fetch-Site", "same-origin"), ("Origin", "http://localhost")]
    assert stored_headers(headers) == (("Content-Type", "application/json"), ("Accept", "*/*"),
                                       ("X-Request-Id", "r-1"))


@pytest.mark.parametrize(("values", "wanted"), [
    (["respond-async"], True), (["Respond-Async"], True), (["wait=10, respond-async"], True),
    (["respond-async; foo=bar"], True), (["return=minimal", "respond-async"], True),
    (["return=minimal"], False), (["respond-asynchronously"], False), ([""], False), ([], False),
])
def test_prefer_parsing(values: list[str], wanted: bool) -> None:
    assert wants_async(values) is wanted


def test_job_ids_are_random_and_checked_before_use() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_job_id(job_id) for job_id in ids)
    assert not is_job_id("job_../../etc/passwd") and not is_job_id("job_short")
