"""The control plane's operations on a config's pod: start, shutdown, the proxy's start and stop.

Each opens or closes the lease (rpm's permission for the pod to run) and then runs the lifecycle's one
pass (`Lifecycle.run_pass`: observe → plan → apply) inside one state transaction; the lifecycle decides
nothing itself. This is the layer that will run passes for several pods at once.

A lease opens only for a start that has what it needs (the key here; the caller checks the proxy's port and
bind first), and a start that fails or is interrupted closes its lease and ends its pod, unless the pod is
verifiably coming up and something enforces its limits once rpm exits (`enforcer`: a live proxy, or a
recent `rpm watchdog` pass). Shutdown checks whatever can refuse before its first change.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

from runpod_manager import display, podspec, policy, spend
from runpod_manager.backends import registry
from runpod_manager.backends.base import Backend
from runpod_manager.backends.pod import PodBackend
from runpod_manager.config import Config
from runpod_manager.errors import (
    ApiError,
    AuthError,
    BootFailed,
    ConfigError,
    Interrupted,
    LimitRefused,
    LockBusy,
    NotReady,
    ResumeRefused,
    RpmError,
    StateError,
    StopRefused,
)
from runpod_manager.lifecycle import Lifecycle, other_installs
from runpod_manager.outcomes import (
    AppliedAction,
    FleetOutcome,
    ManyStarts,
    PassOutcome,
    Progress,
    ProxyStopResult,
    ShutdownResult,
    StartResult,
)
from runpod_manager.paths import Paths, ensure_private_dir, read_regular_file, write_private_file
from runpod_manager.policy import ActionKind, Options
from runpod_manager.runpod.models import Pod, PodStatus
from runpod_manager.state import Lease, PodRecord, State


def start(lc: Lifecycle, *, wait: bool = True, dry_run: bool = False, wait_seconds: float | None = -1.0,
          progress: Callable[[Progress], None] | None = None, opened_by: str = "start") -> StartResult:
    """Open a lease (if none), create or resume the pod, and wait until it is ready.

    A lease opens only for a start that has what it needs (the key here; the caller checks the proxy's
    port and bind first), and a start that fails closes its lease unless its own pod is verifiably still
    coming up (and, for a failed readiness wait, something enforces its limits: `failed_wait`): a later
    watchdog or proxy pass must never create or resume a pod for a start that gave up.
    wait_seconds: how long to wait for the state lock (-1: the configured lock_wait_seconds).
    """
    _ = lc.client  # no key, no lease (ConfigError before anything is written)
    started = lc.monotonic()
    with lc.transaction(lc.lock_wait(wait_seconds), dry_run=dry_run) as state:
        record = state.record(lc.name)
        lc.check_world(record)
        if lc.config.pod.pod_id and record.pod_id is None:
            record.pod_id = lc.config.pod.pod_id  # an adopted pod is rpm's to resume from the first start
        had_lease = record.lease is not None
        prefetched: tuple[Pod | None] | None = None
        if record.lease is None:
            prefetched = _open_lease(lc, state, record, opened_by, dry_run=dry_run)
        try:
            outcome = lc.run_pass(state, Options(), dry_run=dry_run, check_ready=True, prefetched=prefetched)
        except RpmError as exc:
            if not dry_run:
                _fail_start(lc, state, record, None, exc)
            raise
        failure = None if dry_run else _start_failure(lc.config, record, outcome)
        if failure is not None:
            _fail_start(lc, state, record, outcome.pod, failure)
    pod = outcome.pod
    if dry_run:
        return StartResult(pod=pod, record=record, created=False, resumed=False, already_running=had_lease
                           and pod is not None, ready=False, base_url=None, pod_url=None, plan=outcome.plan,
                           dry_run=True, notices=lc.store.take_notices())
    if record.pod_id is None:
        raise NotReady("no pod exists for the open lease", hint="see `rpm status` and the event log")
    if progress:
        progress(Progress(record.pod_id, pod.status.value if pod else record.last_status or "unknown",
                          lc.monotonic() - started, 0,
                          "created" if outcome.created else "resumed" if outcome.resumed else ""))
    ready, waited = record.ready, 0.0
    if wait and not ready:
        try:
            pod, waited = lc.wait_ready(progress=progress)
        except RpmError as exc:
            raise failed_wait(lc, exc) from None
        ready = True
        if pod.id == record.pod_id:
            record.ready_pod_id = pod.id  # as wait_ready saved it
        else:  # recovery replaced the pod while waiting
            record = lc.store.load().record(lc.name)
    pod_url = lc.pod_url(record.pod_id) if record.pod_id else None
    return StartResult(pod=pod, record=record, created=outcome.created, resumed=outcome.resumed,
                       already_running=had_lease and not outcome.created and not outcome.resumed
                       and pod is not None, ready=ready, base_url=f"{pod_url}/v1" if pod_url else None,
                       pod_url=pod_url, plan=outcome.plan, wait_seconds=waited, notices=lc.store.take_notices())

def _open_lease(lc: Lifecycle, state: State, record: PodRecord, opened_by: str, *, dry_run: bool
                ) -> tuple[Pod | None] | None:
    """Open a lease unless a limit refuses it. Observes the pod first, so the refusal sees today's spend; the
    observation is returned for the pass that follows (one GET, not two)."""
    now = lc.clock()
    pod, prefetched = None, None
    if record.pod_id:
        try:
            pod = lc.get_or_none(record.pod_id)
            prefetched = (pod,)
        except ApiError:
            pass  # the pass will try again and say so
    own = lc.spend_today(record, pod, now)
    today = policy.local_day(now, lc.config.zone)
    account = spend.account_today_usd(state.pods.values(), today)
    refusal = policy.start_refusal(now, lc.config, record, own, account)
    if refusal:
        raise LimitRefused(refusal)
    record.lease = Lease(opened_at=now, deadline=policy.lease_deadline(now, lc.config), opened_by=opened_by)
    record.last_activity_at = now
    record.last_lease_end_reason = record.lease_end_action = None
    if not dry_run:
        lc.events.write("lease_opened", config=lc.name, deadline=record.lease.deadline, opened_by=opened_by)
    return prefetched

def _fail_start(lc: Lifecycle, state: State, record: PodRecord, pod: Pod | None, error: RpmError) -> NoReturn:
    """Close the lease of a failed start unless its own pod is verifiably coming up; raise the error
    (its own type, so its exit code) saying what still runs."""
    if pod is not None and record.pod_id == pod.id and pod.status in policy.ACTIVE_STATUSES:
        still = f"pod {record.pod_id} is still coming up under its lease; `rpm shutdown` ends it"
    else:
        _close_lease(lc, state, record, f"start failed: {error.message}")
        if record.pod_id is not None:
            still = f"the lease is closed; pod {record.pod_id} stays {record.last_status or 'as it is'}"
        elif record.intent is not None:
            still = ("the lease is closed; a pod this start may have created is found by name and "
                     "terminated by the next `rpm watchdog` or `rpm shutdown`")
        else:
            still = "the lease is closed and nothing of this config runs"
    error.hint = f"{error.hint}; {still}" if error.hint else still
    raise error

def _close_lease(lc: Lifecycle, state: State, record: PodRecord, reason: str, *, action: str = "stop") -> None:
    """Close a lease no pod serves: its pod is ended with `action` (a stopped pod stays stopped: a fast resume
    later); a pod that a lost create may have made is terminated when a later pass finds it by name."""
    if record.lease is None:
        return
    record.lease, record.last_lease_end_reason = None, reason
    record.lease_end_action = action if record.pod_id is not None else "terminate"
    record.proxy_wanted = False
    lc.store.save(state)
    lc.events.write("lease_closed", config=lc.name, reason=reason)

def interrupted_start(lc: Lifecycle | Sequence[Lifecycle]) -> Interrupted:
    """Ctrl-C during a start means cancel: the lease of each pod closes and its pod is ended (the idle action),
    unless something enforces its limits once rpm exits (`enforcer`: a running proxy, or cron's watchdog).
    A create that was under way is looked for by name and its pod terminated. The message says which."""
    members = [lc] if isinstance(lc, Lifecycle) else list(lc)
    keeper = enforcer(members[0])
    told, kept = [], False
    for member in members:
        try:
            words, keeps = _cancel_start(member, keeper)
        except RpmError as exc:  # the lock, the state: say so rather than lose what the cancel could not do
            words, keeps = f"the lease could not be closed ({exc.message}); `rpm shutdown` ends the pod", True
        told.append(f"{member.name}: {words}" if len(members) > 1 else words)
        kept |= keeps
    return Interrupted("interrupted; " + "; ".join(told), hint="`rpm shutdown` ends it now" if kept else None)


def _cancel_start(lc: Lifecycle, keeper: str | None) -> tuple[str, bool]:
    """One pod of an interrupted start: what was done and still runs, and whether its lease stays."""
    with lc.transaction(lc.config.startup.lock_wait_seconds) as state:
        record = state.record(lc.name)
        pod_id, intent = record.pod_id, record.intent
        if record.lease is not None and pod_id is not None and keeper is not None:
            until = f"until {record.lease.deadline.astimezone():%Y-%m-%d %H:%M %Z} at the latest"
            return (f"pod {pod_id} keeps coming up under its lease {until}; {keeper} enforces its limits "
                    "(idle stop applies)"), True
        if record.lease is None and pod_id is not None:
            return (f"no lease is open (last closed: {record.last_lease_end_reason or 'shutdown'}); pod {pod_id} "
                    f"stays {record.last_status or 'as it is'}"), False
        if pod_id is not None:
            ends = _end_lease(lc, state, record, "start interrupted", action=lc.config.limits.idle_action)
            return _ended_words(pod_id, ends, record) + f" ({NOTHING_ENFORCES})", False
        _close_lease(lc, state, record, "start interrupted")
    if intent is None:
        return "the lease is closed and nothing of this config runs", False
    return "the lease is closed; " + _end_interrupted_create(lc, intent.pod_name), False


def _end_interrupted_create(lc: Lifecycle, pod_name: str) -> str:
    """A create was under way at Ctrl-C: look for its pod by name a few times (the call may still be arriving
    at RunPod) and terminate it; a pod never seen is left to the next pass (the intent stays)."""
    for look in range(INTERRUPTED_CREATE_LOOKS):
        if look:
            lc.sleep(1.0)
        try:
            named = lc.client.list_pods_with_prefix(lc.config.pod_name_prefix)
        except ApiError:
            continue
        if any(pod.name == pod_name and pod.status != PodStatus.TERMINATED for pod in named):
            with lc.transaction(lc.config.startup.lock_wait_seconds) as state:
                outcome = lc.run_pass(state, Options(), dry_run=False, sweep=True)
            ends = [a for a in outcome.applied if a.action.kind in policy.ENDS]
            if ends and all(a.ok for a in ends):
                return f"pod {ends[0].action.pod_id} that its create made was terminated"
            break
    return "a pod being created is terminated by the next `rpm watchdog` or `rpm shutdown`"


def failed_wait(lc: Lifecycle, error: RpmError) -> RpmError:
    """A start's readiness wait failed (not ready in time, or the pod kept failing at boot). Its lease stays
    only while its own pod is verifiably coming up and something enforces its limits once rpm exits;
    otherwise the lease closes and the pod is ended (idle_action; a pod in ERROR terminated), so that no proxy
    or watchdog pass creates again for a start that gave up. Returns the error, its hint saying what runs."""
    try:
        still = _after_failed_wait(lc, error)
    except RpmError as exc:  # the lock, the state: the wait's error stays the one told
        still = f"the lease could not be closed ({exc.message}); `rpm shutdown` ends the pod"
    if still is not None:
        error.hint = f"{error.hint}; {still}" if error.hint else still
    return error


def _after_failed_wait(lc: Lifecycle, error: RpmError) -> str | None:
    """failed_wait's work under the lock: what still runs, in words (None: nothing of this start's is left)."""
    with lc.transaction(lc.config.startup.lock_wait_seconds) as state:
        record = state.record(lc.name)
        pod_id = record.pod_id
        if record.lease is None:
            return None  # a limit or a shutdown closed it; that pass ended the pod and its message said so
        if pod_id is None:  # between a failed pod and its replacement: no enforcer may create for this start
            _end_lease(lc, state, record, f"start failed: {error.message}", action=lc.config.limits.idle_action)
            if record.intent is not None:  # a create may still land: the pass that finds it terminates it
                return ("the lease is closed; a pod being created is terminated by the next `rpm watchdog` or "
                        "`rpm shutdown`")
            return "the lease is closed and no pod of this start runs"
        pod, observed = None, False
        with contextlib.suppress(ApiError):
            pod, observed = lc.get_or_none(pod_id), True
        # A pod that kept failing at boot is given up whatever enforces limits: an enforcer would recover it
        # (create again) under the lease of a start that gave up. One merely slow to be ready may stay.
        coming_up = pod is not None and pod.status in policy.ACTIVE_STATUSES and not isinstance(error, BootFailed)
        keeper = enforcer(lc) if coming_up else None
        if keeper is not None:
            still = f"pod {pod_id} is still coming up under its lease; {keeper} enforces its limits"
        else:
            ends = _end_lease(lc, state, record, f"start failed: {error.message}",
                              action=lc.config.limits.idle_action, prefetched=(pod,) if observed else None)
            still = _ended_words(pod_id, ends, record)
            if coming_up:  # ended only because nothing would enforce its limits: say so
                still += f" ({NOTHING_ENFORCES})"
    return still


def _end_lease(lc: Lifecycle, state: State, record: PodRecord, reason: str, *, action: str,
               prefetched: tuple[Pod | None] | None = None) -> list[AppliedAction]:
    """Close the lease and run the pass that ends its pod now (not at the next watchdog pass, which may never
    come); the ends it applied."""
    _close_lease(lc, state, record, reason, action=action)
    outcome = lc.run_pass(state, Options(), dry_run=False, prefetched=prefetched)
    return [a for a in outcome.applied if a.action.kind in policy.ENDS]


def _ended_words(pod_id: str, ends: Sequence[AppliedAction], record: PodRecord) -> str:
    """What `_end_lease` did to the pod, in words for the message."""
    failed = next((a for a in ends if a.error is not None), None)
    if failed is not None and failed.error is not None:
        return (f"the lease is closed, but pod {pod_id} could not be ended ({failed.error.message}): it may "
                "still bill; run `rpm shutdown`")
    if ends:
        return (f"the lease is closed and pod {pod_id} was "
                f"{'stopped' if ends[-1].action.kind is ActionKind.STOP else 'terminated'}")
    return f"the lease is closed; pod {pod_id} stays {record.last_status or 'as it is'}"


# ------------------------------------------------------------------------ who enforces the limits


WATCHDOG_RECENT_SECONDS = 600.0  # a watchdog pass this recent means cron runs it (crontab.example: every 5 min)
INTERRUPTED_CREATE_LOOKS = 3
NOTHING_ENFORCES = (f"nothing would enforce its limits once rpm exits: no proxy runs and `rpm watchdog` "
                    f"has not run in the last {int(WATCHDOG_RECENT_SECONDS // 60)} minutes")


def enforcer(lc: Lifecycle) -> str | None:
    """What enforces this config's limits (idle stop, the deadline) while no rpm command runs: a live proxy of
    this state directory, or cron's `rpm watchdog` when it passed within WATCHDOG_RECENT_SECONDS; None."""
    pid = lc.proxy.running_pid()
    if pid is not None:
        return f"the proxy (pid {pid})"
    last = last_watchdog_pass(lc.paths)
    if last is not None and 0 <= (lc.clock() - last).total_seconds() <= WATCHDOG_RECENT_SECONDS:
        return "the watchdog (cron)"
    return None


def last_watchdog_pass(paths: Paths) -> datetime | None:
    """When `rpm watchdog` last ran a pass in this state directory (None: never, or unreadable)."""
    try:
        at = datetime.fromisoformat(read_regular_file(paths.watchdog_pass_file, max_bytes=100).decode().strip())
    except (OSError, ValueError):
        return None
    return at if at.tzinfo is not None else None


def note_watchdog_pass(paths: Paths, now: datetime) -> None:
    """Record a pass of `rpm watchdog` (read by `enforcer`)."""
    with contextlib.suppress(OSError):  # a read-only state dir: the pass itself says what failed
        ensure_private_dir(paths.state_dir)
        write_private_file(paths.watchdog_pass_file, now.isoformat().encode())


def shutdown(lc: Lifecycle | Sequence[Lifecycle], *, stop: bool = False, all_pods: bool = False,
             dry_run: bool = False, wait_seconds: float | None = -1.0, stop_proxies: bool = True) -> ShutdownResult:
    """Close the leases, end the pods (terminate, or stop with stop=True; adopted pods are always stopped)
    and stop every proxy of the config; idempotent. One pod or several (the pods of a Fleet): one transaction.

    Raises (with the failure's own type and exit code) when a pod could not be ended, or when RunPod could not
    be asked at all: "nothing running" is said only when it was verified. With several pods every pod is tried
    before the first failure is raised.
    """
    pods = [lc] if isinstance(lc, Lifecycle) else list(lc)
    lead = pods[0]
    end_action = "stop" if stop else "terminate"
    if not dry_run:
        _check_shutdown(lead, pods, wait_seconds)
    # The proxies go first: their in-flight streams finish on a pod that still runs, and they cannot wake
    # the pod again (a new lease) between the end of the pod below and their own end.
    stopped = [] if dry_run or not stop_proxies else lead.proxy.stop_all()
    outcomes: list[tuple[Lifecycle, PodRecord, PassOutcome]] = []
    with lead.transaction(lead.lock_wait(wait_seconds), dry_run=dry_run) as state:
        for pod in pods:
            record = state.record(pod.name)
            pod.check_world(record)
            record.lease, record.last_lease_end_reason, record.lease_end_action = None, "shutdown", end_action
            record.proxy_wanted = False
            outcome = pod.run_pass(state, Options(shutdown_action=end_action), dry_run=dry_run, sweep=True)
            outcomes.append((pod, record, outcome))
        orphans, others = _sweep_all_rpm_pods(lead, state, pods, dry_run=dry_run) if all_pods else ([], [])
    if not dry_run and stop_proxies:  # a watchdog may have restarted one before the lock was ours
        stopped += [pid for pid in lead.proxy.stop_all() if pid not in stopped]
    ending = (*policy.ENDS, ActionKind.TERMINATE_ORPHAN)
    ended: list[AppliedAction] = []
    failed: list[AppliedAction] = []
    for _pod, _record, outcome in outcomes:
        ended += ([AppliedAction(a) for a in outcome.plan.actions if a.kind in ending] if dry_run
                  else [a for a in outcome.applied if a.action.kind in ending and a.ok])
        failed += [a for a in outcome.applied if a.action.kind in ending and a.error is not None]
    if failed and failed[0].error is not None:
        done = "; ".join(f"{a.action.kind.value} {a.action.pod_id} done" for a in ended)
        raise _retold(failed[0].error, "could not end pod " + ", ".join(
            f"{a.action.pod_id} ({a.error.message if a.error else '?'})" for a in failed)
            + (f"; {done}" if done else ""),
            hint=failed[0].error.hint if isinstance(failed[0].error, StopRefused)  # what blocks it, and the way out
            else "it may still bill: run `rpm shutdown` again; the watchdog also retries")
    unverified = [(pod, record, outcome) for pod, record, outcome in outcomes if outcome.observe_errors]
    if unverified and not dry_run:
        pod, record, outcome = unverified[0]
        known = (f"state last saw pod {record.pod_id} {record.last_status or ''}".strip() if record.pod_id
                 else "state knows no pod")
        first = outcome.observe_errors[0]
        raise _retold(first, f"could not verify that nothing of config '{pod.name}' runs: {first.message} "
                      f"({known})", hint="the lease is closed; run `rpm shutdown` again when RunPod answers")
    if not all_pods:  # --all listed every rpm pod; otherwise each pass listed the pods named like its own
        others = list(dict.fromkeys(f"{pod.id} ({pod.name})" for _p, _r, outcome in outcomes
                                    for pod in outcome.other_installs))
    return ShutdownResult(ended=ended, orphans_terminated=orphans, proxies_stopped=stopped, other_installs=others,
                          record=outcomes[0][1], dry_run=dry_run, plan=policy.Plan(tuple(
                              a for _p, _r, outcome in outcomes for a in outcome.plan.actions)),
                          notices=lead.store.take_notices())


def _check_shutdown(lead: Lifecycle, pods: Sequence[Lifecycle], wait_seconds: float | None) -> None:
    """Whatever can refuse a shutdown, checked before its first change (the proxies' stop, which would leave a
    pod billing with nothing to idle-stop it): the state lock, each record's RunPod API (its ConfigError says
    that nothing was changed), the key and RunPod's answer to it. A RunPod that does not answer refuses
    nothing: the shutdown goes on and says what it could not verify."""
    unchanged = "; nothing was changed"
    try:
        with lead.transaction(lead.lock_wait(wait_seconds), dry_run=True) as state:
            records = [state.record(pod.name) for pod in pods]
            for pod, record in zip(pods, records, strict=True):
                pod.check_world(record)
            pod_id = next((record.pod_id for record in records if record.pod_id), None)
            try:
                if pod_id is None:
                    _ = lead.client  # no key: ConfigError
                else:
                    lead.get_or_none(pod_id)  # a revoked key refuses here, not after the proxies stopped
            except (AuthError, ConfigError) as exc:
                raise _retold(exc, exc.message + unchanged, hint=exc.hint) from None
            except ApiError:
                pass
    except (LockBusy, StateError) as exc:
        raise _retold(exc, exc.message + unchanged, hint=exc.hint) from None


def _sweep_all_rpm_pods(lead: Lifecycle, state: State, pods: Sequence[Lifecycle], *, dry_run: bool
                        ) -> tuple[list[str], list[str]]:
    """--all: every pod of this install that no record of these pods holds (pods of configs removed from the
    file included; their records are closed): named with this install's id, or held by a record of this
    state. Adopted pods are never touched, nor any other `rpm-` pod: another rpm install's (or an older
    rpm's), returned second, "id (name)", to be shown."""
    known = {pod_id for pod in pods for pod_id in (state.record(pod.name).pod_id,
                                                    state.record(pod.name).replacing_pod_id)}
    known |= {p.config.pod.pod_id for p in pods if p.config.pod.pod_id}
    listed = lead.client.list_pods_with_prefix(podspec.RPM_PREFIX)
    others = other_installs(state, listed)
    left_alone = {pod.id for pod in others}
    swept = []
    for pod in listed:
        if pod.id in known or pod.status == PodStatus.TERMINATED or pod.id in left_alone:
            continue
        if not dry_run:
            lead.client.terminate_pod(pod.id)
            lead.events.write("terminate_orphan", config=lead.name, pod_id=pod.id, pod_name=pod.name,
                              reason="rpm shutdown --all")
        swept.append(f"{pod.id} ({pod.name})")
    configured = {pod.name for pod in pods}
    for name, record in state.pods.items():  # records of pods no longer in the config: nothing of theirs runs
        if name not in configured and (record.lease or record.pod_id) and not dry_run:
            record.lease, record.last_lease_end_reason = None, "shutdown --all (not in the config)"
            record.pod_id = record.ready_pod_id = None
    return swept, [f"{pod.id} ({pod.name})" for pod in others]


def ensure_proxy(lc: Lifecycle | Sequence[Lifecycle], running_pid: int | None = None) -> str:
    """Run the proxy in the background for the open lease (restarted by reconcile if it dies); return the
    OpenAI base URL. `running_pid`: this config's own proxy already serves the port (process.claim_port),
    so none is started and none is marked wanted (it is not ours to restart). Several pods (a start of
    several): the first one's record marks the proxy wanted. A proxy that fails to start leaves the pods it
    was to serve running only when something else enforces their limits (`enforcer`); else they are ended."""
    members = [lc] if isinstance(lc, Lifecycle) else list(lc)
    lead = members[0]
    if running_pid is None:
        with lead.transaction(None) as state:
            record = state.record(lead.name)
            if record.lease is None:
                raise NotReady("the lease was closed before the proxy started (shutdown or a limit)",
                               hint="nothing of this config runs; see `rpm status`")
            record.proxy_wanted = True
        try:
            lead.proxy.start()
        except RpmError as exc:
            keeper = enforcer(lead)
            still = "; ".join(_without_proxy(member, keeper) for member in members)
            exc.hint = f"{exc.hint}; {still}" if exc.hint else still
            raise
    return proxy_base_url(lead.config)


def _without_proxy(lc: Lifecycle, keeper: str | None) -> str:
    """A started pod whose proxy could not start: kept while `keeper` enforces its limits, else ended."""
    with lc.transaction(lc.config.startup.lock_wait_seconds) as state:
        record = state.record(lc.name)
        pod_id = record.pod_id
        if pod_id is None or record.lease is None:
            return "nothing else runs"
        if keeper is not None:
            return (f"pod {pod_id} keeps running under its lease (until "
                    f"{record.lease.deadline.astimezone():%Y-%m-%d %H:%M %Z}); {keeper} enforces its limits; "
                    "`rpm proxy` serves it, `rpm shutdown` ends it")
        ends = _end_lease(lc, state, record, "the proxy could not start", action=lc.config.limits.idle_action)
        return _ended_words(pod_id, ends, record) + f" ({NOTHING_ENFORCES})"


def proxy_stopped(lc: Lifecycle, stopped_by: str | None = None) -> ProxyStopResult:
    """A proxy of this config stopped: what that means for the pod (README, "Stopping the proxy").

    A lease the proxy opened by waking the pod ends with the idle action, because the proxy was what would
    have noticed the pod going idle. A lease `rpm start` opened stays: the pod keeps to its limits (the
    watchdog from cron enforces idle stop and the deadline), and the result says until when.
    """
    with lc.transaction(lc.config.startup.lock_wait_seconds) as state:
        record = state.record(lc.name)
        lc.check_world(record)
        lease, pod_id = record.lease, record.pod_id
        if lease is not None and lease.opened_by == "wake" and pod_id is not None:
            record.lease, record.last_lease_end_reason = None, "the proxy that woke the pod stopped"
            record.lease_end_action = lc.config.limits.idle_action
            ends = [a for a in lc.run_pass(state, Options(), dry_run=False).applied if a.action.kind in policy.ENDS]
            return ProxyStopResult(pod_id=pod_id, ended=[a for a in ends if a.ok],
                                   failed=[a for a in ends if not a.ok], kept_until=None, idle_ends_at=None,
                                   stopped_by=stopped_by)
    if lease is not None and pod_id is not None:
        view = policy.limit_view(lc.clock(), lc.config, record, policy.activity_of(record))
        return ProxyStopResult(pod_id=pod_id, ended=[], failed=[], kept_until=view.deadline,
                               idle_ends_at=view.idle_ends_at, stopped_by=stopped_by)
    return ProxyStopResult(pod_id=None, ended=[], failed=[], kept_until=None, idle_ends_at=None,
                           stopped_by=stopped_by)




def proxy_base_url(config: Config) -> str:
    """The OpenAI base URL clients on this machine use: the one derivation shown by start, status and demo."""
    from runpod_manager.proxy import process

    return f"{process.proxy_url(config)}/v1"


def _start_failure(config: Config, record: PodRecord, outcome: PassOutcome) -> RpmError | None:
    """Why a start's pass did not give the lease a pod, as the typed error, or None."""
    alarms = [a for a in outcome.applied if a.action.kind == ActionKind.ALARM]
    if config.pod.pod_id and not outcome.observe_errors and outcome.pod is None:
        return ConfigError(f"pod_id {config.pod.pod_id!r} of pod '{config.pod.name}' does not exist at RunPod "
                           f"{display.url(config.api.base_url)}; nothing was created in its place",
                           hint="check the id in the console, or remove pod_id to let rpm create the pod")
    if alarms and config.pod.pod_id and record.pod_id is not None:
        return ResumeRefused(f"could not start adopted pod {record.pod_id}: {alarms[0].action.reason}")
    if alarms and record.pod_id is not None and not outcome.replaced:
        return ResumeRefused(f"could not start the pod: {alarms[0].action.reason}",
                             hint='set [limits] on_resume_failure = "replace", or `rpm shutdown` and start')
    if outcome.observe_errors and record.pod_id is None:
        return outcome.observe_errors[0]
    for applied in outcome.failures:
        # A refused resume is not a failure when the pass went on to create a replacement.
        if (applied.action.kind in policy.STARTS and applied.error is not None
                and not (outcome.replaced and isinstance(applied.error, ResumeRefused))):
            return applied.error
    return None


def _retold(error: RpmError, message: str, *, hint: str | None) -> RpmError:
    """The same failure (same class, so the same exit code) told in the words of the command that met it."""
    retold = copy.copy(error)
    retold.message, retold.args, retold.hint = message, (message,), hint
    return retold


# ------------------------------------------------------------------------------------------ many pods


class Fleet:
    """Every pod of a config (each configured pod and each replica) as its backend (`backends`, made by
    `backends.registry` from the entry's `backend` key), sharing one state store, one RunPod client, the
    event log and the proxy process. `members`: the pod backends' Lifecycles, which start, shutdown and the
    proxy's wakes act on. For a config of one pod without replicas its only member is the lifecycle it was
    made from."""

    def __init__(self, lead: Lifecycle) -> None:
        self.lead = lead
        configs = lead.config.every_pod()
        if len(configs) == 1 and configs[0].pod.name == lead.name:
            self.backends: dict[str, Backend[Any]] = {lead.name: registry.backend_for(lead)}
        else:
            self.backends = {c.pod.name: registry.backend_for(lead, c) for c in configs}
        self.members: dict[str, Lifecycle] = {name: backend.lifecycle for name, backend in self.backends.items()
                                              if isinstance(backend, PodBackend)}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.backends)

    def groups(self) -> list[list[Backend[Any]]]:
        """The members by backend, in config order: a pass makes one list call per group."""
        by_backend: dict[str, list[Backend[Any]]] = {}
        for backend in self.backends.values():
            by_backend.setdefault(backend.backend, []).append(backend)
        return list(by_backend.values())

    def select(self, names: Sequence[str] = (), *, replicas: bool = True) -> list[Lifecycle]:
        """The members for NAMEs given on the command line (a configured pod's name stands for its replicas
        too, unless `replicas` is off: a start starts the first replica only); none given: every pod."""
        config = self.lead.config
        if not names:
            return [m for m in self.members.values() if replicas or m.config.pod.name == _group(config, m)]
        chosen: list[Lifecycle] = []
        for name in names:
            # A replica's own name stands for itself; any other name not configured is Config.for_pod's error.
            if config.pod_named(name) is None and name in self.members:
                wanted = [name]
            else:
                wanted = [c.pod.name for c in config.replica_configs(name)]
            chosen += [self.members[n] for n in (wanted if replicas else wanted[:1]) if self.members[n] not in chosen]
        return chosen


def _group(config: Config, member: Lifecycle) -> str:
    """The configured pod a member belongs to (itself, or the pod whose replica it is)."""
    for pod in config.all_pods:
        if member.name in (c.pod.name for c in config.replica_configs(pod.name)):
            return pod.name
    return member.name


def reconcile(fleet: Fleet, *, wait_seconds: float | None = 0, dry_run: bool = False,
              report_orphans_only: bool = False, sweep: bool = False,
              last_request_at: Mapping[str, datetime | None] | None = None, watchdog: bool = False) -> FleetOutcome:
    """One enforcement pass over every pod: one lock, one load, one `GET /v2/pods` when any pod is live (or
    the orphan sweep is due), one save. Each pod is planned and acted on independently: one pod's failure
    never stops the others'. wait_seconds=0 (cron) returns busy instead of waiting. `watchdog`: the pass is
    `rpm watchdog`'s, and its time is recorded (`enforcer`), also when it was skipped for a busy lock."""
    lead = fleet.lead
    activity = last_request_at or {}
    calls_before = lead.client.calls if lead.client_made else 0
    try:
        with lead.transaction(wait_seconds, dry_run=dry_run) as state:
            for member in fleet.members.values():
                _open_warm_lease(member, state, dry_run=dry_run)
            passes: dict[str, PassOutcome] = {}
            for group in fleet.groups():  # each backend's one look at RunPod, read by each of its members
                listing = group[0].listing(wanted=any(b.wants_listing(state, sweep=sweep) for b in group))
                for backend in group:
                    passes[backend.name] = backend.run_pass(
                        state, Options(report_orphans_only=report_orphans_only), dry_run=dry_run, sweep=sweep,
                        activity_at=activity.get(backend.name), listing=listing)
            outcomes = {name: passes[name] for name in fleet.names}
    except LockBusy:
        if wait_seconds == 0:
            if watchdog and not dry_run:
                note_watchdog_pass(lead.paths, lead.clock())
            return FleetOutcome(busy=True, notices=lead.store.take_notices())
        raise
    calls = (lead.client.calls if lead.client_made else 0) - calls_before
    result = FleetOutcome(outcomes=outcomes, api_calls=calls, dry_run=dry_run, notices=lead.store.take_notices())
    if watchdog and not dry_run and result.auth_error is None:  # a pass with a revoked key enforces nothing
        note_watchdog_pass(lead.paths, lead.clock())
    return result


def _open_warm_lease(lc: Lifecycle, state: State, *, dry_run: bool) -> tuple[Pod | None] | None:
    """Open the lease of a warm_hours window WARM_LEAD_SECONDS before it starts, so that this pass creates or
    resumes the pod and it is ready at the start. Once per window: a window whose lease a limit or a shutdown
    closed (or that a lease already open served) is not opened again. Returns the pod `_open_lease` observed."""
    record = state.record(lc.name)
    window = policy.warm_lease_due(lc.clock(), lc.config, record)
    if window is None:
        return None
    record.warm_opened_for = window[0].isoformat()
    if record.lease is not None:
        return None  # an open lease (a start, a wake) serves the window; the warm idle timeout keeps it
    if lc.config.pod.pod_id and record.pod_id is None:
        record.pod_id = lc.config.pod.pod_id  # as `start` does: an adopted pod is resumed, never created
    try:
        return _open_lease(lc, state, record, "warm", dry_run=dry_run)
    except LimitRefused as exc:
        if not dry_run:
            lc.events.write("warm_start_refused", config=lc.name, reason=exc.message)
        return None


def start_many(members: Sequence[Lifecycle], *, wait: bool = True, dry_run: bool = False,
               progress: Callable[[Progress], None] | None = None) -> ManyStarts:
    """Start several pods: each lease and create/resume first (so they boot side by side), then each readiness
    wait. One pod's failure never keeps the others from starting; its error is kept with its name."""
    starts = ManyStarts()
    by_name = {member.name: member for member in members}
    for member in members:
        try:
            starts.results[member.name] = start(member, wait=False, dry_run=dry_run, progress=progress)
        except RpmError as exc:
            starts.errors[member.name] = exc
    if wait and not dry_run:
        for name, result in starts.results.items():
            if result.ready:
                continue
            try:
                result.pod, result.wait_seconds = by_name[name].wait_ready(progress=progress)
                result.ready = True
            except RpmError as exc:
                starts.errors[name] = failed_wait(by_name[name], exc)
    return starts
