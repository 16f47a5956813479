"""What the proxy's handlers share, one per application: `ProxyState` (a plain holder: it imports no
handler; app.py builds it and hands in the job queue), the per-request `Exchange`, and their keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.config import Config
from runpod_manager.errors import RpmError
from runpod_manager.events import EventLog
from runpod_manager.keys import KeyWatcher, Principal
from runpod_manager.paths import Paths
from runpod_manager.proxy import websocket
from runpod_manager.proxy.cache import CacheStats, ResponseCache
from runpod_manager.proxy.controller import PodView, ProxyController
from runpod_manager.proxy.forward import RequestFacts
from runpod_manager.proxy.jobs import JobRunner
from runpod_manager.proxy.limits import Admission, AnswerTimes, KeyLimiter, ShareMeter
from runpod_manager.proxy.metrics import ProxyMetrics
from runpod_manager.proxy.passthrough import PassThrough, WakeSpool
from runpod_manager.proxy.routing import PodRoute, build_routes
from runpod_manager.proxy.upstream import ConnectionBudget, Upstream
from runpod_manager.proxy.wake import PodGroup, WakeGate
from runpod_manager.requestlog import RequestLog

log = logging.getLogger("runpod_manager.proxy")


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
        # Team keys (proxy/limits.py): the key admitted against its limits (its end is counted in finish),
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
        make_jobs: Callable[[ProxyState], JobRunner],
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
        self.body_limits = {route.name: pod_body_limit(config, route.name) for route in self.routes.routes}
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
        # Each pod's own upstream connections (upstream.ConnectionBudget): one pod's sockets never starve another.
        self.connections = {gate.name: connection_budget(config, group.name)
                            for group in self.groups for gate in group.gates}
        self.cache: ResponseCache | None = None
        if config.cache.enabled:
            directory = Path(config.cache.dir).expanduser() if config.cache.dir else paths.response_cache_dir
            self.cache = ResponseCache(directory, max_entries=config.cache.max_entries,
                                       max_bytes=config.cache.max_bytes,
                                       ttl_seconds=config.cache.ttl_seconds, clock=cache_clock,
                                       on_stats=self.publish_cache_stats)
        self.cache_stats = CacheStats(0, 0)
        self.session: aiohttp.ClientSession | None = None
        self.upstream: Upstream | None = None
        self.views: dict[str, PodView] = {name: PodView(name=name) for name in self.gates}
        self.last_wake_error: str | None = None  # the proxy's last wake to finish, when it failed
        self.cors_allow_origins = frozenset(origin.rstrip("/") for origin in proxy.cors_allow_origins)
        self.reconcile_task: asyncio.Task[None] | None = None
        self.closing = False
        # The job queue (jobs.py), built by app.py: it resolves a job's pod as the handlers do (targets.py),
        # which this module, a plain holder, does not import.
        self.jobs = make_jobs(self)
        self.in_flight = 0  # read by the in-flight gauge at scrape time (no lock per request)
        # /v1 reaches the model pods only (kind = "http" pods are routed by path); the model lists are theirs.
        self.model_groups = tuple(group for group in self.groups if group.route.kind != "http")
        self.passthrough: PassThrough | None = None  # made with the session (on startup)
        self.wake_spool = WakeSpool(paths.spool_dir, proxy.wake_spool_max_bytes)
        self.wake_spool.sweep()
        self.sockets = websocket.SocketRegistry()
        # Page origins that are the proxy's own (its port) or a listen port's: a service's page served there
        # may call its own routes (checked per app in middleware._cross_origin).
        self.own_origins = origins_of(config, proxy.port)
        self._watch()

    def _watch(self) -> None:
        """The metrics read the proxy's gauges and gates; the groups and gates report wakes here."""
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

    def pod_waking(self, pod: str) -> bool:
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

    def publish_cache_stats(self, stats: CacheStats) -> None:
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
        gate.forget(target.instance_id)
        try:
            await asyncio.to_thread(self.controller.mark_unreachable, gate.name, target.instance_id)
        except Exception as exc:
            log.warning("could not mark pod %s (%s) unreachable: %s", gate.name, target.instance_id, exc)


STATE = web.AppKey("rpm_proxy_state", ProxyState)


LISTEN_ROUTE = web.AppKey("rpm_listen_route", PodRoute)


def origins_of(config: Config, port: int) -> frozenset[str]:
    """The origins a browser sends for pages served on this machine's `port` of the proxy."""
    scheme = "https" if config.proxy.use_https else "http"
    hosts = {"127.0.0.1", "localhost", "[::1]"}
    if config.proxy.host not in ("0.0.0.0", "", "::"):  # noqa: S104 - compared, not bound
        hosts.add(config.proxy.host if ":" not in config.proxy.host else f"[{config.proxy.host}]")
    return frozenset(f"{scheme}://{host}:{port}" for host in hosts)


def connection_budget(config: Config, name: str) -> ConnectionBudget:
    table = f"[pods.{name}]" if config.pods else "[pod]"
    return ConnectionBudget((config.pod_named(name) or config.pod).max_connections, f"{table} max_connections")


def pod_body_limit(config: Config, name: str) -> int:
    pod = config.pod_named(name)
    return pod.body_limit_bytes if pod is not None and pod.is_http else config.proxy.max_body_bytes
