"""Deterministic-response cache on sqlite: bounded by entries, bytes and age, evicted least recently used.

What is cached: POST requests with a JSON body whose answer cannot vary — `temperature` is 0 (or the
request says `X-RPM-Cache: force`), `n` is absent or 1 — unless the request carries `Cache-Control:
no-cache` or `no-store`. Only complete 200 answers are stored: never errors, never a stream that broke
off, was cut by the client or reported an error event. A streamed answer is stored as its events and
replayed as the same events; a plain one as its body and content type.

The key is SHA-256 over the method, the path with its query, and the body as canonical JSON (sorted
keys, no whitespace). The `user` field is left out of the key: it only labels the end user for abuse
tracking and never changes the output, and editors put per-user values in it. The client's key is
not part of the key either (one developer's proxy; `api_keys` are access control, not tenancy).

Files: the sqlite file (and its -wal and -shm) are 0600 and a directory rpm creates is 0700, whatever the
umask: answers may hold anything a prompt or a model produced. The directory is rpm's default cache
directory or a user-named `[cache] dir`, which rpm never chmods: one that only its owner (this user) may
write is used as it is; one that others may write (group/world-writable, like /tmp, or owned by someone
else) gets a private subdirectory `rpm-cache-<uid>` that rpm creates 0700. If someone else made that
subdirectory first, the cache is disabled with a warning naming it (a cache is never fatal).

Storage is one sqlite file in the cache directory: WAL mode so readers never wait for writers,
a busy timeout and short transactions so several proxy processes can share it, and it survives
restarts. No sqlite call runs on the event loop: a primary-key read measured 10-25 µs median on the
development machine, but stalled up to ~90 ms while another connection wrote and checkpointed, which
would freeze every request on the loop. So lookups run on one reader thread (`lookup`, one hop only for
cacheable requests) and writes (stores, LRU touches, eviction) on one writer thread, never awaited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import json
import logging
import os
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runpod_manager.paths import make_dirs, private_sqlite_files
from runpod_manager.proxy.forward import RequestFacts

log = logging.getLogger("runpod_manager.proxy")

SCHEMA_VERSION = 1
DB_FILENAME = "responses.sqlite3"
IGNORED_FIELDS = frozenset({"user"})
_LENGTH = struct.Struct(">I")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    streamed INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_lru ON responses (last_used_at);
"""


def cache_key(method: str, path_qs: str, document: Mapping[str, Any]) -> str:
    """SHA-256 of method, path (with query) and the body as canonical JSON, minus IGNORED_FIELDS."""
    canonical = {key: value for key, value in document.items() if key not in IGNORED_FIELDS}
    payload = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method}\n{path_qs}\n{payload}".encode()).hexdigest()


def is_cacheable(method: str, facts: RequestFacts, headers: Mapping[str, str]) -> bool:
    """Whether the answer to this request is deterministic and the client allows caching it."""
    if method != "POST" or facts.document is None:
        return False
    cache_control = headers.get("Cache-Control")
    if cache_control and ("no-cache" in cache_control.lower() or "no-store" in cache_control.lower()):
        return False
    n = facts.n
    if n is not None and n != 1:
        return False
    if headers.get("X-RPM-Cache", "").strip().lower() == "force":
        return True
    temperature = facts.temperature
    return (isinstance(temperature, int | float) and not isinstance(temperature, bool)
            and temperature == 0)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored answer: a body with its content type, or the events of a stream."""

    content_type: str
    body: bytes = b""
    events: tuple[bytes, ...] | None = None

    @property
    def streamed(self) -> bool:
        return self.events is not None

    @property
    def size(self) -> int:
        return len(self.body) if self.events is None else sum(len(event) for event in self.events)


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int


def _encode_events(events: tuple[bytes, ...]) -> bytes:
    return b"".join(_LENGTH.pack(len(event)) + event for event in events)


def _decode_events(blob: bytes) -> tuple[bytes, ...]:
    events = []
    offset = 0
    while offset < len(blob):
        (length,) = _LENGTH.unpack_from(blob, offset)
        offset += _LENGTH.size
        events.append(blob[offset:offset + length])
        offset += length
    return tuple(events)


class ResponseCache:
    """The cache: reads on a reader thread (`lookup`), every write on the writer thread."""

    def __init__(
        self,
        directory: Path,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        on_stats: Callable[[CacheStats], None] | None = None,
    ) -> None:
        self.directory = directory
        self.path = directory / DB_FILENAME
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._on_stats = on_stats
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.available = False

    # ------------------------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the directory and schema. A cache that cannot open is disabled, never fatal."""
        try:
            self.path = private_cache_dir(self.directory) / DB_FILENAME
        except OSError as exc:
            log.warning("response cache disabled: cannot use %s: %s", self.directory, exc.strerror or exc)
            return
        try:
            try:
                self._create()
            except sqlite3.DatabaseError as exc:
                if "not a database" not in str(exc) and "malformed" not in str(exc):
                    raise
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                log.warning("response cache %s is corrupt (%s); moved aside to %s", self.path, exc, aside)
                self.path.rename(aside)
                for suffix in ("-wal", "-shm"):
                    self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
                self._create()
        except (OSError, sqlite3.Error) as exc:
            log.warning("response cache disabled: cannot open %s (%s)", self.path, exc)
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                               thread_name_prefix="rpm-proxy-cache-write")
        self._reader_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                      thread_name_prefix="rpm-proxy-cache-read")
        self.available = True
        self._submit(self._publish_stats)

    def close(self) -> None:
        """Finish pending writes, then close both connections."""
        self.available = False
        for executor in (self._reader_executor, self._executor):
            if executor is not None:
                executor.shutdown(wait=True)
        self._executor = self._reader_executor = None
        for connection in (self._reader, self._writer):
            if connection is not None:
                connection.close()
        self._reader = self._writer = None

    def flush(self) -> None:
        """Wait until every queued write is done (tests and shutdown)."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()

    def _connect(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so each read is its own short snapshot and writes use
        # explicit BEGIN IMMEDIATE (which takes the write lock up front instead of failing mid-way).
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout_ms / 1000)
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable except on power loss
        return connection

    def _create(self) -> None:
        private_sqlite_files(self.path)
        connection = self._connect(busy_timeout_ms=5000)
        try:
            self._migrate(connection)
        finally:
            connection.close()

    @staticmethod
    def _migrate(connection: sqlite3.Connection) -> None:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version not in (0, SCHEMA_VERSION):
            # A cache is disposable: an unknown layout is dropped, not upgraded.
            connection.execute("DROP TABLE IF EXISTS responses")
        connection.executescript(_SCHEMA)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ---------------------------------------------------------------------------------------- reads

    async def lookup(self, key: str) -> CachedResponse | None:
        """`get` on the reader thread, for the event loop."""
        executor = self._reader_executor
        if executor is None or not self.available:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, self.get, key)
        except RuntimeError:  # the executor shut down meanwhile (proxy stopping)
            return None

    def get(self, key: str) -> CachedResponse | None:
        """The fresh entry for `key`, or None (blocking; see `lookup`)."""
        if not self.available:
            return None
        try:
            with self._reader_lock:
                if self._reader is None:
                    # Short busy timeout: in WAL mode a reader waits only in rare recovery cases; a
                    # miss is the harmless answer then.
                    self._reader = self._connect(busy_timeout_ms=50)
                row = self._reader.execute(
                    "SELECT streamed, content_type, body FROM responses WHERE key = ? AND created_at > ?",
                    (key, self._clock() - self.ttl_seconds)).fetchone()
        except sqlite3.Error as exc:
            log.debug("response cache read failed (%s); treated as a miss", exc)
            return None
        if row is None:
            return None
        streamed, content_type, body = row
        self._submit(self._touch, key)
        if streamed:
            return CachedResponse(content_type=content_type, events=_decode_events(body))
        return CachedResponse(content_type=content_type, body=body)

    def stats(self) -> CacheStats:
        if not self.available:
            return CacheStats(0, 0)
        with self._writer_lock:
            connection = self._writer_connection()
            entries, size = connection.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses").fetchone()
        return CacheStats(entries, size)

    def describe(self, limit: int = 50) -> list[dict[str, Any]]:
        """Most recently used entries for /debug/cache: key prefix, sizes and times, never bodies."""
        if not self.available:
            return []
        with self._writer_lock:
            rows = self._writer_connection().execute(
                "SELECT key, created_at, last_used_at, hits, size, streamed FROM responses "
                "ORDER BY last_used_at DESC LIMIT ?", (limit,)).fetchall()
        now = self._clock()
        return [{"key": key[:16], "age_seconds": round(now - created, 1),
                 "idle_seconds": round(now - used, 1), "hits": hits, "bytes": size,
                 "streamed": bool(streamed)} for key, created, used, hits, size, streamed in rows]

    # --------------------------------------------------------------------------------------- writes

    def put_later(self, key: str, response: CachedResponse) -> None:
        """Queue a store; the request that produced it never waits for sqlite."""
        if response.size > self.max_bytes:
            return  # could never fit; storing it would only evict everything else
        self._submit(self.put, key, response)

    def put(self, key: str, response: CachedResponse) -> None:
        """Store (writer thread, or tests), then evict expired and least recently used entries."""
        if not self.available or response.size > self.max_bytes:
            return
        now = self._clock()
        blob = _encode_events(response.events) if response.events is not None else response.body
        with self._writer_lock:
            connection = self._writer_connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("DELETE FROM responses WHERE created_at <= ?", (now - self.ttl_seconds,))
                connection.execute(
                    "INSERT OR REPLACE INTO responses "
                    "(key, created_at, last_used_at, hits, size, streamed, content_type, body) "
                    "VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
                    (key, now, now, response.size, int(response.streamed), response.content_type, blob))
                self._evict(connection, keep=key)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        self._publish_stats()

    def _evict(self, connection: sqlite3.Connection, *, keep: str) -> None:
        entries, size = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses").fetchone()
        if entries <= self.max_entries and size <= self.max_bytes:
            return
        doomed: list[tuple[str]] = []
        for key, entry_size in connection.execute(
                "SELECT key, size FROM responses ORDER BY last_used_at ASC, rowid ASC"):
            if entries <= self.max_entries and size <= self.max_bytes:
                break
            if key == keep:
                continue
            doomed.append((key,))
            entries -= 1
            size -= entry_size
        connection.executemany("DELETE FROM responses WHERE key = ?", doomed)

    def _touch(self, key: str) -> None:
        with self._writer_lock:
            self._writer_connection().execute(
                "UPDATE responses SET last_used_at = ?, hits = hits + 1 WHERE key = ?", (self._clock(), key))

    def clear(self) -> None:
        with self._writer_lock:
            self._writer_connection().execute("DELETE FROM responses")
        self._publish_stats()

    def _writer_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._connect(busy_timeout_ms=5000)
        return self._writer

    def _publish_stats(self) -> None:
        if self._on_stats is not None:
            self._on_stats(self.stats())

    def _submit(self, function: Callable[..., None], *args: Any) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            future = executor.submit(function, *args)
        except RuntimeError:  # shut down meanwhile
            return
        future.add_done_callback(_log_failure)


def private_cache_dir(directory: Path) -> Path:
    """The directory the cache's files go in, per the module docstring; OSError (with a strerror naming the
    directory) when it cannot be made private. Never changes the mode of a directory rpm did not create."""
    if make_dirs(directory):
        return directory  # rpm created it just now, 0700
    if _private_to_me(directory):
        return directory
    private = directory / f"rpm-cache-{os.geteuid()}"
    if make_dirs(private):
        return private
    info = private.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"{private} is owned by another user or is not a directory; remove it or "
                                   f"set [cache] dir to a directory only you may write")
    if info.st_mode & 0o077:
        private.chmod(0o700)  # rpm's own subdirectory (its name, this user's): safe to tighten
    return private


def _private_to_me(directory: Path) -> bool:
    """Owned by this user and writable by no one else, so nobody else can plant or swap files in it."""
    info = directory.stat()
    return info.st_uid == os.geteuid() and not info.st_mode & 0o022


def _log_failure(future: concurrent.futures.Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("response cache write failed: %s", exc)
