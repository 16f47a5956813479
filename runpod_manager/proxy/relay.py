"""Forwarding a /v1 request to its pod and relaying the answer: retries before the first byte, a stream's
keep-alive while its pod wakes, the event-by-event relay, cache hits served and answers stored."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
from aiohttp import web

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.proxy.auth import key_name
from runpod_manager.proxy.cache import CachedResponse
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import (
    SSE_DONE,
    RequestFacts,
    client_response_headers,
    forwarded_for,
    is_json_content_type,
    normalize_upstream_error,
    upstream_request_headers,
)
from runpod_manager.proxy.routing import MODELS_PATH
from runpod_manager.proxy.state import Exchange, ProxyState
from runpod_manager.proxy.upstream import StreamOutcome, UpstreamUnreachable, relay_events
from runpod_manager.proxy.wake import PodGroup, WakeGate
from runpod_manager.requestlog import USAGE_TAIL_BYTES

log = logging.getLogger("runpod_manager.proxy")


SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


class PodWentAway(Exception):
    """The upstream failed because the pod is no longer running, before anything reached the client."""


async def pod_went_away(state: ProxyState, gate: WakeGate) -> bool:
    """After an upstream failure: is the pod no longer running (so a wake, not an error, is the answer)?"""
    if not state.config.proxy.wake_on_request:
        return False
    try:
        view = await asyncio.to_thread(state.controller.view, gate.name)
    except Exception as exc:
        log.warning("could not read the state of pod %s after an upstream failure: %s", gate.name, exc)
        return False
    return not view.lease_open or view.status != "RUNNING"


def extra_headers(exchange: Exchange) -> dict[str, str]:
    headers = {"X-RPM-Cache": exchange.cache}
    if exchange.wake_seconds is not None:
        headers["X-RPM-Cold-Start"] = f"{exchange.wake_seconds:.3f}"
    return headers


async def serve_hit(request: web.Request, hit: CachedResponse) -> web.StreamResponse:
    if hit.events is None:
        return web.Response(body=hit.body, headers={"Content-Type": hit.content_type, "X-RPM-Cache": "hit"})
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, "X-RPM-Cache": "hit"})
    await response.prepare(request)
    for event in hit.events:  # replayed as the same events, one write each, like a live stream
        await response.write(event)
    await response.write_eof()
    return response


async def wait_streaming(
    request: web.Request, state: ProxyState, exchange: Exchange, group: PodGroup,
) -> tuple[WakeGate, UpstreamTarget, web.StreamResponse | None] | web.StreamResponse:
    """Wait for a wake on behalf of a streaming request, sending SSE comments while it lasts.

    The 200 and the event-stream headers go out at the first keep-alive (so a wake that ends quickly,
    or fails at once, still gets a plain HTTP answer). From then on errors travel as an error event
    followed by [DONE]. A stream reports its wait as a `: pod ready after N s` comment, never as
    X-RPM-Cold-Start: its headers may be gone before the wait's length is known, and one place to look
    is better than two (README, "Use it from your editor").
    """
    committed: web.StreamResponse | None = None

    async def keep_alive(elapsed_seconds: float) -> None:
        nonlocal committed
        if committed is None:
            committed = web.StreamResponse(status=200, headers={**SSE_HEADERS, "X-RPM-Cache": exchange.cache})
            await committed.prepare(request)
        await committed.write(f": waking pod ({elapsed_seconds:.0f} s)\n\n".encode())

    try:
        gate, target, waited, wake_seconds = await group.wait_for_target(keep_alive, woken_by=key_name(request))
    except ProxyError as exc:
        if committed is None:
            raise
        exchange.error_code = exc.code
        await committed.write(exc.sse_event() + SSE_DONE)
        await committed.write_eof()
        return committed
    exchange.cold_start_seconds, exchange.wake_seconds = waited, wake_seconds
    if committed is not None and wake_seconds is not None:
        await committed.write(_ready_comment(wake_seconds))
    return gate, target, committed


def _ready_comment(waited_seconds: float) -> bytes:
    return f": pod ready after {waited_seconds:.1f} s\n\n".encode()


async def _end_committed(committed: web.StreamResponse, error_document_bytes: bytes) -> web.StreamResponse:
    # SSE data must be one line: re-serialise compactly whatever the pod sent.
    try:
        compact = json.dumps(json.loads(error_document_bytes), separators=(",", ":")).encode()
    except ValueError:
        compact = error_document_bytes.replace(b"\n", b" ")
    await committed.write(b"data: " + compact + b"\n\n" + SSE_DONE)
    await committed.write_eof()
    return committed


async def forward_to(
    request: web.Request,
    state: ProxyState,
    exchange: Exchange,
    gate: WakeGate,
    target: UpstreamTarget,
    body: bytes | None,
    facts: RequestFacts,
    key: str | None,
    committed: web.StreamResponse | None,
    *,
    rewake: bool = False,
    max_retries: int | None = None,
) -> web.StreamResponse:
    """Send to the pod and relay its answer. With `rewake`, a failure because the pod is no longer running
    raises PodWentAway instead of answering (nothing has reached the client yet)."""
    upstream = state.upstream
    if upstream is None:  # only between shutdown and cleanup
        raise ProxyError(503, "the proxy is shutting down", code="shutting_down", should_retry=True)
    metrics = state.metrics
    exchange.pod_id = target.instance_id
    headers = upstream_request_headers(request.headers.items(), target.key,
                                       forwarded=forwarded_for(request, trust=state.config.proxy.trust_forwarded))
    opened_at = time.perf_counter()
    try:
        reply = await upstream.open(target, request.method, request.raw_path, headers, body,
                                    on_retry=lambda attempt, why: metrics.upstream_retries.inc(),
                                    max_retries=max_retries)
    except UpstreamUnreachable as exc:
        exchange.error_code = exc.code
        await state.mark_unreachable(gate, target)
        if rewake and await pod_went_away(state, gate):
            raise PodWentAway from None
        if committed is not None:
            return await _end_committed(committed, json.dumps(exc.document()).encode())
        return exc.response(extra_headers(exchange))
    finally:  # connecting, retrying, waiting for headers: the pod's time, also when it failed or we left
        exchange.upstream_wait_seconds += time.perf_counter() - opened_at
    exchange.first_byte_at = time.perf_counter()
    metrics.upstream_ttfb.observe(reply.ttfb_seconds)
    response = reply.response
    finished = False
    try:
        status = response.status
        if status == 502 and reply.attempts > upstream.max_retries:
            await state.mark_unreachable(gate, target)  # 502s outlasted the retries: nothing listens there
            if rewake and await pod_went_away(state, gate):
                raise PodWentAway
        content_type = response.headers.get("Content-Type", "")
        if status == 200 and facts.stream and content_type.startswith("text/event-stream"):
            result, finished = await _relay_stream(request, state, exchange, response, key, committed)
            return result
        read_started = time.perf_counter()
        try:
            data = await response.read()
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise ProxyError(502, f"the pod's response broke off ({type(exc).__name__})",
                             code="upstream_response_broken", should_retry=True) from None
        finally:
            exchange.upstream_wait_seconds += time.perf_counter() - read_started
        finished = True
        exchange.usage_source = data[-USAGE_TAIL_BYTES:]  # the whole of a short answer, uncopied; never megabytes
        if status >= 400:
            data = normalize_upstream_error(status, data)
            content_type = "application/json"
            exchange.error_code = f"upstream_{status}"
        if committed is not None:
            if status >= 400:
                return await _end_committed(committed, data)
            await committed.write(b"data: " + data.replace(b"\n", b" ") + b"\n\n" + SSE_DONE)
            await committed.write_eof()
            return committed
        out_headers = client_response_headers(response.headers.items())
        if content_type:
            out_headers["Content-Type"] = content_type
        out_headers.update(extra_headers(exchange))
        if status == 200 and request.method == "GET" and request.path == MODELS_PATH:
            state.remember_models(state.group_of[gate.name], data)
        if key is not None and status == 200 and is_json_content_type(content_type) and state.cache:
            state.cache.put_later(key, CachedResponse(content_type=content_type, body=data))
        return web.Response(status=status, body=data, headers=out_headers)
    finally:
        if finished:
            response.release()
        else:
            # Not read to the end (client gone, error, cancellation): drop the connection so the pod
            # sees the disconnect and stops generating, instead of returning it to the pool.
            response.close()


async def _relay_stream(
    request: web.Request,
    state: ProxyState,
    exchange: Exchange,
    upstream_response: aiohttp.ClientResponse,
    key: str | None,
    committed: web.StreamResponse | None,
) -> tuple[web.StreamResponse, bool]:
    """Relay an event stream; returns the client response and whether the upstream ended cleanly."""
    if committed is None:
        out_headers = client_response_headers(upstream_response.headers.items())
        out_headers.update(SSE_HEADERS)
        out_headers["Content-Type"] = upstream_response.headers.get("Content-Type", SSE_HEADERS["Content-Type"])
        out_headers["X-RPM-Cache"] = exchange.cache
        client = web.StreamResponse(status=200, headers=out_headers)
        await client.prepare(request)
        if exchange.wake_seconds is not None:  # a wake shorter than the first keep-alive
            await client.write(_ready_comment(exchange.wake_seconds))
    else:
        client = committed
    cache = state.cache
    # A stream whose usage event the client does not see is not cached: a client that asked for it would
    # be answered from the same entry.
    outcome = StreamOutcome(events=[] if key is not None and cache is not None and not exchange.hide_usage
                            else None)
    try:
        await relay_events(upstream_response, client, outcome,
                           max_kept_bytes=cache.max_bytes if cache is not None else 0,
                           on_event=state.metrics.stream_events.inc, hide_usage_only=exchange.hide_usage)
    finally:
        exchange.upstream_wait_seconds += outcome.upstream_wait_seconds
        exchange.usage_source = outcome.last_data_event
        if outcome.first_event_at is not None:
            exchange.first_byte_at = outcome.first_event_at
    if outcome.client_gone:
        exchange.client_gone = True
        exchange.error_code = "client_gone"
        return client, False
    if outcome.upstream_broken:
        exchange.error_code = "upstream_stream_broken"
    elif outcome.saw_error:
        exchange.error_code = "upstream_error_event"
    if key is not None and cache is not None and outcome.cacheable and outcome.events is not None:
        cache.put_later(key, CachedResponse(content_type=client.headers.get("Content-Type", ""),
                                            events=tuple(outcome.events)))
    try:
        await client.write_eof()
    except ConnectionResetError:
        if not outcome.saw_done:  # a client that closed after [DONE] had the whole answer: a 200, not a 499
            exchange.client_gone = True
            exchange.error_code = "client_gone"
    return client, not outcome.upstream_broken
