"""Per-request accounting: a key's admission against its limits before anything wakes (`admit_key`), the
client's body and the time spent waiting for it (`read_body`), and at the request's end its settlement
(`finish`): the key's limits, the pod's answer times, the metrics and the request log line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from runpod_manager.keys import Principal
from runpod_manager.proxy.auth import PRINCIPAL, PUBLIC_PATHS, check_scope
from runpod_manager.proxy.controller import PodView
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.jobs import REPLAYED_JOB
from runpod_manager.proxy.limits import estimate_tokens
from runpod_manager.proxy.metrics import RecentRequest
from runpod_manager.proxy.routing import PodRoute
from runpod_manager.proxy.state import EXCHANGE, Exchange, ProxyState
from runpod_manager.proxy.wake import PodGroup, WakeGate
from runpod_manager.requestlog import usage_tokens

log = logging.getLogger("runpod_manager.proxy")


KNOWN_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                           "/health", "/ready", "/metrics", "/dashboard", "/debug/cache", "/rpm/v1/pods",
                           "/rpm/v1/keys", "/rpm/v1/usage", "/rpm/v1/events", *PUBLIC_PATHS})


# nginx's convention for "client closed the request", used in logs and metrics only: one status however the
# client left (waiting for a wake or its body, mid-stream), never the 200 that had started.
CLIENT_GONE = 499


def route_label(path: str) -> str:
    if path in KNOWN_ROUTES:
        return path
    if path.startswith("/rpm/v1/pods/"):
        return "/rpm/v1/pods/{name}"  # one series, not one per name asked for
    if path.startswith("/rpm/v1/jobs/"):
        return "/rpm/v1/jobs/{id}"
    return "/v1/other" if path.startswith("/v1/") else "other"


def finish(state: ProxyState, request: web.Request, exchange: Exchange, status: int, started: float) -> None:
    duration = time.perf_counter() - started
    principal = exchange.principal
    if principal is not None:  # admitted against its key's limits: its end, tokens and cost
        tokens_in, tokens_out = usage_tokens(exchange.usage_source)
        state.limiter.finish(principal, tokens=(tokens_in or 0) + (tokens_out or 0), cost_usd=exchange.cost_usd,
                             admission=exchange.admission)
    if exchange.pod is not None and 200 <= status < 400:  # its pod's answer time, wakes (and sockets: 101) left out
        state.answer_times[state.group_of[exchange.pod].name].add(duration - exchange.wake_wait_seconds)
    path = request.path
    route = exchange.route or route_label(path)
    is_v1 = path.startswith("/v1/") and exchange.route is None
    if exchange.route is not None and exchange.pod is not None:  # a routed service request: logged as /v1's
        state.metrics.observe_request(route, status, duration, None)
        _log_request(state, request, exchange, status, started, duration, route, route)
        return
    overhead = None
    if is_v1:
        overhead = (duration - exchange.upstream_wait_seconds - exchange.wake_wait_seconds
                    - exchange.client_wait_seconds)
    state.metrics.observe_request(route, status, duration, overhead)
    if not is_v1:
        return
    _log_request(state, request, exchange, status, started, duration, route, path)


def _log_request(state: ProxyState, request: web.Request, exchange: Exchange, status: int, started: float,
                 duration: float, route: str, path: str) -> None:
    """The request's line in the request log and the dashboard's recent list (`path` as shown there)."""
    cold = exchange.cold_start_seconds
    wake = exchange.wake_seconds
    duration_ms = duration * 1000
    ended_at = time.time()
    model = None if exchange.facts is None else exchange.facts.model
    state.metrics.remember(RecentRequest(ended_at, request.method, path, status, duration_ms,
                                         exchange.cache, None if wake is None else round(wake, 3), exchange.pod,
                                         model if isinstance(model, str) else None))
    # One line per request in the request log, formatted off the hot path (requestlog.py). It replaced a
    # log.info line here: <1 µs instead of 13-15 µs on this path, and a quarter less of the proxy's CPU per
    # request in all (BENCHMARKS.md, "Request log").
    facts = exchange.facts
    first_byte_at = exchange.first_byte_at
    state.request_log.append((
        ended_at, duration, exchange.pod, exchange.pod_id, None if facts is None else facts.model,
        facts is not None and facts.stream, request.method, route, status,
        None if first_byte_at is None else first_byte_at - started, cold, exchange.wake_wait_seconds,
        exchange.cache, exchange.error_code, exchange.usage_source,
        None if (named := request.get(PRINCIPAL)) is None else named.name, wake))
    if log.isEnabledFor(logging.DEBUG):  # `rpm proxy -v`; the path only (a query string could carry a key)
        log.debug("%s %s %d %.1fms cache=%s cold=%s pod=%s%s", request.method, path, status, duration_ms,
                  exchange.cache, "-" if cold is None else f"{cold:.1f}s", exchange.pod or "-",
                  "" if exchange.error_code is None else f" error={exchange.error_code}")


async def read_body(request: web.Request, max_bytes: int, timeout_seconds: float) -> bytes:
    """The client's whole body ([proxy] max_body_bytes, body_read_timeout_seconds); its wait is the client's."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=length)
    if request.content.is_eof():  # the whole body came with the headers: nothing to time out
        return await request.read()
    waiting_since = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_seconds):
            return await request.read()
    except TimeoutError:
        raise ProxyError(408, f"the request body did not arrive within {timeout_seconds:g} s",
                         code="request_timeout", should_retry=False) from None
    finally:  # waiting for the client's bytes is not the proxy's time
        request[EXCHANGE].client_wait_seconds += time.perf_counter() - waiting_since


async def admit_key(state: ProxyState, exchange: Exchange, principal: Principal, route: PodRoute,
                     model: str | None, document: dict[str, Any] | None = None) -> None:
    """A keyed request's scopes (403) and limits (429), before anything wakes; `model` None for a request
    routed by path (/pods/<name>/…, a listen port) to a pod all of whose models the key may use. Its expected
    tokens (from the body `document`) and cost are reserved until its end (limits.py)."""
    pod = route.name
    try:
        check_scope(principal, route, model)
    except ProxyError:
        state.limiter.refuse(principal)
        raise
    limits = principal.limits
    answer_seconds = state.answer_times[pod].median() if limits.any else None
    exchange.admission = await state.limiter.admit_queued(  # RateLimited (429) when a limit is reached
        principal, queue_seconds=state.config.keys.queue_seconds, answer_seconds=answer_seconds,
        tokens=0 if limits.tokens_per_minute is None or model is None else estimate_tokens(
            document, state.config.keys.default_max_tokens_estimate),
        cost_usd=0.0 if limits.daily_budget_usd is None or answer_seconds is None else (
            pod_rate(state.views, state.group_by_route[pod]) / 3600 * answer_seconds))
    exchange.principal = principal  # its end (concurrency, tokens, cost) is counted in finish


def pod_rate(views: Mapping[str, PodView], group: PodGroup) -> float:
    """The $/h a wake of the group costs: its pods' as last seen (a replica not created yet: the others')."""
    return max((views[gate.name].cost_per_hour for gate in group.gates), default=0.0)


async def begin_serving(state: ProxyState, request: web.Request, group: PodGroup, gate: WakeGate) -> float:
    """A request about to leave for `gate`'s pod (/v1 and the pass-through alike): it takes one of the pod's
    connections (503 when they stay full), a job's replay is marked sent before a byte leaves (a restart must
    not send it again), it is in flight for idle stop, and it joins the pod's serve-cost meter. Returns the
    meter's join mark for `end_serving`."""
    await state.connections[gate.name].take()
    if (job_id := request.get(REPLAYED_JOB)) is not None:
        state.jobs.sending(job_id)
    group.begin(gate)
    return state.serve_meters[gate.name].join(time.perf_counter())


def end_serving(state: ProxyState, exchange: Exchange, group: PodGroup, gate: WakeGate, joined: float) -> None:
    """The end of what `begin_serving` began: the connection given back, no longer in flight, and the request's
    share of the pod's time while it was served added to its cost."""
    state.connections[gate.name].give()
    group.end(gate)
    served = state.serve_meters[gate.name].leave(time.perf_counter(), joined)
    exchange.cost_usd += state.views[gate.name].cost_per_hour / 3600 * served
