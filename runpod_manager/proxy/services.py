"""The service pass-through: any HTTP request and WebSocket to an http service, at /pods/<name>/… and on
each pod's own listen port, woken on demand (passthrough.py, websocket.py do the I/O)."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from yarl import URL

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.keys import Principal
from runpod_manager.proxy import passthrough, websocket
from runpod_manager.proxy.accounting import admit_key, begin_serving, end_serving, pod_rate, read_body
from runpod_manager.proxy.auth import PRINCIPAL, check_scope, key_name, reads_routed_model, routed_model
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import forwarded_for
from runpod_manager.proxy.passthrough import HeldBody, PassThrough, RequestBody, ServiceRoute, SpooledBody
from runpod_manager.proxy.relay import pod_went_away
from runpod_manager.proxy.routing import PODS_PATH_PREFIX
from runpod_manager.proxy.state import EXCHANGE, LISTEN_ROUTE, STATE, Exchange, ProxyState
from runpod_manager.proxy.targets import resolve_pods_path, service_route
from runpod_manager.proxy.wake import WakeGate

log = logging.getLogger("runpod_manager.proxy")


async def handle_pods_path(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return await serve_service(request, state, resolve_pods_path(state, request))


async def handle_listen_port(request: web.Request) -> web.StreamResponse:
    """Every path of an http pod's listen_port: the service owns the root."""
    state = request.app[STATE]
    route = request.app[LISTEN_ROUTE]
    return await serve_service(request, state, service_route(state, route, route.ports[0], request.raw_path, ""))


async def _service_target(request: web.Request, state: ProxyState, exchange: Exchange, service: ServiceRoute, *,
                          hold: bool) -> tuple[WakeGate, UpstreamTarget]:
    """The pod's ready target, waking it through its gate; `hold`: answered by wake_hold_seconds (503 +
    Retry-After), else (a WebSocket handshake, whose client waits) by queue_timeout_seconds."""
    group = service.group
    chosen = group.pick()
    if chosen is not None:
        return chosen
    waiting_since = time.perf_counter()
    wait_meter = state.wait_meters[group.name]
    joined = wait_meter.join(waiting_since)
    try:
        answer_by = None
        if hold:
            answer_by = (asyncio.get_running_loop().time() + state.config.proxy.wake_hold_seconds
                         - (waiting_since - exchange.started))
        gate, target, exchange.cold_start_seconds, exchange.wake_seconds = await group.wait_for_target(
            answer_by=answer_by, woken_by=key_name(request))
        return gate, target
    finally:
        ended = time.perf_counter()
        exchange.wake_wait_seconds += ended - waiting_since
        exchange.cost_usd += pod_rate(state.views, group) / 3600 * wait_meter.leave(ended, joined)


async def serve_service(request: web.Request, state: ProxyState, service: ServiceRoute) -> web.StreamResponse:
    """Pass one request through to its pod's service (passthrough.py; websocket.py for upgrades)."""
    exchange = request[EXCHANGE]
    group = service.group
    exchange.route = f"{PODS_PATH_PREFIX}{group.name}" if service.prefix else f"listen:{group.name}"
    principal = request.get(PRINCIPAL)
    held = None if principal is None else await _admit_routed(request, state, exchange, principal, service)
    if websocket.is_upgrade(request):
        websocket.check_upgrade(request)
        return await _serve_websocket(request, state, exchange, service)
    length = request.content_length
    if length is not None and length > service.max_body_bytes:  # refused before a byte of it is read
        raise passthrough.too_large_error(service.max_body_bytes, service.route)
    pass_through = state.passthrough
    if pass_through is None:  # only between shutdown and cleanup
        raise ProxyError(503, "the proxy is shutting down", code="shutting_down", should_retry=True)
    has_body = request.body_exists
    spooled: SpooledBody | HeldBody | None = held
    try:
        if spooled is None and has_body and group.pick() is None and state.wake_spool.reserve(length):
            assert length is not None  # noqa: S101 - reserve takes only a declared length
            # The pod sleeps: take the upload into a file while it wakes (WakeSpool says why), both at once.
            waiting = asyncio.ensure_future(_service_target(request, state, exchange, service, hold=True))
            try:
                spooled = await state.wake_spool.fill(request, length, state.body_read_timeout_seconds)
            except BaseException:
                waiting.cancel()
                raise
            exchange.client_wait_seconds += spooled.client_wait_seconds
            await waiting
        return await _pass_service(request, state, exchange, service, pass_through, has_body, spooled)
    finally:
        if spooled is not None:
            spooled.discard()


async def _admit_routed(request: web.Request, state: ProxyState, exchange: Exchange, principal: Principal,
                        service: ServiceRoute) -> HeldBody | None:
    """A keyed routed request's scopes and limits (`admit_key`). To a model pod serving models outside the
    key's --models, the request must name one it may use (auth.routed_model): its JSON body is read (within
    [proxy] max_body_bytes, a model pod's limit) and returned to be sent as it came."""
    route = service.route
    if not reads_routed_model(principal, route):
        await admit_key(state, exchange, principal, route, None)
        return None
    try:
        check_scope(principal, route, None)  # the pod first: a body is read only for a pod the key may use
        body = (await read_body(request, state.config.proxy.max_body_bytes, state.body_read_timeout_seconds)
                if request.body_exists else b"")
        model = routed_model(principal, route, body, request.headers.get("Content-Type", ""))
    except ProxyError as exc:
        if exc.status == 403:
            state.limiter.refuse(principal)
        raise
    await admit_key(state, exchange, principal, route, model)
    return HeldBody(body) if body else None


async def _pass_service(request: web.Request, state: ProxyState, exchange: Exchange, service: ServiceRoute,
                        pass_through: PassThrough, has_body: bool, spooled: SpooledBody | HeldBody | None
                        ) -> web.StreamResponse:
    group = service.group
    for attempt in (1, 2):
        gate, target = await _service_target(request, state, exchange, service, hold=True)
        exchange.pod, exchange.pod_id = gate.name, target.instance_id
        body: RequestBody | SpooledBody | HeldBody | None = spooled
        if has_body and spooled is None:
            body = RequestBody(request, service.max_body_bytes, state.body_read_timeout_seconds)
        joined = await begin_serving(state, request, group, gate)
        try:
            opened_at = time.perf_counter()
            try:
                upstream, base_url = await pass_through.open(request, service, gate, target, body)
            except ProxyError as exc:
                if exc.code != "upstream_unreachable":
                    raise
                await state.mark_unreachable(gate, target)
                # The pod went away (idle stop, a limit) before this request reached it: it waits for a wake
                # like one that came a moment later, when nothing of it was sent.
                if attempt == 1 and not (body is not None and body.started) and await pod_went_away(state, gate):
                    continue
                raise
            finally:
                exchange.upstream_wait_seconds += time.perf_counter() - opened_at
                if isinstance(body, RequestBody):
                    exchange.client_wait_seconds += body.client_wait_seconds
            exchange.first_byte_at = time.perf_counter()
            try:
                headers = passthrough.service_response_headers(upstream.headers.items(), pod_base_url=base_url,
                                                               prefix=service.prefix)
                if exchange.wake_seconds is not None:
                    headers["X-RPM-Cold-Start"] = f"{exchange.wake_seconds:.3f}"
                if upstream.status >= 500:
                    exchange.error_code = f"upstream_{upstream.status}"
                client, clean = await passthrough.relay_response(request, upstream, headers)
                if not clean:
                    exchange.error_code = "upstream_stream_broken"
                return client
            finally:
                upstream.close()
        finally:
            end_serving(state, exchange, group, gate, joined)
    raise AssertionError("unreachable")  # the loop returns or raises


async def _serve_websocket(request: web.Request, state: ProxyState, exchange: Exchange, service: ServiceRoute
                           ) -> web.StreamResponse:
    session = state.session
    if session is None:
        raise ProxyError(503, "the proxy is shutting down", code="shutting_down", should_retry=True)
    gate, target = await _service_target(request, state, exchange, service, hold=False)
    exchange.pod, exchange.pod_id = gate.name, target.instance_id
    route = service.route
    base_url = passthrough.pod_port_url(target, route, service.port, state.config.api.pod_url_template)
    url = URL(base_url + service.raw_path, encoded=True)
    added = dict(state.pod_headers.get(route.name, {}))
    if route.kind != "http" and target.key:
        added["Authorization"] = f"Bearer {target.key}"
    headers = websocket.forwarded_headers(request.headers, added,
                                          keep_authorization=not state.keys.index.required and route.kind == "http",
                                          forwarded=forwarded_for(request, trust=state.config.proxy.trust_forwarded))
    group = service.group
    connections = state.connections[gate.name]
    connections.take_now()  # a socket over the pod's budget: 503 at once
    try:
        group.begin(gate)  # the handshake is a request; the open socket is not (its frames are)
        try:
            upstream = await websocket.open_upstream(session, url, headers, request, gate.name)
        finally:
            group.end(gate)
        exchange.first_byte_at = time.perf_counter()
        return await websocket.pipe(request, upstream, gate, target, state.sockets,
                                    service_activity=route.websocket_activity == "both")
    finally:
        connections.give()
