"""The queued jobs' store (jobs.py has the design): one sqlite file in the state directory's `jobs/` (0700)
with the spooled request bodies and the stored responses beside it, bounded in count and bytes ([proxy]
jobs_max_count, jobs_max_bytes); a job's row, its states, and the headers a job keeps (never a credential)."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import filelock

from runpod_manager.paths import ensure_private_dir, private_sqlite_files
from runpod_manager.proxy.forward import (
    FORWARDED_FOR_HEADER,
    HOP_BY_HOP,
    JOB_ID_HEADER,
    JOB_TOKEN_HEADER,
)

DB_FILENAME = "jobs.sqlite3"


_JOB_ID_RE = re.compile(r"^job_[A-Za-z0-9_-]{32}$")


INTERRUPTED = ("the proxy stopped while this job's request was in flight; it was not sent again because it may "
               "have reached the service: submit it again if that is safe")


# Headers never stored: they describe one connection, are recomputed, are the proxy's own, or may carry a
# credential (the proxy's key, a service's key or cookie). A pod's own key comes from the config, never
# from a stored job.
_NOT_STORED = HOP_BY_HOP | {"host", "content-length", "expect", "prefer", "authorization", "cookie", "origin",
                            FORWARDED_FOR_HEADER.lower(),
                            "x-rpm-cache", JOB_TOKEN_HEADER.lower(), JOB_ID_HEADER.lower()}


_CREDENTIAL_WORDS = ("auth", "key", "token", "secret", "password", "session", "cookie", "signature")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    pod TEXT NOT NULL,
    owner TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    request_bytes INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    status INTEGER,
    response_headers TEXT,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (pod, state, seq);
"""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobStoreBusy(Exception):
    """Another proxy process holds this job store (two proxies sharing one state directory)."""


class JobsFull(Exception):
    """The store holds as many jobs or bytes as it may ([proxy] jobs_max_count / jobs_max_bytes)."""


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    pod: str  # the configured pod whose queue it is in (routing's answer for its path and body)
    owner: str | None  # the submitting key's name, when keys have names; never a secret
    method: str
    path: str  # with its query, as sent
    headers: tuple[tuple[str, str], ...]
    request_bytes: int
    state: JobState
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    status: int | None
    response_headers: tuple[tuple[str, str], ...]
    result_bytes: int
    error: str | None
    # When its request last left the proxy toward the pod (JobStore.mark_sent); None: it never did, so a job
    # interrupted while running (its pod waking) provably never reached the service and is queued again.
    sent_at: float | None


@dataclass(frozen=True)
class PodJobs:
    """One pod's jobs, for /rpm/v1/pods: how many wait, how many run, when the oldest waiting one came."""

    queued: int = 0
    running: int = 0
    oldest_queued_at: float | None = None


def new_job_id() -> str:
    """Unguessable: 192 random bits."""
    return "job_" + secrets.token_urlsafe(24)


def is_job_id(text: str) -> bool:
    return _JOB_ID_RE.fullmatch(text) is not None


def stored_headers(headers: Iterable[tuple[str, str]], *, forwarded: str | None = None
                   ) -> tuple[tuple[str, str], ...]:
    """The request headers a job keeps: end-to-end ones that describe the request, never a credential; and
    `forwarded` (forward.forwarded_for of the submission) as X-Forwarded-For, which its replay passes on."""
    kept = [] if forwarded is None else [(FORWARDED_FOR_HEADER, forwarded)]
    for name, value in headers:
        lowered = name.lower()
        if lowered in _NOT_STORED or lowered.startswith("sec-fetch-"):
            continue
        if any(word in lowered for word in _CREDENTIAL_WORDS):
            continue
        kept.append((name, value))
    return tuple(kept)


class JobStore:
    """The jobs on disk: one sqlite file and a body file per job; every call is one short transaction."""

    def __init__(self, directory: Path, *, max_count: int, max_bytes: int, ttl_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._db: sqlite3.Connection | None = None
        self.requeued = 0  # jobs the last open() queued again (left running, never sent)
        # Held while open: only one process runs (and recovers) the jobs of a state directory.
        self._lock = filelock.FileLock(str(directory / ".lock"), mode=0o600)

    # ------------------------------------------------------------------------------------- files

    def body_path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.request"

    def result_path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.result"

    def open(self) -> list[str]:
        """Open (creating, or upgrading) the store and recover it: jobs left running whose request was sent
        failed, those whose request never left the proxy queued again (in their place), expired ones and stray
        files removed. Returns the ids of the jobs that failed."""
        ensure_private_dir(self.directory)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise JobStoreBusy(f"another proxy runs the jobs of {self.directory}") from None
        path = self.directory / DB_FILENAME
        private_sqlite_files(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        _upgrade(db)
        self._db = db
        self.requeued = db.execute("UPDATE jobs SET state = ?, started_at = NULL WHERE state = ? AND sent_at IS NULL",
                                   (JobState.QUEUED, JobState.RUNNING)).rowcount
        interrupted = [row[0] for row in db.execute("SELECT id FROM jobs WHERE state = ?", (JobState.RUNNING,))]
        now = self.clock()
        db.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ?, expires_at = ? WHERE state = ?",
                   (JobState.FAILED, INTERRUPTED, now, now + self.ttl_seconds, JobState.RUNNING))
        for job_id in interrupted:
            self._unlink(self.body_path(job_id))
        self.purge_expired()
        known = {row[0] for row in db.execute("SELECT id FROM jobs")}
        for entry in self.directory.iterdir():  # bodies of a submit the proxy died during
            stem, dot, suffix = entry.name.partition(".")
            if dot and stem and suffix in ("request", "result", "request.part", "result.part") and stem not in known:
                self._unlink(entry)
        return interrupted

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock.is_locked:
            self._lock.release()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the job store is not open")
        return self._db

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # ------------------------------------------------------------------------------------ bounds

    def totals(self) -> tuple[int, int]:
        """Jobs kept and the bytes their bodies and results take."""
        count, stored = self.db.execute(
            "SELECT count(*), coalesce(sum(request_bytes + result_bytes), 0) FROM jobs").fetchone()
        return int(count), int(stored)

    def check_room(self, *, extra_count: int = 1, extra_bytes: int = 0) -> None:
        """Raise JobsFull unless `extra_count` more jobs and `extra_bytes` more bytes fit."""
        count, stored = self.totals()
        if count + extra_count > self.max_count:
            raise JobsFull(f"{count} jobs are stored, the most [proxy] jobs_max_count = {self.max_count} allows")
        if stored + extra_bytes > self.max_bytes:
            raise JobsFull(f"the stored jobs take {stored} bytes; this one would pass [proxy] jobs_max_bytes = "
                           f"{self.max_bytes}")

    # ---------------------------------------------------------------------------------- changes

    def add(self, job_id: str, *, pod: str, method: str, path: str, headers: tuple[tuple[str, str], ...],
            request_bytes: int, owner: str | None = None) -> Job:
        """Store a queued job whose body is already at body_path(job_id)."""
        self.db.execute(
            "INSERT INTO jobs (id, pod, owner, method, path, headers, request_bytes, state, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, pod, owner, method, path, json.dumps(headers), request_bytes, JobState.QUEUED, self.clock()))
        job = self.get(job_id)
        assert job is not None  # noqa: S101 - just inserted
        return job

    def mark_running(self, job_id: str) -> bool:
        """Queued → running (before its request is sent). False when it is no longer queued (cancelled)."""
        cursor = self.db.execute("UPDATE jobs SET state = ?, started_at = ? WHERE id = ? AND state = ?",
                                 (JobState.RUNNING, self.clock(), job_id, JobState.QUEUED))
        return cursor.rowcount == 1

    def mark_sent(self, job_id: str) -> bool:
        """Its request leaves toward the pod now (committed before a byte is sent). False when the job is no
        longer running (put back in the queue by a stopping proxy): then it must not be sent."""
        cursor = self.db.execute("UPDATE jobs SET sent_at = ? WHERE id = ? AND state = ?",
                                 (self.clock(), job_id, JobState.RUNNING))
        return cursor.rowcount == 1

    def interrupt(self, job_id: str) -> bool:
        """The proxy stops under a running job: queued again when its request never left the proxy (False),
        else failed with INTERRUPTED (True), never sent twice."""
        cursor = self.db.execute("UPDATE jobs SET state = ?, started_at = NULL WHERE id = ? AND state = ? "
                                 "AND sent_at IS NULL", (JobState.QUEUED, job_id, JobState.RUNNING))
        if cursor.rowcount == 1:
            return False
        self.fail(job_id, INTERRUPTED)
        return True

    def finish(self, job_id: str, *, status: int, headers: tuple[tuple[str, str], ...], result_bytes: int) -> None:
        now = self.clock()
        self.db.execute(
            "UPDATE jobs SET state = ?, status = ?, response_headers = ?, result_bytes = ?, finished_at = ?, "
            "expires_at = ? WHERE id = ?",
            (JobState.DONE, status, json.dumps(headers), result_bytes, now, now + self.ttl_seconds, job_id))
        self._unlink(self.body_path(job_id))  # sent exactly once: never needed again

    def fail(self, job_id: str, error: str) -> None:
        now = self.clock()
        self.db.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ?, expires_at = ? WHERE id = ?",
                        (JobState.FAILED, error, now, now + self.ttl_seconds, job_id))
        self._unlink(self.body_path(job_id))
        self._unlink(self.result_path(job_id))

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._unlink(self.body_path(job_id))
        self._unlink(self.result_path(job_id))

    def purge_expired(self) -> int:
        expired = [row[0] for row in self.db.execute(
            "SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (self.clock(),))]
        for job_id in expired:
            self.delete(job_id)
        return len(expired)

    # ------------------------------------------------------------------------------------ reads

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown, deleted or expired."""
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = _job_of(row)
        if job.expires_at is not None and job.expires_at <= self.clock():
            self.delete(job_id)
            return None
        return job

    def position(self, job: Job) -> int:
        """Its place in its pod's queue: 1 runs next."""
        (ahead,) = self.db.execute("SELECT count(*) FROM jobs WHERE pod = ? AND state = ? AND seq < ?",
                                   (job.pod, JobState.QUEUED, job.seq)).fetchone()
        return int(ahead) + 1

    def next_queued(self, pod: str) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE pod = ? AND state = ? ORDER BY seq LIMIT 1",
                              (pod, JobState.QUEUED)).fetchone()
        return None if row is None else _job_of(row)

    def queued_pods(self) -> list[str]:
        return [row[0] for row in self.db.execute(
            "SELECT DISTINCT pod FROM jobs WHERE state = ?", (JobState.QUEUED,))]

    def summary(self) -> dict[str, PodJobs]:
        counts: dict[str, dict[str, Any]] = {}
        for pod, state, count, oldest in self.db.execute(
                "SELECT pod, state, count(*), min(created_at) FROM jobs WHERE state IN (?, ?) GROUP BY pod, state",
                (JobState.QUEUED, JobState.RUNNING)):
            entry = counts.setdefault(pod, {})
            if state == JobState.QUEUED:
                entry["queued"] = int(count)
                entry["oldest_queued_at"] = float(oldest)
            else:
                entry["running"] = int(count)
        return {pod: PodJobs(**entry) for pod, entry in counts.items()}


_COLUMNS = ("seq", "id", "pod", "owner", "method", "path", "headers", "request_bytes", "state", "created_at",
            "started_at", "finished_at", "expires_at", "status", "response_headers", "result_bytes", "error",
            "sent_at")


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a store made by an older rpm to this schema, keeping every job. Before sent_at: a running job may
    have been sent (it failed on restart, and still does), so it gets its start as its send."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if "sent_at" in columns:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE jobs ADD COLUMN sent_at REAL")
        db.execute("UPDATE jobs SET sent_at = coalesce(started_at, created_at) WHERE state = ?", (JobState.RUNNING,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _pairs(text: str | None) -> tuple[tuple[str, str], ...]:
    return () if not text else tuple((str(name), str(value)) for name, value in json.loads(text))


def _job_of(row: tuple[Any, ...]) -> Job:
    values = dict(zip(_COLUMNS, row, strict=True))
    return Job(id=values["id"], seq=values["seq"], pod=values["pod"], owner=values["owner"],
               method=values["method"], path=values["path"], headers=_pairs(values["headers"]),
               request_bytes=values["request_bytes"], state=JobState(values["state"]),
               created_at=values["created_at"], started_at=values["started_at"],
               finished_at=values["finished_at"], expires_at=values["expires_at"], status=values["status"],
               response_headers=_pairs(values["response_headers"]), result_bytes=values["result_bytes"],
               error=values["error"], sent_at=values["sent_at"])
