"""/dashboard: the proxy's state at a glance — HTML for browsers, JSON for everything else.

Built from values the proxy already holds (the controller's PodViews, the gates, the metrics history and
cache counters); no API call. One section per pod (each configured pod and each replica); the document's
`pod`, `spend` and `limits` are the first pod's, as before there were several. It shows no bodies, no
headers and no keys.

The HTML is the page a user keeps open: a card per pod (its state in words, the time left to each limit and
the spend against the cap as bars, the cold starts felt today), today's cost against always-on, recent
requests; times in the config's `[limits] timezone`, durations in words. It is self-contained (inline CSS,
inline SVG, one small inline script that re-fetches the page every few seconds and swaps its `<main>`, so
nothing flickers): no external assets, no CDN. The formatting helpers are pure (`now` and the zone are
passed in) so they are unit-tested without a clock.
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from runpod_manager import __version__
from runpod_manager.display import usd
from runpod_manager.keys import UsageReport
from runpod_manager.proxy.controller import PodView
from runpod_manager.proxy.metrics import ProxyMetrics, RecentRequest

SHOWN_REQUESTS = 50
CHART_POINTS = 100
REFRESH_SECONDS = 5
CUTOFF_WINDOW_SECONDS = 24 * 3600  # the cutoff comes once a day: its bar spans a day
# Words in a limit's reason (policy.plan's end_pod) that name it, to say why a pod is stopped.
_LIMIT_WORDS = (("spend cap", "spend cap"), ("cutoff", "cutoff"), ("runtime", "runtime"), ("idle", "idle"),
                ("shut", "shutdown"), ("releas", "released"))


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return round(sorted_values[index], 3)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _limit_rows(limits: dict[str, Any], now: datetime, windows: dict[str, int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, value in sorted(limits.items()):
        fires_at: datetime | None = None
        if isinstance(value, datetime):
            fires_at = value
        elif isinstance(value, str):
            try:
                fires_at = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                fires_at = None
        if fires_at is not None and fires_at.tzinfo is None:
            fires_at = fires_at.replace(tzinfo=UTC)
        if fires_at is not None:
            window = CUTOFF_WINDOW_SECONDS if name == "cutoff" else windows.get(name)
            rows.append({"name": name, "fires_at": _iso(fires_at),
                         "seconds_left": max(0, round((fires_at - now).total_seconds())), "detail": None,
                         "window_seconds": window})
        else:
            rows.append({"name": name, "fires_at": None, "seconds_left": None,
                         "detail": None if value is None else str(value), "window_seconds": None})
    return rows


@dataclass(frozen=True)
class PodPanel:
    """One pod's section: the controller's view and what the proxy knows of it."""

    view: PodView
    replica_of: str  # the configured pod (the model's queue) this pod belongs to
    models: tuple[str, ...]
    queue_depth: int  # the model's: shared by its replicas
    oldest_wait_seconds: float | None
    in_flight: int
    waking: bool
    target_known: bool
    last_wake_error: str | None
    limit_windows_seconds: dict[str, int] | None = None  # limit name -> its full span, for the bars
    woken_by: str | None = None  # the key whose request (or management call) started the latest wake
    woken_at: float | None = None  # unix time that wake started


def _spend(view: PodView) -> dict[str, Any]:
    return {
        "today_usd": round(view.spend_today_usd, 4),
        "max_daily_usd": view.max_daily_spend_usd,
        "remaining_usd": (round(max(0.0, view.max_daily_spend_usd - view.spend_today_usd), 4)
                          if view.max_daily_spend_usd else None),
        "cost_per_hour_usd": view.cost_per_hour,
    }


def _cold_starts(recent: list[RecentRequest], pod: str, since: float) -> dict[str, Any]:
    waits = sorted(entry.cold_start_seconds for entry in recent
                   if entry.pod == pod and entry.cold_start_seconds is not None and entry.at >= since)
    return {"count": len(waits), "p50_seconds": _percentile(waits, 0.5),
            "max_seconds": round(waits[-1], 3) if waits else None}


def _pod_section(panel: PodPanel, now: datetime, recent: list[RecentRequest], day_start: datetime,
                 ) -> dict[str, Any]:
    pod = asdict(panel.view)
    pod.pop("limits", None)
    pod["deadline"] = _iso(panel.view.deadline)
    oldest = panel.oldest_wait_seconds
    pod.update({"replica_of": panel.replica_of, "models": list(panel.models), "queue_depth": panel.queue_depth,
                "oldest_wait_seconds": None if oldest is None else round(oldest, 3), "in_flight": panel.in_flight,
                "waking": panel.waking, "target_known": panel.target_known,
                "last_wake_error": panel.last_wake_error,
                "spend": _spend(panel.view),
                "limits": _limit_rows(panel.view.limits, now, panel.limit_windows_seconds or {}),
                "state_text": state_words(panel.view, waking=panel.waking),
                "reason_explains_state": reason_explains_state(panel.view, waking=panel.waking),
                "cold_starts_today": _cold_starts(recent, panel.view.name, day_start.timestamp()),
                "woken_by": panel.woken_by,
                "woken_at": None if panel.woken_at is None else _iso(datetime.fromtimestamp(panel.woken_at, UTC))})
    return pod


def _key_rows(report: UsageReport | None) -> dict[str, Any]:
    """Each key's use today (the store's keys; revoked ones too, their usage stays theirs). No secret."""
    if report is None:
        return {"day": None, "rows": []}
    return {"day": report.day, "rows": [
        {"name": row.record.name, "role": row.record.role, "status": row.status, "requests": row.today.requests,
         "tokens": row.today.tokens, "spend_usd": round(row.today.spend_usd, 4), "refused": row.today.refused,
         "daily_budget_usd": row.record.limits.daily_budget_usd} for row in report.rows]}


def dashboard_document(
    *,
    pods: list[PodPanel],
    metrics: ProxyMetrics,
    last_wake_error: str | None,
    cache_enabled: bool,
    cache_entries: int,
    cache_bytes: int,
    now: datetime,
    zone: tzinfo | None = None,
    key_usage: UsageReport | None = None,
) -> dict[str, Any]:
    """The dashboard as plain JSON-ready data (also what the HTML page renders). `zone`: the config's
    [limits] timezone (None: the machine's), whose midnight starts "today"."""
    recent = list(metrics.recent)
    durations = sorted(entry.duration_ms for entry in recent)
    day_start = local_day_start(now, zone)
    sections = [_pod_section(panel, now, recent, day_start) for panel in pods]
    hours_today = (now - day_start).total_seconds() / 3600
    first = {key: value for key, value in sections[0].items() if key not in ("spend", "limits")}
    queues = {panel.replica_of: panel.queue_depth for panel in pods}  # one queue per model
    hit_rate = metrics.cache_hit_rate
    return {
        "proxy": {
            "version": __version__,
            "uptime_seconds": round(now.timestamp() - metrics.started_at, 1),
            "queue_depth": sum(queues.values()),
            "waking": any(panel.waking for panel in pods),
            "target_known": all(any(panel.target_known for panel in pods if panel.replica_of == name)
                                for name in queues),
            "last_wake_error": last_wake_error,
        },
        "pod": first,
        "spend": sections[0]["spend"],
        "limits": sections[0]["limits"],
        "pods": sections,
        "cache": {
            "enabled": cache_enabled, "entries": cache_entries, "bytes": cache_bytes,
            "hits": metrics.hits, "misses": metrics.misses, "bypasses": metrics.bypasses,
            "hit_rate": None if hit_rate is None else round(hit_rate, 4),
        },
        "latency_ms": {"count": len(durations), "p50": _percentile(durations, 0.5),
                       "p90": _percentile(durations, 0.9), "p99": _percentile(durations, 0.99)},
        "recent_requests": [_request_row(entry) for entry in reversed(recent[-SHOWN_REQUESTS:])],
        "chart_ms": [round(entry.duration_ms, 3) for entry in recent[-CHART_POINTS:]],
        "keys": _key_rows(key_usage),
        "now": _iso(now),
        "timezone": getattr(zone, "key", None) or "local",
        "today": {
            "since": _iso(day_start),
            "cost_usd": round(sum(panel.view.spend_today_usd for panel in pods), 4),
            # What the pods with a known price would have cost running since midnight (a pod with no pod
            # now has no price: it counts for nothing here).
            "always_on_usd": round(sum(panel.view.cost_per_hour for panel in pods) * hours_today, 4),
        },
    }


def _request_row(entry: RecentRequest) -> dict[str, Any]:
    return {
        "at": _iso(datetime.fromtimestamp(entry.at, UTC)),
        "method": entry.method,
        "path": entry.path,
        "status": entry.status,
        "duration_ms": round(entry.duration_ms, 3),
        "cache": entry.cache,
        "cold_start_seconds": entry.cold_start_seconds,
        "pod": entry.pod,
        "model": entry.model,
    }


# ---------------------------------------------------------------------------------- words and times


def human_duration(seconds: float) -> str:
    """A duration as people say it: "45 s", "12 min", "3 h 5 min", "2 d 4 h" (rounded down past a minute)."""
    whole = round(abs(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative_time(moment: datetime, now: datetime) -> str:
    """"in 12 min", "3 h 5 min ago", "now"."""
    delta = (moment - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {human_duration(delta)}" if delta > 0 else f"{human_duration(delta)} ago"


def local_day_start(now: datetime, zone: tzinfo | None) -> datetime:
    """Midnight of `now`'s day in `zone` (None: the machine's zone), the start of the spend day."""
    local = now.astimezone(zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def local_clock(moment: datetime, now: datetime, zone: tzinfo | None, *, seconds: bool = False) -> str:
    """A time in `zone`: "14:05" today, "Tue 09:00" within a week, "2026-12-01 09:00" beyond."""
    local, today = moment.astimezone(zone), now.astimezone(zone)
    clock = "%H:%M:%S" if seconds else "%H:%M"
    if local.date() == today.date():
        return local.strftime(clock)
    if abs(local - today) < timedelta(days=6):
        return local.strftime(f"%a {clock}")
    return local.strftime(f"%Y-%m-%d {clock}")


def _limit_named(reason: str | None) -> str | None:
    lowered = (reason or "").lower()
    return next((name for word, name in _LIMIT_WORDS if word in lowered), None)


def state_words(view: PodView, *, waking: bool) -> str:
    """The pod's state in words: "running · ready", "stopped (idle)", "waking…", "no pod"."""
    status = (view.status or "").upper()
    if waking:
        return "waking…"
    if view.pod_id is None or not status:
        why = None if view.lease_open else _limit_named(view.last_reason)
        return f"no pod ({why})" if why else "no pod"
    if status == "RUNNING":
        if view.ready:
            return "running · ready"
        return "running · starting" if view.lease_open else "running · no lease"
    if status in ("EXITED", "STOPPED"):
        why = None if view.lease_open else _limit_named(view.last_reason)
        return f"stopped ({why})" if why else "stopped"
    return status.lower()


def reason_explains_state(view: PodView, *, waking: bool) -> bool:
    """Show the last action's reason only where it explains what the card says: never beside a ready pod
    (its reason is about how it got there, or stale), nor while waking (the wake speaks for itself)."""
    return bool(view.last_reason) and not view.ready and not waking


def _money(value_usd: float | None) -> str:
    return "–" if value_usd is None else usd(value_usd)


def _seconds_text(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s" if value < 60 else human_duration(value)


def _ms_text(value_ms: float) -> str:
    return f"{value_ms:.1f} ms" if value_ms < 1000 else _seconds_text(value_ms / 1000)


# ---------------------------------------------------------------------------------- HTML


def _bar(fraction: float, label: str, *, tone: str) -> str:
    """A labelled horizontal bar; `fraction` (0–1) of it filled."""
    width = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="bar {tone}" role="meter" aria-valuenow="{width:.0f}" aria-valuemin="0" '
            f'aria-valuemax="100" aria-label="{html.escape(label)}"><span style="width:{width:.1f}%"></span>'
            f'</div><div class="barlabel">{html.escape(label)}</div>')


def _limit_html(item: dict[str, Any], pod: dict[str, Any], now: datetime, zone: tzinfo | None) -> str:
    name = item["name"]
    if item["fires_at"] is None:
        return f'<div class="limit quiet">{html.escape(name)}: {html.escape(item["detail"] or "–")}</div>'
    fires_at = datetime.fromisoformat(item["fires_at"].replace("Z", "+00:00"))
    left = item["seconds_left"]
    verb = "stops" if pod["pod_id"] else "ends"
    label = (f"{verb} {relative_time(fires_at, now)} ({name}) · at {local_clock(fires_at, now, zone)}"
             if left else f"{name} limit reached")
    window = item["window_seconds"] or max(left, 1)
    fraction = left / window
    tone = "bad" if fraction < 0.1 else "warn" if fraction < 0.25 else "ok"
    return f'<div class="limit" data-limit="{html.escape(name)}">{_bar(fraction, label, tone=tone)}</div>'


def _card_html(pod: dict[str, Any], now: datetime, zone: tzinfo | None) -> str:
    esc = html.escape
    spend = pod["spend"]
    view_ready, waking = pod["ready"], pod["waking"]
    pending = [item for item in pod["limits"] if item["fires_at"] is not None or item["detail"]]
    limits = "".join(_limit_html(item, pod, now, zone) for item in pending) or (
        '<div class="limit quiet">no limit pending</div>')
    cap = spend["max_daily_usd"]
    if cap:
        spent = _bar(spend["today_usd"] / cap, f"{_money(spend['today_usd'])} of {_money(cap)} today",
                     tone="bad" if spend["today_usd"] >= 0.9 * cap else "ok")
    else:
        spent = f'<div class="barlabel">{_money(spend["today_usd"])} today · no daily cap</div>'
    cold = pod["cold_starts_today"]
    cold_text = ("no cold start today" if not cold["count"] else
                 f"{cold['count']} request{'s' if cold['count'] != 1 else ''} waited for a wake today · "
                 f"p50 {_seconds_text(cold['p50_seconds'])} · max {_seconds_text(cold['max_seconds'])}")
    facts = [f"{esc(pod['gpu_type_id'])}" if pod["gpu_type_id"] else "",
             f"{_money(spend['cost_per_hour_usd'])}/h" if spend["cost_per_hour_usd"] else "",
             f"pod {esc(pod['pod_id'])}" if pod["pod_id"] else "",
             f"models {esc(', '.join(pod['models']))}" if pod["models"] else "",
             "" if pod["replica_of"] == pod["name"] else f"replica of {esc(pod['replica_of'])}"]
    busy = []
    if pod["in_flight"]:
        busy.append(f"{pod['in_flight']} in flight")
    if pod["queue_depth"]:
        waited = pod["oldest_wait_seconds"]
        busy.append(f"{pod['queue_depth']} queued" + (f" (oldest {_seconds_text(waited)})" if waited else ""))
    reason = ""
    if pod["reason_explains_state"]:
        reason = f'<p class="reason">{esc(pod["last_action"] or "last action")}: {esc(pod["last_reason"])}</p>'
    wake_error = (f'<p class="error">last wake failed: {esc(pod["last_wake_error"])}</p>'
                  if pod["last_wake_error"] and not view_ready else "")
    tone = "ok" if view_ready else "warn" if waking else "idle"
    woken = ""
    if pod.get("woken_at"):
        at = local_clock(datetime.fromisoformat(pod["woken_at"].replace("Z", "+00:00")), now, zone)
        woken = (f'<p class="woken">woken {esc(at)} by {esc(pod["woken_by"] or "a request without a key")}</p>')
    return f"""<section class="card" data-pod="{esc(pod['name'])}">
<h2>Pod {esc(pod['name'])} <span class="state {tone}">{esc(pod['state_text'])}</span></h2>
<p class="facts">{' · '.join(fact for fact in facts if fact)}</p>
{woken}{f'<p class="busy">{esc(" · ".join(busy))}</p>' if busy else ''}{reason}{wake_error}
<h3>Limits</h3>{limits}
<h3>Spend</h3>{spent}
<h3>Cold starts</h3><p class="cold">{esc(cold_text)}</p>
</section>
"""


def cost_svg(cost_usd: float, always_on_usd: float, *, width: int = 420) -> str:
    """Two bars: today's cost so far and what the same pods always on since midnight would have cost."""
    top = max(cost_usd, always_on_usd, 0.01)
    rows = (("rpm today", cost_usd, "#2a6fdb"), ("always-on", always_on_usd, "#b8bec9"))
    label_width, bar_width = 80, width - 160
    body = []
    for index, (name, value, colour) in enumerate(rows):
        y = 8 + index * 26
        length = max(1.0, value / top * bar_width)
        body.append(f'<text x="0" y="{y + 13}" font-size="12" fill="#444">{name}</text>'
                    f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="18" rx="3" fill="{colour}"/>'
                    f'<text x="{label_width + length + 6:.1f}" y="{y + 13}" font-size="12" fill="#222">'
                    f'{html.escape(_money(value))}</text>')
    return (f'<svg class="cost" width="{width}" height="62" viewBox="0 0 {width} 62" role="img" '
            f'aria-label="today: {html.escape(_money(cost_usd))} against {html.escape(_money(always_on_usd))} '
            f'always-on">{"".join(body)}</svg>')


def latency_svg(values_ms: list[float], *, width: int = 600, height: int = 120) -> str:
    """A small polyline of request durations (newest right), scaled to the largest shown."""
    if not values_ms:
        return (f'<svg width="{width}" height="{height}" role="img" aria-label="no requests yet">'
                f'<text x="10" y="{height // 2}" fill="#888">no requests yet</text></svg>')
    top = max(values_ms) or 1.0
    step = width / max(1, len(values_ms) - 1)
    points = " ".join(f"{index * step:.1f},{height - 4 - (value / top) * (height - 20):.1f}"
                      for index, value in enumerate(values_ms))
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="latency of the last {len(values_ms)} requests">'
            f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>'
            f'<polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points="{points}"/>'
            f'<text x="6" y="14" font-size="11" fill="#555">max {top:.1f} ms</text></svg>')


# Re-fetch the page and swap <main>: no reload, no flicker, no lost scroll. A failed fetch (proxy down, a key
# the browser cannot send) leaves the page as it was.
_REFRESH_SCRIPT = f"""<script>
setInterval(async () => {{
  try {{
    const reply = await fetch(location.href, {{headers: {{Accept: "text/html"}}, cache: "no-store"}});
    if (!reply.ok) return;
    const page = new DOMParser().parseFromString(await reply.text(), "text/html");
    const fresh = page.querySelector("main");
    if (fresh) {{ document.querySelector("main").replaceWith(fresh); document.title = page.title; }}
  }} catch (error) {{ /* keep the page as it is */ }}
}}, {REFRESH_SECONDS * 1000});
</script>"""

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#f6f7f9}
h1{font-size:1.3em;margin:0 0 .6em} h2{font-size:1.05em;margin:0 0 .3em} h3{font-size:.85em;color:#666;
margin:.8em 0 .2em;text-transform:uppercase;letter-spacing:.04em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:14px}
.card,.panel{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:12px 14px}
.panel{margin-top:14px}
.state{font-weight:600;padding:1px 8px;border-radius:10px;font-size:.9em;background:#eceff3}
.state.ok{background:#dcf3e3;color:#1d6b36} .state.warn{background:#fff1cc;color:#7a5600}
.facts,.busy,.cold,.reason,.quiet{color:#555;margin:.2em 0} .error{color:#a02121}
.bar{height:10px;background:#eceff3;border-radius:5px;overflow:hidden;margin-top:4px}
.bar span{display:block;height:100%;background:#3d9a5f} .bar.warn span{background:#d9a21b}
.bar.bad span{background:#c9423a} .barlabel{font-size:12px;color:#444;margin:2px 0 4px}
table{border-collapse:collapse} th,td{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:normal}
table.list td{border-top:1px solid #eee;font-family:ui-monospace,monospace;font-size:12px}
.foot{color:#888}
"""


def render_html(document: dict[str, Any], *, now: datetime | None = None, zone: tzinfo | None = None) -> str:
    """The dashboard page. Every value is escaped; the page needs nothing from the network."""
    esc = html.escape
    now = now or datetime.now(UTC)
    cache, proxy = document["cache"], document["proxy"]
    pods = document["pods"]
    latency = document["latency_ms"]
    today = document["today"]

    def row(label: str, value: Any) -> str:
        return f"<tr><th>{esc(label)}</th><td>{esc('–' if value is None else str(value))}</td></tr>"

    def when(at: str) -> str:
        return local_clock(datetime.fromisoformat(at.replace("Z", "+00:00")), now, zone, seconds=True)

    request_rows = "".join(
        f"<tr><td>{esc(when(item['at']) if item['at'] else '')}</td><td>{esc(item['pod'] or '–')}</td>"
        f"<td>{esc(item.get('model') or '–')}</td><td>{esc(item['path'])}</td><td>{item['status']}</td>"
        f"<td>{esc(_ms_text(item['duration_ms']))}</td>"
        f"<td>{esc('' if item['cold_start_seconds'] is None else _seconds_text(item['cold_start_seconds']))}</td>"
        f"<td>{esc(item['cache'])}</td></tr>"
        for item in document["recent_requests"]
    ) or '<tr><td colspan="8">no requests yet</td></tr>'
    hit_rate = "–" if cache["hit_rate"] is None else f"{cache['hit_rate'] * 100:.1f} %"
    several = len(pods) > 1
    state = (f"{sum(1 for pod in pods if pod['ready'])} of {len(pods)} pods ready" if several
             else pods[0]["state_text"])
    cards = "".join(_card_html(pod, now, zone) for pod in pods)
    saved = today["always_on_usd"] - today["cost_usd"]
    saving = (f"{_money(saved)} less than always-on so far today" if saved > 0 and today["always_on_usd"]
              else "no saving against always-on yet today")
    since = local_clock(datetime.fromisoformat(today["since"].replace("Z", "+00:00")), now, zone)
    wake_error = (f'<p class="error">last wake failed: {esc(proxy["last_wake_error"])}</p>'
                  if proxy["last_wake_error"] else "")
    started = now - timedelta(seconds=proxy["uptime_seconds"])
    latency_text = ("no requests yet" if not latency["count"] else
                    f"p50 {latency['p50']} ms · p90 {latency['p90']} ms · p99 {latency['p99']} ms "
                    f"over {latency['count']} requests")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rpm proxy – {esc(state)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>{_STYLE}</style></head><body>
<main>
<h1>rpm proxy <span class="state">{esc(state)}</span></h1>
{wake_error}<div class="cards">
{cards}</div>
<section class="panel"><h2>Today</h2>
<p class="quiet">since {esc(since)} ({esc(document["timezone"])}) · {esc(saving)}</p>
{cost_svg(today["cost_usd"], today["always_on_usd"])}
</section>
{_keys_html(document.get("keys"))}<section class="panel"><h2>Recent requests</h2>
<table class="list"><tr><th>time</th><th>pod</th><th>model</th><th>path</th><th>status</th><th>took</th>
<th>cold wait</th><th>cache</th></tr>
{request_rows}</table>
<h3>Latency</h3><p class="quiet">{esc(latency_text)}</p>
{latency_svg(document["chart_ms"])}
<h3>Cache</h3><table>
{row("hit rate", hit_rate)}{row("hits / misses / bypassed",
                                 f"{cache['hits']} / {cache['misses']} / {cache['bypasses']}")}
{row("entries", cache["entries"])}{row("bytes", cache["bytes"])}
</table>
</section>
<p class="foot">rpm {esc(proxy["version"])} · proxy up {esc(human_duration(proxy["uptime_seconds"]))}
(since {esc(local_clock(started, now, zone))}) · updated {esc(local_clock(now, now, zone, seconds=True))}
· refreshes every {REFRESH_SECONDS} s</p>
</main>
{_REFRESH_SCRIPT}
</body></html>
"""


def _keys_html(keys: dict[str, Any] | None) -> str:
    if not keys or not keys["rows"]:
        return ""
    esc = html.escape
    rows = "".join(
        f'<tr data-key="{esc(row["name"])}"><td>{esc(row["name"])}</td><td>{esc(row["role"])}</td>'
        f'<td>{esc(row["status"])}</td><td>{row["requests"]}</td><td>{row["tokens"]}</td>'
        f'<td>{esc(_money(row["spend_usd"]))}'
        + ("" if row["daily_budget_usd"] is None else f' of {esc(_money(row["daily_budget_usd"]))}')
        + f'</td><td>{row["refused"]}</td></tr>' for row in keys["rows"])
    return (f'<section class="panel keys"><h2>Keys today</h2><p class="quiet">{esc(keys["day"])}</p>'
            '<table class="list"><tr><th>key</th><th>role</th><th>status</th><th>requests</th><th>tokens</th>'
            f"<th>spend</th><th>refused</th></tr>{rows}</table></section>\n")


def wants_html(accept: str) -> bool:
    """Browsers list text/html first; API clients and curl ask for JSON or */*."""
    return "text/html" in accept.lower()
