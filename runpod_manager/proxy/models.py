"""GET /v1/models and /v1/models/<id>: answered by the proxy itself, from the pods' own lists when they run
and from the config while they sleep, so a model list never wakes a GPU."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from runpod_manager.keys import Principal
from runpod_manager.proxy.auth import PRINCIPAL, may_use_model
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import NO_BODY, forwarded_for, upstream_request_headers
from runpod_manager.proxy.relay import forward_to
from runpod_manager.proxy.routing import MODELS_PATH
from runpod_manager.proxy.state import EXCHANGE, Exchange, ProxyState
from runpod_manager.proxy.wake import PodGroup

log = logging.getLogger("runpod_manager.proxy")




MODELS_ASK_TIMEOUT_SECONDS = 10.0  # how long GET /v1/models waits for each running pod's own list


async def handle_models(request: web.Request, state: ProxyState) -> web.StreamResponse:
    """GET /v1/models: every model of every pod; never a wake, never activity.

    Editors list models on start-up and on a timer: that is neither work (it must not hold off idle stop)
    nor a reason to boot a GPU. With one pod and no aliases, the pod's own answer while it runs (byte for
    byte), else the proxy's; otherwise the proxy's own list, merged from the answer of each pod that runs
    (asked now, one attempt each), else its last answer, else the config's names, plus the aliases. A
    target can be stale (the pod stopped outside rpm since the last reconcile): a pod that does not answer
    costs one attempt, then the local answer, which is as good.
    """
    exchange = request[EXCHANGE]
    principal = request.get(PRINCIPAL)
    if principal is not None and (principal.pods is not None or principal.models is not None):
        return _scoped_models(state, exchange, principal)
    if not state.models_passthrough:
        asked = await asyncio.gather(*(_ask_models(request, state, group) for group in state.model_groups))
        live = {group.name for group, answered in zip(state.model_groups, asked, strict=True) if answered}
        return _local_models(state, exchange, live)
    chosen = state.model_groups[0].pick()
    if chosen is None:
        return _local_models(state, exchange)
    gate, target = chosen
    exchange.cache = "bypass"
    state.metrics.count_cache("bypass")
    try:
        response = await forward_to(request, state, exchange, gate, target, None, NO_BODY, None, None, max_retries=0)
    except ProxyError as exc:
        response = exc.response()
    if response.status < 300 or response.status in (401, 403):  # a wrong upstream key must still be told
        return response
    log.info("the pod did not list its models (HTTP %d); the proxy answers for it", response.status)
    exchange.error_code = None
    return _local_models(state, exchange)


async def _ask_models(request: web.Request, state: ProxyState, group: PodGroup) -> bool:
    """Ask a running pod of the group for its model list and remember it; whether it answered."""
    chosen = group.pick()
    upstream = state.upstream
    if chosen is None or upstream is None:
        return False
    gate, target = chosen
    headers = upstream_request_headers(request.headers.items(), target.key,
                                       forwarded=forwarded_for(request, trust=state.config.proxy.trust_forwarded))
    try:
        async with asyncio.timeout(MODELS_ASK_TIMEOUT_SECONDS):
            reply = await upstream.open(target, "GET", MODELS_PATH, headers, None, max_retries=0)
            try:
                if reply.response.status != 200:
                    log.info("pod %s did not list its models (HTTP %d); the proxy answers for it", gate.name,
                             reply.response.status)
                    return False
                data = await reply.response.read()
            finally:
                reply.response.release()
    except (ProxyError, TimeoutError, aiohttp.ClientError) as exc:
        log.info("pod %s did not list its models (%s); the proxy answers for it", gate.name, type(exc).__name__)
        return False
    state.remember_models(group, data)
    return True


def _group_entries(state: ProxyState, group: PodGroup) -> tuple[list[dict[str, Any]], str]:
    """One pod's model list entries and where they come from: its last answer, else the config's names."""
    route = group.route
    entries: list[dict[str, Any]] | None = None
    if group.models_body is not None:
        with contextlib.suppress(ValueError):
            document = json.loads(group.models_body)
            if isinstance(document, dict) and isinstance(document.get("data"), list):
                entries = list(document["data"])
    source = "remembered"
    created = int(time.time())
    if entries is None:
        source = "config"
        entries = [
            {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": route.model,
             "parent": None, "max_model_len": route.max_model_len or None, "permission": []}
            for name in (route.served or (route.model,))]
    listed = {entry.get("id") for entry in entries if isinstance(entry, dict)}
    for alias in route.aliases:
        if alias not in listed:  # listed as the entry it stands for, under its own id
            base = next((entry for entry in entries if isinstance(entry, dict)
                         and entry.get("id") == route.upstream_model), None)
            entries.append({**base, "id": alias} if base is not None else {
                "id": alias, "object": "model", "created": created, "owned_by": "vllm",
                "root": route.upstream_model, "parent": None, "max_model_len": route.max_model_len or None,
                "permission": []})
    return entries, source


def _models_document(state: ProxyState, live: frozenset[str] | set[str] = frozenset()
                     ) -> tuple[dict[str, Any], str]:
    """The model list the proxy answers with, and its X-RPM-Models header: with one pod, where the list came
    from ("remembered", "config"); with several, that per pod ("chat=live, coder=config")."""
    data: list[dict[str, Any]] = []
    sources: list[str] = []
    for group in state.model_groups:
        entries, source = _group_entries(state, group)
        data.extend(entries)
        sources.append(f"{group.name}={'live' if group.name in live else source}")
    if state.models_passthrough:
        return {"object": "list", "data": data}, sources[0].partition("=")[2]
    return {"object": "list", "data": data}, ", ".join(sources)


def _local_models(state: ProxyState, exchange: Exchange, live: frozenset[str] | set[str] = frozenset()
                  ) -> web.Response:
    exchange.cache = "local"
    remembered = state.model_groups[0].models_body if state.model_groups else None
    if state.models_passthrough and remembered is not None:  # the pod's own bytes, exactly
        body, source = remembered, "remembered"
    else:
        document, source = _models_document(state, live)
        body = json.dumps(document).encode()
    return web.Response(body=body, content_type="application/json",
                        headers={"X-RPM-Cache": "bypass", "X-RPM-Models": source})


def _scoped_models(state: ProxyState, exchange: Exchange, principal: Principal) -> web.Response:
    """The list a scoped key sees: the names it may send, of the pods it may use (an editor offers only what
    will work); from what the proxy knows, never asking a pod."""
    exchange.cache = "local"
    data = [entry for group in state.model_groups if principal.may_use_pod(group.name)
            for entry in _group_entries(state, group)[0] if may_use_model(principal, group.route, str(entry.get("id")))]
    return web.Response(body=json.dumps({"object": "list", "data": data}).encode(), content_type="application/json",
                        headers={"X-RPM-Cache": "bypass", "X-RPM-Models": f"scoped to the key {principal.name}"})


def local_model(state: ProxyState, exchange: Exchange, model_id: str) -> web.Response:
    """GET /v1/models/{id} (the SDKs' models.retrieve), from the same list: vLLM has no such route."""
    exchange.cache = "local"
    document, source = _models_document(state)
    for entry in document["data"]:
        if isinstance(entry, dict) and entry.get("id") == model_id:
            return web.Response(body=json.dumps(entry).encode(), content_type="application/json",
                                headers={"X-RPM-Cache": "bypass", "X-RPM-Models": source})
    raise ProxyError(404, f"the model {model_id!r} is not served here", code="model_not_found",
                     error_type="invalid_request_error", param="model", should_retry=False)
