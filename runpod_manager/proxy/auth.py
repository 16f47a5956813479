"""Who a request is: its Bearer key resolved to a keys.Principal, and the scope checks that use it.

The middleware (middleware.py) calls `authenticate` for every protected path when any key exists (the store's, or
`[proxy] api_keys`) and stores the Principal at `request[PRINCIPAL]`; handlers read it there (the
management API checks `principal.is_admin`). When no key exists at all (a loopback proxy for one developer)
nothing is stored: `request.get(PRINCIPAL)` is None and every scope is open.

The store is watched off the hot path: a task stats `keys.json` every `KEY_CHECK_INTERVAL_SECONDS` and
reloads it (in a worker thread) when it changed, so `rpm keys revoke` takes effect within that interval in a
running proxy. A request costs one HMAC-SHA256 and one dict lookup (BENCHMARKS.md, "Keys").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiohttp import web

from runpod_manager.errors import RpmError
from runpod_manager.keys import KeyWatcher, Principal
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import inspect_json_body, is_json_content_type
from runpod_manager.proxy.routing import PodRoute

log = logging.getLogger("runpod_manager.proxy")

PRINCIPAL = web.RequestKey("rpm_principal", Principal)
# The management API's description (proxy/manage.py) is served without a key: it holds no data.
PUBLIC_PATHS = frozenset({"/rpm/v1/openapi.json", "/rpm/v1/docs"})
KEY_CHECK_INTERVAL_SECONDS = 0.25  # a revoked key is refused within this (plus a reload's few ms)


def bearer_token(header: str | None) -> str | None:
    if not header or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip() or None


def key_name(request: web.Request) -> str | None:
    """The request's key name (None: the proxy has no keys), for what records who asked (a wake)."""
    principal = request.get(PRINCIPAL)
    return None if principal is None else principal.name


def authenticate(watcher: KeyWatcher, header: str | None) -> Principal:
    """The request's Principal, or ProxyError 401 (no key, an unknown, revoked or expired one)."""
    token = bearer_token(header)
    principal = None if token is None else watcher.index.resolve(token, time.time())
    if principal is None:
        raise ProxyError(401, "missing or invalid API key: send a key from `rpm keys create` (or one of [proxy] "
                         "api_keys) as `Authorization: Bearer <key>`", code="invalid_api_key", should_retry=False)
    return principal


def check_scope(principal: Principal | None, route: PodRoute, model: str | None) -> None:
    """ProxyError 403 naming what the key may use, before anything is woken for the request."""
    if principal is None:
        return
    if not principal.may_use_pod(route.name):
        raise ProxyError(403, f"the key {principal.name!r} may not use pod {route.name!r}; it may use pods "
                         f"{_listing(principal.pods)}; no pod was started for this request",
                         code="pod_not_allowed", error_type="permission_error", should_retry=False)
    if model is not None and not may_use_model(principal, route, model):
        raise ProxyError(403, f"the key {principal.name!r} may not use model {model!r}; it may use models "
                         f"{_listing(principal.models)}; no pod was started for this request",
                         code="model_not_allowed", error_type="permission_error", param="model",
                         should_retry=False)


def may_use_model(principal: Principal, route: PodRoute, model: str) -> bool:
    """The key's --models scope holds `model` on this route: the name, or one that is the same model there
    (an alias and the model it stands for are one model: PodRoute.one_model)."""
    models = principal.models
    return models is None or model in models or not models.isdisjoint(route.same_model(model))


def reads_routed_model(principal: Principal | None, route: PodRoute) -> bool:
    """A request of this key routed by path to this pod (`/pods/<name>/…`, a job to it) must name its model:
    the pod is a model server and serves a model outside the key's --models (an open route serves names the
    config cannot list). A key that may use every model of the pod passes through untouched (streamed)."""
    if principal is None or principal.models is None or route.kind == "http":
        return False
    return route.open or not all(may_use_model(principal, route, name) for name in route.names)


def routed_model(principal: Principal, route: PodRoute, body: bytes | None, content_type: str) -> str:
    """The model a routed request to a pod that `reads_routed_model` names: its JSON body's `model` (none: the
    one the server answers with). ProxyError 403 for a request that names none (a GET, a form, a WebSocket):
    what it would reach cannot be told; 400 for a body that is not a JSON object."""
    if not body or not is_json_content_type(content_type):
        raise ProxyError(403, f"the key {principal.name!r} may use only some models of pod {route.name!r} (it may "
                         f"use models {_listing(principal.models)}), so a request to /pods/{route.name}/ must be a "
                         "JSON body naming one of them in `model` (or use /v1); no pod was started for this request",
                         code="model_not_allowed", error_type="permission_error", param="model",
                         should_retry=False)
    model = inspect_json_body(body).model
    if model is None or model == "":
        return route.upstream_model
    if not isinstance(model, str):
        raise ProxyError(400, "model must be a string", code="invalid_model", param="model")
    return model


def _listing(names: Iterable[str] | None) -> str:
    return "(all)" if names is None else ", ".join(sorted(names)) or "(none)"


async def watch_keys(watcher: KeyWatcher, interval_seconds: float = KEY_CHECK_INTERVAL_SECONDS) -> None:
    """Reload the key store whenever it changes (one stat per interval; the read in a worker thread)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            if watcher.changed():
                await asyncio.to_thread(watcher.reload)
                log.info("key store reloaded: %d live keys", len(watcher.index.by_digest))
        except RpmError as exc:  # a damaged store keeps the last good keys
            log.warning("key store not reloaded: %s", exc)
        except Exception:
            log.exception("key store check failed")
