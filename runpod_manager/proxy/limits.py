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

Admission reserves, the end settles (issue #20: counting tokens only when answers ended let 100 parallel
requests pass a limit of 50 tokens with 2,800). A request reserves its expected tokens in the current window
(`estimate_tokens`: its prompt at ~4 characters a token plus its `max_tokens`, or `[keys]
default_max_tokens_estimate` when it names none) and its expected cost against the daily budget (its pod's
$/h times that pod's median answer time, `AnswerTimes`); its end replaces the reservation with what the pod
reported and what it cost. The `limits` strategies can hit with a cost but not give back: a reservation
larger than the real usage is returned with the memory storage's `decr` while the window it was made in
lasts (afterwards it went with its window). So parallel requests pass a limit by at most about one
request's misestimate.

A key at its max_concurrent waits for one of its requests to end, first come first served, for up to
`[keys] queue_seconds` (an SDK's two retries of a `Retry-After: 1` ran out while the answer it waited for
took seconds); what is still refused gets a Retry-After of at least its pod's median answer time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from runpod_manager.display import usd
from runpod_manager.keys import KeyUsage, Principal, load_usage, save_usage, usage_day
from runpod_manager.policy import local_day_start
from runpod_manager.proxy.errors import ProxyError

USAGE_FLUSH_SECONDS = 1.0
CHARS_PER_TOKEN = 4  # a cheap prompt estimate: English text averages ~4 characters a token
ANSWER_TIMES_KEPT = 64  # a pod's last answer times, for its median


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


def estimate_tokens(document: Mapping[str, object] | None, default_max_tokens: int) -> int:
    """The tokens a request is expected to use, as the pod will report them (prompt and completion): its
    prompt's characters / CHARS_PER_TOKEN, plus `max_tokens` (or `max_completion_tokens`, or
    `default_max_tokens` when it names neither) for each of its `n` choices."""
    if document is None:
        return default_max_tokens
    prompt_chars = 0
    messages = document.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                prompt_chars += len(content) if isinstance(content, str) else len(str(content or ""))
    prompt = document.get("prompt")
    if isinstance(prompt, str):
        prompt_chars += len(prompt)
    elif isinstance(prompt, list):
        prompt_chars += sum(len(part) if isinstance(part, str) else 1 for part in prompt)
    inputs = document.get("input")  # /v1/embeddings: all prompt
    if isinstance(inputs, str):
        prompt_chars += len(inputs)
    elif isinstance(inputs, list):
        prompt_chars += sum(len(part) if isinstance(part, str) else 1 for part in inputs)
    completion = default_max_tokens if inputs is None else 0
    for name in ("max_tokens", "max_completion_tokens"):
        value = document.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            completion = value
            break
    choices = document.get("n")
    if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
        completion *= choices
    return math.ceil(prompt_chars / CHARS_PER_TOKEN) + completion


class AnswerTimes:
    """One pod's last answer times (seconds from a request's start to its end, wakes left out): their median
    is what a request to it is expected to take."""

    __slots__ = ("_median", "_seconds")

    def __init__(self) -> None:
        self._seconds: deque[float] = deque(maxlen=ANSWER_TIMES_KEPT)
        self._median: float | None = None

    def add(self, seconds: float) -> None:
        self._seconds.append(seconds)
        self._median = None

    def median(self) -> float | None:
        """None until the pod answered once."""
        if self._median is None and self._seconds:
            self._median = statistics.median(self._seconds)
        return self._median


@dataclass(slots=True)
class Admission:
    """What an admitted request reserved (KeyLimiter.admit); its end settles it (KeyLimiter.finish)."""

    tokens: int = 0  # reserved in the tokens window that ended at `window_ends_at`
    window_ends_at: float = 0.0
    cost_usd: float = 0.0  # reserved against the daily budget


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
        self.reserved_usd: dict[str, float] = {}  # the daily-budget reservations of requests in flight
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}  # requests queued for a key's slot
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

    async def admit_queued(self, principal: Principal, *, queue_seconds: float, tokens: int = 0,
                           cost_usd: float = 0.0, answer_seconds: float | None = None) -> Admission:
        """`admit`, but a key at its max_concurrent first waits up to `queue_seconds` for one of its requests
        to end (first come first served: a slot that frees is handed to the oldest waiter). Still refused:
        429 with a Retry-After of at least `answer_seconds` (the pod's median answer time)."""
        name = principal.name
        cap = principal.limits.max_concurrent
        queue = self.waiting.get(name)
        if cap is None or queue_seconds <= 0 or (self.in_flight.get(name, 0) < cap and not queue):
            return self.admit(principal, tokens=tokens, cost_usd=cost_usd, answer_seconds=answer_seconds)
        if queue is None:
            queue = self.waiting[name] = deque()
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(slot)
        try:
            async with asyncio.timeout(queue_seconds):
                await slot
        except TimeoutError:
            pass  # a slot handed over at the last moment is still taken below
        except BaseException:  # the client left while it waited: a slot already handed to it is passed on
            if slot.done() and not slot.cancelled():
                self._release_slot(name)
            raise
        finally:
            if not slot.done():
                slot.cancel()
            with contextlib.suppress(ValueError):
                queue.remove(slot)
            if not queue:
                self.waiting.pop(name, None)
        if slot.cancelled():  # no slot freed in time: refused as at once, with a Retry-After
            return self.admit(principal, tokens=tokens, cost_usd=cost_usd, answer_seconds=answer_seconds)
        # A request that ended handed its slot to this one: in flight already (finish did not count it out).
        try:
            return self.admit(principal, tokens=tokens, cost_usd=cost_usd, answer_seconds=answer_seconds,
                              holds_slot=True)
        except RateLimited:
            self._release_slot(name)
            raise

    def admit(self, principal: Principal, *, tokens: int = 0, cost_usd: float = 0.0,
              answer_seconds: float | None = None, holds_slot: bool = False) -> Admission:
        """Count the request against its key, reserving its expected `tokens` and `cost_usd` until `finish`
        settles them, or raise RateLimited (429) when a limit is reached. `holds_slot`: a slot of its
        max_concurrent was handed to it by a request that ended (admit_queued)."""
        name = principal.name
        now = self.clock()
        usage = self.usage(name, now)
        limits = principal.limits
        admission = Admission()
        if limits.any:
            try:
                self._check(principal, usage, now, admission, tokens=tokens, cost_usd=cost_usd,
                            answer_seconds=answer_seconds, holds_slot=holds_slot)
            except RateLimited:
                usage.refused += 1
                self.dirty = True
                raise
        if not holds_slot:
            self.in_flight[name] = self.in_flight.get(name, 0) + 1
        usage.requests += 1
        usage.last_used_at = now
        self.dirty = True
        return admission

    def _check(self, principal: Principal, usage: KeyUsage, now: float, admission: Admission, *, tokens: int,
               cost_usd: float, answer_seconds: float | None, holds_slot: bool) -> None:
        name = principal.name
        limits = principal.limits
        budget = limits.daily_budget_usd
        if budget is not None:
            reserved = self.reserved_usd.get(name, 0.0)
            if usage.spend_usd >= budget:
                resets_in = max(1.0, self._day_ends_at - now)
                resets_at = datetime.fromtimestamp(self._day_ends_at, self.zone).isoformat(timespec="minutes")
                raise RateLimited(
                    f"the key {name!r} spent its daily budget ({usd(usage.spend_usd)} of {usd(budget)}); it resets "
                    f"at {resets_at} (in {reset_words(resets_in)})", code="daily_budget_exceeded",
                    retry_after_seconds=resets_in, should_retry=False, limit_headers={})
            # The requests in flight are expected to spend the rest: one more would pass the budget. A request
            # alone is let in whatever its estimate (a budget is never refused on a guess alone).
            if reserved > 0 and usage.spend_usd + reserved + cost_usd > budget:
                raise RateLimited(
                    f"the key {name!r} has requests in flight expected to spend the rest of its daily budget "
                    f"({usd(usage.spend_usd)} spent and {usd(reserved)} expected, of {usd(budget)}); retry when "
                    "they end", code="daily_budget_reserved",
                    retry_after_seconds=max(1.0, answer_seconds or 1.0), should_retry=True, limit_headers={})
        cap = limits.max_concurrent
        if cap is not None and not holds_slot and self.in_flight.get(name, 0) >= cap:
            retry_after = max(1.0, answer_seconds or 1.0)
            raise RateLimited(f"the key {name!r} has {cap} requests in flight, its max_concurrent; retry when "
                              f"one ends (in about {reset_words(retry_after)}; [keys] queue_seconds lets a request "
                              "wait for one instead)", code="concurrency_limit_exceeded",
                              retry_after_seconds=retry_after, should_retry=True, limit_headers={})
        items = self._items_for(principal)
        reserve = 0
        if items.tokens is not None:
            # A request whose estimate alone is more than a window's tokens waits for an empty window.
            reserve = max(1, min(tokens, items.tokens.amount))
            if not self.limiter.test(items.tokens, name, cost=reserve):
                raise self._limited(principal, items, "tokens", items.tokens)
        if items.requests is not None and not self.limiter.hit(items.requests, name):
            raise self._limited(principal, items, "requests", items.requests)
        if items.tokens is not None:
            self.limiter.hit(items.tokens, name, cost=reserve)
            admission.tokens = reserve
            admission.window_ends_at = self.storage.get_expiry(items.tokens.key_for(name))
        if budget is not None and cost_usd > 0:
            admission.cost_usd = cost_usd
            self.reserved_usd[name] = self.reserved_usd.get(name, 0.0) + cost_usd

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

    def finish(self, principal: Principal, *, tokens: int, cost_usd: float,
               admission: Admission | None = None) -> None:
        """The end of an admitted request (whatever its outcome): its tokens and cost replace what its
        admission reserved; its slot of max_concurrent goes to the oldest request queued for one."""
        name = principal.name
        self._release_slot(name)
        if admission is not None and admission.cost_usd:
            left_usd = self.reserved_usd.get(name, 0.0) - admission.cost_usd
            if left_usd > 1e-12:
                self.reserved_usd[name] = left_usd
            else:
                self.reserved_usd.pop(name, None)
        if (admission is not None and admission.tokens) or (
                tokens > 0 and principal.limits.tokens_per_minute is not None):
            self._settle_tokens(principal, admission, tokens)
        if tokens <= 0 and cost_usd <= 0:
            return
        usage = self.usage(name, self.clock())
        usage.tokens += tokens
        usage.spend_usd += cost_usd
        self.dirty = True

    def _settle_tokens(self, principal: Principal, admission: Admission | None, tokens: int) -> None:
        items = self._items_for(principal)
        if items.tokens is None:
            return
        name = principal.name
        reserved = 0 if admission is None else admission.tokens
        key = items.tokens.key_for(name)
        if tokens > reserved:
            self.limiter.hit(items.tokens, name, cost=tokens - reserved)  # may pass the limit: the next waits
        elif tokens < reserved and admission is not None and self.storage.get_expiry(key) == admission.window_ends_at:
            # The limits strategies hit with a cost but never give back; the memory storage can. A reservation
            # made in a window that ended went with it.
            self.storage.decr(key, reserved - tokens)

    def _release_slot(self, name: str) -> None:
        """A request of the key ended (or one handed a slot was refused after all): the slot goes to the
        oldest request queued for one, else it is counted out."""
        queue = self.waiting.get(name)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # in flight from now: in_flight stays as it was
                return
        left = self.in_flight.get(name, 1) - 1
        if left > 0:
            self.in_flight[name] = left
        else:
            self.in_flight.pop(name, None)

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
