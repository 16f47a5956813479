"""Observe → plan → apply for a config's pod, under the state lock; the readiness wait.

Every change to a pod goes through one pass (`run_pass`), run by `control.py` (start, shutdown), by
`rpm watchdog` and by the running proxy (`reconcile`). `policy.plan()` decides; this module observes
(through `RunPodPort`), acts and records. The ledger is `spend.py`'s, the create request `podspec.py`'s.

State is written ahead of RunPod: each pass loads the state once under the lock, saves it before every call
that changes a pod (so an intent, a closed lease or an open one is on disk before RunPod acts on it) and
once at the end. A quiet pass is one lock, one load, one save and one API call.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from runpod_manager import create, podspec, policy, spend
from runpod_manager.config import Config
from runpod_manager.errors import (
    ApiError,
    BootFailed,
    Conflict,
    LeaseClosed,
    LockBusy,
    NotFound,
    NotReady,
    PodLocked,
    ResumeRefused,
    RpmError,
    StopRefused,
)
from runpod_manager.events import EventLog
from runpod_manager.outcomes import AppliedAction, PassOutcome, Progress
from runpod_manager.paths import Paths
from runpod_manager.policy import Action, ActionKind, Observation, Options
from runpod_manager.ports import (
    Listing,
    ProcessProxy,
    ProxyPort,
    RunPodPort,
    WatchedProxy,
    probe_pod,
    runpod_client,
    utc_now,
)
from runpod_manager.runpod.models import Pod, PodStatus
from runpod_manager.state import PodRecord, State, StateStore

ORPHAN_SWEEP_SECONDS = 3600.0
# Actions that call RunPod to change a pod: the state is saved before each (write-ahead). A create saves
# itself, with its intent.
_WRITE_AHEAD = frozenset({ActionKind.RESUME, *policy.ENDS, ActionKind.TERMINATE_ORPHAN})


class Lifecycle:
    """The executor for one config's pod. RunPod, the proxy process, clocks, sleep and the readiness probe
    are injected so tests swap them (`client_factory` and `proxy_alive` are the older names of two)."""

    def __init__(
        self,
        config: Config,
        paths: Paths,
        *,
        runpod: RunPodPort | None = None,
        client_factory: Callable[[], RunPodPort] | None = None,
        proxy: ProxyPort | None = None,
        proxy_alive: Callable[[], int | None] | None = None,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        probe: Callable[[str, str | None], bool] | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.config = config
        self.paths = paths
        self.store = store or StateStore(paths)  # one per process and state file: the lock is the store's
        self._client = self._injected_runpod = runpod
        self._client_factory = client_factory
        self.proxy: ProxyPort = proxy or (WatchedProxy(config, paths, proxy_alive) if proxy_alive
                                          else ProcessProxy(config, paths))
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        # (pod URL, upstream key) → ready. By default the probe of the pod's kind (ports.probe_pod), which a
        # sibling for another pod makes for its own config.
        self._kind_probe = functools.partial(probe_pod, config.pod)
        self.probe: Callable[[str, str | None], bool] = probe or self._kind_probe
        self.events = EventLog(paths.event_log, clock=clock, secrets=(config.api.api_key,))

    # ------------------------------------------------------------------------------------- plumbing

    @property
    def client(self) -> RunPodPort:
        """The RunPod client, made on first use (a ConfigError without a key)."""
        if self._client is None:
            self._client = self._client_factory() if self._client_factory else runpod_client(self.config)
        return self._client

    def sibling(self, config: Config | None = None, *, share_client: bool = False) -> Lifecycle:
        """The same state store, ports and clocks, for `config` (another pod of the same file) and with a
        client of its own (a second thread's HTTP session) unless `share_client`."""
        runpod = self._client if share_client and self._client is not None else self._injected_runpod
        factory = (lambda: self.client) if share_client else self._client_factory
        return Lifecycle(config or self.config, self.paths, runpod=runpod, client_factory=factory,
                         proxy=self.proxy, clock=self.clock, monotonic=self.monotonic, sleep=self.sleep,
                         probe=None if self.probe is self._kind_probe else self.probe, store=self.store)

    @property
    def client_made(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @property
    def name(self) -> str:
        return self.config.pod.name

    def pod_url(self, pod_id: str) -> str:
        return self.config.pod_url(pod_id)

    def _calls(self) -> int:
        return self._client.calls if self._client is not None else 0

    @contextlib.contextmanager
    def transaction(self, wait_seconds: float | None, *, dry_run: bool = False) -> Iterator[State]:
        """Lock, load once, yield the state; save once at the end unless it is a dry run (then a deep copy is
        yielded, so nothing a dry run plans can reach the file)."""
        with self.store.lock(wait_seconds=wait_seconds):
            state = self.store.load()
            if dry_run:
                yield copy.deepcopy(state)
                return
            yield state
            self.store.save(state)

    def lock_wait(self, wait_seconds: float | None) -> float | None:
        return self.config.startup.lock_wait_seconds if wait_seconds is not None and wait_seconds < 0 else wait_seconds

    def check_world(self, record: PodRecord) -> None:
        """The record belongs to this config's RunPod API, or ConfigError (state.PodRecord.bind_api)."""
        record.bind_api(self.config.api.base_url, self.store.path)

    # ------------------------------------------------------------------------------------- observe

    def _observe(self, state: State, record: PodRecord, now: datetime, *, list_named: bool, resume_refused: bool,
                 check_ready: bool, errors: list[ApiError], prefetched: tuple[Pod | None] | None,
                 listing: Listing | None) -> Observation:
        pod: Pod | None = None
        observed = True
        named: tuple[Pod, ...] | None = None
        if listing is not None:  # one list call for every pod of the config (a watchdog pass over many pods)
            return self._observe_listed(state, record, now, listing, resume_refused=resume_refused,
                                        check_ready=check_ready, errors=errors)
        if prefetched is not None:
            pod = prefetched[0]
        elif record.pod_id is not None:
            try:
                pod = self.get_or_none(record.pod_id)
            except ApiError as exc:
                observed = False
                errors.append(exc)
                self.events.write("observe_failed", config=self.name, pod_id=record.pod_id, error=exc.message)
        if list_named or record.intent is not None or record.pod_id is None:
            try:
                named = tuple(self.client.list_pods_with_prefix(self.config.pod_name_prefix))
            except ApiError as exc:
                self.events.write("list_failed", config=self.name, error=exc.message)
                if record.pod_id is None:
                    observed = False
                    errors.append(exc)
            record.last_sweep_at_epoch = now.timestamp()
        return self._observation(state, record, now, pod, observed, named, self._replaced_pod(record),
                                 resume_refused=resume_refused, check_ready=check_ready)

    def _observe_listed(self, state: State, record: PodRecord, now: datetime, listing: Listing, *,
                        resume_refused: bool, check_ready: bool, errors: list[ApiError]) -> Observation:
        """The observation from the pass's one list of every pod: absent from the list is gone."""
        if listing.error is not None:
            errors.append(listing.error)
            return self._observation(state, record, now, None, False, None, None, resume_refused=resume_refused,
                                     check_ready=False)
        by_id = {pod.id: pod for pod in listing.pods}
        pod = by_id.get(record.pod_id) if record.pod_id else None
        replaced = by_id.get(record.replacing_pod_id) if record.replacing_pod_id else None
        if replaced is None or replaced.status == PodStatus.TERMINATED:
            record.replacing_pod_id, replaced = None, None
        named = None
        if listing.complete:
            named = tuple(p for p in listing.pods if p.name.startswith(self.config.pod_name_prefix))
            record.last_sweep_at_epoch = now.timestamp()
        return self._observation(state, record, now, pod, True, named, replaced, resume_refused=resume_refused,
                                 check_ready=check_ready)

    def _observation(self, state: State, record: PodRecord, now: datetime, pod: Pod | None, observed: bool,
                     named: tuple[Pod, ...] | None, replaced: Pod | None, *, resume_refused: bool,
                     check_ready: bool) -> Observation:
        if pod is not None:
            _note_pod(record, pod, now)
        ready = (check_ready and pod is not None and pod.status == PodStatus.RUNNING
                 and self.probe(self.pod_url(pod.id), record.upstream_key))
        proxy_running = self.proxy.running_pid() is not None if record.proxy_wanted else None
        own = self.spend_today(record, pod, now)
        today = policy.local_day(now, self.config.zone)
        account = spend.account_today_usd(state.pods.values(), today)
        return Observation(pod=pod, pod_observed=observed, spend_today_usd=own, account_spend_today_usd=account,
                           named_pods=named, install_id=state.install_id, replaced_pod=replaced,
                           resume_refused=resume_refused, pod_ready=ready, proxy_running=proxy_running)

    def _replaced_pod(self, record: PodRecord) -> Pod | None:
        """The old pod kept while its replacement starts; forgotten once it is gone."""
        replaced: Pod | None = None
        with contextlib.suppress(ApiError):  # NotFound included: gone is gone
            replaced = self.client.get_pod(record.replacing_pod_id) if record.replacing_pod_id else None
        if replaced is None or replaced.status == PodStatus.TERMINATED:
            record.replacing_pod_id = None
        return replaced if record.replacing_pod_id else None

    def spend_today(self, record: PodRecord, pod: Pod | None, now: datetime) -> float:
        """Accrue the ledger for this observation, ask billing when due, and return spend today."""
        today = policy.local_day(now, self.config.zone)
        day_start = policy.local_day_start(today, self.config.zone)
        spend.roll_day(record, today)
        spend.accrue(record, pod, now, day_start)
        limits = self.config.limits
        if pod is not None and spend.billing_due(record, now, cap_usd=limits.max_daily_spend_usd,
                                                 check_seconds=limits.billing_check_seconds):
            with contextlib.suppress(ApiError):
                spend.record_billing(record, self.client.pod_spend_usd(pod.id, since=day_start), now)
        return spend.today_usd(record, today)

    # ------------------------------------------------------------------------------------------ pass

    def reconcile(self, *, wait_seconds: float | None = 0, dry_run: bool = False, report_orphans_only: bool = False,
                  sweep: bool = False, activity_at: datetime | None = None) -> PassOutcome:
        """One pass: lock, observe, plan, apply. wait_seconds=0 (cron) returns busy instead of waiting."""
        try:
            with self.transaction(wait_seconds, dry_run=dry_run) as state:
                outcome = self.run_pass(state, Options(report_orphans_only=report_orphans_only), dry_run=dry_run,
                                        sweep=sweep, activity_at=activity_at)
        except LockBusy:
            if wait_seconds == 0:
                return PassOutcome(busy=True, notices=self.store.take_notices())
            raise
        outcome.notices = self.store.take_notices()
        return outcome

    def sweep_due(self, record: PodRecord, now: datetime, *, asked: bool = False) -> bool:
        """Whether this pass lists pods for orphans and intents: asked for, never done, or an hour ago."""
        last = record.last_sweep_at_epoch
        return self.config.limits.sweep_orphans and (
            asked or last is None or now.timestamp() - last >= ORPHAN_SWEEP_SECONDS)

    def run_pass(self, state: State, options: Options, *, dry_run: bool, sweep: bool = False,
                 activity_at: datetime | None = None, check_ready: bool = False,
                 prefetched: tuple[Pod | None] | None = None, listing: Listing | None = None) -> PassOutcome:
        """Observe, plan, apply (a refused resume is planned again as a replacement). `prefetched`: the
        record's pod as the caller just got it (opening a lease), so the first look costs no second GET."""
        calls_before = self._calls()
        record = state.record(self.name)
        self.check_world(record)
        if self.config.pod.pod_id and record.pod_id is None and record.intent is None:
            record.pod_id = self.config.pod.pod_id  # an adopted pod: rpm's from the first pass on, never created
        now = self.clock()
        if activity_at is not None and (record.last_activity_at is None or activity_at > record.last_activity_at):
            record.last_activity_at = activity_at
        sweep_due = self.sweep_due(record, now, asked=sweep)
        outcome = PassOutcome(dry_run=dry_run, record=record)
        resume_refused = False
        # A pass may need a second look: a refused resume turns into a replacement.
        for _attempt in range(3):
            observation = self._observe(state, record, now, list_named=sweep_due, resume_refused=resume_refused,
                                        check_ready=check_ready or record.replacing_pod_id is not None,
                                        errors=outcome.observe_errors, prefetched=prefetched, listing=listing)
            prefetched, listing = None, None  # a second look (after a refused resume) asks RunPod again
            outcome.other_installs = other_installs(state, observation.named_pods or ())
            plan = policy.plan(now, self.config, record, observation, policy.activity_of(record), options)
            outcome.plan = policy.Plan(outcome.plan.actions + plan.actions)
            outcome.pod, outcome.spend_today_usd = observation.pod, observation.spend_today_usd
            if dry_run:
                break
            resume_refused = False
            for action in plan.actions:
                if action.kind in _WRITE_AHEAD:
                    self.store.save(state)
                applied = self._apply(state, record, action, now)
                outcome.applied.append(applied)
                if isinstance(applied.error, ResumeRefused):
                    resume_refused = True
                    break
            if not resume_refused:
                break
            sweep_due = False
        outcome.api_calls = self._calls() - calls_before
        return outcome

    def observe(self, state: State, listing: Listing, *, check_ready: bool = False) -> Observation:
        """The pod as `listing` shows it, as a pass would see it (the ledger accrues; nothing is acted on):
        the pod backend's `observe` (backends/pod.py)."""
        record = state.record(self.name)
        return self._observe_listed(state, record, self.clock(), listing, resume_refused=False,
                                    check_ready=check_ready, errors=[])

    def apply(self, state: State, action: Action) -> AppliedAction:
        """One planned action outside a pass, saved ahead as a pass saves it: the pod backend's `apply`."""
        if action.kind in _WRITE_AHEAD:
            self.store.save(state)
        return self._apply(state, state.record(self.name), action, self.clock())

    # ---------------------------------------------------------------------------------------- apply

    def _apply(self, state: State, record: PodRecord, action: Action, now: datetime) -> AppliedAction:
        applied = AppliedAction(action)
        try:
            self._apply_one(state, record, action, now)
        except RpmError as exc:
            applied.ok, applied.error = False, exc
        self.events.write(action.kind.value, config=self.name, pod_id=action.pod_id, pod_name=action.pod_name,
                          reason=action.reason, ok=applied.ok, error=applied.error.message if applied.error else None)
        if applied.ok and action.kind is not ActionKind.REPORT_ORPHAN:
            record.last_action, record.last_reason = action.kind.value, action.reason
        return applied

    def _apply_one(self, state: State, record: PodRecord, action: Action, now: datetime) -> None:
        kind, pod_id = action.kind, action.pod_id
        if kind == ActionKind.CLOSE_LEASE:
            record.lease = None
            record.last_lease_end_reason = action.reason
            if action.limit is policy.Limit.SPEND_CAP:
                record.spend_cap_day = policy.local_day(now, self.config.zone).isoformat()
            record.lease_end_action = (action.lease_end or ActionKind.TERMINATE).value  # the planner decided it
        elif kind in (ActionKind.CREATE, ActionKind.REPLACE):
            create.create(self, state, record, now, replacing=pod_id if kind == ActionKind.REPLACE else None)
        elif kind == ActionKind.ADOPT:
            record.pod_id, record.pod_name, record.intent = pod_id, action.pod_name, None
        elif kind == ActionKind.FORGET_INTENT:
            record.intent = None
            if record.pod_id is None:
                record.upstream_key = None
        elif kind == ActionKind.RESTART_PROXY:
            self.proxy.spawn()  # not waited for under the lock: the next pass sees whether it runs
        elif kind in (ActionKind.REPORT_ORPHAN, ActionKind.ALARM):
            pass
        elif pod_id is not None:
            self._act_on_pod(record, kind, pod_id, now)

    def _act_on_pod(self, record: PodRecord, kind: ActionKind, pod_id: str, now: datetime) -> None:
        if kind == ActionKind.RESUME:
            if (self.config.limits.pod_guard and record.lease is not None and record.upstream_key
                    and not self.config.pod.pod_id):
                # A resumed pod restarts its container with its old args: move the guard to the new deadline.
                self.client.update_pod(pod_id, args=podspec.container_args(self.config, record.upstream_key,
                                                                           record.lease))
            record.last_status = self.client.start_pod(pod_id).status.value
            record.spend_accounted_at = now
        elif kind == ActionKind.STOP:
            stopped: Pod | None
            try:
                stopped = self.client.stop_pod(pod_id)
            except Conflict:
                # A 409 alone does not say the pod is stopped: a locked pod refuses stop while it runs and bills.
                stopped = self.get_or_none(pod_id)
                if stopped is not None and stopped.status in spend.BILLED_STATUSES:
                    _note_pod(record, stopped, now)
                    raise _stop_refused(stopped, adopted=bool(self.config.pod.pod_id)) from None
            except NotFound:
                stopped = None
            if stopped is None:
                _forget(record, pod_id)
            else:
                record.last_status = stopped.status.value
            record.ready_pod_id, record.cost_per_hour = None, 0.0  # a stopped pod bills no GPU
        elif kind in (ActionKind.TERMINATE, ActionKind.TERMINATE_ORPHAN):
            with contextlib.suppress(NotFound):  # already gone is what terminate wants
                self.client.terminate_pod(pod_id)
            _forget(record, pod_id)
        elif kind == ActionKind.FORGET_POD:
            _forget(record, pod_id)

    def wait_ready(self, *, progress: Callable[[Progress], None] | None = None) -> tuple[Pod, float]:
        """Poll until RunPod says RUNNING and GET /v1/models answers through the pod URL.

        Runs without holding the lock (a watchdog may act meanwhile); re-reads the record every poll, so a
        replacement created by recovery is followed.
        """
        startup = self.config.startup
        started = self.monotonic()
        deadline = started + startup.ready_timeout_seconds
        attempt = recoveries = 0
        self.sleep(min(startup.initial_wait_seconds, startup.ready_timeout_seconds))
        while True:
            attempt += 1
            record = self.store.load().record(self.name)
            if record.lease is None:
                raise LeaseClosed(
                    f"the lease was closed while waiting ({record.last_lease_end_reason or 'shutdown'})")
            if record.pod_id is None:
                raise NotReady("the pod disappeared while waiting")
            elapsed = self.monotonic() - started
            try:
                pod = self.get_or_none(record.pod_id)
            except ApiError as exc:
                if progress:
                    progress(Progress(record.pod_id, "unknown", elapsed, attempt, exc.message))
                if self.monotonic() >= deadline:
                    raise NotReady(f"pod {record.pod_id} not ready after {int(elapsed)} s ({exc.message})") from None
                self.sleep(startup.poll_interval_seconds)
                continue
            if pod is None or pod.status in (PodStatus.ERROR, PodStatus.TERMINATED, PodStatus.EXITED):
                recoveries += 1
                if recoveries > startup.max_startup_attempts:
                    raise BootFailed(f"pod {record.pod_id} failed {recoveries - 1} times while starting",
                                   hint="see `rpm status` and the event log")
                if progress:
                    progress(Progress(record.pod_id, pod.status.value if pod else "gone", elapsed, attempt,
                                      "recovering"))
                self.reconcile(wait_seconds=None)
                continue
            ready = pod.status == PodStatus.RUNNING and self.probe(self.pod_url(pod.id), record.upstream_key)
            if progress:
                progress(Progress.of_pod(pod, elapsed, attempt, ready=ready))
            if ready:
                self._mark_ready(pod)
                return pod, elapsed
            if self.monotonic() >= deadline:
                # What runs afterwards is the caller's to decide and say (control.failed_wait).
                raise NotReady(f"pod {pod.id} not ready after {int(elapsed)} s (status {pod.status.value})")
            self.sleep(startup.poll_interval_seconds)

    def get_or_none(self, pod_id: str) -> Pod | None:
        """The pod, or None when RunPod says it does not exist (other API errors raise)."""
        try:
            return self.client.get_pod(pod_id)
        except NotFound:
            return None

    def _mark_ready(self, pod: Pod) -> None:
        with self.transaction(None) as state:
            record = state.record(self.name)
            if record.pod_id == pod.id:
                record.ready_pod_id, record.last_status = pod.id, pod.status.value
        self.events.write("ready", config=self.name, pod_id=pod.id)
        if record.replacing_pod_id:
            self.reconcile(wait_seconds=None)  # the replacement is ready: the old pod goes now


def other_installs(state: State, pods: Iterable[Pod]) -> list[Pod]:
    """The pods (of a listing) that are rpm's but that this install cannot claim: no record of this state holds
    them (by id, or by the name of a pending create) and their names do not carry this install's id. Another
    rpm install's, or an older rpm's: shown, never touched. The one derivation for the sweep's passes,
    `shutdown --all` and `rpm status`."""
    held = {pod_id for record in state.pods.values() for pod_id in (record.pod_id, record.replacing_pod_id)}
    pending = {record.intent.pod_name for record in state.pods.values() if record.intent is not None}
    return [pod for pod in pods
            if pod.name.startswith(podspec.RPM_PREFIX) and pod.id not in held and pod.name not in pending
            and pod.status != PodStatus.TERMINATED and not podspec.made_by(pod.name, state.install_id)]


def _note_pod(record: PodRecord, pod: Pod, now: datetime) -> None:
    record.gpu_type_id = pod.gpu_type_id or record.gpu_type_id
    record.data_center_id = pod.data_center_id or record.data_center_id
    if pod.status != PodStatus.RUNNING:
        record.ready_pod_id = None
    record.last_status = pod.status.value
    if pod.runtime and any((gpu.util_percent or 0) > 0 for gpu in pod.runtime.gpus):
        record.last_gpu_busy_at = now


def _stop_refused(pod: Pod, *, adopted: bool) -> StopRefused:
    """What blocks the stop of a pod that still runs: the lock (the user's), or a status RunPod refused in."""
    if pod.locked:
        instead = "" if adopted else ", or terminate it: `rpm shutdown` without --stop"
        return PodLocked(f"RunPod refused to stop pod {pod.id}: the pod is locked; it is {pod.status.value} and "
                         "still bills", pod_id=pod.id, status=pod.status.value,
                         hint=f"unlock it in the RunPod console{instead}")
    return StopRefused(f"RunPod refused to stop pod {pod.id} although it is {pod.status.value}; it still bills",
                       pod_id=pod.id, status=pod.status.value, hint="the next pass tries again; see `rpm status`")


def _forget(record: PodRecord, pod_id: str) -> None:
    if record.pod_id == pod_id:
        spend.pod_ended(record)
        record.pod_id = record.pod_name = record.ready_pod_id = record.upstream_key = None
        record.last_status = PodStatus.TERMINATED.value
    if record.replacing_pod_id == pod_id:
        record.replacing_pod_id = None


