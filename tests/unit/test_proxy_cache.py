"""The response cache: what is cacheable, the key, storage, LRU/bytes/TTL bounds, restarts, sharing."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runpod_manager.proxy.cache import (
    DB_FILENAME,
    CachedResponse,
    ResponseCache,
    cache_key,
    is_cacheable,
)
from runpod_manager.proxy.forward import NO_BODY, RequestFacts
from tests.support.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(tmp_path: Path, clock: Clock) -> Iterator[ResponseCache]:
    instance = ResponseCache(tmp_path / "cache", max_entries=3, max_bytes=10_000, ttl_seconds=60, clock=clock)
    instance.open()
    yield instance
    instance.close()


def body(size: int = 10, fill: bytes = b"x") -> CachedResponse:
    return CachedResponse(content_type="application/json", body=fill * size)


# ------------------------------------------------------------------------------------------- eligibility


def facts(**document: Any) -> RequestFacts:
    return RequestFacts(document=document, stream=document.get("stream") is True)


@pytest.mark.parametrize(("method", "request_facts", "headers", "expected"), [
    ("POST", facts(temperature=0), {}, True),
    ("POST", facts(temperature=0.0, n=1), {}, True),
    ("POST", facts(temperature=0.2), {}, False),
    ("POST", facts(), {}, False),  # vLLM's default temperature is not 0
    ("POST", facts(temperature=False), {}, False),  # a boolean is not a temperature
    ("POST", facts(temperature=0, n=2), {}, False),
    ("POST", facts(temperature=0.7), {"X-RPM-Cache": "force"}, True),
    ("POST", facts(temperature=0.7, n=3), {"X-RPM-Cache": "force"}, False),
    ("POST", facts(temperature=0), {"Cache-Control": "no-cache"}, False),
    ("POST", facts(temperature=0), {"Cache-Control": "max-age=0, no-store"}, False),
    ("GET", facts(temperature=0), {}, False),
    ("POST", NO_BODY, {}, False),
])
def test_cacheable(method: str, request_facts: RequestFacts, headers: dict[str, str], expected: bool) -> None:
    assert is_cacheable(method, request_facts, headers) is expected


def test_key_is_canonical_and_ignores_user() -> None:
    first = cache_key("POST", "/v1/completions", {"model": "m", "prompt": "p", "temperature": 0})
    same = cache_key("POST", "/v1/completions", {"temperature": 0, "prompt": "p", "model": "m", "user": "me"})
    assert first == same
    assert len(first) == 64
    assert first != cache_key("POST", "/v1/chat/completions", {"model": "m", "prompt": "p", "temperature": 0})
    assert first != cache_key("POST", "/v1/completions?x=1", {"model": "m", "prompt": "p", "temperature": 0})
    assert first != cache_key("POST", "/v1/completions", {"model": "m", "prompt": "p", "temperature": 0,
                                                          "stream": True})


# ----------------------------------------------------------------------------------------------- storage


def test_body_and_events_round_trip(cache: ResponseCache) -> None:
    cache.put("plain", CachedResponse(content_type="application/json; charset=utf-8", body=b'{"a": 1}'))
    events = (b"data: {\"x\": 1}\n\n", b"data: {\"y\": \"\\n\\n\"}\n\n", b"data: [DONE]\n\n")
    cache.put("stream", CachedResponse(content_type="text/event-stream", events=events))
    plain = cache.get("plain")
    assert plain is not None and plain.body == b'{"a": 1}' and not plain.streamed
    assert plain.content_type == "application/json; charset=utf-8"
    streamed = cache.get("stream")
    assert streamed is not None and streamed.events == events
    assert cache.get("absent") is None


def test_lookup_runs_off_the_loop(cache: ResponseCache) -> None:
    cache.put("k", body())

    async def look() -> tuple[CachedResponse | None, CachedResponse | None]:
        return await cache.lookup("k"), await cache.lookup("nope")

    hit, miss = asyncio.run(look())
    assert hit is not None and hit.body == b"x" * 10
    assert miss is None


def test_lru_eviction_by_entries_keeps_recently_used(cache: ResponseCache, clock: Clock) -> None:
    for key in ("a", "b", "c"):
        cache.put(key, body())
        clock.now += 1
    assert cache.get("a") is not None  # touches "a" (on the writer thread)
    cache.flush()
    clock.now += 1
    cache.put("d", body())
    assert cache.get("b") is None  # least recently used
    assert all(cache.get(key) is not None for key in ("a", "c", "d"))
    assert cache.stats().entries == 3


def test_eviction_by_bytes(cache: ResponseCache, clock: Clock) -> None:
    cache.put("a", body(4000))
    clock.now += 1
    cache.put("b", body(4000))
    clock.now += 1
    cache.put("c", body(4000))
    assert cache.get("a") is None
    assert cache.stats().bytes == 8000


def test_oversized_entries_are_not_stored(cache: ResponseCache) -> None:
    cache.put("small", body())
    cache.put("huge", body(10_001))
    cache.put_later("huge2", body(10_001))
    cache.flush()
    assert cache.get("huge") is None and cache.get("huge2") is None
    assert cache.get("small") is not None


def test_ttl_with_injected_clock(cache: ResponseCache, clock: Clock) -> None:
    cache.put("k", body())
    clock.now += 59
    assert cache.get("k") is not None
    clock.now += 2
    assert cache.get("k") is None
    cache.put("other", body())  # a write sweeps expired rows
    assert cache.stats().entries == 1


def test_survives_restart_and_is_shared_between_instances(tmp_path: Path, clock: Clock) -> None:
    directory = tmp_path / "shared"
    first = ResponseCache(directory, max_entries=10, max_bytes=10_000, ttl_seconds=60, clock=clock)
    second = ResponseCache(directory, max_entries=10, max_bytes=10_000, ttl_seconds=60, clock=clock)
    first.open()
    second.open()
    first.put("k", body())
    assert second.get("k") is not None  # another process's entries are visible at once
    first.close()
    second.close()
    reopened = ResponseCache(directory, max_entries=10, max_bytes=10_000, ttl_seconds=60, clock=clock)
    reopened.open()
    try:
        assert reopened.get("k") is not None
        mode = (directory.stat().st_mode & 0o777)
        assert mode == 0o700
        with sqlite3.connect(directory / DB_FILENAME) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        reopened.close()


def test_corrupt_file_is_moved_aside(tmp_path: Path, clock: Clock) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / DB_FILENAME).write_bytes(b"this is not a database" * 100)
    instance = ResponseCache(directory, max_entries=10, max_bytes=10_000, ttl_seconds=60, clock=clock)
    instance.open()
    try:
        assert instance.available
        instance.put("k", body())
        assert instance.get("k") is not None
        assert any(path.name.startswith(f"{DB_FILENAME}.corrupt-") for path in directory.iterdir())
    finally:
        instance.close()


def test_unusable_directory_disables_the_cache(tmp_path: Path, clock: Clock) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    instance = ResponseCache(blocker / "sub", max_entries=10, max_bytes=10_000, ttl_seconds=60, clock=clock)
    instance.open()
    assert not instance.available
    assert instance.get("k") is None
    instance.put("k", body())  # a no-op, not an error
    instance.close()


def test_describe_shows_no_bodies(cache: ResponseCache) -> None:
    cache.put("0123456789abcdef-rest-of-key", body(fill=b"S"))
    described = cache.describe()
    assert described[0]["key"] == "0123456789abcdef"
    assert "SSSS" not in repr(described)


# ------------------------------------------------------------------------------------- files and modes
# rpm creates its files 0600 and directories 0700 whatever the umask, and never changes the mode of a
# directory it did not create: a user-named `[cache] dir` that others may write (like /tmp) gets a private
# subdirectory rpm creates, `rpm-cache-<uid>`.


def open_cache(directory: Path, clock: Clock) -> ResponseCache:
    instance = ResponseCache(directory, max_entries=10, max_bytes=10_000, ttl_seconds=60, clock=clock)
    instance.open()
    return instance


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_a_new_cache_is_private_even_with_umask_000(tmp_path: Path, clock: Clock) -> None:
    directory = tmp_path / "cache" / "responses"  # like RPM_HOME/cache/responses: neither exists yet
    previous = os.umask(0)
    try:
        instance = open_cache(directory, clock)
        instance.put("k", body())  # a write creates -wal and -shm
    finally:
        os.umask(previous)
    try:
        assert instance.available and instance.path == directory / DB_FILENAME
        assert mode_of(directory) == 0o700 and mode_of(directory.parent) == 0o700
        files = sorted(directory.iterdir())
        assert {path.name for path in files} >= {DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-shm"}
        assert {path.name: mode_of(path) for path in files} == {path.name: 0o600 for path in files}
    finally:
        instance.close()


def test_loose_files_left_by_an_older_rpm_are_tightened(tmp_path: Path, clock: Clock) -> None:
    directory = tmp_path / "c"
    open_cache(directory, clock).close()
    for name in (DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-shm"):
        (directory / name).touch()
        (directory / name).chmod(0o644)
    instance = open_cache(directory, clock)
    try:
        assert instance.available
        assert {path.name: mode_of(path) for path in directory.iterdir()} == {
            path.name: 0o600 for path in directory.iterdir()}
    finally:
        instance.close()


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o775], ids=["1777", "0777", "0775"])
def test_a_directory_others_may_write_is_left_alone_and_gets_a_private_subdirectory(
        tmp_path: Path, clock: Clock, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)  # like /tmp (1777) named as [cache] dir
    instance = open_cache(shared, clock)
    try:
        assert instance.available
        assert mode_of(shared) == mode  # never chmod-ed
        private = shared / f"rpm-cache-{os.geteuid()}"
        assert instance.path == private / DB_FILENAME
        assert mode_of(private) == 0o700 and mode_of(instance.path) == 0o600
        assert [path.name for path in shared.iterdir()] == [private.name]
    finally:
        instance.close()
    again = open_cache(shared, clock)  # the same subdirectory next time: the cache survives restarts
    try:
        assert again.path == instance.path
    finally:
        again.close()


def test_a_users_own_directory_that_only_they_may_write_is_used_as_it_is(tmp_path: Path, clock: Clock) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    mine.chmod(0o755)
    instance = open_cache(mine, clock)
    try:
        assert instance.path == mine / DB_FILENAME and mode_of(mine) == 0o755
        assert mode_of(instance.path) == 0o600
    finally:
        instance.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory owned by someone else needs root")
def test_a_private_subdirectory_someone_else_made_first_disables_the_cache(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    squatted = shared / f"rpm-cache-{os.geteuid()}"
    squatted.mkdir()
    squatted.chmod(0o777)
    os.chown(squatted, 65534, 65534)  # nobody got there first
    instance = open_cache(shared, clock)
    try:
        assert not instance.available
        assert f"response cache disabled: cannot use {shared}: {squatted} is owned by another user" in caplog.text
        assert list(squatted.iterdir()) == [] and mode_of(squatted) & 0o777 == 0o777
    finally:
        instance.close()
