"""The proxy's side of a pod's connection: `Upstream` opens a request (retries before the first byte),
each pod's own `ConnectionBudget`, and `relay_events`, the event-by-event SSE relay with cancellation. The pure
helpers they use (headers, bodies, error documents, SSE splitting) are forward.py's."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from runpod_manager import display
from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import RETRYABLE_STATUSES, SSE_DONE, SSESplitter, is_done_event, is_error_event

# ------------------------------------------------------------------------------------------- upstream


class UpstreamUnreachable(ProxyError):
    """Connection errors (or 502s) outlasted the retries: the pod is not serving."""


@dataclass(slots=True)
class UpstreamReply:
    """An upstream response whose headers arrived, with what it took to get it."""

    response: aiohttp.ClientResponse
    attempts: int
    upstream_wait_seconds: float  # time spent waiting on the pod so far (connect, headers, retry delays)
    ttfb_seconds: float  # last attempt: request sent → status line and headers received


@dataclass(slots=True)
class StreamOutcome:
    """How a relayed event stream ended."""

    events: list[bytes] | None  # kept for the cache when asked for and the stream stayed cacheable
    event_count: int = 0
    bytes_sent: int = 0
    saw_done: bool = False
    saw_error: bool = False
    upstream_broken: bool = False
    client_gone: bool = False
    upstream_wait_seconds: float = 0.0
    first_event_at: float | None = None  # perf_counter() when the first event went to the client
    last_data_event: bytes | None = None  # the last event before [DONE]: `usage` with include_usage

    @property
    def cacheable(self) -> bool:
        return (self.events is not None and self.saw_done and not self.saw_error
                and not self.upstream_broken and not self.client_gone)


@dataclass
class Upstream:
    """Sends requests to the pod over one shared ClientSession, retrying only before the first byte."""

    session: aiohttp.ClientSession
    max_retries: int
    retry_delay_seconds: float

    @staticmethod
    def url_for(target: UpstreamTarget, raw_path: str) -> URL:
        # raw_path keeps the client's percent-encoding and query string exactly; encoded=True stops yarl
        # from requoting it.
        return URL(target.base_url + raw_path, encoded=True)

    async def open(
        self,
        target: UpstreamTarget,
        method: str,
        raw_path: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        *,
        on_retry: Callable[[int, str], None] | None = None,
        max_retries: int | None = None,
    ) -> UpstreamReply:
        """Send the request; retry connection errors and 502/503/504/524 up to max_retries times (the
        session's, unless the call gives its own).

        Returns the last response (even a retryable status once retries ran out). Raises
        UpstreamUnreachable when every attempt failed to connect. Nothing has reached the client yet
        when this runs, so a retry can never duplicate or corrupt output.
        """
        url = self.url_for(target, raw_path)
        retries = self.max_retries if max_retries is None else max_retries
        attempt = 0
        waited = 0.0
        last_failure = ""
        while True:
            started = time.perf_counter()
            try:
                response = await self.session.request(
                    method, url, headers=headers, data=body, allow_redirects=False)
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                waited += time.perf_counter() - started
                last_failure = _describe_connection_error(exc)
            else:
                ttfb = time.perf_counter() - started
                waited += ttfb
                if response.status not in RETRYABLE_STATUSES or attempt >= retries:
                    return UpstreamReply(response, attempt + 1, waited, ttfb)
                last_failure = f"HTTP {response.status}"
                response.close()  # its body is an error page; do not keep the connection for it
            if attempt >= retries:
                raise UpstreamUnreachable(
                    502,
                    f"the pod at {display.url(target.base_url)} could not be reached after {attempt + 1} attempt(s) "
                    f"({last_failure}); the next request will check the pod again and wake it if needed",
                    code="upstream_unreachable", retry_after_seconds=max(self.retry_delay_seconds, 1.0),
                    should_retry=True)
            attempt += 1
            if on_retry is not None:
                on_retry(attempt, last_failure)
            delay_started = time.perf_counter()
            await asyncio.sleep(self.retry_delay_seconds)
            waited += time.perf_counter() - delay_started


CONNECTION_WAIT_SECONDS = 30.0  # how long a request waits for a connection of its pod's budget, then 503


class ConnectionBudget:
    """One pod's upstream connections (each replica its own): `[pods.<name>] max_connections`.

    The session's pool has no overall limit: a shared one (512) let the sockets of one pod starve every
    other pod's requests (issue #20). Each pod's requests in flight and open WebSockets count here instead.
    A WebSocket over the budget is refused at once (`take_now`, 503: a socket is held for minutes or hours,
    so waiting for one to close helps nobody); a request waits its turn, first come first served, up to
    CONNECTION_WAIT_SECONDS (`take`, then 503). A freed connection is handed to the oldest waiter.
    """

    __slots__ = ("_waiters", "limit", "open", "setting")

    def __init__(self, limit: int, setting: str) -> None:
        self.limit = limit
        self.setting = setting  # e.g. "[pods.comfy] max_connections", for the refusal
        self.open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _full(self, what: str) -> ProxyError:
        return ProxyError(503, f"{what}: the pod has {self.open} connections open, its {self.setting} = "
                          f"{self.limit}; retry when some close, or raise the setting",
                          code="pod_connections_full", retry_after_seconds=1.0, should_retry=True)

    def take_now(self) -> None:
        """A WebSocket's connection, or ProxyError 503 at once."""
        if self.open >= self.limit or self._waiters:
            raise self._full("the WebSocket was refused")
        self.open += 1

    async def take(self, wait_seconds: float = CONNECTION_WAIT_SECONDS) -> None:
        """A request's connection, waiting up to `wait_seconds` for one; ProxyError 503 past that."""
        if self.open < self.limit and not self._waiters:
            self.open += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(wait_seconds):
                await turn
        except TimeoutError:
            if not (turn.done() and not turn.cancelled()):  # handed one at the last moment: keep it
                raise self._full(f"no connection freed within {wait_seconds:g} s") from None
        except BaseException:  # the client left while it waited: a connection handed to it is passed on
            if turn.done() and not turn.cancelled():
                self.give()
            raise
        finally:
            if not turn.done():
                turn.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(turn)

    def give(self) -> None:
        """A connection of the budget closed (or its request ended): the oldest waiter gets it."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # handed over: `open` stays as it is
                return
        self.open -= 1


def _describe_connection_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    # aiohttp's messages name host and port, never headers, so they carry no key.
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


_USAGE_ONLY = re.compile(rb'^data: \{.*"choices"\s*:\s*\[\s*\].*"usage"\s*:\s*\{', re.DOTALL)


async def relay_events(
    upstream: aiohttp.ClientResponse,
    client: web.StreamResponse,
    outcome: StreamOutcome,
    *,
    max_kept_bytes: int,
    on_event: Callable[[], None] | None = None,
    hide_usage_only: bool = False,
) -> StreamOutcome:
    """Copy server-sent events from the pod to the client, each written as soon as it is complete.

    Stops at once when the client goes away (the caller closes the upstream connection, which is what
    makes vLLM abort the generation). A stream the pod breaks off ends with an OpenAI-shaped error event
    and `[DONE]`, so clients report an error instead of a silently short answer. `outcome` (events kept
    when its `events` is a list) is filled as the stream goes, so a cancelled relay still tells the
    caller how long it waited on the pod. With `hide_usage_only` (the proxy asked for the usage the client
    did not), the usage-only event (`"choices": []`) is read but not sent, nor kept for the cache.
    """
    splitter = SSESplitter()
    kept_bytes = 0
    content = upstream.content
    try:
        while True:
            wait_started = time.perf_counter()
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                outcome.upstream_broken = True
                await client.write(ProxyError(
                    502, f"the pod's stream broke off ({_describe_connection_error(exc)})",
                    code="upstream_stream_broken").sse_event() + SSE_DONE)
                return outcome
            finally:  # also when cancelled (the client left): the time between events is the pod's
                outcome.upstream_wait_seconds += time.perf_counter() - wait_started
            if not chunk:
                break
            for event in splitter.feed(chunk):
                if hide_usage_only and _USAGE_ONLY.search(event) is not None:
                    outcome.last_data_event = event  # the tokens are counted, the client sees nothing
                    continue
                await client.write(event)
                if not outcome.event_count:
                    outcome.first_event_at = time.perf_counter()
                outcome.event_count += 1
                outcome.bytes_sent += len(event)
                if on_event is not None:
                    on_event()
                if is_done_event(event):
                    outcome.saw_done = True
                elif is_error_event(event):
                    outcome.saw_error = True
                else:
                    outcome.last_data_event = event
                if outcome.events is not None:
                    kept_bytes += len(event)
                    if kept_bytes > max_kept_bytes:
                        outcome.events = None  # too big to cache; stop holding it in memory
                    else:
                        outcome.events.append(event)
        rest = splitter.flush()
        if rest:
            await client.write(rest)
            outcome.bytes_sent += len(rest)
            if outcome.events is not None:
                outcome.events.append(rest)
    except ConnectionResetError:  # the client went away (aiohttp raises it on writes to a closed socket)
        outcome.client_gone = not outcome.saw_done  # after [DONE] it had the whole answer (the SDKs close then)
    return outcome
