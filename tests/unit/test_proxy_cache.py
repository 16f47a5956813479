"""The response cache: what is cacheable, the key, storage, LRU/bytes/TTL bounds, restarts, sharing."""

from __future__ import annotations

import asyncio
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


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


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
