"""The proxy's one middleware: Host check, CORS and pages of other sites, keys, a job's replay and
`Prefer: respond-async`, the OpenAI-shaped error answers, and each request's accounting at its end
(accounting.finish)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from runpod_manager.keys import Principal
from runpod_manager.proxy.accounting import CLIENT_GONE, KNOWN_ROUTES, finish
from runpod_manager.proxy.auth import PRINCIPAL, PUBLIC_PATHS, authenticate
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import JOB_ID_HEADER, JOB_OWNER_HEADER, JOB_REPLAY, JOB_TOKEN_HEADER
from runpod_manager.proxy.hosts import host_check
from runpod_manager.proxy.jobs import ERROR_HEADER, REPLAYED_JOB, wants_async
from runpod_manager.proxy.routing import MODELS_PATH, PODS_PATH_PREFIX, PodRoute
from runpod_manager.proxy.state import EXCHANGE, STATE, Exchange, ProxyState, origins_of

log = logging.getLogger("runpod_manager.proxy")


_JOB_PATH_PREFIXES = ("/v1/", PODS_PATH_PREFIX)  # the routed paths: a request to a pod may become a job


_PROTECTED_PREFIXES = ("/v1/", "/dashboard", "/metrics", "/debug", "/rpm/", PODS_PATH_PREFIX)


_ALLOWED_METHODS = "GET, POST, OPTIONS"


# Headers a page of an allowed origin may read: the SDKs' retry hints and what rpm adds.
_EXPOSED_HEADERS = ("Retry-After, retry-after-ms, x-should-retry, X-RPM-Cache, X-RPM-Cold-Start, X-RPM-Models, "
                    "Location, Preference-Applied, X-RPM-Job-Id")  # the last three: a job's 202 (jobs.py)


_SERVICE_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


_OTHER_SITE = frozenset({"cross-site", "same-site"})  # Sec-Fetch-Site values of requests another page caused


def _http_exception_error(exc: web.HTTPException, request: web.Request, state: ProxyState) -> ProxyError:
    status = exc.status
    if status == 404:
        path = request.path
        hint = f"; did you mean /v1{path}?" if ("/v1" + path) in KNOWN_ROUTES else ""
        return ProxyError(404, f"no route {path}: the proxy serves /v1/*, /pods/<name>/*, /health, /ready, "
                          f"/metrics, /dashboard and /rpm/v1 (see /rpm/v1/docs){hint}", code="not_found")
    if status == 413:
        return ProxyError(413, f"the request body is larger than [proxy] max_body_bytes = "
                          f"{state.config.proxy.max_body_bytes}", code="body_too_large", should_retry=False)
    if status == 405:
        return ProxyError(405, f"method {request.method} is not allowed on {request.path}",
                          code="method_not_allowed")
    return ProxyError(status, exc.reason or f"HTTP {status}", code=f"http_{status}")


def make_middleware(state: ProxyState, listen: PodRoute | None = None
                     ) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The one middleware; `listen`: of a pod's listen port, where every path is the service's (so every
    path needs the key and is guarded against other sites' pages, and the service's own page is allowed)."""
    protected = "/" if listen is not None else _PROTECTED_PREFIXES
    own_origins = state.own_origins if listen is None else origins_of(state.config, listen.listen_port)
    hosts = host_check(state.config.proxy, state.config.proxy.port if listen is None else listen.listen_port)

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        started = time.perf_counter()
        exchange = Exchange(started)
        request[EXCHANGE] = exchange
        path = request.path
        state.in_flight += 1
        headers = request.headers
        # A job's replay (jobs.py): the proxy's own token stands in for a client key, and it is never a new job.
        replay = JOB_TOKEN_HEADER in headers and state.jobs.is_replay(headers[JOB_TOKEN_HEADER])
        try:
            if hosts is not None:
                hosts.check(request)  # ProxyError 421 for a Host that does not name this proxy (DNS rebinding)
            local: web.StreamResponse | None = None
            if request.method == "OPTIONS" or "Origin" in headers or "Sec-Fetch-Site" in headers:
                # raises ProxyError for a page that is refused
                local = _cross_origin(request, state, own_origins, every_path=listen is not None)
            if local is not None:
                response = local
            else:
                if replay:
                    request[JOB_REPLAY] = True  # its X-Forwarded-For is the job's own (forward.forwarded_for)
                    if JOB_ID_HEADER in headers:  # marked sent as it leaves toward the pod (jobs.py)
                        request[REPLAYED_JOB] = headers[JOB_ID_HEADER]
                    owner = headers.get(JOB_OWNER_HEADER)
                    if owner is not None:  # the job is its key's: its scopes and limits hold when it runs
                        request[PRINCIPAL] = _job_owner(state, owner)
                elif state.keys.index.required and path.startswith(protected) and path not in PUBLIC_PATHS:
                    request[PRINCIPAL] = authenticate(state.keys, headers.get("Authorization"))
                if "Prefer" in headers and listen is None and not replay and _takes_jobs(request) and wants_async(
                        headers.getall("Prefer")):
                    response = await state.jobs.submit(request, request.get(PRINCIPAL))
                else:
                    response = await handler(request)
        except ProxyError as exc:
            exchange.error_code = exc.code
            response = exc.response({ERROR_HEADER: exc.code} if replay else None)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = _http_exception_error(exc, request, state)
            exchange.error_code = error.code
            allow = exc.headers.get("Allow")
            response = error.response(None if allow is None else {"Allow": allow})
        except asyncio.CancelledError:
            # handler_cancellation: the client's connection closed. Or the proxy stopped and cancelled what
            # outlived the grace period, the connection still open: that is not the client's doing.
            stopped = state.closing and request.transport is not None
            exchange.error_code = "proxy_stopped" if stopped else "client_gone"
            finish(state, request, exchange, 503 if stopped else CLIENT_GONE, started)
            raise
        except ConnectionResetError:  # a write to a client that left
            exchange.error_code = "client_gone"
            finish(state, request, exchange, CLIENT_GONE, started)
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, path)
            exchange.error_code = "internal_error"
            response = ProxyError(500, "the proxy failed unexpectedly; see the proxy log",
                                  code="internal_error").response()
        finally:
            state.in_flight -= 1
        finish(state, request, exchange, CLIENT_GONE if exchange.client_gone else response.status, started)
        return response

    return middleware


def _job_owner(state: ProxyState, name: str) -> Principal:
    """The key a replayed job was submitted with, as it is now: revoked or expired since, the job fails."""
    principal = state.keys.index.named(name, time.time())
    if principal is None:
        raise ProxyError(401, f"the key {name!r} that submitted this job has been revoked or has expired",
                         code="invalid_api_key", should_retry=False)
    return principal


def _takes_jobs(request: web.Request) -> bool:
    """A request `Prefer: respond-async` turns into a job: one to a routed path that exists (not the model
    list, which the proxy answers itself)."""
    path = request.path
    return (path.startswith(_JOB_PATH_PREFIXES) and not path.startswith(MODELS_PATH)
            and request.match_info.http_exception is None)


def _cross_origin(request: web.Request, state: ProxyState, own_origins: frozenset[str] = frozenset(), *,
                  every_path: bool = False) -> web.Response | None:
    """Preflights and requests caused by web pages: the preflight's answer, None to let the request
    through, or ProxyError(403) for a page that may not use the proxy.

    A page on any site can make the browser send requests to 127.0.0.1 — with CORS, or without asking
    (a form, an image: `no-cors`), which the server still executes. So /v1 (what costs GPU time) refuses
    every page whose origin is not in [proxy] cors_allow_origins, and preflights are answered here:
    one never reaches, or wakes, the pod.

    Routed services (/pods/<name>/…, and every path of a listen port, `every_path`) are guarded the same way,
    and also let the service's own pages through: those served on the same port (`own_origins`), as a UI
    calling its API or opening its WebSocket does.
    """
    headers = request.headers
    origin = headers.get("Origin")
    path = request.path
    service = every_path or path.startswith(PODS_PATH_PREFIX)
    allowed = origin is not None and (state.origin_allowed(origin) or (service and origin in own_origins))
    if request.method == "OPTIONS":
        if origin is None:  # not a preflight: say what the proxy takes (a service says it itself)
            return None if service else web.Response(status=204, headers={"Allow": _ALLOWED_METHODS})
        if allowed:
            methods = _SERVICE_METHODS if service else _ALLOWED_METHODS
            answer = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                      "Access-Control-Allow-Methods": methods, "Access-Control-Max-Age": "600"}
            wanted = headers.get("Access-Control-Request-Headers")
            if wanted:
                answer["Access-Control-Allow-Headers"] = wanted
            if headers.get("Access-Control-Request-Private-Network") == "true":  # Chrome, page → localhost
                answer["Access-Control-Allow-Private-Network"] = "true"
            return web.Response(status=204, headers=answer)
    elif request.method == "POST" and request.path.startswith("/rpm/"):
        # The management API's actions (start, terminate a pod) are never a web page's, whatever its origin.
        raise ProxyError(403, f"{request.path} is refused to web pages (this request came from "
                         f"{origin or 'a page'}): call the management API from a program or curl",
                         code="origin_not_allowed", should_retry=False)
    elif allowed or not (service or path.startswith("/v1/")) or (
            origin is None and headers.get("Sec-Fetch-Site") not in _OTHER_SITE):
        return None
    shown = origin if origin is not None else "another site (Sec-Fetch-Site: cross-site)"
    raise ProxyError(403, f"requests from web pages of {shown} are refused: add the origin to [proxy] "
                      "cors_allow_origins in pod_config.toml to let that page use the proxy",
                      code="origin_not_allowed", should_retry=False)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare (registered only when cors_allow_origins is set): CORS headers for allowed pages."""
    origin = request.headers.get("Origin")
    if origin is not None and request.app[STATE].origin_allowed(origin):
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = origin  # replaces the pod's own (vLLM allows "*")
        headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
        headers.add("Vary", "Origin")
