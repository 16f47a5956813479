"""Per-key limits in the proxy: requests and tokens per minute, requests at once, a daily budget in USD;
and the usage counters behind `rpm keys usage`, which survive a restart.

Rates use the `limits` library's fixed window on its in-memory storage (a Redis storage is a one-line change
for several proxies). Fixed, not moving: a moving window stores one entry per unit, and a token limit hits
with a cost of thousands of tokens per request; the sliding-window counter measured 2.4x slower than the
fixed window on this path (BENCHMARKS.md, "Keys"). A fixed window lets a key send up to twice its rate
across a window boundary, which a team gateway can afford; its reset time is exact, which is what the
`x-ratelimit-reset-*` headers and Retry-After need. Windows are `[proxy] key_limit_window_seconds` long
(60 by default); with a shorter window the per-minute limits are scaled to it.

A request's cost (`request_cost_usd`) is its share of its pod's $/h: while it waits for a wake, the pod's
$/h split across the requests waiting for that wake; while it is served, split across the requests in
flight on that pod. `ShareMeter` keeps that split incrementally (O(1) per request); the unit tests check
it against the pure function. Counters are kept per key per day (the config's zone, the same day as the
spend cap) and written to `key_usage.json` off the hot path, at most every `USAGE_FLUSH_SECONDS`, and at
shutdown; they are read back at start-up, so a restart does not reset a budget. The rate windows are not
persisted: they are a minute long.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from runpod_manager.display import usd
from runpod_manager.keys import KeyUsage, Principal, load_usage, save_usage, usage_day
from runpod_manager.policy import local_day_start
from runpod_manager.proxy.forward import ProxyError

USAGE_FLUSH_SECONDS = 1.0


def request_cost_usd(usd_per_hour: float, shares: Iterable[tuple[float, int]]) -> float:
    """What a request costs: for each stretch of `seconds` during which `sharing` requests (this one
    included) were waiting for the same wake, or in flight on the same pod, seconds / sharing of the pod's
    time, at its $/h. A cold start is paid by the requests that waited for it, a busy pod by the requests
    it serves, each stretch split evenly."""
    return usd_per_hour / 3600.0 * sum(seconds / sharing for seconds, sharing in shares if sharing > 0)


class ShareMeter:
    """`request_cost_usd`'s split, kept incrementally for one pod (or one wake): the running integral of
    1/n(t), n being the requests sharing it. A request's share is the integral's growth while it was in."""

    __slots__ = ("count", "integral", "last")

    def __init__(self) -> None:
        self.count = 0
        self.integral = 0.0
        self.last = 0.0

    def _advance(self, now: float) -> None:
        if self.count:
            self.integral += (now - self.last) / self.count
        self.last = now

    def join(self, now: float) -> float:
        self._advance(now)
        self.count += 1
        return self.integral

    def leave(self, now: float, joined_at_integral: float) -> float:
        """Leave; the seconds of the pod this request owned while it was in."""
        self._advance(now)
        self.count -= 1
        return self.integral - joined_at_integral


class LoopMemoryStorage(MemoryStorage):
    """limits' memory storage without its expiry thread.

    `MemoryStorage` starts a `threading.Timer` whenever the previous one has run (every ~10 ms under load),
    and `Thread.start()` blocks the caller until the thread runs: measured in the proxy, 690 thread starts
    in 8,100 hits held the event loop for 0.6 s in all (BENCHMARKS.md, "Keys"). A fixed window needs no
    sweep: `get()` drops an expired counter when it is read, and the proxy keeps two counters per key.
    Only the sweep is switched off (the library's name-mangled hook); the algorithms are the library's.
    `tests/unit/test_key_limits.py` checks that hits start no thread.
    """

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - the name the library calls
        return


class RateLimited(ProxyError):
    """429 with Retry-After and OpenAI's x-ratelimit-* headers."""

    def __init__(self, message: str, *, code: str, retry_after_seconds: float, should_retry: bool,
                 limit_headers: dict[str, str]) -> None:
        super().__init__(429, message, code=code, error_type="rate_limit_error",
                         retry_after_seconds=retry_after_seconds, should_retry=should_retry)
        self.limit_headers = limit_headers

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.limit_headers}


def reset_words(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True, slots=True)
class _Items:
    requests: RateLimitItemPerSecond | None
    tokens: RateLimitItemPerSecond | None
    requests_per_minute: int | None
    tokens_per_minute: int | None


class KeyLimiter:
    """Every key's limits and counters in one proxy. Runs on the event loop (no locks), but `snapshot` and
    `restore` are called from a worker thread while the loop may run: they copy."""

    def __init__(self, usage_path: Path, *, zone: tzinfo | None, window_seconds: int = 60,
                 clock: Callable[[], float] = time.time) -> None:
        self.usage_path = usage_path
        self.zone = zone
        self.window_seconds = window_seconds
        self.clock = clock
        self.storage = LoopMemoryStorage()
        self.limiter = FixedWindowRateLimiter(self.storage)
        self.in_flight: dict[str, int] = {}
        self.days: dict[str, dict[str, KeyUsage]] = {}
        self.dirty = False
        self._items: dict[tuple[int | None, int | None], _Items] = {}
        self._day = ""
        self._day_ends_at = 0.0

    # --------------------------------------------------------------------------------- the day

    def today(self, now: float) -> dict[str, KeyUsage]:
        if now >= self._day_ends_at:
            self._day = usage_day(now, self.zone)
            self._day_ends_at = self.next_day_at(now)
        return self.days.setdefault(self._day, {})

    def next_day_at(self, now: float) -> float:
        """When the day of `now` ends in the config's zone (when budgets reset): the spend ledger's day start."""
        following = datetime.fromtimestamp(now, self.zone).date() + timedelta(days=1)
        return local_day_start(following, self.zone).timestamp()

    def usage(self, name: str, now: float) -> KeyUsage:
        today = self.today(now)
        usage = today.get(name)
        if usage is None:
            usage = today[name] = KeyUsage()
        return usage

    # --------------------------------------------------------------------------------- admission

    def _items_for(self, principal: Principal) -> _Items:
        limits = principal.limits
        key = (limits.requests_per_minute, limits.tokens_per_minute)
        items = self._items.get(key)
        if items is None:
            scale = self.window_seconds / 60.0
            items = self._items[key] = _Items(
                requests=None if limits.requests_per_minute is None else RateLimitItemPerSecond(
                    max(1, round(limits.requests_per_minute * scale)), self.window_seconds),
                tokens=None if limits.tokens_per_minute is None else RateLimitItemPerSecond(
                    max(1, round(limits.tokens_per_minute * scale)), self.window_seconds),
                requests_per_minute=limits.requests_per_minute, tokens_per_minute=limits.tokens_per_minute)
        return items

    def admit(self, principal: Principal) -> None:
        """Count the request against its key, or raise RateLimited (429) when a limit is reached."""
        name = principal.name
        now = self.clock()
        usage = self.usage(name, now)
        limits = principal.limits
        if limits.any:
            try:
                self._check(principal, usage, now)
            except RateLimited:
                usage.refused += 1
                self.dirty = True
                raise
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        usage.requests += 1
        usage.last_used_at = now
        self.dirty = True

    def _check(self, principal: Principal, usage: KeyUsage, now: float) -> None:
        name = principal.name
        limits = principal.limits
        budget = limits.daily_budget_usd
        if budget is not None and usage.spend_usd >= budget:
            resets_in = max(1.0, self._day_ends_at - now)
            resets_at = datetime.fromtimestamp(self._day_ends_at, self.zone).isoformat(timespec="minutes")
            raise RateLimited(
                f"the key {name!r} spent its daily budget ({usd(usage.spend_usd)} of {usd(budget)}); it resets "
                f"at {resets_at} (in {reset_words(resets_in)})", code="daily_budget_exceeded",
                retry_after_seconds=resets_in, should_retry=False, limit_headers={})
        cap = limits.max_concurrent
        if cap is not None and self.in_flight.get(name, 0) >= cap:
            raise RateLimited(f"the key {name!r} has {cap} requests in flight, its max_concurrent; retry when "
                              "one ends", code="concurrency_limit_exceeded", retry_after_seconds=1.0,
                              should_retry=True, limit_headers={})
        items = self._items_for(principal)
        if items.tokens is not None and not self.limiter.test(items.tokens, name):
            raise self._limited(principal, items, "tokens", items.tokens)
        if items.requests is not None and not self.limiter.hit(items.requests, name):
            raise self._limited(principal, items, "requests", items.requests)

    def _limited(self, principal: Principal, items: _Items, kind: str, item: RateLimitItemPerSecond
                 ) -> RateLimited:
        now = time.time()  # the limits library's clock (its windows' reset times), not the day's
        reset_seconds = self.limiter.get_window_stats(item, principal.name).reset_time - now
        headers = self.limit_headers(principal, items, now)
        per_minute = items.requests_per_minute if kind == "requests" else items.tokens_per_minute
        window = "a minute" if self.window_seconds == 60 else f"{self.window_seconds} s windows"
        return RateLimited(f"the key {principal.name!r} reached its limit of {per_minute} {kind} per minute "
                           f"(counted in {window}); retry in {reset_words(reset_seconds)}",
                           code=f"rate_limit_{kind}", retry_after_seconds=max(0.001, reset_seconds),
                           should_retry=True, limit_headers=headers)

    def limit_headers(self, principal: Principal, items: _Items, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, item, per_minute in (("requests", items.requests, items.requests_per_minute),
                                       ("tokens", items.tokens, items.tokens_per_minute)):
            if item is None:
                continue
            stats = self.limiter.get_window_stats(item, principal.name)
            headers[f"x-ratelimit-limit-{kind}"] = str(per_minute)
            headers[f"x-ratelimit-remaining-{kind}"] = str(stats.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = reset_words(max(0.0, stats.reset_time - now))
        return headers

    def refuse(self, principal: Principal) -> None:
        """A request its key's scopes refused (403): counted, never charged."""
        self.usage(principal.name, self.clock()).refused += 1
        self.dirty = True

    def finish(self, principal: Principal, *, tokens: int, cost_usd: float) -> None:
        """The end of an admitted request (whatever its outcome): its tokens and cost."""
        name = principal.name
        left = self.in_flight.get(name, 1) - 1
        if left:
            self.in_flight[name] = left
        else:
            self.in_flight.pop(name, None)
        if tokens <= 0 and cost_usd <= 0:
            return
        usage = self.usage(name, self.clock())
        usage.tokens += tokens
        usage.spend_usd += cost_usd
        self.dirty = True
        if tokens > 0 and principal.limits.tokens_per_minute is not None:
            items = self._items_for(principal)
            if items.tokens is not None:
                self.limiter.hit(items.tokens, name, cost=tokens)  # may go past the limit: the next waits

    # --------------------------------------------------------------------------------- persistence

    def restore(self) -> None:
        """Read the counters a previous proxy wrote (a worker thread, before serving)."""
        self.days = load_usage(self.usage_path)

    def snapshot(self) -> dict[str, dict[str, KeyUsage]] | None:
        """A copy of the counters when they changed since the last one (on the loop), else None."""
        if not self.dirty:
            return None
        self.dirty = False
        return {day: {name: KeyUsage(**vars(usage)) for name, usage in names.items()}
                for day, names in self.days.items()}

    def save(self, days: dict[str, dict[str, KeyUsage]]) -> None:
        """Write a snapshot (a worker thread)."""
        save_usage(self.usage_path, days)

    def close(self) -> None:
        timer = getattr(self.storage, "timer", None)
        if timer is not None:
            timer.cancel()
