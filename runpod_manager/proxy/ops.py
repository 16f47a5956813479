"""The proxy's operational routes: /health, /ready, /metrics, /dashboard and /debug/cache, and the pod
entries and key report that /rpm/v1 (manage.py) shows as well."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from runpod_manager import __version__
from runpod_manager.errors import RpmError
from runpod_manager.keys import KeyStore, UsageReport, report_of
from runpod_manager.proxy import dashboard
from runpod_manager.proxy.auth import PRINCIPAL
from runpod_manager.proxy.cache import CacheStats
from runpod_manager.proxy.errors import json_response
from runpod_manager.proxy.jobstore import PodJobs
from runpod_manager.proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from runpod_manager.proxy.process import proxy_url
from runpod_manager.proxy.state import STATE, ProxyState

log = logging.getLogger("runpod_manager.proxy")


def _iso(moment: object) -> object:
    """A limit's time as ISO 8601 UTC (a PodView may also carry a reason text, passed through)."""
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return moment


def pod_entry(state: ProxyState, name: str) -> dict[str, Any]:
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
    pods = [pod_entry(state, name) for name in state.gates]
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
        ready[group.name] = None if chosen is None else chosen[1].instance_id
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
    state.publish_cache_stats(stats)
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
