"""Prometheus metrics of the proxy, on a registry of its own (so several apps in one process — tests —
never collide, and nothing from the default registry leaks into /metrics).

Hot-path calls are kept cheap: labelled children are looked up once and cached in plain dicts, and
the counts the dashboard needs are kept as plain integers beside the Prometheus ones.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from runpod_manager.proxy.controller import PodView

# Sub-millisecond resolution where the proxy's own cost lives; minutes where generation lives.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.005,
                    0.01, 0.025, 0.05, 0.1)
WAKE_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
RECENT_REQUESTS = 200


class _InFlight(Protocol):
    in_flight: int  # a WakeGate's requests in flight


@dataclass(frozen=True, slots=True)
class RecentRequest:
    """One finished request as the dashboard shows it: no body, no headers, no key."""

    at: float  # unix time
    method: str
    path: str
    status: int
    duration_ms: float
    cache: str
    cold_start_seconds: float | None
    pod: str | None = None  # the pod that answered (None: the proxy itself, or the cache)
    model: str | None = None  # the body's "model", when it named one


class ProxyMetrics:
    """Every metric the proxy exports, plus the small in-memory history the dashboard draws."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter("rpm_proxy_requests_total", "Requests answered, by route and status.",
                                ["route", "status"], registry=registry)
        self.duration = Histogram("rpm_proxy_request_duration_seconds",
                                  "Time from request to the end of the response.", ["route"],
                                  buckets=LATENCY_BUCKETS, registry=registry)
        self.overhead = Histogram("rpm_proxy_overhead_seconds",
                                  "Time the proxy added: total minus time waiting on the pod (including "
                                  "between streamed events), a wake, or the client's body.",
                                  buckets=OVERHEAD_BUCKETS, registry=registry)
        self.upstream_ttfb = Histogram("rpm_proxy_upstream_ttfb_seconds",
                                       "From sending a request to the pod to its status and headers.",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.upstream_retries = Counter("rpm_proxy_upstream_retries_total",
                                        "Upstream attempts retried before the first byte.", registry=registry)
        self.stream_events = Counter("rpm_proxy_stream_events_total",
                                     "Server-sent events forwarded to clients.", registry=registry)
        self.cache_hits = Counter("rpm_proxy_cache_hits_total", "Responses served from the cache.",
                                  registry=registry)
        self.cache_misses = Counter("rpm_proxy_cache_misses_total",
                                    "Cacheable requests not found in the cache.", registry=registry)
        self.cache_bypass = Counter("rpm_proxy_cache_bypass_total",
                                    "Requests the cache does not apply to.", registry=registry)
        self.cache_hit_bytes = Counter("rpm_proxy_cache_hit_bytes_total",
                                       "Bytes served from the cache.", registry=registry)
        self.cache_bytes = Gauge("rpm_proxy_cache_bytes", "Bytes held by the cache.", registry=registry)
        self.cache_entries = Gauge("rpm_proxy_cache_entries", "Entries held by the cache.",
                                   registry=registry)
        # Per pod: `pod` is a configured pod's name for its model's queue, a pod's (replica's) name elsewhere.
        self.queue_depth = Gauge("rpm_proxy_queue_depth", "Requests waiting for a pod of this model to wake.",
                                 ["pod"], registry=registry)
        self.in_flight = Gauge("rpm_proxy_in_flight_requests", "Requests being answered.",
                               registry=registry)
        self.pod_in_flight = Gauge("rpm_proxy_pod_in_flight_requests", "Requests sent to the pod and not finished.",
                                   ["pod"], registry=registry)
        self.wakes = Counter("rpm_proxy_wakes_total", "Wakes started by requests, by pod and outcome.",
                             ["pod", "outcome"], registry=registry)
        self.wake_duration = Histogram("rpm_proxy_wake_duration_seconds", "How long a wake took.", ["pod"],
                                       buckets=WAKE_BUCKETS, registry=registry)
        self.pod_up = Gauge("rpm_pod_up", "1 when the pod is ready to serve, else 0.", ["pod"], registry=registry)
        self.pod_cost_per_hour = Gauge("rpm_pod_cost_per_hour_usd", "Price of the pod in USD per hour.",
                                       ["pod"], registry=registry)
        self.spend_today = Gauge("rpm_spend_today_usd", "The pod's spend so far today in USD.", ["pod"],
                                 registry=registry)
        self.max_daily_spend = Gauge("rpm_max_daily_spend_usd", "The pod's daily spend cap in USD (0 = none).",
                                     ["pod"], registry=registry)
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self.recent: deque[RecentRequest] = deque(maxlen=RECENT_REQUESTS)
        self.hits = 0
        self.misses = 0
        self.bypasses = 0
        self.started_at = time.time()

    def observe_request(self, route: str, status: int, duration_seconds: float,
                        overhead_seconds: float | None) -> None:
        key = (route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(status))
        child.inc()
        histogram = self._duration_children.get(route)
        if histogram is None:
            histogram = self._duration_children[route] = self.duration.labels(route)
        histogram.observe(duration_seconds)
        if overhead_seconds is not None:
            self.overhead.observe(max(overhead_seconds, 0.0))

    def remember(self, entry: RecentRequest) -> None:
        self.recent.append(entry)

    def count_cache(self, result: str, hit_bytes: int = 0) -> None:
        if result == "hit":
            self.hits += 1
            self.cache_hits.inc()
            self.cache_hit_bytes.inc(hit_bytes)
        elif result == "miss":
            self.misses += 1
            self.cache_misses.inc()
        else:
            self.bypasses += 1
            self.cache_bypass.inc()

    @property
    def cache_hit_rate(self) -> float | None:
        looked_up = self.hits + self.misses
        return None if looked_up == 0 else self.hits / looked_up

    def watch_pod(self, pod: str, gate: _InFlight) -> None:
        """Export a pod's series from the start (zero until known); its in-flight count is read at scrape time."""
        self.pod_in_flight.labels(pod).set_function(lambda: gate.in_flight)
        self.update_pod(pod, PodView(name=pod))

    def update_pod(self, pod: str, view: PodView) -> None:
        self.pod_up.labels(pod).set(1 if view.ready else 0)
        self.pod_cost_per_hour.labels(pod).set(view.cost_per_hour if view.pod_id else 0.0)
        self.spend_today.labels(pod).set(view.spend_today_usd)
        self.max_daily_spend.labels(pod).set(view.max_daily_spend_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
