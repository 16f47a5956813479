"""The OpenAI surface, /v1/*: the body read and inspected once, the key's scopes and limits, aliases and the
FIM rewrite, the cache, the wake of the model's pod, then the forward (relay.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web

from runpod_manager.keys import Principal
from runpod_manager.proxy.accounting import admit_key, begin_serving, end_serving, pod_rate, read_body
from runpod_manager.proxy.auth import PRINCIPAL, key_name
from runpod_manager.proxy.cache import cache_key, is_cacheable
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import (
    FIM_MISSING_MESSAGE,
    JSON_ROUTES,
    NO_BODY,
    RequestFacts,
    apply_fim_template,
    inspect_json_body,
    is_json_content_type,
)
from runpod_manager.proxy.models import handle_models, local_model
from runpod_manager.proxy.relay import PodWentAway, forward_to, serve_hit, wait_streaming
from runpod_manager.proxy.routing import MODELS_PATH
from runpod_manager.proxy.state import EXCHANGE, STATE, Exchange, ProxyState
from runpod_manager.proxy.targets import BODY_METHODS, model_of, target_group
from runpod_manager.proxy.wake import PodGroup

log = logging.getLogger("runpod_manager.proxy")


_USAGE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})  # streams that can report usage


async def handle_v1(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    method = request.method
    if method in ("GET", "HEAD") and request.path.startswith(MODELS_PATH):
        path = request.path
        if path == MODELS_PATH:
            return await handle_models(request, state)
        if path[len(MODELS_PATH)] == "/":
            return local_model(state, request[EXCHANGE], path[len(MODELS_PATH) + 1:])
    return await _handle_v1(request, state)


async def _handle_v1(request: web.Request, state: ProxyState) -> web.StreamResponse:
    exchange = request[EXCHANGE]
    method = request.method
    path = request.path
    if method != "POST" and path in JSON_ROUTES:  # vLLM's answer too, but it would cost a wake to hear it
        raise web.HTTPMethodNotAllowed(method, ["POST"])
    body: bytes | None = None
    facts: RequestFacts = NO_BODY
    if method in BODY_METHODS:
        body = await read_body(request, state.config.proxy.max_body_bytes, state.body_read_timeout_seconds)
        content_type = request.headers.get("Content-Type", "")
        if body and is_json_content_type(content_type):
            facts = inspect_json_body(body)
        elif path in JSON_ROUTES:
            if not body:
                raise ProxyError(400, f"{path} needs a JSON body", code="missing_body")
            raise ProxyError(415, f"{path} takes a JSON body: send Content-Type: application/json "
                             f"(got {content_type or 'none'!r})", code="unsupported_media_type")
    elif request.body_exists:
        body = await read_body(request, state.config.proxy.max_body_bytes, state.body_read_timeout_seconds)
    exchange.facts = facts  # as the client sent it (the request log names the model it asked for)
    group = target_group(state, request.path, facts)
    principal = request.get(PRINCIPAL)
    if principal is not None:
        facts, body = await _admit(state, exchange, principal, group, facts, body, path)
    rewrite = group.route.rewrite
    if rewrite and facts.model in rewrite:  # an alias: the pod's server answers only to its own names
        document = {**(facts.document or {}), "model": rewrite[facts.model]}
        facts = RequestFacts(document=document, stream=facts.stream)
        body = json.dumps(document, ensure_ascii=False).encode()
    if facts.has_suffix and path == "/v1/completions":
        template = state.config.proxy.fim_template
        if not template:
            raise ProxyError(400, FIM_MISSING_MESSAGE, code="fim_template_missing", param="suffix")
        body = apply_fim_template(facts.document or {}, template)  # has_suffix implies a document
    return await _serve_v1(request, state, exchange, body, facts, group)


async def _admit(state: ProxyState, exchange: Exchange, principal: Principal, group: PodGroup,
                 facts: RequestFacts, body: bytes | None, path: str) -> tuple[RequestFacts, bytes | None]:
    """The key's scopes and limits, before the cache and any wake: a request its key may not make costs
    nothing and wakes nothing. A stream of a keyed request asks the pod for its usage (tokens count against
    the key); the client that did not ask never sees the usage-only event (`Exchange.hide_usage`)."""
    await admit_key(state, exchange, principal, group.route, model_of(facts, group.route), facts.document)
    document = facts.document
    if facts.stream and document is not None and path in _USAGE_ROUTES:
        options = document.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            document = {**document, "stream_options": {**(options if isinstance(options, dict) else {}),
                                                       "include_usage": True}}
            exchange.hide_usage = True
            return RequestFacts(document=document, stream=True), json.dumps(document, ensure_ascii=False).encode()
    return facts, body


async def _serve_v1(request: web.Request, state: ProxyState, exchange: Exchange, body: bytes | None,
                    facts: RequestFacts, group: PodGroup) -> web.StreamResponse:
    """From the cache, or from a pod of the group (waking one when needed).

    A request is activity from here (it passed every local check: one refused before, say a misconfigured
    editor's unknown model on a timer, must not keep a GPU up) to its end, for the pod it waits for or is
    sent to, and for that pod only: one waiting for a wake, or a stream longer than idle_timeout_seconds,
    must not let the idle rule stop the pod under it, and another replica's traffic must not keep one up.
    """
    method = request.method
    key: str | None = None
    cache = state.cache
    if (cache is not None and cache.available and facts.document is not None
            and is_cacheable(method, facts, request.headers)):
        key = cache_key(method, request.raw_path, facts.document)
        hit = await cache.lookup(key)
        if hit is not None:
            exchange.cache = "hit"
            state.metrics.count_cache("hit", hit.size)
            chosen = group.pick()
            if chosen is not None:  # the model is in use: the replica that would have answered stays up
                chosen[0].last_request_at = time.time()
            return await serve_hit(request, hit)
        exchange.cache = "miss"
        state.metrics.count_cache("miss")
    else:
        exchange.cache = "bypass"
        state.metrics.count_cache("bypass")

    try:
        return await _wait_and_forward(request, state, exchange, body, facts, key, group, rewake=True)
    except PodWentAway:
        # rpm (idle stop, a limit) or RunPod ended the pod while this request was on its way to it. The
        # request had not reached the client yet, so it waits for a wake (or another ready replica) like
        # one that came a moment later.
        log.info("pod %s went away under a %s request; it waits for a wake", exchange.pod, request.path)
        return await _wait_and_forward(request, state, exchange, body, facts, key, group, rewake=False)


async def _wait_and_forward(request: web.Request, state: ProxyState, exchange: Exchange, body: bytes | None,
                            facts: RequestFacts, key: str | None, group: PodGroup, *,
                            rewake: bool) -> web.StreamResponse:
    chosen = group.pick()
    committed: web.StreamResponse | None = None
    if chosen is not None:
        gate, target = chosen
    else:
        waiting_since = time.perf_counter()
        wait_meter = state.wait_meters[group.name]
        joined = wait_meter.join(waiting_since)
        try:
            if facts.stream:
                wait = await wait_streaming(request, state, exchange, group)
                if isinstance(wait, web.StreamResponse):
                    return wait  # the wake failed after the stream had started; the error event went out
                gate, target, committed = wait
            else:
                # Answered by wake_hold_seconds after its arrival, whatever it waited on before (a first
                # attempt at a pod that went away), so the client's 300 s limit is never reached.
                held_seconds = waiting_since - exchange.started
                answer_by = asyncio.get_running_loop().time() + state.config.proxy.wake_hold_seconds - held_seconds
                gate, target, exchange.cold_start_seconds, exchange.wake_seconds = await group.wait_for_target(
                    answer_by=answer_by, woken_by=key_name(request))
        finally:  # whatever the outcome (served, timed out, client gone), the wait was the wake's
            ended = time.perf_counter()
            exchange.wake_wait_seconds += ended - waiting_since
            exchange.cost_usd += pod_rate(state.views, group) / 3600 * wait_meter.leave(ended, joined)
    exchange.pod = gate.name
    joined = await begin_serving(state, request, group, gate)
    try:
        return await forward_to(request, state, exchange, gate, target, body, facts, key, committed,
                              rewake=rewake and committed is None)
    finally:
        end_serving(state, exchange, group, gate, joined)
