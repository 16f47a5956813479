"""`rpm report --html FILE`: the report as one self-contained HTML page with inline SVG plots.

Hand-written SVG rather than a plotting library: three plain charts (a timeline, cumulative cost lines, wait
bars) need a few dozen lines each, the page stays a single file with no script and no external asset, and
rpm gains no dependency (a plotting library would add tens of megabytes and a second of import for these).

Per pod:
- timeline: the pod's state (booting from create/resume to ready, serving-ready until stop or terminate)
  above the requests (how many per time slice) and the cold starts (marked, with their wait);
- cumulative cost: rpm (the pod's billed time, scaled to what billing charged when it was read) against
  always on and the oracle;
- cold-start waits: one bar per wake, with the p50 and p95 lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from html import escape

from runpod_manager.report import PodReport, Report, Row, percentile

WIDTH, LEFT, RIGHT, TOP, BOTTOM = 960, 64, 16, 16, 36
PLOT_WIDTH = WIDTH - LEFT - RIGHT
BINS = 240  # time slices of the request histogram
COLORS = {"rpm": "#2563eb", "always-on": "#9ca3af", "oracle": "#16a34a", "booting": "#f59e0b",
          "ready": "#22c55e", "requests": "#64748b", "wake": "#dc2626"}
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #111827; max-width: 1000px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e5e7eb; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: 600; border-top: 2px solid #9ca3af; }
svg { display: block; margin: 4px 0 20px; }
svg text { font: 11px system-ui, sans-serif; fill: #374151; }
.note { color: #92400e; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }
"""


def render_html(report: Report, zone: tzinfo | None) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>rpm report {escape(_day(report.since, zone))} – {escape(_day(report.until, zone))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>rpm report</h1>",
        f"<p>{escape(_when(report.since, zone))} to {escape(_when(report.until, zone))} ({escape(report.zone)}). "
        f"Money from RunPod's billing{'' if report.billing_read else ' (not read: estimated from GPU hours × $/h)'}; "
        "the pod's timeline from the event log; requests and waits from the request log.</p>",
    ]
    parts += [f'<p class="note">{escape(note)}</p>' for note in report.notes]
    parts.append(_summary_table(report))
    for pod in report.pods:
        parts.append(f"<h2>{escape(pod.pod)} · ${pod.rate_usd_per_hour:.2f}/h</h2>")
        parts.append(_table(pod.days, pod.total))
        parts.append("<h3>Timeline</h3>")
        parts.append(_legend([("booting", "booting"), ("ready", "running"), ("requests", "requests per slice"),
                              ("wake", "cold start (wait)")]))
        parts.append(timeline_svg(pod, report, zone))
        parts.append("<h3>Cumulative cost</h3>")
        parts.append(_legend([("rpm", "rpm (billed)"), ("always-on", "always on"), ("oracle", "oracle")]))
        parts.append(cost_svg(pod, report, zone))
        parts.append("<h3>Cold-start waits</h3>")
        parts.append(waits_svg(pod, zone))
    parts.append("</body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- tables

_COLUMNS = ("day", "GPU h", "billed $", "storage $", "requests", "cold starts", "wait p50 s", "wait p95 s",
            "wait max s", "idle billed h", "always-on $", "oracle $")


def _cells(row: Row) -> list[str]:
    data = row.to_json()

    def number(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:,.{digits}f}"

    return [row.day, number(row.gpu_hours, 2), number(row.cost_usd, 2) + ("*" if row.cost_source != "billing" else ""),
            number(row.storage_usd, 2), f"{row.requests:,}", str(row.cold_starts),
            number(data["wait_p50_seconds"], 1), number(data["wait_p95_seconds"], 1),
            number(data["wait_max_seconds"], 1), number(row.idle_billed_hours, 2), number(row.always_on_usd, 2),
            number(row.oracle_usd, 2)]


def _table(rows: Sequence[Row], total: Row) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in _COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in _cells(row)) + "</tr>" for row in rows)
    foot = '<tr class="total">' + "".join(f"<td>{escape(c)}</td>" for c in _cells(total)) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}{foot}</tbody></table>"


def _summary_table(report: Report) -> str:
    total = report.total
    saved = total.always_on_usd - total.cost_usd - total.storage_usd
    share = f" ({saved / total.always_on_usd:.0%})" if total.always_on_usd else ""
    rows = [("billed", f"${total.cost_usd + total.storage_usd:,.2f}"), ("always on", f"${total.always_on_usd:,.2f}"),
            ("saved against always on", f"${saved:,.2f}{share}"), ("oracle", f"${total.oracle_usd:,.2f}"),
            ("requests", f"{total.requests:,}"), ("cold starts", str(total.cold_starts))]
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _legend(items: Sequence[tuple[str, str]]) -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{COLORS[key]}"></i>{escape(label)}</span>' for key, label in items) + "</p>"


# ------------------------------------------------------------------------------------------------ plots


class _Scale:
    def __init__(self, start: float, end: float, height: int) -> None:
        self.start, self.end = start, max(end, start + 1)
        self.height = height

    def x(self, epoch: float) -> float:
        return LEFT + (min(max(epoch, self.start), self.end) - self.start) / (self.end - self.start) * PLOT_WIDTH

    def y(self, value: float, top: float) -> float:
        return TOP + self.height - (value / top * self.height if top > 0 else 0)


def _svg(height: int, label: str, body: list[str]) -> str:
    total = height + TOP + BOTTOM
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total}" '
            f'viewBox="0 0 {WIDTH} {total}" role="img" aria-label="{escape(label)}">'
            + "".join(body) + "</svg>")


def _time_axis(scale: _Scale, zone: tzinfo | None) -> list[str]:
    span = scale.end - scale.start
    step = next(s for s in (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 2 * 86400, 7 * 86400, math.inf)
                if span / s <= 10)
    if step == math.inf:
        step = span / 8
    base = TOP + scale.height
    out = [f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="#9ca3af"/>']
    # Ticks on the local clock (midnight, 06:00, …), not on UTC's: count from the local midnight before the start.
    midnight = datetime.fromtimestamp(scale.start, UTC).astimezone(zone).replace(hour=0, minute=0, second=0,
                                                                                microsecond=0).timestamp()
    tick = midnight + math.ceil((scale.start - midnight) / step) * step
    while tick <= scale.end:
        x = scale.x(tick)
        moment = datetime.fromtimestamp(tick, UTC).astimezone(zone)
        text = f"{moment:%a %H:%M}" if step < 86400 else f"{moment:%a %d %b}"
        out.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#9ca3af"/>')
        if x < WIDTH - RIGHT - 30:  # a label at the very end would be cut off
            out.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">{escape(text)}</text>')
        tick += step
    return out


def _value_axis(scale: _Scale, top: float, unit: str) -> list[str]:
    out = []
    for fraction in (0.0, 0.5, 1.0):
        y = scale.y(top * fraction, top)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#f3f4f6"/>'
                   f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(_amount(top * fraction, unit))}'
                   "</text>")
    return out


def timeline_svg(pod: PodReport, report: Report, zone: tzinfo | None) -> str:
    height = 150
    scale = _Scale(report.since.timestamp(), report.until.timestamp(), height)
    body = _time_axis(scale, zone)
    lane_top, lane_height = TOP + 4, 22
    body.append(f'<text x="{LEFT - 6}" y="{lane_top + 15}" text-anchor="end">pod</text>')
    for stretch in pod.billed:
        ready = stretch.ready_at if stretch.ready_at is not None else stretch.end
        for start, end, kind in ((stretch.start, min(ready, stretch.end), "booting"), (ready, stretch.end, "ready")):
            if end > start:
                x0, x1 = scale.x(start), scale.x(end)
                body.append(f'<rect class="state-{kind}" x="{x0:.2f}" y="{lane_top}" width="{max(x1 - x0, 0.8):.2f}" '
                            f'height="{lane_height}" fill="{COLORS[kind]}"><title>{kind} '
                            f'{escape(_clock(start, zone))}–{escape(_clock(end, zone))}</title></rect>')
    bins = [0] * BINS
    width = (scale.end - scale.start) / BINS
    for request in pod.requests:
        index = int((request.at - scale.start) / width)
        if 0 <= index < BINS:
            bins[index] += 1
    hist_top = lane_top + lane_height + 14
    hist_height = TOP + height - hist_top
    peak = max(bins) or 1
    body.append(f'<text x="{LEFT - 6}" y="{hist_top + 10}" text-anchor="end">{peak:,}</text>')
    for index, count in enumerate(bins):
        if count:
            bar = max(1.0, count / peak * hist_height)
            x = LEFT + index * PLOT_WIDTH / BINS
            body.append(f'<rect class="requests" x="{x:.2f}" y="{TOP + height - bar:.2f}" '
                        f'width="{PLOT_WIDTH / BINS:.2f}" height="{bar:.2f}" fill="{COLORS["requests"]}">'
                        f"<title>{count} requests</title></rect>")
    for wake in pod.wakes:
        x = scale.x(wake.opened_at)
        wait = "?" if wake.wait_seconds is None else f"{wake.wait_seconds:.1f} s"
        body.append(f'<circle class="wake" cx="{x:.2f}" cy="{hist_top - 6}" r="4" fill="{COLORS["wake"]}">'
                    f"<title>cold start {escape(_clock(wake.opened_at, zone))}: waited {wait}</title></circle>")
    return _svg(height, f"timeline of {pod.pod}", body)


def cost_series(pod: PodReport, report: Report) -> dict[str, list[tuple[float, float]]]:
    """(time, cumulative USD) points of rpm, always on and the oracle over the window."""
    start, end = pod.window_start, report.until.timestamp()
    rate = pod.rate_usd_per_hour / 3600
    always = [(start, 0.0), (end, rate * (end - start))]
    oracle: list[tuple[float, float]] = [(start, 0.0)]
    spent = 0.0
    for session_start, session_end in pod.oracle_sessions:
        boot_start = max(start, session_start - pod.boot_seconds)
        oracle.append((boot_start, spent))
        spent += rate * (session_end - session_start + pod.boot_seconds)
        oracle.append((session_end, spent))
    oracle.append((end, spent))
    changes = sorted([(max(b.start, start), 1) for b in pod.billed] + [(min(b.end, end), -1) for b in pod.billed])
    rpm: list[tuple[float, float]] = [(start, 0.0)]
    running, spent, last = 0, 0.0, start
    for moment, delta in changes:
        spent += rate * running * (moment - last)
        rpm.append((moment, spent))
        running, last = running + delta, moment
    rpm.append((end, spent + rate * running * (end - last)))
    billed = pod.total.cost_usd + pod.total.storage_usd
    if report.billing_read and rpm[-1][1] > 0:  # the shape from the timeline, the total from billing
        factor = billed / rpm[-1][1]
        rpm = [(moment, value * factor) for moment, value in rpm]
    return {"rpm": rpm, "always-on": always, "oracle": oracle}


def cost_svg(pod: PodReport, report: Report, zone: tzinfo | None) -> str:
    height = 200
    series = cost_series(pod, report)
    scale = _Scale(report.since.timestamp(), report.until.timestamp(), height)
    top = max([value for points in series.values() for _, value in points] + [0.01]) * 1.05
    body = _value_axis(scale, top, "$") + _time_axis(scale, zone)
    for name, points in series.items():
        coordinates = " ".join(f"{scale.x(moment):.2f},{scale.y(value, top):.2f}" for moment, value in points)
        body.append(f'<polyline class="cost-{name}" points="{coordinates}" fill="none" stroke="{COLORS[name]}" '
                    f'stroke-width="2"><title>{name}: ${points[-1][1]:,.2f}</title></polyline>')
        end_x, end_y = scale.x(points[-1][0]), scale.y(points[-1][1], top)
        body.append(f'<text x="{end_x - 4:.2f}" y="{end_y - 5:.2f}" text-anchor="end" fill="{COLORS[name]}">'
                    f"{escape(name)} ${points[-1][1]:,.2f}</text>")
    return _svg(height, f"cumulative cost of {pod.pod}", body)


def waits_svg(pod: PodReport, zone: tzinfo | None) -> str:
    height = 140
    waits = [(wake.opened_at, wake.wait_seconds) for wake in pod.wakes if wake.wait_seconds is not None]
    body: list[str] = []
    if not waits:
        body.append(f'<text x="{LEFT}" y="{TOP + 20}">no cold start felt in this window</text>')
        return _svg(height, f"cold-start waits of {pod.pod}", body)
    top = max(seconds for _, seconds in waits) * 1.1 or 1.0
    scale = _Scale(0, 1, height)
    body += _value_axis(scale, top, "s")
    slot = PLOT_WIDTH / len(waits)
    for index, (moment, seconds) in enumerate(waits):
        bar = seconds / top * height
        body.append(f'<rect class="wait" x="{LEFT + index * slot + slot * 0.15:.2f}" y="{TOP + height - bar:.2f}" '
                    f'width="{max(slot * 0.7, 1):.2f}" height="{bar:.2f}" fill="{COLORS["wake"]}">'
                    f"<title>{escape(_clock(moment, zone))}: {seconds:.1f} s</title></rect>")
    for fraction, label in ((0.5, "p50"), (0.95, "p95")):
        value = percentile([seconds for _, seconds in waits], fraction) or 0.0
        y = scale.y(value, top)
        body.append(f'<line class="wait-{label}" x1="{LEFT}" y1="{y:.2f}" x2="{WIDTH - RIGHT}" y2="{y:.2f}" '
                    f'stroke="#111827" stroke-dasharray="4 3"/><text x="{WIDTH - RIGHT}" y="{y - 3:.2f}" '
                    f'text-anchor="end">{label} {value:.1f} s</text>')
    body.append(f'<text x="{LEFT}" y="{TOP + height + 16}">{len(waits)} cold starts, in order</text>')
    return _svg(height, f"cold-start waits of {pod.pod}", body)


def _amount(value: float, unit: str) -> str:
    return f"${value:,.2f}" if unit == "$" else f"{value:,.0f} {unit}"


def _clock(epoch: float, zone: tzinfo | None) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC).astimezone(zone):%a %H:%M:%S}"


def _when(moment: datetime, zone: tzinfo | None) -> str:
    return f"{moment.astimezone(zone):%Y-%m-%d %H:%M}"


def _day(moment: datetime, zone: tzinfo | None) -> str:
    return f"{moment.astimezone(zone):%Y-%m-%d}"
