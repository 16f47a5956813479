"""The pure planner: (now, config, record, observation, activity) → Plan(actions, each with a reason).

No I/O and no clock: every input is a plain value, so the rules can be tested exhaustively. The
executor (`lifecycle.py`) observes, calls `plan()`, and applies the actions in order.

Rules, highest priority first (DESIGN.md): spend cap → daily cutoff → runtime limit → idle → recovery →
pending intent → orphans → proxy. A lease is rpm's permission for a pod to run; the limits close it, and
a closed lease never produces a start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from enum import StrEnum

from runpod_manager import podspec
from runpod_manager.config import Config
from runpod_manager.display import usd
from runpod_manager.runpod.models import Pod, PodStatus
from runpod_manager.state import Lease, PodRecord

# Statuses in which a pod holds (and bills) a GPU.
ACTIVE_STATUSES = frozenset({PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING})


class ActionKind(StrEnum):
    CREATE = "create"  # create a new pod for the open lease
    RESUME = "resume"  # start the stopped pod
    REPLACE = "replace"  # create a new pod; keep the old one until the new one is ready
    STOP = "stop"
    TERMINATE = "terminate"
    CLOSE_LEASE = "close_lease"
    FORGET_POD = "forget_pod"  # the pod is gone: drop it from the record
    ADOPT = "adopt"  # a create whose result was not saved: take the pod found by name
    FORGET_INTENT = "forget_intent"  # ... or forget the intent when no such pod exists
    TERMINATE_ORPHAN = "terminate_orphan"
    REPORT_ORPHAN = "report_orphan"
    RESTART_PROXY = "restart_proxy"
    ALARM = "alarm"  # a limit or a wanted pod could not be handled: cron should mail this


class Limit(StrEnum):
    """What closed a lease (`Action.limit` of a CLOSE_LEASE). The values are the names events and JSON carry."""

    SPEND_CAP = "spend_cap"  # the pod's [limits] max_daily_spend_usd, or the account's (all pods together)
    CUTOFF = "cutoff"  # [limits] daily_cutoff passed
    RUNTIME = "runtime"  # the lease's deadline or [limits] runtime_seconds reached
    IDLE = "idle"  # idle_timeout_seconds (warm_idle_timeout_seconds inside a warm_hours window)
    GONE = "gone"  # an adopted pod no longer exists at RunPod


STARTS = frozenset({ActionKind.CREATE, ActionKind.RESUME, ActionKind.REPLACE})
# Limits that exist to end billing (a deadline, the spend cap): when the pod is locked (RunPod refuses its stop),
# they terminate an owned pod instead. Idle and `rpm shutdown --stop` asked for a kept pod: they report the lock.
TERMINATING_LIMITS = frozenset({Limit.SPEND_CAP, Limit.CUTOFF, Limit.RUNTIME})
ENDS = frozenset({ActionKind.STOP, ActionKind.TERMINATE})
# Pod statuses in which the idle limit is checked. A booting pod (PROVISIONING, STARTING) and one whose
# status rpm does not know are left alone; a stopped, failed or vanished pod is not recovered for a
# lease nobody used for idle_timeout_seconds (it would be started only to be stopped again).
IDLE_CHECKED_STATUSES = frozenset({PodStatus.RUNNING, PodStatus.EXITED, PodStatus.ERROR, PodStatus.TERMINATED})


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: str
    pod_id: str | None = None
    pod_name: str | None = None
    # For CLOSE_LEASE: which limit ended it.
    limit: Limit | None = None
    # For CLOSE_LEASE: what the lease's end does to its pod, STOP (kept for a fast resume) or TERMINATE, as the
    # config asks for that limit. The executors (the lifecycle, the simulator) record it as the record's
    # `lease_end_action` and never decide it themselves. The pod's own end action may differ (an adopted pod is
    # only stopped; a locked one is terminated).
    lease_end: ActionKind | None = None

    def describe(self) -> str:
        target = f" {self.pod_id}" if self.pod_id else (f" {self.pod_name}" if self.pod_name else "")
        return f"{self.kind.value}{target}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    def kinds(self) -> list[ActionKind]:
        return [action.kind for action in self.actions]


@dataclass(frozen=True)
class Observation:
    """What the executor saw. `pod` is the record's pod, None when RunPod says it does not exist."""

    pod: Pod | None = None
    # False when the pod could not be observed (API down): absence must not be acted upon then.
    pod_observed: bool = True
    spend_today_usd: float = 0.0
    # Today's spend of every pod of the config (the account cap, [limits] max_daily_spend_usd, binds them all).
    account_spend_today_usd: float = 0.0
    # Pods whose names start with this config's prefix; None when not listed this pass.
    named_pods: tuple[Pod, ...] | None = None
    # The state directory's install id: only a pod whose name carries it can be this install's orphan.
    install_id: str = ""
    # The pod kept while its replacement starts (record.replacing_pod_id), None when gone or not asked.
    replaced_pod: Pod | None = None
    resume_refused: bool = False
    pod_ready: bool = False  # RUNNING and the model server answered through the pod URL
    proxy_running: bool | None = None  # None: not checked / not wanted


@dataclass(frozen=True)
class Activity:
    last_request_at: datetime | None = None
    # Last time the API reported GPU utilisation above 0; None when it never reported any.
    last_gpu_busy_at: datetime | None = None
    proxy_wanted: bool = False


@dataclass(frozen=True)
class Options:
    report_orphans_only: bool = False
    # How an open lease ends on shutdown when the record says nothing else.
    shutdown_action: str = "terminate"


def local_day(now: datetime, zone: tzinfo | None) -> date:
    return now.astimezone(zone).date()


def next_cutoff(after: datetime, config: Config) -> datetime | None:
    """The first daily cutoff strictly after `after`, in the configured zone (DST-safe), as a UTC instant.

    UTC because Python compares two datetimes of the same zone by wall time, ignoring the DST fold: a
    cutoff in the zone compared with a `now` in the zone would be wrong during the repeated hour.
    """
    cutoff = config.cutoff_time
    if cutoff is None:
        return None
    zone = config.zone
    local = after.astimezone(zone)
    day = local.date()
    for offset in range(3):
        candidate_day = day + timedelta(days=offset)
        naive = datetime.combine(candidate_day, cutoff)
        # A wall time that does not exist (spring forward) resolves forward; an ambiguous one (fall back)
        # takes its first occurrence, so the lease ends no later than the user meant.
        candidate = _localize(naive, zone).astimezone(UTC)
        if candidate > after:
            return candidate
    raise AssertionError("a cutoff occurs every day")  # pragma: no cover


# How long before a warm_hours window the lease opens: a create or resume and the model's load fit in it,
# so the pod is ready at the window's start. A constant, not a key: it is about the start path, not a policy.
WARM_LEAD_SECONDS = 300


def warm_window_at(now: datetime, config: Config) -> tuple[datetime, datetime] | None:
    """The warm_hours window containing `now`, as UTC instants (start, end), or None (DST-safe like
    `next_cutoff`: wall times are localized day by day, never shifted by a fixed offset)."""
    return next(iter(_warm_windows_near(now, config, lead_seconds=0)), None)


def warm_start_due(now: datetime, config: Config, lead_seconds: float = WARM_LEAD_SECONDS
                   ) -> tuple[datetime, datetime] | None:
    """The window (start, end) whose lease should be open now, when now is in [start − lead, end)."""
    return next(iter(_warm_windows_near(now, config, lead_seconds)), None)


def warm_lease_due(now: datetime, config: Config, record: PodRecord) -> tuple[datetime, datetime] | None:
    """The window whose warm lease opens now: due (`warm_start_due`) and not yet opened for (one per window,
    so a lease a limit or a shutdown closed inside the window is not opened again)."""
    return next((window for window in _warm_windows_near(now, config, WARM_LEAD_SECONDS)
                 if record.warm_opened_for != window[0].isoformat()), None)


def next_warm_lease_at(after: datetime, config: Config, lead_seconds: float = WARM_LEAD_SECONDS
                       ) -> datetime | None:
    """The first moment strictly after `after` at which a window's warm lease becomes due (its start − lead)."""
    windows = config.warm_windows
    if not windows:
        return None
    zone = config.zone
    lead = timedelta(seconds=lead_seconds)
    today = after.astimezone(zone).date()
    moments = [_localize(datetime.combine(day, window.start), zone).astimezone(UTC) - lead
               for day in (today + timedelta(days=offset) for offset in range(9))
               for window in windows if day.weekday() in window.weekdays]
    return min((moment for moment in moments if moment > after), default=None)


def _warm_windows_near(now: datetime, config: Config, lead_seconds: float) -> list[tuple[datetime, datetime]]:
    """Every window (start, end) with now in [start − lead, end), earliest start first (a window that holds now
    comes before the next one, whose lead may already have begun)."""
    windows = config.warm_windows
    if not windows:
        return []
    zone = config.zone
    lead = timedelta(seconds=lead_seconds)
    today = now.astimezone(zone).date()
    # Windows end by midnight, so only today's can contain now, and tomorrow's only through its lead.
    found = []
    for offset in (0, 1):
        day = today + timedelta(days=offset)
        for window in windows:
            if day.weekday() not in window.weekdays:
                continue
            start = _localize(datetime.combine(day, window.start), zone).astimezone(UTC)
            end = _localize(datetime.combine(day, window.end), zone).astimezone(UTC)
            if start - lead <= now < end:
                found.append((start, end))
    return sorted(found)


def idle_timeout_at(now: datetime, config: Config) -> int:
    """The idle timeout in force at `now`: warm_idle_timeout_seconds inside a warm_hours window."""
    if warm_window_at(now, config) is not None:
        return config.limits.warm_idle_timeout_seconds
    return config.limits.idle_timeout_seconds


def local_day_start(day: date, zone: tzinfo | None) -> datetime:
    """The first instant of a local day (DST-safe), where the spend ledger's day begins."""
    return _localize(datetime.combine(day, datetime.min.time()), zone)


def _localize(naive: datetime, zone: tzinfo | None) -> datetime:
    if zone is None:
        return naive.astimezone()  # the machine's local zone
    first = naive.replace(tzinfo=zone, fold=0)
    # Round-trip through UTC: if the wall time is skipped, the result differs from the input. (Through
    # UTC, not straight to `zone`: astimezone() to a datetime's own tzinfo returns it unchanged.)
    roundtrip = first.astimezone(UTC).astimezone(zone)
    if roundtrip.replace(tzinfo=None) != naive:
        # Skipped hour (spring forward): the wall time read with the offset before the jump, shown as
        # the wall time that exists (02:30 → 03:30 after a one-hour jump).
        return roundtrip
    return first


# The deadlines, one derivation each: the planner's rules, `limit_view` (status, the dashboard) and the simulator's
# next moment to act all call these.


def runtime_ends_at(opened_at: datetime, config: Config) -> datetime:
    """When the runtime limit ends a lease opened at `opened_at`, by the runtime_seconds in force (a lowered
    value shortens a lease already open)."""
    return opened_at + timedelta(seconds=config.limits.runtime_seconds)


def lease_deadline(opened_at: datetime, config: Config) -> datetime:
    """The deadline a lease opened now gets (`Lease.deadline`): min(opened + runtime, next cutoff)."""
    by_runtime = runtime_ends_at(opened_at, config)
    cutoff = next_cutoff(opened_at, config)
    return min(by_runtime, cutoff) if cutoff else by_runtime


def cutoff_at(now: datetime, config: Config, lease: Lease) -> datetime | None:
    """The daily cutoff that ends the open lease: the first after its opening (after now, if the opening is in
    the future: clock skew), by the daily_cutoff in force; None without one."""
    return next_cutoff(min(lease.opened_at, now), config)


def lease_ends_at(now: datetime, config: Config, lease: Lease) -> datetime:
    """When the open lease ends at the latest: its deadline as opened, or sooner when runtime_seconds or
    daily_cutoff changed since."""
    return min(t for t in (lease.deadline, runtime_ends_at(lease.opened_at, config), cutoff_at(now, config, lease))
               if t is not None)


def idle_ends_at(now: datetime, config: Config, last_active: datetime) -> datetime | None:
    """When the idle rule ends the lease if nothing more happens: the last sign of use (`last_active_at`) plus
    the idle timeout in force at `now`; None when idle stop is off."""
    idle_timeout = idle_timeout_at(now, config)
    return last_active + timedelta(seconds=idle_timeout) if idle_timeout else None


def start_refusal(now: datetime, config: Config, record: PodRecord, spend_today_usd: float,
                  account_spend_today_usd: float = 0.0) -> str | None:
    """Why a lease may not be opened now, or None. Used by `rpm start` and by the proxy's wake."""
    # The spend today against the cap in force now, nothing remembered: raising the cap (config or env) lifts
    # the refusal at once, as its message promises, and the ledger's day ends it at the local midnight.
    cap, account_cap = config.limits.max_daily_spend_usd, config.account.max_daily_spend_usd
    if cap and spend_today_usd >= cap:
        return (f"spend cap reached: {usd(spend_today_usd)} of {usd(cap)} today; starting is refused until "
                f"the day rolls over (or raise max_daily_spend_usd)")
    if account_cap and account_spend_today_usd >= account_cap:
        return (f"account spend cap reached: {usd(account_spend_today_usd)} of {usd(account_cap)} today across "
                "all pods; starting is refused until the day rolls over (or raise [limits] max_daily_spend_usd)")
    return None


def plan(
    now: datetime,
    config: Config,
    record: PodRecord,
    observed: Observation,
    activity: Activity,
    options: Options | None = None,
) -> Plan:
    options = options or Options()
    actions: list[Action] = []
    pod = observed.pod if observed.pod_observed else None
    pod_exists = observed.pod_observed and pod is not None and pod.status != PodStatus.TERMINATED
    pod_id = record.pod_id
    lease = record.lease

    adopted = bool(config.pod.pod_id)  # made outside rpm: resumed and stopped, never created nor terminated

    def end_pod(limit: Limit, reason: str, action: str) -> None:
        """Close the lease and end the pod (stop or terminate, as `action` says for this limit), once."""
        lease_end = ActionKind.STOP if action == "stop" else ActionKind.TERMINATE
        if lease is not None:
            actions.append(Action(ActionKind.CLOSE_LEASE, reason, limit=limit, lease_end=lease_end))
        kind = ActionKind.STOP if lease_end is ActionKind.STOP or adopted else ActionKind.TERMINATE
        if (kind is ActionKind.STOP and not adopted and limit in TERMINATING_LIMITS and pod_exists
                and pod is not None and pod.locked and pod.status in ACTIVE_STATUSES):
            # A locked pod refuses stop and would bill on: a limit that ends billing ends it the other way.
            kind, reason = ActionKind.TERMINATE, (f"{reason}; the pod is locked and cannot be stopped, so this "
                                                  "owned pod is terminated instead")
        if pod_exists and pod is not None:
            if kind is ActionKind.STOP and pod.status in (PodStatus.EXITED,):
                pass  # already stopped
            elif kind is ActionKind.STOP and pod.status == PodStatus.ERROR:
                if adopted:
                    actions.append(Action(ActionKind.ALARM, reason + " (adopted pod in ERROR: rpm never "
                                          "terminates it; end it in the console)", pod_id=pod.id))
                else:
                    actions.append(Action(ActionKind.TERMINATE, reason + " (pod in ERROR cannot be stopped)",
                                          pod_id=pod.id))
            else:
                actions.append(Action(kind, reason, pod_id=pod.id))
        elif not observed.pod_observed and pod_id is not None:
            # RunPod did not answer the GET: end the pod by id anyway. Waiting for the next pass would let
            # it run a whole cron period past its limit; a failure here is the alarm cron must mail.
            actions.append(Action(kind, reason + " (pod status unknown)", pod_id=pod_id))
        if observed.replaced_pod is not None:
            actions.append(Action(ActionKind.TERMINATE, reason + " (pod being replaced)",
                                  pod_id=observed.replaced_pod.id))

    # 1. Spend cap, the pod's own then the account's (all pods together): terminate whatever runs or is kept,
    # and refuse starts for the rest of the day.
    cap, account_cap = config.limits.max_daily_spend_usd, config.account.max_daily_spend_usd
    if cap and observed.spend_today_usd >= cap and (lease is not None or pod_exists):
        end_pod(Limit.SPEND_CAP, f"spend cap reached: {usd(observed.spend_today_usd)} of {usd(cap)} today",
                "terminate")
        return _finish(actions, now, config, record, observed, options, activity)
    if (account_cap and observed.account_spend_today_usd >= account_cap
            and (lease is not None or pod_exists)):
        end_pod(Limit.SPEND_CAP, f"account spend cap reached: {usd(observed.account_spend_today_usd)} of "
                f"{usd(account_cap)} today across all pods", "terminate")
        return _finish(actions, now, config, record, observed, options, activity)

    if lease is not None:
        # 2. Daily cutoff: a lease open when the cutoff passed ends, however late this run happens.
        cutoff = cutoff_at(now, config, lease)
        if cutoff is not None and now >= cutoff:
            local = cutoff.astimezone(config.zone).strftime("%H:%M")
            end_pod(Limit.CUTOFF, f"daily cutoff {local} passed", config.limits.cutoff_action)
            return _finish(actions, now, config, record, observed, options, activity)
        # 3. Runtime limit: the lease deadline (or the current runtime_seconds, if it was lowered; the cutoff, its
        # other part, was checked above).
        if now >= lease_ends_at(now, config, lease):
            end_pod(Limit.RUNTIME, f"runtime limit {config.limits.runtime_seconds} s reached",
                    config.limits.cutoff_action)
            return _finish(actions, now, config, record, observed, options, activity)
        # 4. Idle: no proxied request (and no GPU work, when reported) for idle_timeout_seconds (inside a
        # warm_hours window, warm_idle_timeout_seconds).
        last_active = last_active_at(now, lease, activity)
        idle_end = idle_ends_at(now, config, last_active)
        if (idle_end is not None and now >= idle_end and observed.pod_observed
                and (pod is None or pod.status in IDLE_CHECKED_STATUSES)):
            idle_seconds = (now - last_active).total_seconds()
            key = "warm_idle_timeout_seconds" if warm_window_at(now, config) else "idle_timeout_seconds"
            end_pod(Limit.IDLE, f"idle for {int(idle_seconds)} s ({key} {idle_timeout_at(now, config)})",
                    config.limits.idle_action)
            return _finish(actions, now, config, record, observed, options, activity)
        # 5. Recovery while the lease is open and the limits allow.
        if observed.pod_observed and adopted and not pod_exists:
            actions.append(Action(ActionKind.CLOSE_LEASE, f"adopted pod {config.pod.pod_id} no longer exists at "
                                  "RunPod", limit=Limit.GONE, lease_end=ActionKind.TERMINATE))
            actions.append(Action(ActionKind.ALARM, f"adopted pod {config.pod.pod_id} no longer exists at RunPod; "
                                  "rpm never creates one in its place (fix [pods] pod_id)", pod_id=config.pod.pod_id))
        elif observed.pod_observed and adopted and pod is not None and pod.status == PodStatus.ERROR:
            actions.append(Action(ActionKind.ALARM, "adopted pod is in ERROR; rpm never terminates it (end or "
                                  "restart it in the console)", pod_id=pod.id))
        elif observed.pod_observed and adopted and pod is not None and observed.resume_refused:
            actions.append(Action(ActionKind.ALARM, "resume refused: the host's GPU is taken, and an adopted pod "
                                  "is never replaced", pod_id=pod.id))
        elif observed.pod_observed:
            if pod_id is None and record.intent is None:
                actions.append(Action(ActionKind.CREATE, "lease open and no pod"))
            elif pod_id is not None and not pod_exists:
                actions.append(Action(ActionKind.FORGET_POD, "pod no longer exists at RunPod", pod_id=pod_id))
                actions.append(Action(ActionKind.CREATE, "pod vanished while its lease is open"))
            elif pod is not None and pod.status == PodStatus.ERROR:
                actions.append(Action(ActionKind.TERMINATE, "pod is in ERROR", pod_id=pod.id))
                actions.append(Action(ActionKind.FORGET_POD, "replaced after ERROR", pod_id=pod.id))
                actions.append(Action(ActionKind.CREATE, "pod was in ERROR while its lease is open"))
            elif pod is not None and pod.status == PodStatus.EXITED:
                if observed.resume_refused:
                    if config.limits.on_resume_failure == "replace":
                        actions.append(Action(ActionKind.REPLACE,
                                              "resume refused: the host's GPU is taken; creating a replacement",
                                              pod_id=pod.id))
                    else:
                        actions.append(Action(ActionKind.ALARM, "resume refused: the host's GPU is taken "
                                              "(on_resume_failure = \"fail\")", pod_id=pod.id))
                else:
                    actions.append(Action(ActionKind.RESUME, _resume_reason(pod, lease), pod_id=pod.id))
            elif (observed.replaced_pod is not None and pod is not None and observed.pod_ready):
                actions.append(Action(ActionKind.TERMINATE, "replacement is ready; removing the old pod",
                                      pod_id=observed.replaced_pod.id))
    else:
        # No lease: nothing of this config may run. A pod left running (shutdown interrupted, lease
        # closed by a limit whose action failed) is ended the way the lease ended.
        if pod_exists and pod is not None:
            end_action = "stop" if adopted else _lease_end_action(record, options)
            if adopted and pod.status == PodStatus.ERROR:
                pass  # never terminated; stopping an ERROR pod is refused: the console is the way
            elif end_action == "terminate" or pod.status in ACTIVE_STATUSES or pod.status == PodStatus.ERROR:
                reason = record.last_lease_end_reason or "no open lease"
                kind = ActionKind.STOP if end_action == "stop" and pod.status != PodStatus.ERROR else (
                    ActionKind.TERMINATE)
                if not (kind is ActionKind.STOP and pod.status == PodStatus.EXITED):
                    actions.append(Action(kind, f"{reason}", pod_id=pod.id))
        elif not observed.pod_observed and pod_id is not None:
            # RunPod did not answer: end the pod by id unless state knows it is already stopped the way the
            # lease ended. A failure is then an error to report, never a silent "nothing running".
            end_action = "stop" if adopted else _lease_end_action(record, options)
            if end_action == "terminate" or record.last_status != PodStatus.EXITED.value:
                kind = ActionKind.STOP if end_action == "stop" else ActionKind.TERMINATE
                reason = record.last_lease_end_reason or "no open lease"
                actions.append(Action(kind, f"{reason} (pod status unknown)", pod_id=pod_id))
        if observed.replaced_pod is not None:
            actions.append(Action(ActionKind.TERMINATE, "no open lease (pod being replaced)",
                                  pod_id=observed.replaced_pod.id))
    return _finish(actions, now, config, record, observed, options, activity)


def _resume_reason(pod: Pod, lease: Lease) -> str:
    """Say whether this resume is the lease's normal start (the pod was kept stopped by an earlier lease) or a
    recovery (the pod stopped on its own, e.g. a spot or host interruption, after running in this lease)."""
    if pod.started_at is None or pod.started_at < lease.opened_at:
        return f"lease opened by {lease.opened_by}; resuming the stopped pod"
    return "pod stopped on its own while its lease is open (spot or host interruption); resuming it"


def _lease_end_action(record: PodRecord, options: Options) -> str:
    """How the last lease ended (stop keeps the pod for a fast resume); terminate when unknown."""
    if record.lease_end_action in ("stop", "terminate"):
        return record.lease_end_action
    return options.shutdown_action


def _finish(
    actions: list[Action], now: datetime, config: Config, record: PodRecord, observed: Observation,
    options: Options, activity: Activity,
) -> Plan:
    # 6. Pending intent: a create whose result was not saved.
    lease_ends = record.lease is None or any(a.kind == ActionKind.CLOSE_LEASE for a in actions)
    if record.intent is not None and observed.named_pods is not None:
        # A terminated pod cannot serve the lease: nothing to adopt.
        match = [p for p in observed.named_pods
                 if p.name == record.intent.pod_name and p.status != PodStatus.TERMINATED]
        if match:
            if not lease_ends:
                # The found pod serves the lease: a start planned by recovery would make a second pod.
                actions[:] = [a for a in actions if a.kind not in STARTS]
            actions.append(Action(ActionKind.ADOPT, f"found pod {match[0].id} of an interrupted create by name",
                                  pod_id=match[0].id, pod_name=record.intent.pod_name))
            if lease_ends:
                actions.append(Action(ActionKind.TERMINATE, "adopted pod of an interrupted create has no "
                                      "open lease", pod_id=match[0].id))
        else:
            actions.append(Action(ActionKind.FORGET_INTENT,
                                  f"no pod named {record.intent.pod_name} exists", pod_name=record.intent.pod_name))
            # Create again only when nothing else gives the lease a pod: not when recovery already starts
            # one, nor when the record's pod exists or could not be observed.
            if (not lease_ends and observed.pod_observed and record.pod_id is None
                    and not any(a.kind in ENDS or a.kind in STARTS for a in actions)):
                actions.append(Action(ActionKind.CREATE, "interrupted create left no pod; creating it again"))
    # 7. Orphans: pods named by this install for this config that state does not own. Never touch other pods:
    # not another config's, not another rpm install's (same pod name, another install id), not an older rpm's.
    if observed.named_pods is not None and config.limits.sweep_orphans:
        owned = {record.pod_id, record.replacing_pod_id}
        adopted = {a.pod_id for a in actions if a.kind == ActionKind.ADOPT}
        for other in observed.named_pods:
            if (other.id in owned or other.id in adopted or other.status == PodStatus.TERMINATED
                    or not podspec.is_own_pod(other.name, config, observed.install_id)):
                continue
            if record.intent is not None and other.name == record.intent.pod_name:
                continue
            if options.report_orphans_only:
                actions.append(Action(ActionKind.REPORT_ORPHAN, "pod named like this config's but not in state",
                                      pod_id=other.id, pod_name=other.name))
            else:
                actions.append(Action(ActionKind.TERMINATE_ORPHAN, "pod named like this config's but not in "
                                      "state (orphan)", pod_id=other.id, pod_name=other.name))
    # 8. The proxy: wanted while a lease is open.
    if (record.lease is not None and activity.proxy_wanted and observed.proxy_running is False
            and not any(a.kind == ActionKind.CLOSE_LEASE for a in actions)):
        actions.append(Action(ActionKind.RESTART_PROXY, "the proxy should run for the open lease and does not"))
    return Plan(tuple(_dedupe(actions)))


def _dedupe(actions: list[Action]) -> list[Action]:
    """Drop repeated ends of the same pod (an end may be reached by two rules)."""
    seen: set[tuple[ActionKind, str | None]] = set()
    result = []
    for action in actions:
        key = (action.kind, action.pod_id)
        if action.kind in ENDS and key in seen:
            continue
        if action.kind in ENDS and (ActionKind.TERMINATE, action.pod_id) in seen:
            continue
        seen.add(key)
        result.append(action)
    # A pod that is terminated is not also stopped.
    terminated = {a.pod_id for a in result if a.kind == ActionKind.TERMINATE}
    return [a for a in result if not (a.kind == ActionKind.STOP and a.pod_id in terminated)]


@dataclass(frozen=True)
class LimitView:
    """When each limit will end the current lease (for `rpm status` and the dashboard)."""

    deadline: datetime | None = None
    runtime_ends_at: datetime | None = None
    cutoff_at: datetime | None = None
    idle_ends_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)


def last_active_at(now: datetime, lease: Lease, activity: Activity) -> datetime:
    """The last sign of use the idle rule counts: the lease's opening, a proxied request or GPU work.

    The one derivation of "idle since" for the planner, `rpm status` and the proxy's views alike."""
    last = max(t for t in (lease.opened_at, activity.last_request_at, activity.last_gpu_busy_at) if t is not None)
    return min(last, now)  # clock skew: a future time counts as now


def activity_of(record: PodRecord) -> Activity:
    """The activity state keeps for a record (what every reader passes to the planner's derivations)."""
    return Activity(last_request_at=record.last_activity_at, last_gpu_busy_at=record.last_gpu_busy_at,
                    proxy_wanted=record.proxy_wanted)


def limit_view(now: datetime, config: Config, record: PodRecord, activity: Activity) -> LimitView:
    lease = record.lease
    if lease is None:
        return LimitView()
    return LimitView(deadline=lease_ends_at(now, config, lease),
                     runtime_ends_at=runtime_ends_at(lease.opened_at, config), cutoff_at=cutoff_at(now, config, lease),
                     idle_ends_at=idle_ends_at(now, config, last_active_at(now, lease, activity)))
