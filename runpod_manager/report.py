"""`rpm report`: what each pod was billed per day, what the same traffic would have cost always on and in an
oracle that bills only while serving, and every cold start that was felt with its wait.

Sources, and what each is the authority for:
- RunPod's billing (`GET /v2/billing/pods`, hourly buckets, one call for every pod): money. Without it (no
  key, RunPod unreachable) cost is estimated as GPU hours × $/h, and each row says which it is.
- The event log (`events.jsonl`): each pod's timeline — created or resumed (billing starts), ready, stopped
  or terminated (billing ends) — and the wakes (a `lease_opened` by `wake`, then its `ready`). Pod ids come
  from its `created` and `adopt` events and from state.
- The request log (`requests.jsonl`): requests served, their tokens, and the wait each cold start caused
  (the longest `wake_s` of the requests that waited for that wake: its length from its start, which a retry
  after a 503 was told too; `cold_start_s` in logs written before `wake_s`).

Derived per local day (the config's timezone) and per pod:
- idle billed: for each stop or terminate, the time from the last request's end (or the pod being ready)
  to the end of billing;
- always on: 24 h × $/h over the window (from --since, or the pod's first record when later);
- oracle: the pod runs exactly while requests are served, plus one boot before each session (sessions
  closer than a boot are merged: stopping between them would cost more than it saves); the boot is the
  median measured boot of the pod's starts in the window.

`build_report` reads the files and calls billing (injected); `assemble` is pure and is what tests drive.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, cast

from runpod_manager.config import Config
from runpod_manager.errors import UsageError
from runpod_manager.events import log_files
from runpod_manager.paths import Paths, read_lines
from runpod_manager.requestlog import LoggedRequest, read_requests
from runpod_manager.runpod.models import BillingRecord

DEFAULT_BOOT_SECONDS = 60.0  # the oracle's boot when the window has no measured start
WAKE_LEAD_SECONDS = 5.0  # a request that caused a wake arrived this much before its lease_opened, at most
MAX_EVENT_FILE_BYTES = 64 * 1024 * 1024
_BILLING_START = frozenset({"created", "resume"})
_BILLING_END = frozenset({"stop", "terminate", "terminate_orphan", "forget_pod"})
_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

Billing = Callable[[datetime, datetime], list[BillingRecord]]


def parse_since(text: str, now: datetime, zone: tzinfo | None) -> datetime:
    """`7d`, `36h`, `90m`, `2w`, or a date/time (`2026-01-05`, `2026-01-05T09:00`, in the config's zone
    unless it names its own)."""
    match = _SINCE_RE.match(text)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: expected a duration such as 7d, 24h, 90m, or a date such as "
                         "2026-01-05") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone) if zone is not None else moment.astimezone()
    if moment >= now:
        raise UsageError(f"--since {text!r} is not in the past")
    return moment


# ------------------------------------------------------------------------------------------ the timeline


@dataclass(frozen=True)
class Event:
    at: float
    name: str
    pod: str | None  # the config name
    fields: dict[str, Any]


@dataclass
class Billed:
    """A stretch during which one pod was billed for its GPU: from create or resume to stop or terminate."""

    pod: str
    pod_id: str
    start: float
    end: float
    ready_at: float | None = None
    ended_by: str | None = None  # the event that ended it; None while it still runs at the window's end
    started_by: str = "created"  # or "resume"


@dataclass
class Wake:
    """A lease opened by a request (`opened_by` wake), until its pod was ready."""

    pod: str
    opened_at: float
    ready_at: float | None = None
    started_at: float | None = None  # the resume or create it caused
    started_by: str | None = None  # "resume" or "created"
    wait_seconds: float | None = None  # the longest wait a request felt for it

    @property
    def boot_seconds(self) -> float | None:
        if self.ready_at is None or self.started_at is None:
            return None
        return max(0.0, self.ready_at - self.started_at)


@dataclass
class Timeline:
    billed: list[Billed] = field(default_factory=list)
    wakes: list[Wake] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)  # pod -> $/h of its latest created pod
    pod_ids: dict[str, list[str]] = field(default_factory=dict)  # pod -> its RunPod ids, in order
    first_seen: dict[str, float] = field(default_factory=dict)
    boots: dict[str, list[float]] = field(default_factory=dict)  # pod -> start → ready durations


def read_events(path: Path) -> list[Event]:
    """Every event of the log and its rotated files (events.jsonl.3 … .1, then events.jsonl), by time.
    Lines that do not parse are skipped."""
    events: list[Event] = []
    for file in log_files(path):
        for line in read_lines(file, max_bytes=MAX_EVENT_FILE_BYTES):
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError, RecursionError):
                document = json.loads(line)
                at = datetime.fromisoformat(document["time"].replace("Z", "+00:00")).timestamp()
                name = document["event"]
                config = document.get("config")
                if isinstance(name, str):
                    events.append(Event(at, name, config if isinstance(config, str) else None, document))
    events.sort(key=lambda event: event.at)
    return events


def build_timeline(events: Iterable[Event], *, until: float) -> Timeline:
    """Billing stretches, wakes, rates and pod ids from the event log (all of it: a pod billed since before
    the window counts from the window's start)."""
    builder = _TimelineBuilder(until)
    for event in events:
        if event.pod is not None:
            builder.take(event, event.pod)
    return builder.timeline


class _TimelineBuilder:
    def __init__(self, until: float) -> None:
        self.until = until
        self.timeline = Timeline()
        self.open_billed: dict[str, Billed] = {}  # pod id -> its open stretch
        self.open_wake: dict[str, Wake] = {}  # pod -> its wake, until ready

    def take(self, event: Event, pod: str) -> None:
        self.timeline.first_seen.setdefault(pod, event.at)
        pod_id = event.fields.get("pod_id")
        pod_id = pod_id if isinstance(pod_id, str) and pod_id else None
        ok = event.fields.get("ok", True) is True
        if event.name == "lease_opened" and event.fields.get("opened_by") == "wake":
            self.open_wake[pod] = wake = Wake(pod, event.at)
            self.timeline.wakes.append(wake)
        elif event.name in ("lease_closed", "close_lease"):
            self.open_wake.pop(pod, None)  # closed before it was ready: a failed wake (ready_at stays None)
        if pod_id is None or not ok:
            return
        if event.name in ("created", "adopt"):
            self._known(pod, pod_id, event.fields.get("cost_per_hour"))
        if event.name in _BILLING_START:
            self._billing_starts(event, pod, pod_id)
        elif event.name == "ready":
            self._ready(event, pod, pod_id)
        elif event.name in _BILLING_END:
            stretch = self.open_billed.pop(pod_id, None)
            if stretch is not None:
                stretch.end, stretch.ended_by = event.at, event.name

    def _known(self, pod: str, pod_id: str, rate: Any) -> None:
        ids = self.timeline.pod_ids.setdefault(pod, [])
        if pod_id not in ids:
            ids.append(pod_id)
        if isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0:
            self.timeline.rates[pod] = float(rate)

    def _billing_starts(self, event: Event, pod: str, pod_id: str) -> None:
        if pod_id not in self.open_billed:  # a resume of a pod that stopped on its own: the stretch goes on
            self.open_billed[pod_id] = stretch = Billed(pod, pod_id, event.at, self.until, started_by=event.name)
            self.timeline.billed.append(stretch)
        wake = self.open_wake.get(pod)
        if wake is not None and wake.started_at is None:
            wake.started_at, wake.started_by = event.at, event.name

    def _ready(self, event: Event, pod: str, pod_id: str) -> None:
        stretch = self.open_billed.get(pod_id)
        if stretch is not None and stretch.ready_at is None:
            stretch.ready_at = event.at
            self.timeline.boots.setdefault(pod, []).append(event.at - stretch.start)
        wake = self.open_wake.pop(pod, None)
        if wake is not None:
            wake.ready_at = event.at


# ------------------------------------------------------------------------------------------ the report


@dataclass
class Row:
    """One day of one pod (or a total). Money in USD, time in hours unless named otherwise."""

    day: str
    pod: str
    gpu_hours: float = 0.0
    cost_usd: float = 0.0
    storage_usd: float = 0.0
    cost_source: str = "billing"  # billing | estimate | mixed
    requests: int = 0
    failed_requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cold_starts: int = 0
    waits_seconds: list[float] = field(default_factory=list)
    idle_billed_hours: float = 0.0
    always_on_usd: float = 0.0
    oracle_usd: float = 0.0

    def add(self, other: Row) -> None:
        for name in ("gpu_hours", "cost_usd", "storage_usd", "requests", "failed_requests", "tokens_in",
                     "tokens_out", "cold_starts", "idle_billed_hours", "always_on_usd", "oracle_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.waits_seconds += other.waits_seconds

    def to_json(self) -> dict[str, Any]:
        waits = self.waits_seconds
        return {
            "day": self.day, "pod": self.pod, "gpu_hours": round(self.gpu_hours, 6),
            "cost_usd": round(self.cost_usd, 6), "storage_usd": round(self.storage_usd, 6),
            "cost_source": self.cost_source, "requests": self.requests, "failed_requests": self.failed_requests,
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "cold_starts": self.cold_starts,
            "wait_p50_seconds": _rounded(percentile(waits, 0.5)), "wait_p95_seconds": _rounded(percentile(waits, 0.95)),
            "wait_max_seconds": _rounded(max(waits) if waits else None),
            "idle_billed_hours": round(self.idle_billed_hours, 6), "always_on_usd": round(self.always_on_usd, 6),
            "oracle_usd": round(self.oracle_usd, 6),
            "saved_vs_always_on_usd": round(self.always_on_usd - self.cost_usd - self.storage_usd, 6),
        }


@dataclass
class PodReport:
    pod: str
    rate_usd_per_hour: float
    pod_ids: list[str]
    window_start: float  # since, or the pod's first record when later
    boot_seconds: float  # the oracle's boot
    days: list[Row]
    total: Row
    billed: list[Billed]
    wakes: list[Wake]
    requests: list[LoggedRequest]  # activity in the window
    oracle_sessions: list[tuple[float, float]]


@dataclass
class Report:
    since: datetime
    until: datetime
    zone: str
    pods: list[PodReport]
    total: Row
    billing_read: bool
    notes: list[str] = field(default_factory=list)
    html_path: Path | None = None  # where --html wrote the page

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since, "until": self.until, "timezone": self.zone, "billing_read": self.billing_read,
            "totals": self.total.to_json(), "notes": self.notes,
            "html": None if self.html_path is None else str(self.html_path),
            "pods": [{
                "pod": pod.pod, "rate_usd_per_hour": pod.rate_usd_per_hour, "pod_ids": pod.pod_ids,
                "oracle_boot_seconds": round(pod.boot_seconds, 3), "totals": pod.total.to_json(),
                "days": [row.to_json() for row in pod.days],
                "wakes": [{"opened_at": _utc(wake.opened_at), "ready_at": _utc(wake.ready_at),
                           "started_by": wake.started_by, "boot_seconds": _rounded(wake.boot_seconds),
                           "wait_seconds": _rounded(wake.wait_seconds)} for wake in pod.wakes],
            } for pod in self.pods],
        }


def run_report(config: Config, paths: Paths, *, since_text: str, pod: str | None, html: Path | None,
               render_html: Callable[[Report, tzinfo | None], str] | None = None,
               now: datetime | None = None) -> Report:
    """`rpm report`: read the logs and state, call billing once (when there is a key), write --html with
    `render_html` (`report_html.render_html`, passed in: that module reads this one's types)."""
    from runpod_manager.state import StateStore

    until = now or datetime.now(UTC)
    since = parse_since(since_text, until, config.zone)
    state = StateStore(paths).load()
    rates = {name: record.cost_per_hour for name, record in state.pods.items() if record.cost_per_hour > 0}
    ids = {name: [i for i in (record.pod_id, record.replacing_pod_id) if i] for name, record in state.pods.items()}
    billing: Billing | None = None
    if config.api.api_key:
        from runpod_manager.ports import runpod_client
        from runpod_manager.runpod.client import RunPodClient

        client = cast(RunPodClient, runpod_client(config))

        def billing(start: datetime, end: datetime) -> list[BillingRecord]:
            return client.billing_by_pod(since=start, until=end, bucket_size="hour")

    report = build_report(paths.event_log, paths.request_log, since=since, until=until, zone=config.zone,
                          zone_name=config.limits.timezone, pods=[config.pod.name], only_pod=pod,
                          state_rates=rates, state_pod_ids=ids, billing=billing)
    if html is not None:
        if render_html is None:
            raise TypeError("run_report: html needs render_html")
        try:
            html.write_text(render_html(report, config.zone), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--html {html}: cannot write ({exc.strerror})") from None
        report.html_path = html
    return report


def build_report(events_path: Path, requests_path: Path, *, since: datetime, until: datetime,
                 zone: tzinfo | None, zone_name: str, pods: Sequence[str], only_pod: str | None,
                 state_rates: dict[str, float], state_pod_ids: dict[str, list[str]],
                 billing: Billing | None) -> Report:
    """Read the logs, call billing once, assemble. `pods`: config names to show even without events."""
    events = read_events(events_path)
    timeline = build_timeline(events, until=until.timestamp())
    requests = read_requests(requests_path, since=since.timestamp(), until=until.timestamp(), pod=only_pod)
    notes: list[str] = []
    records: list[BillingRecord] | None = None
    if billing is not None:
        try:
            records = billing(since, until)
        except Exception as exc:  # the report still shows the timeline; it says the money is estimated
            notes.append(f"billing could not be read ({exc}); cost is estimated from GPU hours × $/h")
    else:
        notes.append("no RunPod key: cost is estimated from GPU hours × $/h")
    return assemble(timeline, requests, records, since=since, until=until, zone=zone, zone_name=zone_name,
                    pods=pods, only_pod=only_pod, state_rates=state_rates, state_pod_ids=state_pod_ids, notes=notes)


def assemble(timeline: Timeline, requests: Sequence[LoggedRequest], records: Sequence[BillingRecord] | None, *,
             since: datetime, until: datetime, zone: tzinfo | None, zone_name: str, pods: Sequence[str] = (),
             only_pod: str | None = None, state_rates: dict[str, float] | None = None,
             state_pod_ids: dict[str, list[str]] | None = None, notes: list[str] | None = None) -> Report:
    """The report from what was read (pure)."""
    notes = list(notes or [])
    start, end = since.timestamp(), until.timestamp()
    names = sorted({*pods, *timeline.first_seen, *(r.pod for r in requests if r.pod)})
    if only_pod is not None:
        names = [name for name in names if name == only_pod] or [only_pod]
    days = local_days(since, until, zone)
    reports = []
    for name in names:
        ids = list(dict.fromkeys([*timeline.pod_ids.get(name, []), *(state_pod_ids or {}).get(name, [])]))
        rate = timeline.rates.get(name) or (state_rates or {}).get(name, 0.0)
        billed = [b for b in timeline.billed if b.pod == name and b.end > start and b.start < end]
        wakes = [w for w in timeline.wakes if w.pod == name and start <= w.opened_at < end]
        pod_requests = [r for r in requests if r.pod == name]
        served = [r for r in pod_requests if r.activity]
        _attach_waits(wakes, pod_requests)
        boots = [w.boot_seconds for w in wakes if w.boot_seconds is not None] or timeline.boots.get(name, [])
        boot = statistics.median(boots) if boots else DEFAULT_BOOT_SECONDS
        first = min([timeline.first_seen.get(name, math.inf), *(r.at for r in pod_requests)])
        window_start = max(start, first) if first < math.inf else start
        sessions = oracle_sessions([(r.at, r.ended_at) for r in served if r.pod_id is not None], boot)
        if records is None:
            pod_records: list[BillingRecord] | None = None
        else:
            pod_records = [record for record in records if record.pod_id in ids]
        rows = [_day_row(name, day, day_start, day_end, rate=rate, billed=billed, wakes=wakes, served=served,
                         records=pod_records, window_start=window_start, window_end=end, boot=boot,
                         sessions=sessions)
                for day, day_start, day_end in days]
        reports.append(PodReport(name, rate, ids, window_start, boot, rows, _total(name, rows), billed, wakes,
                                 served, sessions))
        if not rate:
            notes.append(f"pod {name}: no $/h known (no pod created in the event log): always-on and oracle are 0")
    grand = _total("all", [report.total for report in reports])
    return Report(since, until, zone_name, reports, grand, records is not None, notes)


def _total(pod: str, rows: Sequence[Row]) -> Row:
    total = Row("total", pod)
    for row in rows:
        total.add(row)
    sources = {row.cost_source for row in rows}
    total.cost_source = sources.pop() if len(sources) == 1 else ("mixed" if sources else "billing")
    return total


def _attach_waits(wakes: list[Wake], requests: Sequence[LoggedRequest]) -> None:
    """Each wake's wait: the longest wait felt by a request that arrived for it (from just before the lease
    opened to its ready; `LoggedRequest.felt_wait_seconds`); ready − opened when the request log has none."""
    waited = sorted((r.at, wait) for r in requests if (wait := r.felt_wait_seconds) is not None)
    previous_end = -math.inf  # a request that waited for the wake before arrived before that one's ready
    for index, wake in enumerate(wakes):
        following = wakes[index + 1].opened_at if index + 1 < len(wakes) else math.inf
        until = min(following, wake.ready_at if wake.ready_at is not None else math.inf)
        since = max(wake.opened_at - WAKE_LEAD_SECONDS, previous_end)
        previous_end = wake.ready_at if wake.ready_at is not None else wake.opened_at
        felt = [seconds for at, seconds in waited if since <= at <= until]
        if felt:
            wake.wait_seconds = max(felt)
        elif wake.ready_at is not None:
            wake.wait_seconds = wake.ready_at - wake.opened_at


def _day_row(pod: str, day: str, day_start: float, day_end: float, *, rate: float, billed: list[Billed],
             wakes: list[Wake], served: list[LoggedRequest], records: list[BillingRecord] | None,
             window_start: float, window_end: float, boot: float, sessions: list[tuple[float, float]]) -> Row:
    row = Row(day, pod)
    lo, hi = max(day_start, window_start), min(day_end, window_end)
    row.always_on_usd = rate * max(0.0, hi - lo) / 3600
    row.gpu_hours = sum(_overlap(b.start, b.end, day_start, day_end) for b in billed) / 3600
    if records is None:
        row.cost_usd, row.cost_source = row.gpu_hours * rate, "estimate"
    else:
        mine = [r for r in records if r.start is not None and day_start <= r.start.timestamp() < day_end]
        storage = sum(r.disk_amount_usd or 0.0 for r in mine)
        row.storage_usd = storage
        row.cost_usd = sum(r.total_amount_usd for r in mine) - storage
    today = [r for r in served if day_start <= r.at < day_end]
    row.requests = len(today)
    row.failed_requests = sum(1 for r in today if r.status >= 400)
    row.tokens_in = sum(r.tokens_in or 0 for r in today)
    row.tokens_out = sum(r.tokens_out or 0 for r in today)
    day_wakes = [w for w in wakes if day_start <= w.opened_at < day_end]
    row.cold_starts = len(day_wakes)
    row.waits_seconds = [w.wait_seconds for w in day_wakes if w.wait_seconds is not None]
    for stretch in billed:
        if stretch.ended_by is not None and day_start <= stretch.end < day_end:
            row.idle_billed_hours += idle_tail_seconds(stretch, served) / 3600
    row.oracle_usd = rate * sum(e - s + boot for s, e in sessions if day_start <= s < day_end) / 3600
    return row


def idle_tail_seconds(stretch: Billed, served: Sequence[LoggedRequest]) -> float:
    """Billed time after the last request's end (or the pod being ready) until the stretch ended."""
    ends = [r.ended_at for r in served if stretch.start <= r.at <= stretch.end]
    busy_until = max([*ends, stretch.ready_at or stretch.start])
    return max(0.0, stretch.end - busy_until)


def oracle_sessions(serving: Iterable[tuple[float, float]], boot_seconds: float) -> list[tuple[float, float]]:
    """The oracle's billed sessions (each also pays one boot before it): serving intervals merged where the
    gap between them is shorter than a boot (stopping would cost more than it saves)."""
    sessions: list[tuple[float, float]] = []
    for start, end in sorted(serving):
        if sessions and start - sessions[-1][1] < boot_seconds:
            sessions[-1] = (sessions[-1][0], max(sessions[-1][1], end))
        else:
            sessions.append((start, end))
    return sessions


def local_days(since: datetime, until: datetime, zone: tzinfo | None) -> list[tuple[str, float, float]]:
    """(YYYY-MM-DD, start, end) of each local day the window touches, clipped to the window (DST-safe)."""
    from runpod_manager.policy import local_day_start

    days = []
    day = since.astimezone(zone).date() if zone is not None else since.astimezone().date()
    while True:
        start = local_day_start(day, zone).timestamp()
        following = day + timedelta(days=1)
        end = local_day_start(following, zone).timestamp()
        if start >= until.timestamp():
            break
        days.append((day.isoformat(), max(start, since.timestamp()), min(end, until.timestamp())))
        day = following
    return days


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

