"""/dashboard: the proxy's state at a glance — HTML for browsers, JSON for everything else.

Built from values the proxy already holds (the controller's PodViews, the gates, the metrics history and
cache counters); no API call. One section per pod (each configured pod and each replica); the document's
`pod`, `spend` and `limits` are the first pod's, as before there were several. It shows no bodies, no
headers and no keys. The HTML is self-contained
(inline CSS and an inline SVG latency chart): no scripts, no external assets, no CDN.
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from runpod_manager import __version__
from runpod_manager.proxy.controller import PodView
from runpod_manager.proxy.metrics import ProxyMetrics, RecentRequest

SHOWN_REQUESTS = 50
CHART_POINTS = 100


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return round(sorted_values[index], 3)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _limit_rows(limits: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    rows = []
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
            rows.append({"name": name, "fires_at": _iso(fires_at),
                         "seconds_left": max(0, round((fires_at - now).total_seconds())), "detail": None})
        else:
            rows.append({"name": name, "fires_at": None, "seconds_left": None,
                         "detail": None if value is None else str(value)})
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


def _spend(view: PodView) -> dict[str, Any]:
    return {
        "today_usd": round(view.spend_today_usd, 4),
        "max_daily_usd": view.max_daily_spend_usd,
        "remaining_usd": (round(max(0.0, view.max_daily_spend_usd - view.spend_today_usd), 4)
                          if view.max_daily_spend_usd else None),
        "cost_per_hour_usd": view.cost_per_hour,
    }


def _pod_section(panel: PodPanel, now: datetime) -> dict[str, Any]:
    pod = asdict(panel.view)
    pod.pop("limits", None)
    pod["deadline"] = _iso(panel.view.deadline)
    oldest = panel.oldest_wait_seconds
    pod.update({"replica_of": panel.replica_of, "models": list(panel.models), "queue_depth": panel.queue_depth,
                "oldest_wait_seconds": None if oldest is None else round(oldest, 3), "in_flight": panel.in_flight,
                "waking": panel.waking, "target_known": panel.target_known,
                "last_wake_error": panel.last_wake_error,
                "spend": _spend(panel.view), "limits": _limit_rows(panel.view.limits, now)})
    return pod


def dashboard_document(
    *,
    pods: list[PodPanel],
    metrics: ProxyMetrics,
    last_wake_error: str | None,
    cache_enabled: bool,
    cache_entries: int,
    cache_bytes: int,
    now: datetime,
) -> dict[str, Any]:
    """The dashboard as plain JSON-ready data (also what the HTML page renders)."""
    recent = list(metrics.recent)
    durations = sorted(entry.duration_ms for entry in recent)
    sections = [_pod_section(panel, now) for panel in pods]
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
    }


def _duration_text(seconds: int | None) -> str:
    if seconds is None:
        return "–"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


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


def _state_words(pod: dict[str, Any]) -> str:
    return "ready" if pod["ready"] else (pod["status"] or "no pod")


def _pod_html(pod: dict[str, Any], row: Any, *, heading: bool) -> str:
    esc = html.escape
    spend = pod["spend"]
    limit_rows = "".join(
        f"<tr><td>{esc(item['name'])}</td><td>{esc(item['fires_at'] or item['detail'] or '–')}</td>"
        f"<td>{esc(_duration_text(item['seconds_left']))}</td></tr>" for item in pod["limits"]
    ) or '<tr><td colspan="3">no limit pending</td></tr>'
    title = (f'<h2>Pod {esc(pod["name"])} <span class="state">– {esc(_state_words(pod))}</span></h2>\n'
             if heading else "")
    replica = "" if pod["replica_of"] == pod["name"] else row("replica of", pod["replica_of"])
    return f"""{title}<table>
{row("pod", pod["pod_id"])}{replica}{row("models", ", ".join(pod["models"]))}
{row("status", pod["status"])}{row("ready", pod["ready"])}
{row("GPU", pod["gpu_type_id"])}{row("lease open", pod["lease_open"])}{row("deadline", pod["deadline"])}
{row("last action", pod["last_action"])}{row("reason", pod["last_reason"])}
{row("queue", pod["queue_depth"])}{row("in flight", pod["in_flight"])}{row("waking", pod["waking"])}
{row("last wake error", pod["last_wake_error"])}
</table>
<h3>Spend</h3><table>
{row("cost per hour (USD)", spend["cost_per_hour_usd"])}{row("today (USD)", spend["today_usd"])}
{row("daily cap (USD)", spend["max_daily_usd"] or "none")}{row("left today (USD)", spend["remaining_usd"])}
</table>
<h3>Limits</h3><table class="list"><tr><th>limit</th><th>fires at</th><th>time left</th></tr>
{limit_rows}</table>
"""


def render_html(document: dict[str, Any]) -> str:
    """The dashboard page. Every value is escaped; the page needs nothing from the network."""
    esc = html.escape
    cache, proxy = document["cache"], document["proxy"]
    pods = document["pods"]
    latency = document["latency_ms"]

    def row(label: str, value: Any) -> str:
        return f"<tr><th>{esc(label)}</th><td>{esc('–' if value is None else str(value))}</td></tr>"

    request_rows = "".join(
        f"<tr><td>{esc(item['at'] or '')}</td><td>{esc(item['method'])}</td><td>{esc(item['path'])}</td>"
        f"<td>{item['status']}</td><td>{item['duration_ms']:.1f}</td><td>{esc(item['cache'])}</td>"
        f"<td>{esc('' if item['cold_start_seconds'] is None else str(item['cold_start_seconds']))}</td>"
        f"<td>{esc(item['pod'] or '')}</td></tr>"
        for item in document["recent_requests"]
    ) or '<tr><td colspan="8">no requests yet</td></tr>'
    hit_rate = "–" if cache["hit_rate"] is None else f"{cache['hit_rate'] * 100:.1f} %"
    several = len(pods) > 1
    state = (f"{sum(1 for pod in pods if pod['ready'])} of {len(pods)} pods ready" if several
             else _state_words(pods[0]))
    sections = "".join(_pod_html(pod, row, heading=several) for pod in pods)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rpm proxy – {esc(state)}</title>
<meta http-equiv="refresh" content="10">
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}
h1{{font-size:1.3em}} h2{{font-size:1.05em;margin-top:1.4em}} h3{{font-size:1em;margin-top:1em}}
table{{border-collapse:collapse}} th,td{{padding:2px 10px 2px 0;text-align:left;vertical-align:top}}
th{{color:#555;font-weight:normal}} .state{{font-weight:bold}}
table.list td{{border-top:1px solid #eee;font-family:ui-monospace,monospace;font-size:12px}}
</style></head><body>
<h1>rpm proxy <span class="state">– {"" if several else "pod "}{esc(state)}</span></h1>
<table>
{row("queue", proxy["queue_depth"])}{row("waking", proxy["waking"])}
{row("last wake error", proxy["last_wake_error"])}
</table>
{sections}
<h2>Cache</h2><table>
{row("hit rate", hit_rate)}{row("hits / misses / bypassed",
                                 f"{cache['hits']} / {cache['misses']} / {cache['bypasses']}")}
{row("entries", cache["entries"])}{row("bytes", cache["bytes"])}
</table>
<h2>Latency</h2><p>p50 {latency["p50"]} ms · p90 {latency["p90"]} ms · p99 {latency["p99"]} ms
over {latency["count"]} requests</p>
{latency_svg(document["chart_ms"])}
<h2>Recent requests</h2>
<table class="list"><tr><th>time</th><th>method</th><th>path</th><th>status</th><th>ms</th><th>cache</th>
<th>cold start s</th><th>pod</th></tr>
{request_rows}</table>
<p style="color:#888">rpm {esc(proxy["version"])} · up {proxy["uptime_seconds"]} s</p>
</body></html>
"""


def wants_html(accept: str) -> bool:
    """Browsers list text/html first; API clients and curl ask for JSON or */*."""
    return "text/html" in accept.lower()
