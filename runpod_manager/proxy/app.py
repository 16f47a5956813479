"""The proxy's aiohttp application: routes, the one middleware, startup and shutdown.

Routes: `/v1/*` is forwarded to the pod that serves the body's `model` (routing.py; through the cache and
that model's wake gates, wake.py); `/pods/<name>/*` and each pod's listen port pass any HTTP request and
WebSocket through to an http service (passthrough.py, websocket.py); `/health`, `/ready`, `/metrics`,
`/dashboard`, the management API under `/rpm/v1` (proxy/manage.py), the jobs' `/rpm/v1/jobs/{id}[/result]`
and (with `enable_profiling`) `/debug/cache` are the proxy's own. A routed request with `Prefer:
respond-async` becomes a queued job (jobs.py) in the middleware. Everything else is a 404 in the OpenAI
error shape. What the proxy can answer truthfully without a pod it answers itself, so nothing wakes a GPU
for it: model lists, unknown model names, requests that name no model when several pods serve, wrong
methods, CORS preflights, and requests from web pages that [proxy]
cors_allow_origins does not allow.

A request to a known pod takes no thread hop: its model is looked up in one dict (from the body, parsed
once), the target is a cached attribute of the pod's gate (refreshed by the reconcile loop, wakes and the
slow path), the body is forwarded as received (an alias excepted), and the upstream ClientSession is
shared. Blocking controller calls run in worker threads.

Run the app with `handler_cancellation=True` (server.run_proxy does; aiohttp's TestServer does by
default): a client that disconnects then cancels its handler at once, which closes the upstream
connection and makes vLLM stop generating. Without it the upstream is closed at the next event write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from runpod_manager import __version__
from runpod_manager.config import Config
from runpod_manager.errors import RpmError
from runpod_manager.events import EventLog
from runpod_manager.keys import KeyStore, KeyWatcher, Principal, UsageReport, report_of
from runpod_manager.paths import Paths
from runpod_manager.proxy import dashboard, passthrough, websocket
from runpod_manager.proxy.auth import (
    PRINCIPAL,
    PUBLIC_PATHS,
    authenticate,
    check_scope,
    key_name,
    may_use_model,
    reads_routed_model,
    routed_model,
    watch_keys,
)
from runpod_manager.proxy.cache import CachedResponse, CacheStats, ResponseCache, cache_key, is_cacheable
from runpod_manager.proxy.controller import PodView, ProxyController, UpstreamTarget
from runpod_manager.proxy.errors import ProxyError, json_response
from runpod_manager.proxy.forward import (
    FIM_MISSING_MESSAGE,
    JOB_ID_HEADER,
    JOB_OWNER_HEADER,
    JOB_REPLAY,
    JOB_TOKEN_HEADER,
    JSON_ROUTES,
    NO_BODY,
    SSE_DONE,
    ConnectionBudget,
    RequestFacts,
    StreamOutcome,
    Upstream,
    UpstreamUnreachable,
    apply_fim_template,
    client_response_headers,
    forwarded_for,
    inspect_json_body,
    is_json_content_type,
    normalize_upstream_error,
    relay_events,
    upstream_request_headers,
)
from runpod_manager.proxy.hosts import host_check
from runpod_manager.proxy.jobs import ERROR_HEADER, JOBS, REPLAYED_JOB, JobRunner, JobStore, PodJobs, wants_async
from runpod_manager.proxy.jobs import add_routes as add_job_routes
from runpod_manager.proxy.limits import (
    USAGE_FLUSH_SECONDS,
    Admission,
    AnswerTimes,
    KeyLimiter,
    ShareMeter,
    estimate_tokens,
)
from runpod_manager.proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from runpod_manager.proxy.metrics import ProxyMetrics, RecentRequest
from runpod_manager.proxy.passthrough import (
    HeldBody,
    PassThrough,
    RequestBody,
    ServiceRoute,
    SpooledBody,
    WakeSpool,
)
from runpod_manager.proxy.process import proxy_url
from runpod_manager.proxy.routing import (
    PODS_PATH_PREFIX,
    PathNotRouted,
    PathTarget,
    PodRoute,
    build_routes,
    check_service_path,
)
from runpod_manager.proxy.wake import PodGroup, WakeGate
from runpod_manager.requestlog import USAGE_TAIL_BYTES, RequestLog, usage_tokens

log = logging.getLogger("runpod_manager.proxy")

SHUTDOWN_GRACE_SECONDS = 10.0  # in-flight streams get this long to finish when the proxy stops
WAKE_RETRY_AFTER_SECONDS = 1.0  # Retry-After of a request answered 503 while the pod still wakes
_KNOWN_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                           "/health", "/ready", "/metrics", "/dashboard", "/debug/cache", "/rpm/v1/pods",
                           "/rpm/v1/keys", "/rpm/v1/usage", "/rpm/v1/events", *PUBLIC_PATHS})
_JOB_PATH_PREFIXES = ("/v1/", PODS_PATH_PREFIX)  # the routed paths: a request to a pod may become a job
_PROTECTED_PREFIXES = ("/v1/", "/dashboard", "/metrics", "/debug", "/rpm/", PODS_PATH_PREFIX)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_USAGE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})  # streams that can report usage
# nginx's convention for "client closed the request", used in logs and metrics only: one status however the
# client left (waiting for a wake or its body, mid-stream), never the 200 that had started.
_CLIENT_GONE = 499
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}
_ALLOWED_METHODS = "GET, POST, OPTIONS"
# Headers a page of an allowed origin may read: the SDKs' retry hints and what rpm adds.
_EXPOSED_HEADERS = ("Retry-After, retry-after-ms, x-should-retry, X-RPM-Cache, X-RPM-Cold-Start, X-RPM-Models, "
                    "Location, Preference-Applied, X-RPM-Job-Id")  # the last three: a job's 202 (jobs.py)
_SERVICE_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_OTHER_SITE = frozenset({"cross-site", "same-site"})  # Sec-Fetch-Site values of requests another page caused


class Exchange:
    """What one request did, for its log line and metrics (set by handlers, read by the middleware).

    The proxy's overhead is the request's duration minus the time it waited on others: on the pod
    (connect, headers, body, the gaps between streamed events), on a wake, and on the client's body.
    Each wait is added as it ends, cancellation included, so a request cut short is measured right.
    """

    __slots__ = ("admission", "cache", "client_gone", "client_wait_seconds", "cold_start_seconds", "cost_usd",
                 "error_code", "facts", "first_byte_at", "hide_usage", "pod", "pod_id", "principal", "route", "started",
                 "upstream_wait_seconds", "usage_source", "wake_seconds", "wake_wait_seconds")

    def __init__(self, started: float) -> None:
        self.started = started  # time.perf_counter() when the request reached the middleware
        self.cache = "-"
        self.cold_start_seconds: float | None = None  # this request's own wait for a wake (cold_start_s)
        # The length of the wake it waited for, from the wake's start (a retry after a 503 joined a wake older
        # than itself): told to the client (X-RPM-Cold-Start, a stream's `: pod ready after N s`) and logged.
        self.wake_seconds: float | None = None
        self.upstream_wait_seconds = 0.0
        self.wake_wait_seconds = 0.0
        self.client_wait_seconds = 0.0
        self.client_gone = False  # the client left before its answer ended (logged and counted as 499)
        self.error_code: str | None = None
        self.pod: str | None = None  # the pod the request was sent to (logged; None: answered without one)
        # For the request log (requestlog.py), read off the hot path:
        self.facts: RequestFacts | None = None  # the parsed body (model, stream)
        self.pod_id: str | None = None  # the pod it was sent to
        self.first_byte_at: float | None = None  # perf_counter() when the pod's answer (first event) came
        self.usage_source: bytes | None = None  # the answer's bytes, or a stream's last event (its `usage`)
        # A request routed by path (/pods/<name>/…, a listen port): its metrics label, one per pod, never the
        # path (unbounded); None for /v1 and the proxy's own routes.
        self.route: str | None = None
        # Team keys (proxy/limits.py): the key admitted against its limits (its end is counted in _finish),
        # the request's share of its pod's cost, and whether the proxy asked the pod for a stream's usage.
        self.principal: Principal | None = None
        self.admission: Admission | None = None  # what its admission reserved (tokens, cost), settled at its end
        self.cost_usd = 0.0
        self.hide_usage = False


EXCHANGE = web.RequestKey("rpm_exchange", Exchange)


class ProxyState:
    """Everything the handlers share; one per application."""

    def __init__(
        self,
        config: Config,
        controller: ProxyController,
        paths: Paths,
        *,
        keepalive_interval_seconds: float,
        body_read_timeout_seconds: float,
        queue_full_retry_after_seconds: float,
        wake_retry_after_seconds: float,
        cache_clock: Callable[[], float],
    ) -> None:
        proxy = config.proxy
        self.config = config
        self.controller = controller
        self.paths = paths
        self.events = EventLog(paths.event_log, secrets=(config.api.api_key,))  # what the proxy itself logs
        self.metrics = ProxyMetrics()
        self.request_log = RequestLog(paths.request_log, keep_days=proxy.request_log_keep_days)
        self.routes = build_routes(config)  # ConfigError when two pods answer to one name
        # One group per configured pod (its model's queue and replicas), one gate per pod (replicas included).
        self.groups = tuple(PodGroup(
            route, controller, wake_on_request=proxy.wake_on_request, max_queue_size=proxy.max_queue_size,
            queue_timeout_seconds=proxy.queue_timeout_seconds,
            keepalive_interval_seconds=keepalive_interval_seconds,
            queue_full_retry_after_seconds=queue_full_retry_after_seconds,
            waking_retry_after_seconds=wake_retry_after_seconds, metrics=self.metrics,
            solo=len(self.routes.routes) == 1)
            for route in self.routes.routes)
        self.group_by_route = {group.route.name: group for group in self.groups}
        # The largest body each pod's routes take (an http pod's own limit; a model pod's is [proxy]
        # max_body_bytes, as on /v1): read from the config once, not per request.
        self.body_limits = {route.name: _body_limit(config, route.name) for route in self.routes.routes}
        self.pod_headers = {pod.name: pod.headers for pod in config.all_pods if pod.headers}  # [pod] headers
        self.gates = {gate.name: gate for group in self.groups for gate in group.gates}
        self.group_of = {gate.name: group for group in self.groups for gate in group.gates}
        self.default_group = None if self.routes.default is None else self.group_by_route[self.routes.default.name]
        self.fallback_group = (None if self.routes.fallback is None
                               else self.group_by_route[self.routes.fallback.name])
        # Model name → group: the config's names, plus the ids the pods' own model lists showed (LoRA adapters
        # loaded at run time), which `remember_models` adds. One dict lookup per request.
        self.static_lookup = {name: self.group_by_route[route.name] for name, route in self.routes.by_model.items()}
        self.lookup: dict[str, PodGroup] = dict(self.static_lookup)
        # GET /v1/models with one pod and no aliases passes the pod's own answer through, byte for byte.
        self.models_passthrough = (len(self.groups) == 1 and not self.groups[0].route.aliases
                                   and self.groups[0].route.kind != "http")
        self.body_read_timeout_seconds = body_read_timeout_seconds
        self.keys = KeyWatcher(paths.keys_file, proxy.api_keys)  # StateError when the store is damaged
        self.keys_task: asyncio.Task[None] | None = None
        self.limiter = KeyLimiter(paths.key_usage_file, zone=config.zone,
                                  window_seconds=proxy.key_limit_window_seconds)
        self.usage_task: asyncio.Task[None] | None = None
        # Each request's share of its pod's $/h (limits.request_cost_usd): one meter per pod for the requests
        # in flight on it, one per configured pod for the requests waiting for its wake (made here, so a
        # request looks its meter up once, without a miss to handle).
        self.serve_meters = {name: ShareMeter() for name in self.gates}
        self.wait_meters = {group.name: ShareMeter() for group in self.groups}
        self.answer_times = {group.name: AnswerTimes() for group in self.groups}  # a key's expected wait and cost
        # Each pod's own upstream connections (forward.ConnectionBudget): one pod's sockets never starve another.
        self.connections = {gate.name: _connection_budget(config, group.name)
                            for group in self.groups for gate in group.gates}
        self.cache: ResponseCache | None = None
        if config.cache.enabled:
            directory = Path(config.cache.dir).expanduser() if config.cache.dir else paths.response_cache_dir
            self.cache = ResponseCache(directory, max_entries=config.cache.max_entries,
                                       max_bytes=config.cache.max_bytes,
                                       ttl_seconds=config.cache.ttl_seconds, clock=cache_clock,
                                       on_stats=self._publish_cache_stats)
        self.cache_stats = CacheStats(0, 0)
        self.session: aiohttp.ClientSession | None = None
        self.upstream: Upstream | None = None
        self.views: dict[str, PodView] = {name: PodView(name=name) for name in self.gates}
        self.last_wake_error: str | None = None  # the proxy's last wake to finish, when it failed
        self.cors_allow_origins = frozenset(origin.rstrip("/") for origin in proxy.cors_allow_origins)
        self.reconcile_task: asyncio.Task[None] | None = None
        self.closing = False
        self.jobs = JobRunner(
            JobStore(paths.jobs_dir, max_count=proxy.jobs_max_count, max_bytes=proxy.jobs_max_bytes,
                     ttl_seconds=proxy.jobs_result_ttl_seconds),
            concurrency=proxy.jobs_concurrency, body_limit=lambda path: job_body_limit(self, path),
            resolve=lambda method, path, read_body, content_type, principal: job_pod(
                self, method, path, read_body, content_type, principal),
            pod_waking=self._pod_waking, full_retry_after_seconds=queue_full_retry_after_seconds,
            trust_forwarded=proxy.trust_forwarded)
        self.in_flight = 0  # read by the in-flight gauge at scrape time (no lock per request)
        # /v1 reaches the model pods only (kind = "http" pods are routed by path); the model lists are theirs.
        self.model_groups = tuple(group for group in self.groups if group.route.kind != "http")
        self.passthrough: PassThrough | None = None  # made with the session (on startup)
        self.wake_spool = WakeSpool(paths.spool_dir, proxy.wake_spool_max_bytes)
        self.wake_spool.sweep()
        self.sockets = websocket.SocketRegistry()
        # Page origins that are the proxy's own (its port) or a listen port's: a service's page served there
        # may call its own routes (checked per app in _cross_origin).
        self.own_origins = _origins_of(config, proxy.port)
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        for group in self.groups:
            group.views = self.views
            group.on_wake_settled = self._wake_settled
            for gate in group.gates:
                self.metrics.watch_pod(gate.name, gate)
                gate.on_started = self._wake_started

    def _wake_started(self, gate: WakeGate) -> None:
        # Who woke the pod, in the event log beside the lease the wake opens (a rare, small append).
        self.events.write("wake_started", config=gate.name, key=gate.woken_by)

    def _pod_waking(self, pod: str) -> bool:
        """A job's pod has no ready replica (its request waits for a wake)."""
        group = self.group_by_route.get(pod)
        return group is not None and group.pick() is None

    def _wake_settled(self, gate: WakeGate, error: BaseException | None) -> None:
        self.last_wake_error = None if error is None else gate.last_wake_error

    def origin_allowed(self, origin: str) -> bool:
        return origin in self.cors_allow_origins or "*" in self.cors_allow_origins

    def model_names(self, group: PodGroup) -> list[str]:
        """The names a request may use for this group: the config's, then what its pod listed (none for an
        http pod: it is routed by path)."""
        if group.route.kind == "http":
            return []
        return list(dict.fromkeys([*group.route.names, *sorted(group.model_ids)]))

    def remember_models(self, group: PodGroup, body: bytes) -> None:
        """A pod's own GET /v1/models answer: what to list while it sleeps, and names it serves."""
        group.models_body = body
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            ids = frozenset(entry["id"] for entry in json.loads(body)["data"] if isinstance(entry.get("id"), str))
            if ids != group.model_ids:
                group.model_ids = ids
                lookup = dict(self.static_lookup)
                for other in self.groups:
                    for name in other.model_ids:
                        lookup.setdefault(name, other)  # a name the config gives one pod stays that pod's
                self.lookup = lookup

    def _publish_cache_stats(self, stats: CacheStats) -> None:
        # Called on the cache's writer thread; gauges are thread-safe and the tuple swap is atomic.
        self.cache_stats = stats
        self.metrics.cache_entries.set(stats.entries)
        self.metrics.cache_bytes.set(stats.bytes)

    def set_views(self, views: Mapping[str, PodView]) -> None:
        for name, view in views.items():
            if name in self.views:
                self.views[name] = view
                self.metrics.update_pod(name, view)
                self.gates[name].observe_lease(view.lease_open)  # a stop during a wake (wake.py)

    # ---------------------------------------------------------------------------- controller calls

    async def fresh_views(self) -> dict[str, PodView]:
        try:
            views = await asyncio.to_thread(self.controller.views)
        except Exception as exc:  # a status page must answer even when the state cannot be read
            log.warning("could not read the pod views: %s", exc)
            return self.views
        self.set_views(views)
        return self.views

    def activity(self) -> dict[str, datetime | None]:
        """Each pod's last use, for the control plane's idle clocks (one per pod, replicas included)."""
        now = time.time()
        activity: dict[str, datetime | None] = {}
        for group in self.groups:
            for gate in group.gates:
                last = group.activity(gate, now)
                activity[gate.name] = None if last is None else datetime.fromtimestamp(last, UTC)
        return activity

    async def reconcile_once(self) -> None:
        """Record each pod's activity and let the lifecycle enforce limits; refresh the cached targets."""
        try:
            views = await asyncio.to_thread(self.controller.reconcile, self.activity())
        except RpmError as exc:
            log.warning("reconcile failed: %s", exc)
        except Exception:
            log.exception("reconcile failed unexpectedly")
        else:
            self.set_views(views)
        targets = await asyncio.to_thread(self._read_targets)
        for name, target in targets.items():
            self.gates[name].set_target(target)
        await self.sockets.close_gone(self.gates, self.views)  # a limit, idle or a shutdown stopped the pod

    def _read_targets(self) -> dict[str, UpstreamTarget | None]:
        """Every pod's target (in a worker thread); a pod whose target cannot be read keeps its own."""
        targets: dict[str, UpstreamTarget | None] = {}
        for name in self.gates:
            try:
                targets[name] = self.controller.current_target(name)
            except Exception as exc:
                log.warning("could not read the current pod of %s: %s", name, exc)
        return targets

    async def mark_unreachable(self, gate: WakeGate, target: UpstreamTarget) -> None:
        gate.forget(target.pod_id)
        try:
            await asyncio.to_thread(self.controller.mark_unreachable, gate.name, target.pod_id)
        except Exception as exc:
            log.warning("could not mark pod %s (%s) unreachable: %s", gate.name, target.pod_id, exc)


STATE = web.AppKey("rpm_proxy_state", ProxyState)
LISTEN_ROUTE = web.AppKey("rpm_listen_route", PodRoute)
MODELS_PATH = "/v1/models"
MODELS_ASK_TIMEOUT_SECONDS = 10.0  # how long GET /v1/models waits for each running pod's own list


# ------------------------------------------------------------------------------------- middleware


def _route_label(path: str) -> str:
    if path in _KNOWN_ROUTES:
        return path
    if path.startswith("/rpm/v1/pods/"):
        return "/rpm/v1/pods/{name}"  # one series, not one per name asked for
    if path.startswith("/rpm/v1/jobs/"):
        return "/rpm/v1/jobs/{id}"
    return "/v1/other" if path.startswith("/v1/") else "other"


def _http_exception_error(exc: web.HTTPException, request: web.Request, state: ProxyState) -> ProxyError:
    status = exc.status
    if status == 404:
        path = request.path
        hint = f"; did you mean /v1{path}?" if ("/v1" + path) in _KNOWN_ROUTES else ""
        return ProxyError(404, f"no route {path}: the proxy serves /v1/*, /pods/<name>/*, /health, /ready, "
                          f"/metrics, /dashboard and /rpm/v1 (see /rpm/v1/docs){hint}", code="not_found")
    if status == 413:
        return ProxyError(413, f"the request body is larger than [proxy] max_body_bytes = "
                          f"{state.config.proxy.max_body_bytes}", code="body_too_large", should_retry=False)
    if status == 405:
        return ProxyError(405, f"method {request.method} is not allowed on {request.path}",
                          code="method_not_allowed")
    return ProxyError(status, exc.reason or f"HTTP {status}", code=f"http_{status}")


def _make_middleware(state: ProxyState, listen: PodRoute | None = None
                     ) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The one middleware; `listen`: of a pod's listen port, where every path is the service's (so every
    path needs the key and is guarded against other sites' pages, and the service's own page is allowed)."""
    protected = "/" if listen is not None else _PROTECTED_PREFIXES
    own_origins = state.own_origins if listen is None else _origins_of(state.config, listen.listen_port)
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
            _finish(state, request, exchange, 503 if stopped else _CLIENT_GONE, started)
            raise
        except ConnectionResetError:  # a write to a client that left
            exchange.error_code = "client_gone"
            _finish(state, request, exchange, _CLIENT_GONE, started)
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, path)
            exchange.error_code = "internal_error"
            response = ProxyError(500, "the proxy failed unexpectedly; see the proxy log",
                                  code="internal_error").response()
        finally:
            state.in_flight -= 1
        _finish(state, request, exchange, _CLIENT_GONE if exchange.client_gone else response.status, started)
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


def _origins_of(config: Config, port: int) -> frozenset[str]:
    """The origins a browser sends for pages served on this machine's `port` of the proxy."""
    scheme = "https" if config.proxy.use_https else "http"
    hosts = {"127.0.0.1", "localhost", "[::1]"}
    if config.proxy.host not in ("0.0.0.0", "", "::"):  # noqa: S104 - compared, not bound
        hosts.add(config.proxy.host if ":" not in config.proxy.host else f"[{config.proxy.host}]")
    return frozenset(f"{scheme}://{host}:{port}" for host in hosts)


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


async def _add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare (registered only when cors_allow_origins is set): CORS headers for allowed pages."""
    origin = request.headers.get("Origin")
    if origin is not None and request.app[STATE].origin_allowed(origin):
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = origin  # replaces the pod's own (vLLM allows "*")
        headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
        headers.add("Vary", "Origin")


def _finish(state: ProxyState, request: web.Request, exchange: Exchange, status: int, started: float) -> None:
    duration = time.perf_counter() - started
    principal = exchange.principal
    if principal is not None:  # admitted against its key's limits: its end, tokens and cost
        tokens_in, tokens_out = usage_tokens(exchange.usage_source)
        state.limiter.finish(principal, tokens=(tokens_in or 0) + (tokens_out or 0), cost_usd=exchange.cost_usd,
                             admission=exchange.admission)
    if exchange.pod is not None and 200 <= status < 400:  # its pod's answer time, wakes (and sockets: 101) left out
        state.answer_times[state.group_of[exchange.pod].name].add(duration - exchange.wake_wait_seconds)
    path = request.path
    route = exchange.route or _route_label(path)
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


# ----------------------------------------------------------------------------------------- /v1/*


async def _read_body(request: web.Request, state: ProxyState) -> bytes:
    length = request.content_length
    if length is not None and length > state.config.proxy.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=state.config.proxy.max_body_bytes, actual_size=length)
    if request.content.is_eof():  # the whole body came with the headers: nothing to time out
        return await request.read()
    waiting_since = time.perf_counter()
    try:
        async with asyncio.timeout(state.body_read_timeout_seconds):
            return await request.read()
    except TimeoutError:
        raise ProxyError(408, f"the request body did not arrive within {state.body_read_timeout_seconds:g} s",
                         code="request_timeout", should_retry=False) from None
    finally:  # waiting for the client's bytes is not the proxy's time
        request[EXCHANGE].client_wait_seconds += time.perf_counter() - waiting_since


async def handle_v1(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    method = request.method
    if method in ("GET", "HEAD") and request.path.startswith(MODELS_PATH):
        path = request.path
        if path == MODELS_PATH:
            return await _handle_models(request, state)
        if path[len(MODELS_PATH)] == "/":
            return _local_model(state, request[EXCHANGE], path[len(MODELS_PATH) + 1:])
    return await _handle_v1(request, state)


async def _handle_v1(request: web.Request, state: ProxyState) -> web.StreamResponse:
    exchange = request[EXCHANGE]
    method = request.method
    path = request.path
    if method != "POST" and path in JSON_ROUTES:  # vLLM's answer too, but it would cost a wake to hear it
        raise web.HTTPMethodNotAllowed(method, ["POST"])
    body: bytes | None = None
    facts: RequestFacts = NO_BODY
    if method in _BODY_METHODS:
        body = await _read_body(request, state)
        content_type = request.headers.get("Content-Type", "")
        if body and is_json_content_type(content_type):
            facts = inspect_json_body(body)
        elif path in JSON_ROUTES:
            if not body:
                raise ProxyError(400, f"{path} needs a JSON body", code="missing_body")
            raise ProxyError(415, f"{path} takes a JSON body: send Content-Type: application/json "
                             f"(got {content_type or 'none'!r})", code="unsupported_media_type")
    elif request.body_exists:
        body = await _read_body(request, state)
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
    await _admit_key(state, exchange, principal, group.route, _model_of(facts, group.route), facts.document)
    document = facts.document
    if facts.stream and document is not None and path in _USAGE_ROUTES:
        options = document.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            document = {**document, "stream_options": {**(options if isinstance(options, dict) else {}),
                                                       "include_usage": True}}
            exchange.hide_usage = True
            return RequestFacts(document=document, stream=True), json.dumps(document, ensure_ascii=False).encode()
    return facts, body


def _model_of(facts: RequestFacts, route: PodRoute) -> str:
    """The model a /v1 request uses, for its key's scope: the body's, else the pod's own."""
    return facts.model if isinstance(facts.model, str) and facts.model else route.model


async def _admit_key(state: ProxyState, exchange: Exchange, principal: Principal, route: PodRoute,
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
            _pod_rate(state, state.group_by_route[pod]) / 3600 * answer_seconds))
    exchange.principal = principal  # its end (concurrency, tokens, cost) is counted in _finish


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
            return await _serve_hit(request, hit)
        exchange.cache = "miss"
        state.metrics.count_cache("miss")
    else:
        exchange.cache = "bypass"
        state.metrics.count_cache("bypass")

    try:
        return await _wait_and_forward(request, state, exchange, body, facts, key, group, rewake=True)
    except _PodWentAway:
        # rpm (idle stop, a limit) or RunPod ended the pod while this request was on its way to it. The
        # request had not reached the client yet, so it waits for a wake (or another ready replica) like
        # one that came a moment later.
        log.info("pod %s went away under a %s request; it waits for a wake", exchange.pod, request.path)
        return await _wait_and_forward(request, state, exchange, body, facts, key, group, rewake=False)


class _PodWentAway(Exception):
    """The upstream failed because the pod is no longer running, before anything reached the client."""


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
                wait = await _wait_streaming(request, state, exchange, group)
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
            exchange.cost_usd += _pod_rate(state, group) / 3600 * wait_meter.leave(ended, joined)
    exchange.pod = gate.name
    connections = state.connections[gate.name]
    await connections.take()  # 503 when the pod's connections stay full
    if (job_id := request.get(REPLAYED_JOB)) is not None:
        state.jobs.sending(job_id)  # before a byte leaves: a restart must not send it again
    group.begin(gate)
    meter = state.serve_meters[gate.name]
    joined = meter.join(time.perf_counter())
    try:
        return await _forward(request, state, exchange, gate, target, body, facts, key, committed,
                              rewake=rewake and committed is None)
    finally:
        connections.give()
        group.end(gate)
        exchange.cost_usd += state.views[gate.name].cost_per_hour / 3600 * meter.leave(time.perf_counter(), joined)


def _pod_rate(state: ProxyState, group: PodGroup) -> float:
    """The $/h a wake of the group costs: its pods' as last seen (a replica not created yet: the others')."""
    return max((state.views[gate.name].cost_per_hour for gate in group.gates), default=0.0)


async def _pod_went_away(state: ProxyState, gate: WakeGate) -> bool:
    """After an upstream failure: is the pod no longer running (so a wake, not an error, is the answer)?"""
    if not state.config.proxy.wake_on_request:
        return False
    try:
        view = await asyncio.to_thread(state.controller.view, gate.name)
    except Exception as exc:
        log.warning("could not read the state of pod %s after an upstream failure: %s", gate.name, exc)
        return False
    return not view.lease_open or view.status != "RUNNING"


def target_group(state: ProxyState, path: str, facts: RequestFacts) -> PodGroup:
    """The configured pod a routed request goes to: `/pods/<name>/…` by its name, anything else by the body's
    model (`_route`). The one resolution the handlers and the jobs' queues (jobs.py) share."""
    target = path_target(state, path)
    if target is None:
        return _route(state, facts)
    return state.group_by_route[target.route.name]


def job_body_limit(state: ProxyState, path: str) -> int:
    """The largest body a job to `path` may carry: the same as a direct request's to that route."""
    target = path_target(state, path)  # 404 for a pod that is not here, before any of the body is read
    if target is None:
        return state.config.proxy.max_body_bytes
    return state.body_limits[target.route.name]


def job_pod(state: ProxyState, method: str, path: str, read_body: Callable[[], bytes], content_type: str,
            principal: Principal | None) -> str:
    """The queue a job joins (jobs.Resolver): its target's name, or the ProxyError the request would get, its
    key's scopes included (checked as on the request's own route), so no job its key may not make is stored."""
    if method not in _BODY_METHODS and path in JSON_ROUTES:
        raise web.HTTPMethodNotAllowed(method, ["POST"])
    target = path_target(state, path)
    if target is None:  # /v1: by the body's model
        body = read_body()
        facts = inspect_json_body(body) if body and is_json_content_type(content_type) else NO_BODY
        group = target_group(state, path, facts)
        check_scope(principal, group.route, _model_of(facts, group.route))
        return group.name
    route = target.route
    model = None
    if principal is not None and reads_routed_model(principal, route):
        check_scope(principal, route, None)  # the pod first: a body is read only for a pod the key may use
        model = routed_model(principal, route, read_body(), content_type)
    check_scope(principal, route, model)
    return route.name


def _route(state: ProxyState, facts: RequestFacts) -> PodGroup:
    """The group (configured pod) a request goes to, by the body's `model`; answered here when there is none.

    A model no pod serves is answered here, whether the pods run or sleep: waking a GPU to hear vLLM's 404
    is money for nothing, and a stream would get it inside a `data:` event after its 200.
    """
    model = facts.model
    if not state.model_groups:
        raise ProxyError(404, "no model server is configured here: every pod is kind = \"http\"; send requests "
                         f"to /pods/<name>/<path> (pods: {', '.join(state.group_by_route)})",
                         code="model_not_found", param="model", should_retry=False)
    if model is None or model == "":  # "": the server's default model
        if state.default_group is not None:
            return state.default_group
        raise ProxyError(400, f"several models are served here ({_served_listing(state)}): name one in the "
                         "request's `model` (a body that cannot, such as a multipart upload, can be sent to one pod "
                         "by path: /pods/<name>/v1/…); no pod was started for this request", code="model_required",
                         param="model", should_retry=False)
    if not isinstance(model, str):
        raise ProxyError(400, "model must be a string", code="invalid_model", param="model")
    group = state.lookup.get(model) or state.fallback_group
    if group is not None:
        return group
    # OpenAI's own shape for this case (type invalid_request_error, code model_not_found), as a plain HTTP
    # answer: no wake has started, so even a stream has not committed its 200 yet.
    where = "the pod serves" if len(state.model_groups) == 1 else "served:"
    source = "[pod] model" if not state.config.pods else "[pods.<name>] model and aliases"
    raise ProxyError(404, f"the model {model!r} is not served here: {where} {_served_listing(state)} ({source} in "
                     "pod_config.toml); no pod was started for this request", code="model_not_found",
                     error_type="invalid_request_error", param="model", should_retry=False)


def _served_listing(state: ProxyState) -> str:
    if len(state.model_groups) == 1:
        return ", ".join(state.model_names(state.model_groups[0]))
    return "; ".join(f"{', '.join(state.model_names(group))} (pod {group.name})" for group in state.model_groups)


async def _handle_models(request: web.Request, state: ProxyState) -> web.StreamResponse:
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
        response = await _forward(request, state, exchange, gate, target, None, NO_BODY, None, None, max_retries=0)
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
    headers = upstream_request_headers(request.headers.items(), target.upstream_key,
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


def _local_model(state: ProxyState, exchange: Exchange, model_id: str) -> web.Response:
    """GET /v1/models/{id} (the SDKs' models.retrieve), from the same list: vLLM has no such route."""
    exchange.cache = "local"
    document, source = _models_document(state)
    for entry in document["data"]:
        if isinstance(entry, dict) and entry.get("id") == model_id:
            return web.Response(body=json.dumps(entry).encode(), content_type="application/json",
                                headers={"X-RPM-Cache": "bypass", "X-RPM-Models": source})
    raise ProxyError(404, f"the model {model_id!r} is not served here", code="model_not_found",
                     error_type="invalid_request_error", param="model", should_retry=False)


def _extra_headers(exchange: Exchange) -> dict[str, str]:
    headers = {"X-RPM-Cache": exchange.cache}
    if exchange.wake_seconds is not None:
        headers["X-RPM-Cold-Start"] = f"{exchange.wake_seconds:.3f}"
    return headers


async def _serve_hit(request: web.Request, hit: CachedResponse) -> web.StreamResponse:
    if hit.events is None:
        return web.Response(body=hit.body, headers={"Content-Type": hit.content_type, "X-RPM-Cache": "hit"})
    response = web.StreamResponse(status=200, headers={**_SSE_HEADERS, "X-RPM-Cache": "hit"})
    await response.prepare(request)
    for event in hit.events:  # replayed as the same events, one write each, like a live stream
        await response.write(event)
    await response.write_eof()
    return response


async def _wait_streaming(
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
            committed = web.StreamResponse(status=200, headers={**_SSE_HEADERS, "X-RPM-Cache": exchange.cache})
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


async def _forward(
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
    raises _PodWentAway instead of answering (nothing has reached the client yet)."""
    upstream = state.upstream
    if upstream is None:  # only between shutdown and cleanup
        raise ProxyError(503, "the proxy is shutting down", code="shutting_down", should_retry=True)
    metrics = state.metrics
    exchange.pod_id = target.pod_id
    headers = upstream_request_headers(request.headers.items(), target.upstream_key,
                                       forwarded=forwarded_for(request, trust=state.config.proxy.trust_forwarded))
    opened_at = time.perf_counter()
    try:
        reply = await upstream.open(target, request.method, request.raw_path, headers, body,
                                    on_retry=lambda attempt, why: metrics.upstream_retries.inc(),
                                    max_retries=max_retries)
    except UpstreamUnreachable as exc:
        exchange.error_code = exc.code
        await state.mark_unreachable(gate, target)
        if rewake and await _pod_went_away(state, gate):
            raise _PodWentAway from None
        if committed is not None:
            return await _end_committed(committed, json.dumps(exc.document()).encode())
        return exc.response(_extra_headers(exchange))
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
            if rewake and await _pod_went_away(state, gate):
                raise _PodWentAway
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
        out_headers.update(_extra_headers(exchange))
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
        out_headers.update(_SSE_HEADERS)
        out_headers["Content-Type"] = upstream_response.headers.get("Content-Type", _SSE_HEADERS["Content-Type"])
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
        exchange.client_gone = True
        exchange.error_code = "client_gone"
    return client, not outcome.upstream_broken


# ------------------------------------------------------------------- /pods/<name>/… and listen ports


def service_route(state: ProxyState, route: PodRoute, port: int, raw_path: str, prefix: str) -> ServiceRoute:
    """A routed request's destination: the pod's group, its port, the path sent, and its body limit (an http
    pod's own; a model pod's is [proxy] max_body_bytes, as on /v1). A `..` path is refused (400), never sent."""
    check_service_path(raw_path)
    return ServiceRoute(state.group_by_route[route.name], port, raw_path, prefix, state.body_limits[route.name])


def _connection_budget(config: Config, name: str) -> ConnectionBudget:
    table = f"[pods.{name}]" if config.pods else "[pod]"
    return ConnectionBudget((config.pod_named(name) or config.pod).max_connections, f"{table} max_connections")


def _body_limit(config: Config, name: str) -> int:
    pod = config.pod_named(name)
    return pod.body_limit_bytes if pod is not None and pod.is_http else config.proxy.max_body_bytes


def path_target(state: ProxyState, path: str) -> PathTarget | None:
    """`/pods/<name>[:<port>]/<path>` → its pod and port (None: not a /pods/ path); 404 naming the pods for a
    name (or port) not here. Used by the pass-through and by target_group (the jobs' queues) alike."""
    try:
        return state.routes.pod_for_path(path)
    except PathNotRouted as exc:
        route = state.routes.route_named(exc.name)
        if route is None:
            raise ProxyError(404, f"no pod named {exc.name!r} here: the pods are {', '.join(state.group_by_route)} "
                             "(/pods/<name>/<path>)", code="pod_not_found", should_retry=False) from None
        raise ProxyError(404, f"pod {route.name!r} has no port {exc.port!r}: its ports are "
                         f"{', '.join(map(str, route.ports))} (port, extra_ports)", code="pod_port_not_found",
                         should_retry=False) from None


def resolve_pods_path(state: ProxyState, request: web.Request) -> ServiceRoute:
    """A /pods/ request → where it goes (path_target), with the exact path to send and its body limit."""
    target = path_target(state, request.path)
    if target is None:  # only mounted under /pods/
        raise web.HTTPNotFound()
    segment = request.path[len(PODS_PATH_PREFIX):].partition("/")[0]
    prefix = PODS_PATH_PREFIX + segment
    raw = request.raw_path
    if not raw.startswith(prefix):  # the name percent-encoded: not a form rpm ever links to
        raise ProxyError(404, f"write the pod's name plainly in /pods/{target.route.name}/", code="pod_not_found")
    rest = raw[len(prefix):]
    if not rest.startswith("/"):  # the service's root without its slash: its relative links need it
        raise web.HTTPPermanentRedirect(prefix + "/" + rest)
    return service_route(state, target.route, target.port, rest, prefix)


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
        exchange.cost_usd += _pod_rate(state, group) / 3600 * wait_meter.leave(ended, joined)


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
    """A keyed routed request's scopes and limits (`_admit_key`). To a model pod serving models outside the
    key's --models, the request must name one it may use (auth.routed_model): its JSON body is read (within
    [proxy] max_body_bytes, a model pod's limit) and returned to be sent as it came."""
    route = service.route
    if not reads_routed_model(principal, route):
        await _admit_key(state, exchange, principal, route, None)
        return None
    try:
        check_scope(principal, route, None)  # the pod first: a body is read only for a pod the key may use
        body = await _read_body(request, state) if request.body_exists else b""
        model = routed_model(principal, route, body, request.headers.get("Content-Type", ""))
    except ProxyError as exc:
        if exc.status == 403:
            state.limiter.refuse(principal)
        raise
    await _admit_key(state, exchange, principal, route, model)
    return HeldBody(body) if body else None


async def _pass_service(request: web.Request, state: ProxyState, exchange: Exchange, service: ServiceRoute,
                        pass_through: PassThrough, has_body: bool, spooled: SpooledBody | HeldBody | None
                        ) -> web.StreamResponse:
    group = service.group
    for attempt in (1, 2):
        gate, target = await _service_target(request, state, exchange, service, hold=True)
        exchange.pod, exchange.pod_id = gate.name, target.pod_id
        body: RequestBody | SpooledBody | HeldBody | None = spooled
        if has_body and spooled is None:
            body = RequestBody(request, service.max_body_bytes, state.body_read_timeout_seconds)
        connections = state.connections[gate.name]
        await connections.take()  # 503 when the pod's connections stay full
        if (job_id := request.get(REPLAYED_JOB)) is not None:
            state.jobs.sending(job_id)  # before a byte leaves: a restart must not send it again
        group.begin(gate)
        meter = state.serve_meters[gate.name]
        joined = meter.join(time.perf_counter())
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
                if attempt == 1 and not (body is not None and body.started) and await _pod_went_away(state, gate):
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
            connections.give()
            group.end(gate)
            exchange.cost_usd += (state.views[gate.name].cost_per_hour / 3600
                                  * meter.leave(time.perf_counter(), joined))
    raise AssertionError("unreachable")  # the loop returns or raises


async def _serve_websocket(request: web.Request, state: ProxyState, exchange: Exchange, service: ServiceRoute
                           ) -> web.StreamResponse:
    session = state.session
    if session is None:
        raise ProxyError(503, "the proxy is shutting down", code="shutting_down", should_retry=True)
    gate, target = await _service_target(request, state, exchange, service, hold=False)
    exchange.pod, exchange.pod_id = gate.name, target.pod_id
    route = service.route
    base_url = passthrough.pod_port_url(target, route, service.port, state.config.api.pod_url_template)
    url = URL(base_url + service.raw_path, encoded=True)
    added = dict(state.pod_headers.get(route.name, {}))
    if route.kind != "http" and target.upstream_key:
        added["Authorization"] = f"Bearer {target.upstream_key}"
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


# --------------------------------------------------------------------------------- own endpoints



def _iso(moment: object) -> object:
    """A limit's time as ISO 8601 UTC (a PodView may also carry a reason text, passed through)."""
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return moment


def _pod_entry(state: ProxyState, name: str) -> dict[str, Any]:
    """One pod as /health and /rpm/v1/pods show it: the derived facts as the planner derives them (the
    controller's view; `rpm status --json` shows the same) and the proxy's own (its model's queue, its wake,
    its requests in flight)."""
    view = state.views[name]
    gate = state.gates[name]
    group = state.group_of[name]
    oldest = group.oldest_wait_seconds()
    jobs = state.jobs.summary().get(group.name, PodJobs())
    oldest_job = None if jobs.oldest_queued_at is None else round(max(0.0, time.time() - jobs.oldest_queued_at), 3)
    return {"name": name, "replica_of": group.name, "models": state.model_names(group),
            "pod_id": view.pod_id, "status": view.status, "ready": view.ready, "lease_open": view.lease_open,
            "deadline": _iso(view.deadline), "idle_ends_at": _iso(view.limits.get("idle")),
            "spend_today_usd": round(view.spend_today_usd, 4), "max_daily_spend_usd": view.max_daily_spend_usd,
            "queue_depth": group.waiting, "oldest_wait_seconds": None if oldest is None else round(oldest, 3),
            "in_flight": gate.in_flight, "waking": gate.waking, "target_known": gate.target is not None,
            "last_wake_error": gate.last_wake_error, "woken_by": gate.woken_by,
            "woken_at": None if gate.woken_at is None else _iso(datetime.fromtimestamp(gate.woken_at, UTC)),
            # Its configured pod's queued jobs (jobs.py; replicas share one queue), for clients that poll.
            "jobs_queued": jobs.queued, "jobs_running": jobs.running, "oldest_job_wait_seconds": oldest_job}


async def handle_health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.fresh_views()
    pods = [_pod_entry(state, name) for name in state.gates]
    groups = state.groups
    return json_response({
        "status": "ok",
        "version": __version__,
        "proxy": {"queue_depth": sum(group.waiting for group in groups),
                  "waking": any(group.waking for group in groups),
                  "target_known": all(group.pick() is not None for group in groups),
                  "wake_on_request": state.config.proxy.wake_on_request, "last_wake_error": state.last_wake_error},
        "pod": pods[0],  # the first pod, as /health showed its one pod before there were several
        "pods": pods,
        "url": f"{proxy_url(state.config)}/v1",
        # http pods: reached at /pods/<name>/ on this port, and at their own listen ports
        "listen_ports": {route.name: port for port, route in state.routes.listen_ports.items()},
        # Who answers: `rpm start` tells its own proxy (same state directory and config) from a foreign
        # program on the port. Served without a key like the rest of /health; none of it is a secret.
        "instance": {"pid": os.getpid(), "state_dir": str(state.paths.state_dir),
                     "config_name": state.config.pod.name},
    })


async def handle_ready(request: web.Request) -> web.Response:
    """200 when every model has a ready pod (with one pod: that pod's id), else 503 saying which has none."""
    state = request.app[STATE]
    ready: dict[str, str | None] = {}
    for group in state.groups:
        chosen = group.pick() or await group.refresh()
        ready[group.name] = None if chosen is None else chosen[1].pod_id
    wake_words = "wakes it" if state.config.proxy.wake_on_request else "fails until `rpm start`"
    if len(ready) == 1:
        [pod_id] = ready.values()
        if pod_id is None:
            return json_response({"ready": False, "reason": f"no ready pod; the next /v1 request {wake_words}"}, 503)
        return json_response({"ready": True, "pod_id": pod_id})
    asleep = [name for name, pod_id in ready.items() if pod_id is None]
    if asleep:
        reason = f"no ready pod for {', '.join(asleep)}; the next request for its model {wake_words}"
        return json_response({"ready": False, "pods": ready, "reason": reason}, 503)
    return json_response({"ready": True, "pods": ready})


async def _refresh_cache_stats(state: ProxyState) -> CacheStats:
    if state.cache is None or not state.cache.available:
        return CacheStats(0, 0)
    try:
        stats = await asyncio.to_thread(state.cache.stats)
    except Exception as exc:
        log.warning("could not read cache statistics: %s", exc)
        return state.cache_stats
    state._publish_cache_stats(stats)
    return stats


async def handle_metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.fresh_views()
    await _refresh_cache_stats(state)
    return web.Response(body=state.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def handle_dashboard(request: web.Request) -> web.Response:
    state = request.app[STATE]
    views = await state.fresh_views()
    stats = await _refresh_cache_stats(state)
    now = datetime.now(UTC)
    limits_of = {pod.pod.name: pod.limits for pod in state.config.every_pod()}
    panels = []
    for name, gate in state.gates.items():
        group = state.group_of[name]
        limits = limits_of.get(name, state.config.limits)
        panels.append(dashboard.PodPanel(
            limit_windows_seconds={"runtime": limits.runtime_seconds, "idle": limits.idle_timeout_seconds},
            view=views[name], replica_of=group.name, models=tuple(state.model_names(group)),
            queue_depth=group.waiting, oldest_wait_seconds=group.oldest_wait_seconds(), in_flight=gate.in_flight,
            waking=gate.waking, target_known=gate.target is not None, last_wake_error=gate.last_wake_error,
            woken_by=gate.woken_by, woken_at=gate.woken_at))
    key_usage = None
    if state.keys.index.required:
        try:
            key_usage = await key_report(state)
        except RpmError as exc:  # the page shows the pods even when the key files cannot be read
            log.warning("could not read the key usage: %s", exc)
        viewer = request.get(PRINCIPAL)
        if key_usage is not None and viewer is not None and not viewer.is_admin:  # a user sees its own row
            key_usage = dataclasses.replace(key_usage, rows=tuple(
                row for row in key_usage.rows if row.record.name == viewer.name))
    document = dashboard.dashboard_document(
        pods=panels, metrics=state.metrics, last_wake_error=state.last_wake_error,
        cache_enabled=state.cache is not None and state.cache.available,
        cache_entries=stats.entries, cache_bytes=stats.bytes, now=now, zone=state.config.zone,
        key_usage=key_usage)
    if dashboard.wants_html(request.headers.get("Accept", "")):
        return web.Response(text=dashboard.render_html(document, now=now, zone=state.config.zone),
                            content_type="text/html")
    return json_response(document)


async def key_report(state: ProxyState) -> UsageReport:
    """Every key of the store (read in a worker thread) with this proxy's live counters (copied on the loop):
    what the dashboard and /rpm/v1/keys show. StateError when the store cannot be read."""
    records = await asyncio.to_thread(KeyStore(state.paths.keys_file).records)
    days = {day: {name: dataclasses.replace(usage) for name, usage in names.items()}
            for day, names in state.limiter.days.items()}
    return report_of(records, days, now=time.time(), zone=state.config.zone)


async def handle_debug_cache(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.config.proxy.enable_profiling:
        raise web.HTTPNotFound()
    stats = await _refresh_cache_stats(state)
    entries = await asyncio.to_thread(state.cache.describe) if state.cache is not None else []
    return json_response({
        "enabled": state.cache is not None and state.cache.available,
        "path": None if state.cache is None else str(state.cache.path),
        "entries": stats.entries, "bytes": stats.bytes,
        "max_entries": state.config.cache.max_entries, "max_bytes": state.config.cache.max_bytes,
        "ttl_seconds": state.config.cache.ttl_seconds,
        "hits": state.metrics.hits, "misses": state.metrics.misses, "bypasses": state.metrics.bypasses,
        "recent": entries,
    })


# ---------------------------------------------------------------------------------- lifecycle


def _connector() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(
        # No overall limit: each pod has its own budget (ProxyState.connections). One pool of 512 for all
        # pods let one pod's WebSockets starve the others' requests (issue #20).
        limit=0,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,  # reuse pod connections across an editor's typing pauses
        # Closed TLS transports leak on Pythons without cpython#118960; aiohttp warns when set needlessly.
        enable_cleanup_closed=sys.version_info < (3, 12, 8),
    )


async def _on_startup(app: web.Application) -> None:
    state = app[STATE]
    state.session = aiohttp.ClientSession(
        connector=_connector(),
        # No total timeout: streams last as long as generation does. RunPod's proxy cuts a silent
        # request at 100 s (524), so a read that stalls 10 minutes means the connection is dead.
        timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_connect=10, sock_read=600),
        cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another's request
        trust_env=False,  # HTTP(S)_PROXY and .netrc must not redirect or re-authenticate pod traffic
        auto_decompress=True,
    )
    state.upstream = Upstream(state.session, max_retries=state.config.proxy.max_retries,
                              retry_delay_seconds=state.config.proxy.retry_delay_seconds)
    config = state.config
    state.passthrough = PassThrough(
        state.session, max_retries=config.proxy.max_retries, retry_delay_seconds=config.proxy.retry_delay_seconds,
        pod_url_template=config.api.pod_url_template, keep_client_authorization=lambda: not state.keys.index.required,
        added_headers=state.pod_headers,
        body_read_timeout_seconds=state.body_read_timeout_seconds, trust_forwarded=config.proxy.trust_forwarded)
    if state.cache is not None:
        await asyncio.to_thread(state.cache.open)
    await _check_pod_names(state)
    await state.fresh_views()  # which replicas exist (and were stopped): the first wake resumes one of those
    for group in state.groups:  # so the first request already finds a running pod on the hot path
        await group.refresh()
    await asyncio.to_thread(state.request_log.start)
    await asyncio.to_thread(state.limiter.restore)  # a restart must not reset a key's budget
    state.reconcile_task = asyncio.create_task(_reconcile_loop(state), name="rpm-proxy-reconcile")
    state.keys_task = asyncio.create_task(watch_keys(state.keys), name="rpm-proxy-keys")
    state.usage_task = asyncio.create_task(_save_usage_loop(state), name="rpm-proxy-key-usage")


async def _check_pod_names(state: ProxyState) -> None:
    """The routes come from the config, the pods from the controller: they must name the same pods."""
    try:
        names = await asyncio.to_thread(state.controller.pod_names)
    except Exception as exc:
        log.warning("could not list the controller's pods: %s", exc)
        return
    if tuple(names) != tuple(state.gates):
        log.error("the controller's pods (%s) are not the config's (%s): requests go to the config's",
                  ", ".join(names), ", ".join(state.gates))


async def _reconcile_loop(state: ProxyState) -> None:
    interval = state.config.proxy.reconcile_interval_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            await state.reconcile_once()
        except Exception:  # reconcile_once reports its own failures; this keeps the loop alive regardless
            log.exception("reconcile loop iteration failed")


async def _save_usage_loop(state: ProxyState) -> None:
    """Write the keys' counters when they changed, at most every USAGE_FLUSH_SECONDS (off the hot path)."""
    while True:
        await asyncio.sleep(USAGE_FLUSH_SECONDS)
        await _save_usage(state)


async def _save_usage(state: ProxyState) -> None:
    snapshot = state.limiter.snapshot()
    if snapshot is None:
        return
    try:
        await asyncio.to_thread(state.limiter.save, snapshot)
    except (OSError, RpmError) as exc:
        state.limiter.dirty = True  # try again at the next flush
        log.warning("could not save the keys' usage: %s", exc)


async def _on_shutdown(app: web.Application) -> None:
    # Runs before in-flight requests get their grace period; they keep the session until cleanup.
    state = app[STATE]
    state.closing = True
    await state.jobs.close()  # jobs in flight fail now rather than hold the shutdown; queued ones stay
    for group in state.groups:
        group.close()
    await state.sockets.close_all("the rpm proxy is stopping")
    task = state.reconcile_task
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        state.reconcile_task = None
    if state.keys_task is not None:
        state.keys_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.keys_task
        state.keys_task = None


async def _on_cleanup(app: web.Application) -> None:
    state = app[STATE]
    await asyncio.to_thread(state.request_log.close)  # after the in-flight requests: their lines too
    if state.usage_task is not None:
        state.usage_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.usage_task
        state.usage_task = None
    await _save_usage(state)  # the in-flight requests' counts too
    state.limiter.close()
    if state.session is not None:
        await state.session.close()
        state.session = None
        state.upstream = None
        state.passthrough = None
    if state.cache is not None:
        await asyncio.to_thread(state.cache.close)
    state.jobs.shut()


async def start_jobs(app: web.Application, base_url: str) -> None:
    """Start running queued jobs, now that the proxy listens at `base_url` (server.serve calls it)."""
    await app[STATE].jobs.start(base_url)


def build_app(
    config: Config,
    controller: ProxyController,
    *,
    paths: Paths,
    keepalive_interval_seconds: float = 5.0,
    body_read_timeout_seconds: float = 30.0,
    queue_full_retry_after_seconds: float = 5.0,
    wake_retry_after_seconds: float = WAKE_RETRY_AFTER_SECONDS,
    cache_clock: Callable[[], float] = time.time,
) -> web.Application:
    """The proxy application. Serve it with handler_cancellation=True (see the module docstring).

    The keyword arguments after `paths` exist for tests: the SSE keep-alive interval during a wake, how
    long a client may take to send its body, the Retry-After of a full wake queue and of a request
    answered while the pod still wakes, and the cache clock.
    """
    state = ProxyState(config, controller, paths, keepalive_interval_seconds=keepalive_interval_seconds,
                       body_read_timeout_seconds=body_read_timeout_seconds,
                       queue_full_retry_after_seconds=queue_full_retry_after_seconds,
                       wake_retry_after_seconds=wake_retry_after_seconds, cache_clock=cache_clock)
    app = web.Application(client_max_size=config.proxy.max_body_bytes, middlewares=[_make_middleware(state)])
    app[STATE] = state
    app[JOBS] = state.jobs
    if state.cors_allow_origins:  # no per-response hook at all unless pages are allowed
        app.on_response_prepare.append(_add_cors_headers)
    app.router.add_route("*", "/v1/{tail:.*}", handle_v1)
    app.router.add_route("*", PODS_PATH_PREFIX + "{tail:.*}", handle_pods_path)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/ready", handle_ready)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/dashboard", handle_dashboard)
    app.router.add_get("/debug/cache", handle_debug_cache)
    from runpod_manager.proxy import manage  # it imports this module

    manage.add_routes(app)
    add_job_routes(app)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app


def build_listen_app(app: web.Application, route: PodRoute) -> web.Application:
    """The application of an http pod's listen_port: every path is the service's, woken on demand. It shares
    the proxy application's state (gates, session, request log); serve it while `app` runs."""
    state = app[STATE]
    listen_app = web.Application(client_max_size=state.config.proxy.max_body_bytes,
                                 middlewares=[_make_middleware(state, listen=route)])
    listen_app[STATE] = state
    listen_app[LISTEN_ROUTE] = route
    if state.cors_allow_origins:
        listen_app.on_response_prepare.append(_add_cors_headers)
    listen_app.router.add_route("*", "/{tail:.*}", handle_listen_port)
    return listen_app
