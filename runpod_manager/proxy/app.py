"""The proxy's aiohttp application, assembled: its state (state.py, under an AppKey), the one middleware
(middleware.py), the routes, and start-up and shutdown.

Routes: `/v1/*` is forwarded to the pod that serves the body's `model` (v1.py, relay.py; targets.py, routing.py;
through the cache and that model's wake gates, wake.py), its model list answered by the proxy (models.py);
`/pods/<name>/*` and each pod's listen port pass any HTTP request and WebSocket through to an http service
(services.py, passthrough.py, websocket.py); `/health`, `/ready`, `/metrics`, `/dashboard` (ops.py), the
management API under `/rpm/v1` (manage.py), the jobs' `/rpm/v1/jobs/{id}[/result]` and (with
`enable_profiling`) `/debug/cache` are the proxy's own. A routed request with `Prefer: respond-async` becomes a
queued job (jobs.py) in the middleware. Everything else is a 404 in the OpenAI error shape (errors.py). What
the proxy can answer truthfully without a pod it answers itself, so nothing wakes a GPU for it: model lists,
unknown model names, requests that name no model when several pods serve, wrong methods, CORS preflights, and
requests from web pages that [proxy] cors_allow_origins does not allow. Each request is accounted for at its
end (accounting.py: the key's limits, metrics, the request log).

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
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from runpod_manager.config import Config
from runpod_manager.errors import RpmError
from runpod_manager.paths import Paths
from runpod_manager.proxy import manage
from runpod_manager.proxy.auth import watch_keys
from runpod_manager.proxy.controller import ProxyController
from runpod_manager.proxy.jobs import JOBS, JobRunner
from runpod_manager.proxy.jobs import add_routes as add_job_routes
from runpod_manager.proxy.jobstore import JobStore
from runpod_manager.proxy.limits import USAGE_FLUSH_SECONDS
from runpod_manager.proxy.middleware import add_cors_headers, make_middleware
from runpod_manager.proxy.ops import handle_dashboard, handle_debug_cache, handle_health, handle_metrics, handle_ready
from runpod_manager.proxy.passthrough import PassThrough
from runpod_manager.proxy.routing import PODS_PATH_PREFIX, PodRoute
from runpod_manager.proxy.services import handle_listen_port, handle_pods_path
from runpod_manager.proxy.state import LISTEN_ROUTE, STATE, ProxyState
from runpod_manager.proxy.targets import job_body_limit, job_pod
from runpod_manager.proxy.upstream import Upstream
from runpod_manager.proxy.v1 import handle_v1

log = logging.getLogger("runpod_manager.proxy")


SHUTDOWN_GRACE_SECONDS = 10.0  # in-flight streams get this long to finish when the proxy stops


WAKE_RETRY_AFTER_SECONDS = 1.0  # Retry-After of a request answered 503 while the pod still wakes


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


async def _context(app: web.Application) -> AsyncIterator[None]:
    """The application's context: what _on_startup makes, _on_cleanup ends once the requests have."""
    await _on_startup(app)
    yield
    await _on_cleanup(app)


async def start_jobs(app: web.Application, base_url: str) -> None:
    """Start running queued jobs, now that the proxy listens at `base_url` (server.serve calls it)."""
    await app[STATE].jobs.start(base_url)


def _job_runner(state: ProxyState, queue_full_retry_after_seconds: float) -> JobRunner:
    """The proxy's job queue (jobs.py): a job's pod and body limit are resolved as its request's would be."""
    proxy = state.config.proxy
    return JobRunner(
        JobStore(state.paths.jobs_dir, max_count=proxy.jobs_max_count, max_bytes=proxy.jobs_max_bytes,
                 ttl_seconds=proxy.jobs_result_ttl_seconds),
        concurrency=proxy.jobs_concurrency, body_limit=lambda path: job_body_limit(state, path),
        resolve=lambda method, path, raw_path, read_body, content_type, principal: job_pod(
            state, method, path, raw_path, read_body, content_type, principal),
        pod_waking=state.pod_waking, full_retry_after_seconds=queue_full_retry_after_seconds,
        trust_forwarded=proxy.trust_forwarded)


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
                       wake_retry_after_seconds=wake_retry_after_seconds, cache_clock=cache_clock,
                       make_jobs=lambda state: _job_runner(state, queue_full_retry_after_seconds))
    app = web.Application(client_max_size=config.proxy.max_body_bytes, middlewares=[make_middleware(state)])
    app[STATE] = state
    app[JOBS] = state.jobs
    if state.cors_allow_origins:  # no per-response hook at all unless pages are allowed
        app.on_response_prepare.append(add_cors_headers)
    app.router.add_route("*", "/v1/{tail:.*}", handle_v1)
    app.router.add_route("*", PODS_PATH_PREFIX + "{tail:.*}", handle_pods_path)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/ready", handle_ready)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/dashboard", handle_dashboard)
    app.router.add_get("/debug/cache", handle_debug_cache)
    manage.add_routes(app)
    add_job_routes(app)
    app.cleanup_ctx.append(_context)  # start-up, then (after on_shutdown and the grace period) cleanup
    app.on_shutdown.append(_on_shutdown)
    return app


def build_listen_app(app: web.Application, route: PodRoute) -> web.Application:
    """The application of an http pod's listen_port: every path is the service's, woken on demand. It shares
    the proxy application's state (gates, session, request log); serve it while `app` runs."""
    state = app[STATE]
    listen_app = web.Application(client_max_size=state.config.proxy.max_body_bytes,
                                 middlewares=[make_middleware(state, listen=route)])
    listen_app[STATE] = state
    listen_app[LISTEN_ROUTE] = route
    if state.cors_allow_origins:
        listen_app.on_response_prepare.append(add_cors_headers)
    listen_app.router.add_route("*", "/{tail:.*}", handle_listen_port)
    return listen_app
