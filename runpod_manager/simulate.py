"""`rpm simulate`: replay a request trace through the real planner under several policies, on a simulated
clock and a model of RunPod, and compare what each costs and how long requests wait for a cold start.

The planner is `policy.plan` itself, called exactly when a real pass would act. A pass that has nothing
to do changes nothing, so the simulator does not run the thousands of quiet passes a week holds: it jumps
the clock to the next moment something can change — a request, a boot finishing, or the next limit (the
idle end, the lease deadline, the spend cap) — and runs the pass at the first tick of the policy's pass
grid at or after it (the proxy's `reconcile_interval_seconds`, or cron's 5 minutes). Requests to a running
pod only move the idle end, so they are consumed in a tight loop without a pass. A wake runs its own pass
at once, as `control.start` does. What the actions do (billing starts and stops, boots take their time, a
resume may be refused) is this module's model of RunPod:

- GPU billed per second (each billed stretch rounded up to a whole second) at `rate_usd_per_hour`, from
  create or resume until stop or terminate — booting included, as RunPod bills from the rental;
- storage while stopped: `storage_gb` × `storage_usd_per_gb_month` (RunPod: $0.20/GB-month for a stopped
  pod's volume; the container disk is not kept); a terminated pod costs nothing;
- boot times (to the model answering) drawn from log-normal distributions given by a median and a p95: a
  resume (the model loads again) and a fresh start (image pull, weights download, load);
- a resume is refused (the host's GPU is taken) with probability `refused_resume_rate`; the planner then
  replaces the pod (a fresh start) or fails the wake, as `[limits] on_resume_failure` says.

Policies: `always-on` (the pod runs the whole window; no waits), `cron-5min` (the config, with only a
watchdog every 5 minutes to enforce idle stop and the limits), `rpm` (the config as it is), a sweep of
idle timeouts × {stop, terminate}, and `oracle` (knows the future: runs exactly while requests are served,
started one resume boot ahead, stopped in any gap longer than a boot; nobody waits). Random draws use
separate streams per kind (the n-th resume takes the same time under every policy), seeded: a run is
deterministic for its seed.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import io
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from runpod_manager import policy
from runpod_manager.config import Config, parse_warm_hours
from runpod_manager.errors import UsageError
from runpod_manager.paths import Paths
from runpod_manager.policy import Action, ActionKind, Activity, Observation
from runpod_manager.report import oracle_sessions, percentile
from runpod_manager.runpod.models import Pod, PodStatus
from runpod_manager.state import Lease, PodRecord

CRON_INTERVAL_SECONDS = 300.0
MIN_SAVING_SHARE = 0.01  # a recommended change saves at least this share of the current cost
DEFAULT_IDLE_TIMEOUTS = (60, 120, 300, 600, 900, 1800, 3600)
DEFAULT_RATE_USD_PER_HOUR = 0.69  # RunPod's Secure Cloud RTX 4090, the default [pod] gpu_types
STOPPED_STORAGE_USD_PER_GB_MONTH = 0.20  # RunPod's price for a stopped pod's volume disk
DEFAULT_REQUEST_SECONDS = 1.0  # a trace file's request without a duration
DEFAULT_RESUME_BOOT, DEFAULT_FRESH_BOOT = "30:75", "180:420"  # median:p95 seconds, assumed for a 7B-class model
MIN_BOOT_SAMPLES = 3  # measured boots in the event log that replace the assumption
MAX_TRACE_BYTES = 512 * 1024 * 1024
SECONDS_PER_MONTH = 30 * 86400
PROFILES = ("solo", "team", "nightly")
PROFILE_WEEK = date(2026, 1, 5)  # a Monday: profiles are placed on a fixed week, so a seed is a trace


# ------------------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class BootTime:
    """A log-normal boot time given by its median and 95th percentile (equal: always the median)."""

    median_seconds: float
    p95_seconds: float

    @classmethod
    def parse(cls, text: str, option: str) -> BootTime:
        """`30` or `30:75` (median:p95, seconds)."""
        median, _, p95 = text.partition(":")
        try:
            values = cls(float(median), float(p95 or median))
        except ValueError:
            raise UsageError(f"{option} {text!r}: expected MEDIAN or MEDIAN:P95 in seconds, e.g. 30:75") from None
        if not 0 < values.median_seconds <= values.p95_seconds < math.inf:
            raise UsageError(f"{option} {text!r}: the median must be positive and at most the p95")
        return values

    def draw(self, rng: random.Random) -> float:
        if self.p95_seconds == self.median_seconds:
            return self.median_seconds
        sigma = math.log(self.p95_seconds / self.median_seconds) / 1.6448536269514722
        return self.median_seconds * math.exp(sigma * rng.gauss(0.0, 1.0))

    def to_json(self) -> dict[str, float]:
        return {"median_seconds": self.median_seconds, "p95_seconds": self.p95_seconds}


@dataclass(frozen=True)
class RunPodModel:
    rate_usd_per_hour: float = DEFAULT_RATE_USD_PER_HOUR
    storage_gb: float = 0.0
    storage_usd_per_gb_month: float = STOPPED_STORAGE_USD_PER_GB_MONTH
    resume_boot: BootTime = BootTime(30.0, 75.0)  # DEFAULT_RESUME_BOOT
    fresh_boot: BootTime = BootTime(180.0, 420.0)  # DEFAULT_FRESH_BOOT
    refused_resume_rate: float = 0.02
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"rate_usd_per_hour": self.rate_usd_per_hour, "storage_gb": self.storage_gb,
                "storage_usd_per_gb_month": self.storage_usd_per_gb_month, "resume_boot": self.resume_boot.to_json(),
                "fresh_boot": self.fresh_boot.to_json(), "refused_resume_rate": self.refused_resume_rate,
                "seed": self.seed}


# ------------------------------------------------------------------------------------------------ traces


@dataclass
class Trace:
    """Requests as (arrival, duration) in unix seconds, sorted, within [start, end)."""

    name: str
    description: str
    arrivals: list[float]
    durations: list[float]
    start: float
    end: float

    def __post_init__(self) -> None:
        order = sorted(range(len(self.arrivals)), key=self.arrivals.__getitem__)
        self.arrivals = [self.arrivals[i] for i in order]
        self.durations = [max(0.0, self.durations[i]) for i in order]

    @property
    def ends(self) -> list[float]:
        return [a + d for a, d in zip(self.arrivals, self.durations, strict=True)]

    def active_hours(self) -> int:
        """Clock hours with at least one request: what "an hour of work" costs is cost ÷ these."""
        return len({int(arrival // 3600) for arrival in self.arrivals})

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "requests": len(self.arrivals),
                "start": _utc(self.start), "end": _utc(self.end), "days": round((self.end - self.start) / 86400, 3),
                "active_hours": self.active_hours()}


def day_window(arrivals: Sequence[float], zone: tzinfo | None) -> tuple[float, float]:
    """From the local midnight before the first request to the one after the last."""
    first = datetime.fromtimestamp(min(arrivals), UTC).astimezone(zone).date()
    last = datetime.fromtimestamp(max(arrivals), UTC).astimezone(zone).date()
    return (policy.local_day_start(first, zone).timestamp(),
            policy.local_day_start(last + timedelta(days=1), zone).timestamp())


def trace_from_log(requests_path: Path, *, since: float, until: float, pod: str | None,
                   zone: tzinfo | None) -> Trace:
    from runpod_manager.requestlog import read_requests

    served = [r for r in read_requests(requests_path, since=since, until=until, pod=pod) if r.activity]
    if not served:
        raise UsageError(f"the request log ({requests_path}) has no requests in that window",
                         hint="use --profile solo|team|nightly, or --trace FILE")
    start, end = day_window([r.at for r in served], zone)
    return Trace("log", f"{len(served)} requests from the request log", [r.at for r in served],
                 [r.duration_seconds for r in served], start, end)


def trace_from_file(path: Path, zone: tzinfo | None) -> Trace:
    """A JSONL file (objects with `time` and optionally `duration_seconds` or `duration_ms`; request-log lines
    as they are) or a CSV file (`.csv`: a header naming `time` and optionally `duration_seconds`). `time` is
    ISO 8601 (UTC when it names no zone) or unix seconds."""
    from runpod_manager.paths import read_regular_file
    from runpod_manager.requestlog import proxied

    try:
        text = read_regular_file(path, max_bytes=MAX_TRACE_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--trace {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    rows: Iterator[dict[str, Any]]
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(io.StringIO(text))
    else:
        rows = (_json_object(line, path, number) for number, line in enumerate(text.splitlines(), 1) if line.strip())
    arrivals, durations = [], []
    for number, row in enumerate(rows, 1):
        if "status" in row and "cache" in row and not proxied(row.get("cache"), row.get("route"), row.get("pod")):
            continue  # a request-log line the proxy answered itself: not activity
        arrivals.append(_trace_time(row.get("time"), path, number))
        durations.append(_trace_duration(row, path, number))
    if not arrivals:
        raise UsageError(f"--trace {path}: no requests in it")
    start, end = day_window(arrivals, zone)
    return Trace(path.name, f"{len(arrivals)} requests from {path.name}", arrivals, durations, start, end)


def _json_object(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError:
        raise UsageError(f"--trace {path}: line {number} is not JSON") from None
    if not isinstance(row, dict):
        raise UsageError(f"--trace {path}: line {number} is not a JSON object")
    return row


def _trace_time(value: Any, path: Path, number: int) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    raise UsageError(f"--trace {path}: request {number} has no readable `time` (ISO 8601 or unix seconds)")


def _trace_duration(row: dict[str, Any], path: Path, number: int) -> float:
    for key, per_second in (("duration_seconds", 1.0), ("duration_ms", 1000.0)):
        value = row.get(key)
        if value not in (None, ""):
            try:
                seconds = float(value) / per_second
            except (TypeError, ValueError):
                raise UsageError(f"--trace {path}: request {number}: {key} is not a number") from None
            if not 0 <= seconds < 86400:
                raise UsageError(f"--trace {path}: request {number}: {key} out of range")
            return seconds
    return DEFAULT_REQUEST_SECONDS


# ----------------------------------------------------------------------------------------------- profiles


def profile_trace(name: str, *, seed: int, zone: tzinfo | None, days: int = 7) -> Trace:
    """A built-in, clearly synthetic trace on the week of PROFILE_WEEK (Monday) in the config's zone."""
    rng = random.Random(f"{name}:{seed}")
    requests: list[tuple[float, float]] = []
    if name == "solo":
        for offset in range(days):
            day = PROFILE_WEEK + timedelta(days=offset)
            if day.weekday() < 5:
                requests += _workday(rng, day, zone, intensity=1.0)
        description = ("synthetic: one developer, Mon-Fri ~09:00-18:00 with lunch and two meetings; autocomplete "
                       "bursts while coding (a request every ~0.45 s for 5-40 s), chat now and then")
    elif name == "team":
        zones = ("America/Los_Angeles", "America/New_York", "Europe/London", "Europe/Berlin", "Asia/Kolkata")
        for person in zones:
            for offset in range(days):
                day = PROFILE_WEEK + timedelta(days=offset)
                if day.weekday() < 5:
                    requests += _workday(rng, day, ZoneInfo(person), intensity=0.5)
        description = ("synthetic: five developers in Los Angeles, New York, London, Berlin and Kolkata, each a "
                       "lighter solo workday in their own zone")
    elif name == "nightly":
        for offset in range(days):
            day = PROFILE_WEEK + timedelta(days=offset)
            at = _local(day, 2.0, zone) + rng.uniform(0, 300)
            for _ in range(3000):  # one worker: each request starts when the previous one ends
                duration = rng.uniform(1.0, 3.0)
                requests.append((at, duration))
                at += duration + 0.05
        description = "synthetic: a nightly batch at 02:00, 3000 requests back to back (1-3 s each), nothing else"
    else:
        raise UsageError(f"--profile {name!r}: choose one of {', '.join(PROFILES)}")
    start = policy.local_day_start(PROFILE_WEEK, zone).timestamp()
    end = policy.local_day_start(PROFILE_WEEK + timedelta(days=days), zone).timestamp()
    kept = [(a, d) for a, d in requests if start <= a < end]
    return Trace(name, description, [a for a, _ in kept], [d for _, d in kept], start, end)


def _local(day: date, hour: float, zone: tzinfo | None) -> float:
    return policy.local_day_start(day, zone).timestamp() + hour * 3600


def _workday(rng: random.Random, day: date, zone: tzinfo | None, *, intensity: float) -> list[tuple[float, float]]:
    """Arrive ~09:00, lunch ~12:30 for 45-75 min, leave ~18:00, two meetings; coding episodes of autocomplete
    bursts (and a chat now and then) separated by reading and thinking."""
    arrive = _local(day, 9.0, zone) + rng.gauss(0, 900)
    lunch = _local(day, 12.5, zone) + rng.gauss(0, 900)
    lunch_end = lunch + rng.uniform(45, 75) * 60
    leave = _local(day, 18.0, zone) + rng.gauss(0, 1800)
    busy = [(lunch, lunch_end)]
    for _ in range(2):
        meeting = rng.uniform(arrive, leave - 3600)
        busy.append((meeting, meeting + rng.choice((30, 45, 60)) * 60))
    requests: list[tuple[float, float]] = []
    now = arrive
    while now < leave:
        episode_end = min(now + rng.uniform(10, 40) * 60, leave)
        while now < episode_end:
            blocked = next((end for start, end in busy if start <= now < end), None)
            if blocked is not None:
                now = blocked
                continue
            if rng.random() < 0.06 * intensity:  # a chat request, streamed
                duration = rng.uniform(4, 25)
                requests.append((now, duration))
                now += duration + rng.uniform(5, 40)
                continue
            burst_end = now + rng.uniform(5, 40)
            while now < burst_end:
                requests.append((now, rng.uniform(0.15, 0.6)))
                now += rng.uniform(0.25, 0.65) / intensity
            now += rng.uniform(2, 20)
        now += min(rng.expovariate(1 / 240), 1200)  # reading, thinking, a coffee
    return [(a, d) for a, d in requests if not any(start <= a < end for start, end in busy)]


# ----------------------------------------------------------------------------------------------- results


@dataclass
class PolicyResult:
    name: str
    description: str
    gpu_seconds: float = 0.0
    storage_usd: float = 0.0
    rate_usd_per_hour: float = 0.0
    waits: list[float] = field(default_factory=list)  # per cold start: its first request's wait
    waited_requests: int = 0
    failed_requests: int = 0
    planner_calls: int = 0
    sessions: int = 0  # times the pod was started (cold starts felt, or the oracle's sessions)
    idle_timeout_seconds: int | None = None
    idle_action: str | None = None

    @property
    def cost_usd(self) -> float:
        return self.gpu_seconds / 3600 * self.rate_usd_per_hour + self.storage_usd

    def to_json(self, active_hours: int) -> dict[str, Any]:
        waits = self.waits
        return {
            "name": self.name, "description": self.description, "cost_usd": round(self.cost_usd, 4),
            "gpu_hours": round(self.gpu_seconds / 3600, 4), "storage_usd": round(self.storage_usd, 4),
            "cold_starts": len(waits), "wait_p50_seconds": _round(percentile(waits, 0.5)),
            "wait_p95_seconds": _round(percentile(waits, 0.95)), "wait_max_seconds": _round(max(waits, default=None)),
            "usd_per_active_hour": round(self.cost_usd / active_hours, 4) if active_hours else None,
            "waited_requests": self.waited_requests, "failed_requests": self.failed_requests,
            "starts": self.sessions, "idle_timeout_seconds": self.idle_timeout_seconds,
            "idle_action": self.idle_action, "planner_calls": self.planner_calls,
        }


@dataclass
class Recommendation:
    max_p95_wait_seconds: float
    best: PolicyResult | None  # None: no idle setting meets the wait
    current: PolicyResult
    changes: dict[str, Any]  # [limits] key -> value; empty: keep the config

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {"max_p95_wait_seconds": self.max_p95_wait_seconds, "policy": best.name if best else None,
                "changes": {f"limits.{key}": value for key, value in self.changes.items()},
                "cost_usd": None if best is None else round(best.cost_usd, 4),
                "current_cost_usd": round(self.current.cost_usd, 4),
                "saved_usd": None if best is None else round(self.current.cost_usd - best.cost_usd, 4)}


@dataclass
class Simulation:
    trace: Trace
    model: RunPodModel
    policies: list[PolicyResult]
    recommendation: Recommendation | None = None
    notes: list[str] = field(default_factory=list)

    def policy(self, name: str) -> PolicyResult:
        return next(result for result in self.policies if result.name == name)

    def to_json(self) -> dict[str, Any]:
        active = self.trace.active_hours()
        return {"trace": self.trace.to_json(), "model": self.model.to_json(),
                "policies": [result.to_json(active) for result in self.policies],
                "recommendation": None if self.recommendation is None else self.recommendation.to_json(),
                "notes": self.notes}


# ------------------------------------------------------------------------------------------------ engine


class _Streams:
    """Separate seeded random streams, so the n-th resume (or create, or refusal) is the same under every
    policy and the policies differ only by what they decide."""

    def __init__(self, seed: int) -> None:
        self.resume = random.Random(f"resume:{seed}")
        self.fresh = random.Random(f"fresh:{seed}")
        self.refusal = random.Random(f"refusal:{seed}")


_STOPPED, _BOOTING, _RUNNING = "stopped", "booting", "running"
_POD_STATUS = {_STOPPED: PodStatus.EXITED, _BOOTING: PodStatus.STARTING, _RUNNING: PodStatus.RUNNING}


class _World:
    """One policy's replay: the record the planner sees, the pod RunPod would have, and the bill."""

    def __init__(self, trace: Trace, config: Config, model: RunPodModel, *, pass_interval: float,
                 result: PolicyResult) -> None:
        self.trace, self.config, self.model = trace, config, model
        self.pass_interval = pass_interval
        self.result = result
        self.streams = _Streams(model.seed)
        self.record = PodRecord(config_name=config.pod.name)
        self.status: str | None = None  # None: no pod
        self.pod_serial = 0
        self.billed_since = 0.0
        self.stopped_since = 0.0
        self.ready_at = math.inf
        self.started_at: datetime | None = None
        self.last_end = -math.inf  # the latest end of a request seen (activity)
        self.min_pass = -math.inf  # a pass that changed nothing is not repeated before the next tick
        self.day_stretches: list[tuple[float, float]] = []  # billed stretches, for spend today (the cap)
        self.rate = model.rate_usd_per_hour
        self.now = trace.start

    # -- clock and grid

    def tick_at_or_after(self, moment: float) -> float:
        """The first pass of the grid (every pass_interval from the trace's start) at or after `moment`."""
        origin, interval = self.trace.start, self.pass_interval
        moment = max(moment, self.min_pass)
        if moment == math.inf:
            return math.inf
        return origin + math.ceil((moment - origin) / interval - 1e-9) * interval

    def next_limit(self) -> float:
        """When a pass could next act: idle end (only while the pod runs), the lease deadline, the spend cap."""
        lease = self.record.lease
        warm = self.next_warm()
        if lease is None:
            return warm if self.status in (None, _STOPPED) else self.trace.start  # nothing may run
        limits = self.config.limits
        now = _dt(self.now)
        moment = min(policy.lease_ends_at(now, self.config, lease).timestamp(), warm)
        if self.status == _RUNNING:
            # Idle since as the planner will see it once the requests in flight have ended (the simulator knows).
            known = max(self.now, self.last_end)
            idle_end = policy.idle_ends_at(now, self.config, policy.last_active_at(_dt(known), lease,
                                                                                   self.activity(known)))
            if idle_end is not None:
                moment = min(moment, idle_end.timestamp())
            window = policy.warm_window_at(now, self.config) if self.config.warm_windows else None
            if window is not None:  # the idle timeout shortens when the window ends
                moment = min(moment, window[1].timestamp())
            cap = limits.max_daily_spend_usd
            if cap and self.rate:
                moment = min(moment, self.now + max(0.0, cap - self.spend_today(self.now)) / self.rate * 3600)
        return moment

    def next_warm(self) -> float:
        """When the next warm_hours lease is due (now, if one is due and not yet opened); inf without windows."""
        if not self.config.warm_windows:
            return math.inf
        now = _dt(self.now)
        if policy.warm_lease_due(now, self.config, self.record) is not None:
            return self.now
        due = policy.next_warm_lease_at(now, self.config)
        return math.inf if due is None else due.timestamp()

    # -- the bill

    def start_billing(self, now: float) -> None:
        self.billed_since = now
        if self.status == _STOPPED:
            self.end_storage(now)

    def end_billing(self, now: float) -> None:
        stretch = now - self.billed_since
        self.result.gpu_seconds += math.ceil(stretch - 1e-9) if stretch > 0 else 0.0
        self.day_stretches.append((self.billed_since, now))

    def end_storage(self, now: float) -> None:
        gb_month = self.model.storage_gb * self.model.storage_usd_per_gb_month
        self.result.storage_usd += gb_month * max(0.0, now - self.stopped_since) / SECONDS_PER_MONTH

    def spend_today(self, now: float) -> float:
        day_start = policy.local_day_start(policy.local_day(_dt(now), self.config.zone), self.config.zone).timestamp()
        self.day_stretches = [(s, e) for s, e in self.day_stretches if e > day_start]
        seconds = sum(min(e, now) - max(s, day_start) for s, e in self.day_stretches if min(e, now) > max(s, day_start))
        if self.status in (_BOOTING, _RUNNING):
            seconds += max(0.0, now - max(self.billed_since, day_start))
        return seconds / 3600 * self.rate

    # -- what the planner sees

    def observation(self, now: float, *, resume_refused: bool = False) -> Observation:
        pod = None
        if self.status is not None:
            status = _POD_STATUS[self.status]
            pod = Pod(id=self.record.pod_id or "", name=f"{self.config.pod_name_prefix}sim{self.pod_serial}",
                      status=status, status_text=status.value, cost_per_hour=0.0 if status == PodStatus.EXITED
                      else self.rate, started_at=self.started_at)
        return Observation(pod=pod, pod_observed=True, spend_today_usd=self.spend_today(now),
                           resume_refused=resume_refused, pod_ready=self.status == _RUNNING)

    def activity(self, now: float) -> Activity:
        last = None if self.last_end == -math.inf else _dt(min(self.last_end, now))
        return Activity(last_request_at=last)

    def plan(self, now: float, *, resume_refused: bool = False) -> policy.Plan:
        self.result.planner_calls += 1
        # Looked up on the module at each call, so a test's spy on policy.plan sees every one.
        return policy.plan(_dt(now), self.config, self.record, self.observation(now, resume_refused=resume_refused),
                           self.activity(now))

    # -- passes and actions

    def run_pass(self, now: float) -> bool:
        """One pass, as Lifecycle.run_pass: plan, apply; a refused resume is planned again. Returns whether
        anything changed."""
        changed = self.open_warm_lease(now)
        refused = False
        for _attempt in range(3):
            plan = self.plan(now, resume_refused=refused)
            refused = False
            for action in plan.actions:
                outcome = self.apply(action, now)
                changed |= outcome != "none"
                if outcome == "refused":
                    refused = True
                    break
            if not refused:
                break
        return changed

    def apply(self, action: Action, now: float) -> str:
        kind, record = action.kind, self.record
        if kind == ActionKind.CLOSE_LEASE:
            record.lease, record.last_lease_end_reason = None, action.reason
            if action.limit is policy.Limit.SPEND_CAP:
                record.spend_cap_day = policy.local_day(_dt(now), self.config.zone).isoformat()
            record.lease_end_action = (action.lease_end or ActionKind.TERMINATE).value  # as Lifecycle: the plan's
            return "changed"
        if kind == ActionKind.RESUME and self.status == _STOPPED:
            if self.streams.refusal.random() < self.model.refused_resume_rate:
                return "refused"
            self.boot(now, self.model.resume_boot.draw(self.streams.resume), fresh=False)
            return "changed"
        if kind in (ActionKind.CREATE, ActionKind.REPLACE):
            self.remove(now)  # a replaced pod is terminated once its replacement is ready; its last minutes
            self.boot(now, self.model.fresh_boot.draw(self.streams.fresh), fresh=True)  # of storage are ignored
            return "changed"
        if kind == ActionKind.STOP and self.status in (_BOOTING, _RUNNING):
            self.end_billing(now)
            self.status, self.stopped_since, self.ready_at = _STOPPED, now, math.inf
            return "changed"
        if kind in (ActionKind.TERMINATE, ActionKind.FORGET_POD) and self.status is not None:
            self.remove(now)
            return "changed"
        if kind == ActionKind.ALARM:
            return "alarm"
        return "none"

    def boot(self, now: float, seconds: float, *, fresh: bool) -> None:
        if fresh:
            self.pod_serial += 1
            self.record.pod_id = f"sim-{self.pod_serial}"
        self.start_billing(now)
        self.status, self.ready_at = _BOOTING, now + seconds
        self.started_at = _dt(now)
        self.result.sessions += 1

    def remove(self, now: float) -> None:
        if self.status in (_BOOTING, _RUNNING):
            self.end_billing(now)
        elif self.status == _STOPPED:
            self.end_storage(now)
        self.status, self.ready_at = None, math.inf
        self.record.pod_id = None

    def open_warm_lease(self, now: float) -> bool:
        """As `control._open_warm_lease`: one lease per warm_hours window, opened by "warm" unless refused."""
        record = self.record
        window = policy.warm_lease_due(_dt(now), self.config, record)
        if window is None:
            return False
        record.warm_opened_for = window[0].isoformat()
        if record.lease is None and not policy.start_refusal(_dt(now), self.config, record, self.spend_today(now)):
            record.lease = Lease(opened_at=_dt(now), deadline=policy.lease_deadline(_dt(now), self.config),
                                 opened_by="warm")
            record.last_activity_at = _dt(now)
            record.last_lease_end_reason = record.lease_end_action = None
        return True

    def wake(self, now: float) -> str:
        """A request found no pod running: `control.start(opened_by="wake")` — the refusal check, the lease,
        one pass. Returns the pod's status after it ("booting", "running"), or "failed" (refused by a limit,
        or the pod could not be started)."""
        record = self.record
        if policy.start_refusal(_dt(now), self.config, record, self.spend_today(now)):
            return "failed"
        if record.lease is None:
            record.lease = Lease(opened_at=_dt(now), deadline=policy.lease_deadline(_dt(now), self.config),
                                 opened_by="wake")
            record.last_activity_at = _dt(now)
            record.last_lease_end_reason = record.lease_end_action = None
        self.run_pass(now)
        if self.status in (_BOOTING, _RUNNING):
            return self.status
        if record.lease is not None:  # control._fail_start: a start that fails closes its lease
            record.lease, record.lease_end_action = None, "stop" if self.status is not None else "terminate"
        return "failed"

    # -- the replay

    def replay(self) -> PolicyResult:
        arrivals = self.trace.arrivals
        count, horizon = len(arrivals), self.trace.end
        index, quiet = 0, 0
        while True:
            arrival = arrivals[index] if index < count else math.inf
            limit = self.next_limit()
            pass_at = self.tick_at_or_after(limit) if limit < math.inf else math.inf
            moment = min(arrival, self.ready_at, pass_at)
            if moment >= horizon:
                break
            self.now = moment
            if self.ready_at <= arrival and self.ready_at <= pass_at:
                self.status, self.ready_at = _RUNNING, math.inf
                self.min_pass, quiet = -math.inf, 0
            elif pass_at < arrival:
                if self.run_pass(pass_at):
                    self.min_pass, quiet = -math.inf, 0
                else:  # nothing to do after all: the next tick, not this one again
                    quiet += 1
                    # A limit the planner keeps not acting on must not cost a pass per tick: wait for a request.
                    self.min_pass = pass_at + self.pass_interval * 0.5 if quiet < 3 else arrival
            elif self.status == _RUNNING and self.record.lease is not None:
                index = self.serve_running(index, pass_at)
            elif self.status == _BOOTING:
                index = self.serve_waiting(index)
            else:
                outcome = self.wake(arrival)
                self.min_pass, quiet = -math.inf, 0
                if outcome == _BOOTING:
                    self.result.waits.append(self.ready_at - arrival)
                    index = self.serve_waiting(index)
                elif outcome == "failed":
                    self.result.failed_requests += 1
                    index += 1
        self.finish(horizon)
        return self.result

    def serve_running(self, index: int, pass_at: float) -> int:
        """Requests to a running pod: each moves the idle end; consumed until one arrives after the pass the
        idle end (as moved so far) would bring. No planner call: a pass with activity does nothing."""
        arrivals, durations = self.trace.arrivals, self.trace.durations
        count, last_end = len(arrivals), self.last_end
        while index < count:
            arrival = arrivals[index]
            if arrival > pass_at:
                self.last_end = last_end
                limit = self.next_limit()
                pass_at = self.tick_at_or_after(limit) if limit < math.inf else math.inf
                if arrival > pass_at:
                    break
            end = arrival + durations[index]
            if end > last_end:  # noqa: PLR1730 - max() is a call, and every request goes through here
                last_end = end
            index += 1
        self.last_end = last_end
        return index

    def serve_waiting(self, index: int) -> int:
        """Requests that arrive while the pod boots wait for it; they are activity from its ready on."""
        arrivals, durations = self.trace.arrivals, self.trace.durations
        stop = bisect.bisect_left(arrivals, self.ready_at, lo=index)
        if stop > index:
            self.result.waited_requests += stop - index
            self.last_end = max(self.last_end, self.ready_at + max(durations[index:stop]))
        return stop

    def finish(self, horizon: float) -> None:
        """Bill what still runs, or is kept, up to the end of the window."""
        if self.status in (_BOOTING, _RUNNING):
            self.end_billing(horizon)
        elif self.status == _STOPPED:
            self.end_storage(horizon)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _utc(epoch: float) -> str:
    return _dt(epoch).isoformat().replace("+00:00", "Z")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ------------------------------------------------------------------------------------------------ policies


def with_idle(config: Config, idle_timeout_seconds: int, idle_action: str) -> Config:
    return dataclasses.replace(config, limits=dataclasses.replace(
        config.limits, idle_timeout_seconds=idle_timeout_seconds, idle_action=idle_action))


def replay(trace: Trace, config: Config, model: RunPodModel, *, name: str, description: str,
           pass_interval: float) -> PolicyResult:
    limits = config.limits
    result = PolicyResult(name, description, rate_usd_per_hour=model.rate_usd_per_hour,
                          idle_timeout_seconds=limits.idle_timeout_seconds, idle_action=limits.idle_action)
    return _World(trace, config, model, pass_interval=pass_interval, result=result).replay()


def always_on(trace: Trace, model: RunPodModel) -> PolicyResult:
    return PolicyResult("always-on", "the pod runs the whole window; nobody waits",
                        gpu_seconds=trace.end - trace.start, rate_usd_per_hour=model.rate_usd_per_hour)


def oracle(trace: Trace, model: RunPodModel) -> PolicyResult:
    """Knows every request in advance: runs while serving, started one (median) resume boot ahead, stopped in
    any gap longer than a boot (keeping its disk); nobody waits."""
    boot = model.resume_boot.median_seconds
    sessions = oracle_sessions(zip(trace.arrivals, trace.ends, strict=True), boot)
    running = sum(end - start + boot for start, end in sessions)
    stopped = max(0.0, (trace.end - trace.start) - running)
    storage = model.storage_gb * model.storage_usd_per_gb_month * stopped / SECONDS_PER_MONTH
    return PolicyResult("oracle", "knows the future: runs exactly while serving, plus one boot before each session",
                        gpu_seconds=running, storage_usd=storage, rate_usd_per_hour=model.rate_usd_per_hour,
                        sessions=len(sessions))


def with_warm_hours(config: Config, warm_hours: str) -> Config:
    return dataclasses.replace(config, limits=dataclasses.replace(config.limits, warm_hours=warm_hours))


def simulate(trace: Trace, config: Config, model: RunPodModel, *,
             idle_timeouts: Sequence[int] = DEFAULT_IDLE_TIMEOUTS, warm_hours: str | None = None) -> Simulation:
    """Every policy on the trace: always-on, cron-5min, rpm, the sweep, warm-hours (when there is a window:
    `warm_hours`, else the config's), oracle. rpm and the sweep run without warm hours, so the warm-hours row
    shows what the window costs and which cold starts it saves against them."""
    warm = config.limits.warm_hours if warm_hours is None else warm_hours
    config = with_warm_hours(config, "")
    limits = config.limits
    interval = config.proxy.reconcile_interval_seconds
    without = " (without warm_hours: see warm-hours)" if warm else ""
    results = [always_on(trace, model),
               replay(trace, config, model, name="cron-5min", pass_interval=CRON_INTERVAL_SECONDS,
                      description="this config, but only a watchdog every 5 minutes enforces idle stop and limits"),
               replay(trace, config, model, name="rpm", pass_interval=interval,
                      description=f"this config as it is{without}: idle {limits.idle_timeout_seconds} s → "
                                  f"{limits.idle_action}, enforced by the proxy every {interval:g} s")]
    for timeout in idle_timeouts:
        for action in ("stop", "terminate"):
            results.append(replay(trace, with_idle(config, timeout, action), model, pass_interval=interval,
                                  name=f"idle-{timeout}s-{action}", description=f"idle {timeout} s → {action}"))
    if warm:
        results.append(replay(trace, with_warm_hours(config, warm), model, name="warm-hours", pass_interval=interval,
                              description=f"rpm with warm_hours {warm!r}: started {policy.WARM_LEAD_SECONDS} s before "
                                          f"each window, idle {limits.warm_idle_timeout_seconds} s inside"))
    results.append(oracle(trace, model))
    return Simulation(trace, model, results)


def recommend(simulation: Simulation, config: Config, max_p95_wait_seconds: float | None) -> Recommendation:
    """The idle setting (among rpm's and the sweep's) that costs least with a p95 cold-start wait at most the
    limit (default: the current config's, so waits get no worse)."""
    current = simulation.policy("rpm")
    limit = max_p95_wait_seconds
    if limit is None:
        limit = percentile(current.waits, 0.95) or 0.0
    candidates = [result for result in simulation.policies
                  if result.name == "rpm" or result.name.startswith("idle-")]
    fitting = [result for result in candidates if (percentile(result.waits, 0.95) or 0.0) <= limit + 1e-9]
    best = min(fitting, key=lambda result: (round(result.cost_usd, 6), len(result.waits)), default=None)
    changes: dict[str, Any] = {}
    if best is not None and best.name != "rpm":
        if best.idle_timeout_seconds != config.limits.idle_timeout_seconds:
            changes["idle_timeout_seconds"] = best.idle_timeout_seconds
        if best.idle_action != config.limits.idle_action:
            changes["idle_action"] = best.idle_action
        # A change must be worth making: a saving within noise (under 1 %) keeps the config, if it fits.
        worth = best.cost_usd < current.cost_usd * (1 - MIN_SAVING_SHARE)
        if not changes or (not worth and current in fitting):
            best, changes = current, {}
    return Recommendation(limit, best, current, changes)


# ------------------------------------------------------------------------------------------------ command


def run_simulation(config: Config, *, trace: Trace, model: RunPodModel, idle_timeouts: Sequence[int],
                   recommend_change: bool, max_p95_wait_seconds: float | None,
                   notes: Sequence[str] = (), warm_hours: str | None = None) -> Simulation:
    simulation = simulate(trace, config, model, idle_timeouts=idle_timeouts, warm_hours=warm_hours)
    simulation.notes = list(notes)
    if recommend_change:
        simulation.recommendation = recommend(simulation, config, max_p95_wait_seconds)
    return simulation


def run_simulation_command(config: Config, paths: Paths, *, profile: str | None, from_log: bool,
                           trace_file: Path | None, since_text: str, pod: str | None, days: int, seed: int,
                           rate: float | None, storage_gb: float | None, storage_price: float,
                           resume_boot: str | None, fresh_boot: str | None, refused_resume_rate: float,
                           idle_timeouts: str, recommend_change: bool,
                           max_p95_wait_seconds: float | None, warm_hours: str | None = None) -> Simulation:
    """`rpm simulate`: the trace; the model, with what rpm knows of the pod (its last $/h from state or the event
    log; when replaying the request log, its boot times as the event log measured them); the run."""
    from runpod_manager.report import build_timeline, read_events
    from runpod_manager.state import StateStore

    timeouts = parse_timeouts(idle_timeouts)
    if warm_hours:
        try:
            parse_warm_hours(warm_hours)
        except ValueError as exc:
            raise UsageError(f"--warm-hours {warm_hours!r}: {exc}", hint='e.g. "Mon-Fri 08:55-18:00"') from None
    trace, notes = choose_trace(config, profile=profile, trace_file=trace_file, from_log=from_log,
                                requests_path=paths.request_log, since_text=since_text, pod=pod, seed=seed, days=days)
    name = pod or config.pod.name
    timeline = build_timeline(read_events(paths.event_log), until=trace.end)
    known: float | None = None
    if rate is None:
        record = StateStore(paths).load().pods.get(name)
        known = (record.cost_per_hour if record is not None and record.cost_per_hour > 0 else None) or (
            timeline.rates.get(name))
    boots: dict[str, str | None] = {"resume": resume_boot, "created": fresh_boot}
    if trace.name == "log":
        for kind, given in boots.items():
            samples = sorted(b.ready_at - b.start for b in timeline.billed
                             if b.pod == name and b.started_by == kind and b.ready_at is not None)
            if given is None and len(samples) >= MIN_BOOT_SAMPLES:
                median, p95 = percentile(samples, 0.5) or 0.0, percentile(samples, 0.95) or 0.0
                boots[kind] = f"{max(median, 0.1):.3f}:{max(p95, median, 0.1):.3f}"
                notes.append(f"{'resume' if kind == 'resume' else 'create'} boot measured from the event log: "
                             f"median {median:.0f} s, p95 {p95:.0f} s ({len(samples)} starts)")
    model, model_notes = model_from(config, rate=rate, storage_gb=storage_gb, storage_price=storage_price,
                                    resume_boot=boots["resume"] or DEFAULT_RESUME_BOOT,
                                    fresh_boot=boots["created"] or DEFAULT_FRESH_BOOT,
                                    refused_resume_rate=refused_resume_rate, seed=seed, known_rate=known)
    return run_simulation(config, trace=trace, model=model, idle_timeouts=timeouts, recommend_change=recommend_change,
                          max_p95_wait_seconds=max_p95_wait_seconds, notes=[*notes, *model_notes],
                          warm_hours=warm_hours)


def choose_trace(config: Config, *, profile: str | None, trace_file: Path | None, from_log: bool,
                 requests_path: Path, since_text: str, pod: str | None, seed: int, days: int,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> tuple[Trace, list[str]]:
    """--profile, --trace, --from-log; with none, the request log when it has requests, else `solo`."""
    from runpod_manager.report import parse_since

    chosen = sum(bool(x) for x in (profile, trace_file, from_log))
    if chosen > 1:
        raise UsageError("give one of --profile, --trace and --from-log")
    zone = config.zone
    if profile:
        return profile_trace(profile, seed=seed, zone=zone, days=days), []
    if trace_file is not None:
        return trace_from_file(trace_file, zone), []
    until = now()
    since = parse_since(since_text, until, zone).timestamp()
    try:
        return trace_from_log(requests_path, since=since, until=until.timestamp(), pod=pod, zone=zone), []
    except UsageError:
        if from_log:
            raise
    return (profile_trace("solo", seed=seed, zone=zone, days=days),
            ["the request log has no requests in the window: simulating the built-in `solo` profile"])


def model_from(config: Config, *, rate: float | None, storage_gb: float | None, storage_price: float,
               resume_boot: str, fresh_boot: str, refused_resume_rate: float, seed: int,
               known_rate: float | None) -> tuple[RunPodModel, list[str]]:
    notes = []
    if rate is None:
        rate = known_rate
    if rate is None:
        rate = DEFAULT_RATE_USD_PER_HOUR
        notes.append(f"no $/h known for this pod (it never ran): assuming ${rate:.2f}/h (--rate sets it)")
    if not 0 <= refused_resume_rate <= 1:
        raise UsageError(f"--refused-resume-rate must be between 0 and 1, got {refused_resume_rate}")
    if rate < 0 or storage_price < 0 or (storage_gb is not None and storage_gb < 0):
        raise UsageError("--rate, --storage-gb and --storage-usd-per-gb-month must not be negative")
    return RunPodModel(rate_usd_per_hour=rate,
                       storage_gb=float(config.pod.volume_gb) if storage_gb is None else storage_gb,
                       storage_usd_per_gb_month=storage_price,
                       resume_boot=BootTime.parse(resume_boot, "--resume-boot"),
                       fresh_boot=BootTime.parse(fresh_boot, "--fresh-boot"),
                       refused_resume_rate=refused_resume_rate, seed=seed), notes


def parse_timeouts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--idle-timeouts {text!r}: expected seconds separated by commas, e.g. 300,900") from None
    if not values or any(value <= 0 for value in values):
        raise UsageError(f"--idle-timeouts {text!r}: expected positive seconds")
    return sorted(set(values))

