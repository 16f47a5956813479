"""proxy/limits.py: the cost split (pure, and its incremental meter), admission against each limit, the
429s' headers and messages, and the counters written and read back."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runpod_manager.keys import KeyLimits, KeyUsage, Principal, load_usage
from runpod_manager.proxy.limits import (
    KeyLimiter,
    RateLimited,
    ShareMeter,
    estimate_tokens,
    request_cost_usd,
    reset_words,
)
from tests.support.clock import Clock

NOON = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()


def test_the_cost_of_a_request_is_its_share_of_the_pod_while_it_ran() -> None:
    # $3.60/h = $0.001/s. 10 s alone, then 10 s with one other request: 10 + 5 seconds of the pod.
    assert request_cost_usd(3.6, [(10, 1), (10, 2)]) == pytest.approx(0.015)
    # A 60 s cold start waited for by 3 requests, then served alone for 2 s.
    assert request_cost_usd(3.6, [(60, 3), (2, 1)]) == pytest.approx(0.022)
    assert request_cost_usd(0.0, [(100, 1)]) == 0
    assert request_cost_usd(3.6, []) == 0


def test_the_meter_splits_exactly_as_the_pure_function_and_the_shares_add_up_to_the_pod() -> None:
    """Random arrivals and departures: each request's share from the meter equals request_cost_usd over
    the stretches it saw, and together they own every second some request was in."""
    rng = random.Random(7)
    for _ in range(50):
        spans = []
        for _ in range(rng.randint(1, 6)):
            start = rng.uniform(0, 100)
            spans.append((start, start + rng.uniform(0.1, 50)))
        moments = sorted({t for span in spans for t in span})
        meter = ShareMeter()
        joined: dict[int, float] = {}
        owned: dict[int, float] = {}
        events = sorted(itertools.chain(((start, 1, i) for i, (start, _) in enumerate(spans)),
                                        ((end, 0, i) for i, (_, end) in enumerate(spans))))
        for at, kind, i in events:
            if kind:
                joined[i] = meter.join(at)
            else:
                owned[i] = meter.leave(at, joined[i])
        for i, (start, end) in enumerate(spans):
            stretches = [(b - a, sum(1 for s, e in spans if s <= a and e >= b))
                         for a, b in itertools.pairwise(moments) if start <= a and b <= end]
            assert owned[i] * 3.6 / 3600 == pytest.approx(request_cost_usd(3.6, stretches))
        covered = sum(b - a for a, b in itertools.pairwise(moments)
                      if any(s <= a and e >= b for s, e in spans))
        assert sum(owned.values()) == pytest.approx(covered)


def limiter(tmp_path: Path, **options: int) -> tuple[KeyLimiter, Clock]:
    clock = Clock(NOON)
    return KeyLimiter(tmp_path / "key_usage.json", zone=UTC, clock=clock, **options), clock


def key(name: str = "dev", **limits: float) -> Principal:
    return Principal(name=name, limits=KeyLimits(**limits))  # type: ignore[arg-type]


def test_requests_per_minute_refuse_with_openai_headers(tmp_path: Path) -> None:
    keys, _ = limiter(tmp_path)
    dev = key(requests_per_minute=2)
    keys.admit(dev)
    keys.admit(dev)
    with pytest.raises(RateLimited) as refused:
        keys.admit(dev)
    error = refused.value
    assert error.status == 429 and error.code == "rate_limit_requests" and error.error_type == "rate_limit_error"
    headers = error.headers()
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s") and 0 < int(headers["Retry-After"]) <= 60
    assert 0 < int(headers["retry-after-ms"]) <= 60_000 and headers["x-should-retry"] == "true"
    assert "reached its limit of 2 requests per minute" in error.message
    keys.admit(key("other", requests_per_minute=2))  # each key has its own window
    assert keys.usage("dev", NOON).requests == 2 and keys.usage("dev", NOON).refused == 1


def test_a_short_window_scales_the_per_minute_limits(tmp_path: Path) -> None:
    keys, _ = limiter(tmp_path, window_seconds=1)
    dev = key(requests_per_minute=120)  # 2 per 1 s window
    keys.admit(dev)
    keys.admit(dev)
    with pytest.raises(RateLimited) as refused:
        keys.admit(dev)
    assert refused.value.headers()["x-ratelimit-limit-requests"] == "120"
    assert int(refused.value.headers()["retry-after-ms"]) <= 1000


def test_tokens_per_minute_count_what_the_pod_reported(tmp_path: Path) -> None:
    keys, _ = limiter(tmp_path)
    dev = key(tokens_per_minute=100)
    keys.admit(dev)
    keys.finish(dev, tokens=150, cost_usd=0.0)  # one answer may pass the limit; the next request waits
    with pytest.raises(RateLimited) as refused:
        keys.admit(dev)
    headers = refused.value.headers()
    assert refused.value.code == "rate_limit_tokens"
    assert headers["x-ratelimit-limit-tokens"] == "100" and headers["x-ratelimit-remaining-tokens"] == "0"
    assert keys.usage("dev", NOON).tokens == 150


def test_max_concurrent_counts_requests_in_flight(tmp_path: Path) -> None:
    keys, _ = limiter(tmp_path)
    dev = key(max_concurrent=1)
    keys.admit(dev)
    with pytest.raises(RateLimited, match="1 requests in flight") as refused:
        keys.admit(dev)
    assert refused.value.code == "concurrency_limit_exceeded"
    keys.finish(dev, tokens=0, cost_usd=0.0)
    keys.admit(dev)


def test_a_spent_budget_refuses_until_the_day_ends_in_the_configs_zone(tmp_path: Path) -> None:
    keys, clock = limiter(tmp_path)
    script = key("script", daily_budget_usd=2.0)
    keys.admit(script)
    keys.finish(script, tokens=10, cost_usd=2.5)
    with pytest.raises(RateLimited) as refused:
        keys.admit(script)
    error = refused.value
    assert error.code == "daily_budget_exceeded" and error.headers()["x-should-retry"] == "false"
    assert "spent its daily budget ($2.50 of $2.00); it resets at 2026-11-30T00:00+00:00 (in 12h0m0s)" in (
        error.message)
    assert error.headers()["Retry-After"] == str(12 * 3600)
    keys.admit(key("other", daily_budget_usd=2.0))  # another key continues
    clock.now = NOON + 12 * 3600  # midnight: a new day, a new budget
    keys.admit(script)


def test_counters_are_written_when_changed_and_read_back(tmp_path: Path) -> None:
    keys, _ = limiter(tmp_path)
    dev = key()
    keys.admit(dev)
    keys.finish(dev, tokens=42, cost_usd=0.25)
    snapshot = keys.snapshot()
    assert snapshot is not None and keys.snapshot() is None  # nothing new: nothing to write
    keys.save(snapshot)
    assert load_usage(keys.usage_path) == {"2026-11-29": {"dev": KeyUsage(requests=1, tokens=42, spend_usd=0.25,
                                                                           last_used_at=NOON)}}
    again, _ = limiter(tmp_path)
    again.restore()
    assert again.usage("dev", NOON).spend_usd == 0.25


@pytest.mark.parametrize(("seconds", "words"), [(0.02, "20ms"), (1, "1s"), (1.2, "2s"), (360, "6m0s"),
                                                (3723, "1h2m3s")])
def test_reset_words_are_openais_format(seconds: float, words: str) -> None:
    assert reset_words(seconds) == words


def test_hits_start_no_thread_and_windows_still_expire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits library's memory storage starts a timer thread per ~10 ms of hits, which blocks the event
    loop; ours must not, and its counters must still reset when their window ends."""
    import threading

    import limits.storage.memory

    keys, _ = limiter(tmp_path)
    dev = key(requests_per_minute=10**6, tokens_per_minute=10**9)
    before = threading.active_count()
    started: list[object] = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self))  # noqa: PLW0108 - a method
    for _ in range(200):
        keys.admit(dev)
        keys.finish(dev, tokens=5, cost_usd=0.0)
    assert started == [] and threading.active_count() <= before
    clock = {"now": 1000.0}
    monkeypatch.setattr(limits.storage.memory.time, "time", lambda: clock["now"])
    one = key("one", requests_per_minute=1)
    keys.admit(one)
    with pytest.raises(RateLimited):
        keys.admit(one)
    clock["now"] += 61
    keys.admit(one)  # the window ended: the counter was dropped when read


def test_tokens_are_reserved_at_admission_and_settled_with_the_reported_usage(tmp_path: Path) -> None:
    keys, _ = limiter(tmp_path)
    dev = key(tokens_per_minute=100)
    first = keys.admit(dev, tokens=60)
    with pytest.raises(RateLimited) as refused:  # 60 reserved + 60 expected > 100, though nothing ended yet
        keys.admit(dev, tokens=60)
    assert refused.value.code == "rate_limit_tokens"
    keys.finish(dev, tokens=10, cost_usd=0.0, admission=first)  # the answer was short: 50 given back
    second = keys.admit(dev, tokens=60)
    keys.finish(dev, tokens=95, cost_usd=0.0, admission=second)  # longer than reserved: the rest is counted
    with pytest.raises(RateLimited):
        keys.admit(dev, tokens=1)
    assert keys.usage("dev", NOON).tokens == 105
    big = key("big", tokens_per_minute=100)
    keys.admit(big, tokens=10_000)  # more than a window's worth: let in alone, reserving the whole window
    with pytest.raises(RateLimited):
        keys.admit(big, tokens=1)


@pytest.mark.parametrize(("document", "tokens"), [
    (None, 512),
    ({"messages": [{"role": "user", "content": "x" * 400}]}, 100 + 512),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}, 1 + 20),
    ({"prompt": "y" * 40, "max_completion_tokens": 7, "n": 3}, 10 + 21),
    ({"input": ["a" * 8, "b" * 8]}, 4),  # embeddings generate nothing
])
def test_a_requests_tokens_are_estimated_from_its_prompt_and_max_tokens(document: dict[str, object] | None,
                                                                       tokens: int) -> None:
    assert estimate_tokens(document, 512) == tokens


def test_the_daily_budget_reserves_the_expected_cost_of_requests_in_flight(tmp_path: Path) -> None:
    keys, _ = limiter(tmp_path)
    script = key("script", daily_budget_usd=1.0)
    first = keys.admit(script, cost_usd=0.6)
    with pytest.raises(RateLimited) as refused:  # $0.6 in flight + $0.6 expected > $1: would pass the budget
        keys.admit(script, cost_usd=0.6, answer_seconds=4.0)
    assert refused.value.code == "daily_budget_reserved" and refused.value.headers()["Retry-After"] == "4"
    keys.finish(script, tokens=0, cost_usd=0.3, admission=first)
    second = keys.admit(script, cost_usd=0.6)  # $0.3 spent + $0.6 expected fits
    assert keys.reserved_usd == {"script": 0.6}
    keys.finish(script, tokens=0, cost_usd=0.5, admission=second)
    assert keys.reserved_usd == {} and keys.usage("script", NOON).spend_usd == pytest.approx(0.8)


def test_a_key_at_max_concurrent_queues_first_come_first_served_for_queue_seconds(tmp_path: Path) -> None:
    import asyncio

    async def scenario() -> None:
        keys, _ = limiter(tmp_path)
        dev = key(max_concurrent=1)
        first = await keys.admit_queued(dev, queue_seconds=5)
        order: list[str] = []

        async def queued(name: str) -> None:
            admission = await keys.admit_queued(dev, queue_seconds=5)
            order.append(name)
            await asyncio.sleep(0)
            keys.finish(dev, tokens=0, cost_usd=0.0, admission=admission)

        waiting = [asyncio.create_task(queued(name)) for name in ("second", "third")]
        await asyncio.sleep(0.01)
        assert order == [] and keys.in_flight == {"dev": 1} and len(keys.waiting["dev"]) == 2
        with pytest.raises(RateLimited) as refused:  # refused at once: the queue is a choice of the caller
            keys.admit(dev, answer_seconds=3.0)
        assert refused.value.headers()["Retry-After"] == "3"
        keys.finish(dev, tokens=0, cost_usd=0.0, admission=first)
        await asyncio.gather(*waiting)
        assert order == ["second", "third"] and keys.in_flight == {} and keys.waiting == {}
        held = await keys.admit_queued(dev, queue_seconds=5)
        with pytest.raises(RateLimited) as timed_out:  # nothing ended within queue_seconds
            await keys.admit_queued(dev, queue_seconds=0.01, answer_seconds=7.0)
        assert timed_out.value.code == "concurrency_limit_exceeded" and timed_out.value.retry_after_seconds == 7.0
        assert keys.waiting == {}
        leaving = asyncio.create_task(keys.admit_queued(dev, queue_seconds=5))
        await asyncio.sleep(0.01)
        leaving.cancel()  # the client left while it waited
        with pytest.raises(asyncio.CancelledError):
            await leaving
        keys.finish(dev, tokens=0, cost_usd=0.0, admission=held)
        assert keys.in_flight == {} and keys.waiting == {}

    asyncio.run(scenario())
