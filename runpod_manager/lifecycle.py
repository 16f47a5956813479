"""start / shutdown / reconcile: observe → plan → apply for a config's pod, under the state lock; readiness wait.

Every change to a pod goes through one pass (`_pass`): `rpm start` opens a lease and runs it, `rpm shutdown`
closes the lease and runs it, `rpm watchdog` and the running proxy just run it. The decision is
`policy.plan()`; this module observes (through `RunPodPort`), acts and records. Spend is `spend.py`'s
ledger, the create request `podspec.py`'s, `rpm status` `status.py`'s and the proxy's window
`proxy/bridge.py`'s.

State is written ahead of RunPod: each pass loads the state once under the lock, saves it before every call
that changes a pod (so an intent, a closed lease or an open one is on disk before RunPod acts on it) and
once at the end. A quiet pass is one lock, one load, one save and one API call.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import NoReturn

import requests

from runpod_manager import podspec, policy, spend
from runpod_manager.config import Config
from runpod_manager.errors import (
    ApiError,
    AuthError,
    ConfigError,
    Conflict,
    InsufficientBalance,
    Interrupted,
    InvalidRequest,
    LimitRefused,
    LockBusy,
    NoCapacity,
    NotFound,
    NotReady,
    ResumeRefused,
    RpmError,
)
from runpod_manager.events import EventLog
from runpod_manager.outcomes import (
    AppliedAction,
    PassOutcome,
    Progress,
    ProxyStopResult,
    ShutdownResult,
    StartResult,
    StatusResult,
)
from runpod_manager.paths import Paths
from runpod_manager.policy import Action, ActionKind, Observation, Options
from runpod_manager.ports import ProcessProxy, ProxyPort, RunPodPort, WatchedProxy
from runpod_manager.runpod.models import Pod, PodStatus
from runpod_manager.state import Intent, Lease, PodRecord, State, StateStore

ORPHAN_SWEEP_SECONDS = 3600.0
# Actions that call RunPod to change a pod: the state is saved before each (write-ahead).
_WRITE_AHEAD = frozenset({*policy.STARTS, *policy.ENDS, ActionKind.TERMINATE_ORPHAN})


def utc_now() -> datetime:
    return datetime.now(UTC)


def probe_model_server(pod_url: str, upstream_key: str | None, timeout_seconds: float = 5.0) -> bool:
    """Readiness is never inferred from status alone: GET /v1/models through the pod URL must answer 200."""
    headers = {"Authorization": f"Bearer {upstream_key}"} if upstream_key else {}
    try:
        response = requests.get(f"{pod_url}/v1/models", headers=headers, timeout=timeout_seconds)
    except requests.RequestException:
        return False
    return response.status_code == 200


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
        probe: Callable[[str, str | None], bool] = probe_model_server,
    ) -> None:
        self.config = config
        self.paths = paths
        self.store = StateStore(paths)
        self._client = self._injected_runpod = runpod
        self._client_factory = client_factory
        self.proxy: ProxyPort = proxy or (WatchedProxy(config, paths, proxy_alive) if proxy_alive
                                          else ProcessProxy(config, paths))
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.probe = probe
        self.events = EventLog(paths.event_log, clock=clock, secrets=(config.api.api_key,))

    # ------------------------------------------------------------------------------------- plumbing

    @property
    def client(self) -> RunPodPort:
        """The RunPod client, made on first use (a ConfigError without a key)."""
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:
                from runpod_manager.runpod.client import RunPodClient

                api = self.config.api
                self._client = RunPodClient(
                    self.config.require_api_key(), api.base_url, connect_timeout_seconds=api.connect_timeout_seconds,
                    read_timeout_seconds=api.read_timeout_seconds, max_retries=api.max_retries)
        return self._client

    def sibling(self) -> Lifecycle:
        """The same config, ports and clocks with a client of its own (a second thread's HTTP session)."""
        return Lifecycle(self.config, self.paths, runpod=self._injected_runpod, client_factory=self._client_factory,
                         proxy=self.proxy, clock=self.clock, monotonic=self.monotonic, sleep=self.sleep,
                         probe=self.probe)

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

    def _lock_wait(self, wait_seconds: float | None) -> float | None:
        return self.config.startup.lock_wait_seconds if wait_seconds is not None and wait_seconds < 0 else wait_seconds

    def check_world(self, record: PodRecord) -> None:
        """State belongs to one RunPod API (account): a record holding a pod, an intent or a lease of another
        is refused, never acted upon, where a 404 from the wrong API would silently drop its pod."""
        base = self.config.api.base_url
        if record.api_base_url and record.api_base_url != base and record.holds_something:
            held = f"pod {record.pod_id}" if record.pod_id else "an open lease"
            raise ConfigError(
                f"the state of config '{self.name}' ({self.store.path}) holds {held} at RunPod API "
                f"{record.api_base_url}, but this run talks to {base}; nothing was changed",
                hint=f"run rpm with RUNPOD_API_URL={record.api_base_url} (e.g. `rpm shutdown`) first, or use "
                     "another RPM_HOME for the other API")
        record.api_base_url = base

    # ------------------------------------------------------------------------------------- observe

    def _observe(self, record: PodRecord, now: datetime, *, list_named: bool, resume_refused: bool,
                 check_ready: bool, errors: list[ApiError]) -> Observation:
        pod: Pod | None = None
        observed = True
        named: tuple[Pod, ...] | None = None
        if record.pod_id is not None:
            try:
                pod = self.client.get_pod(record.pod_id)
            except NotFound:
                pod = None
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
        replaced = self._replaced_pod(record)
        if pod is not None:
            _note_pod(record, pod, now)
        ready = (check_ready and pod is not None and pod.status == PodStatus.RUNNING
                 and self.probe(self.pod_url(pod.id), record.upstream_key))
        proxy_running = self.proxy.running_pid() is not None if record.proxy_wanted else None
        return Observation(pod=pod, pod_observed=observed, spend_today_usd=self.spend_today(record, pod, now),
                           named_pods=named, replaced_pod=replaced, resume_refused=resume_refused,
                           pod_ready=ready, proxy_running=proxy_running)

    def _replaced_pod(self, record: PodRecord) -> Pod | None:
        """The old pod kept while its replacement starts; forgotten once it is gone."""
        if not record.replacing_pod_id:
            return None
        replaced: Pod | None = None
        with contextlib.suppress(ApiError):  # NotFound included: gone is gone
            replaced = self.client.get_pod(record.replacing_pod_id)
        if replaced is None or replaced.status == PodStatus.TERMINATED:
            record.replacing_pod_id = None
            return None
        return replaced

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
                outcome = self._pass(state, Options(report_orphans_only=report_orphans_only), dry_run=dry_run,
                                     sweep=sweep, activity_at=activity_at)
        except LockBusy:
            if wait_seconds == 0:
                return PassOutcome(busy=True, notices=self.take_notices())
            raise
        outcome.notices = self.take_notices()
        return outcome

    def take_notices(self) -> list[str]:
        notices, self.store.notices = list(self.store.notices), []
        return notices

    def _pass(self, state: State, options: Options, *, dry_run: bool, sweep: bool = False,
              activity_at: datetime | None = None, check_ready: bool = False) -> PassOutcome:
        calls_before = self._calls()
        record = state.record(self.name)
        self.check_world(record)
        now = self.clock()
        if activity_at is not None and (record.last_activity_at is None or activity_at > record.last_activity_at):
            record.last_activity_at = activity_at
        sweep_due = self.config.limits.sweep_orphans and (
            sweep or record.last_sweep_at_epoch is None
            or now.timestamp() - record.last_sweep_at_epoch >= ORPHAN_SWEEP_SECONDS)
        outcome = PassOutcome(dry_run=dry_run, record=record)
        resume_refused = False
        # A pass may need a second look: a refused resume turns into a replacement.
        for _attempt in range(3):
            observation = self._observe(record, now, list_named=sweep_due, resume_refused=resume_refused,
                                        check_ready=check_ready or record.replacing_pod_id is not None,
                                        errors=outcome.observe_errors)
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
            if action.limit == "spend_cap":
                record.spend_cap_day = policy.local_day(now, self.config.zone).isoformat()
            limits = self.config.limits
            record.lease_end_action = {"idle": limits.idle_action, "cutoff": limits.cutoff_action,
                                       "runtime": limits.cutoff_action}.get(action.limit or "", "terminate")
        elif kind in (ActionKind.CREATE, ActionKind.REPLACE):
            self._create(state, record, now, replacing=pod_id if kind == ActionKind.REPLACE else None)
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
            if self.config.limits.pod_guard and record.lease is not None and record.upstream_key:
                # A resumed pod restarts its container with its old args: move the guard to the new deadline.
                self.client.update_pod(pod_id, args=podspec.container_args(self.config, record.upstream_key,
                                                                           record.lease))
            record.last_status = self.client.start_pod(pod_id).status.value
            record.spend_accounted_at = now
        elif kind == ActionKind.STOP:
            try:
                record.last_status = self.client.stop_pod(pod_id).status.value
            except Conflict:
                # RunPod refuses stop only for a pod that is not running (EXITED or ERROR): the goal, a pod
                # that bills no GPU time, holds. (Reached when the pod could not be observed first.)
                record.last_status = PodStatus.EXITED.value
            except NotFound:
                _forget(record, pod_id)
            record.ready_pod_id = None
        elif kind in (ActionKind.TERMINATE, ActionKind.TERMINATE_ORPHAN):
            with contextlib.suppress(NotFound):  # already gone is what terminate wants
                self.client.terminate_pod(pod_id)
            _forget(record, pod_id)
        elif kind == ActionKind.FORGET_POD:
            _forget(record, pod_id)

    def _create(self, state: State, record: PodRecord, now: datetime, *, replacing: str | None) -> None:
        """Create the pod, trying GPU types in order within the max price.

        The intent (the name about to be created) is saved before the call; a crash between the call and the
        save is recovered by finding the pod by name.
        """
        candidates = podspec.gpu_candidates(self.config, self._prices())
        if not candidates:
            raise NoCapacity("no configured GPU type is within [pod] max_price_per_hour",
                             hint="run `rpm refresh-catalog` to see prices")
        pod_name = f"{self.config.pod_name_prefix}{secrets.token_hex(3)}"
        if replacing is not None or not record.upstream_key:
            record.upstream_key = secrets.token_urlsafe(32)
        record.intent = Intent(pod_name=pod_name, created_at=now, purpose="replace" if replacing else "create")
        self.store.save(state)
        refused: list[str] = []
        for gpu_type_id in candidates:
            spec = podspec.build_spec(self.config, pod_name, gpu_type_id, record.upstream_key, record.lease)
            try:
                pod = self.client.create_pod(spec)
            except NoCapacity:
                refused.append(f"{gpu_type_id}: no capacity")
                continue  # another attempt on the same type rarely helps right away: next type
            except (InsufficientBalance, InvalidRequest, AuthError):
                record.intent = None  # a definite refusal: no pod was made
                raise
            record.pod_id, record.pod_name, record.intent, record.ready_pod_id = pod.id, pod.name, None, None
            record.gpu_type_id, record.data_center_id = pod.gpu_type_id, pod.data_center_id
            record.cost_per_hour, record.last_status = pod.cost_per_hour, pod.status.value
            if replacing is not None:
                record.replacing_pod_id = replacing
            spend.pod_created(record, now)
            self.events.write("created", config=self.name, pod_id=pod.id, pod_name=pod.name, gpu=gpu_type_id,
                              cost_per_hour=pod.cost_per_hour)
            return
        record.intent = None
        raise NoCapacity(f"no capacity for any configured GPU type ({'; '.join(refused)})",
                         hint="add GPU types to [pod] gpu_types, widen data_centers, or try later")

    def _prices(self) -> dict[str, float | None] | None:
        """Per-pod prices for the max-price filter: the catalog cache, else one fetch; None when unknown."""
        if not self.config.pod.max_price_per_hour:
            return None
        from runpod_manager import catalog

        prices = catalog.cached_prices(self.paths, self.config)
        if prices is None:
            with contextlib.suppress(ApiError):  # the create itself will tell; do not block a start on it
                prices = catalog.fetch_prices(self.client, self.paths, self.config)
        return prices

    # ---------------------------------------------------------------------------------------- start

    def start(self, *, wait: bool = True, dry_run: bool = False, wait_seconds: float | None = -1.0,
              progress: Callable[[Progress], None] | None = None, opened_by: str = "start") -> StartResult:
        """Open a lease (if none), create or resume the pod, and wait until it is ready.

        A lease opens only for a start that has what it needs (the key here; the caller checks the proxy's
        port and bind first), and a start that fails closes its lease unless its own pod is verifiably still
        coming up: a later watchdog pass must never create or resume a pod for a start that gave up.
        wait_seconds: how long to wait for the state lock (-1: the configured lock_wait_seconds).
        """
        _ = self.client  # no key, no lease (ConfigError before anything is written)
        started = self.monotonic()
        with self.transaction(self._lock_wait(wait_seconds), dry_run=dry_run) as state:
            record = state.record(self.name)
            self.check_world(record)
            had_lease = record.lease is not None
            if record.lease is None:
                self._open_lease(record, opened_by, dry_run=dry_run)
            try:
                outcome = self._pass(state, Options(), dry_run=dry_run, check_ready=True)
            except RpmError as exc:
                if not dry_run:
                    self._fail_start(state, record, None, exc)
                raise
            failure = None if dry_run else _start_failure(record, outcome)
            if failure is not None:
                self._fail_start(state, record, outcome.pod, failure)
        pod = outcome.pod
        if dry_run:
            return StartResult(pod=pod, record=record, created=False, resumed=False, already_running=had_lease
                               and pod is not None, ready=False, base_url=None, pod_url=None, plan=outcome.plan,
                               dry_run=True, notices=self.take_notices())
        if record.pod_id is None:
            raise NotReady("no pod exists for the open lease", hint="see `rpm status` and the event log")
        if progress:
            progress(Progress(record.pod_id, pod.status.value if pod else record.last_status or "unknown",
                              self.monotonic() - started, 0,
                              "created" if outcome.created else "resumed" if outcome.resumed else ""))
        ready, waited = record.ready, 0.0
        if wait and not ready:
            pod, waited = self.wait_ready(progress=progress)
            ready = True
            record = self.store.load().record(self.name)
        pod_url = self.pod_url(record.pod_id) if record.pod_id else None
        return StartResult(pod=pod, record=record, created=outcome.created, resumed=outcome.resumed,
                           already_running=had_lease and not outcome.created and not outcome.resumed
                           and pod is not None, ready=ready, base_url=f"{pod_url}/v1" if pod_url else None,
                           pod_url=pod_url, plan=outcome.plan, wait_seconds=waited, notices=self.take_notices())

    def _open_lease(self, record: PodRecord, opened_by: str, *, dry_run: bool) -> None:
        now = self.clock()
        # Observe first, so the refusal sees today's spend.
        pod = None
        if record.pod_id:
            with contextlib.suppress(ApiError):
                pod = self.client.get_pod(record.pod_id)
        refusal = policy.start_refusal(now, self.config, record, self.spend_today(record, pod, now))
        if refusal:
            raise LimitRefused(refusal)
        record.lease = Lease(opened_at=now, deadline=policy.lease_deadline(now, self.config), opened_by=opened_by)
        record.last_activity_at = now
        record.last_lease_end_reason = record.lease_end_action = None
        if not dry_run:
            self.events.write("lease_opened", config=self.name, deadline=record.lease.deadline, opened_by=opened_by)

    def _fail_start(self, state: State, record: PodRecord, pod: Pod | None, error: RpmError) -> NoReturn:
        """Close the lease of a failed start unless its own pod is verifiably coming up; raise the error
        (its own type, so its exit code) saying what still runs."""
        if pod is not None and record.pod_id == pod.id and pod.status in policy.ACTIVE_STATUSES:
            still = f"pod {record.pod_id} is still coming up under its lease; `rpm shutdown` ends it"
        else:
            self._close_lease(state, record, f"start failed: {error.message}")
            if record.pod_id is not None:
                still = f"the lease is closed; pod {record.pod_id} stays {record.last_status or 'as it is'}"
            elif record.intent is not None:
                still = ("the lease is closed; a pod this start may have created is found by name and "
                         "terminated by the next `rpm watchdog` or `rpm shutdown`")
            else:
                still = "the lease is closed and nothing of this config runs"
        error.hint = f"{error.hint}; {still}" if error.hint else still
        raise error

    def _close_lease(self, state: State, record: PodRecord, reason: str) -> None:
        """Close a lease no pod serves: a stopped pod stays stopped (a fast resume later); a pod that a lost
        create may have made is terminated when a later pass finds it by name."""
        if record.lease is None:
            return
        record.lease, record.last_lease_end_reason = None, reason
        record.lease_end_action = "stop" if record.pod_id is not None else "terminate"
        record.proxy_wanted = False
        self.store.save(state)
        self.events.write("lease_closed", config=self.name, reason=reason)

    def interrupted_start(self) -> Interrupted:
        """Ctrl-C during a start: the pod it asked for keeps to its limits; say which and until when."""
        with self.transaction(self.config.startup.lock_wait_seconds) as state:
            record = state.record(self.name)
            if record.pod_id is None:
                # No pod of its own yet: like any failed start, it leaves no lease for cron to act on.
                self._close_lease(state, record, "start interrupted")
        if record.lease is None:
            return Interrupted("interrupted; the lease is closed and nothing of this config runs"
                               + (" (a pod being created is terminated by the next `rpm watchdog` or "
                                  "`rpm shutdown`)" if record.intent else ""))
        until = f"until {record.lease.deadline.astimezone():%Y-%m-%d %H:%M %Z} at the latest"
        return Interrupted(f"interrupted; pod {record.pod_id} keeps coming up under its lease {until} "
                           "(idle stop applies)", hint="`rpm shutdown` ends it now")

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
                raise NotReady(f"the lease was closed while waiting ({record.last_lease_end_reason or 'shutdown'})")
            if record.pod_id is None:
                raise NotReady("the pod disappeared while waiting")
            elapsed = self.monotonic() - started
            try:
                pod: Pod | None = self.client.get_pod(record.pod_id)
            except NotFound:
                pod = None
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
                    raise NotReady(f"pod {record.pod_id} failed {recoveries - 1} times while starting",
                                   hint="see `rpm status` and the event log")
                if progress:
                    progress(Progress(record.pod_id, pod.status.value if pod else "gone", elapsed, attempt,
                                      "recovering"))
                self.reconcile(wait_seconds=None)
                continue
            ready = pod.status == PodStatus.RUNNING and self.probe(self.pod_url(pod.id), record.upstream_key)
            if progress:
                detail = "model server answering" if ready else (
                    "waiting for the model server" if pod.status == PodStatus.RUNNING else "")
                progress(Progress(pod.id, pod.status.value, elapsed, attempt, detail))
            if ready:
                self._mark_ready(pod)
                return pod, elapsed
            if self.monotonic() >= deadline:
                raise NotReady(f"pod {pod.id} not ready after {int(elapsed)} s (status {pod.status.value})",
                               hint="the pod keeps running under its lease limits; check `rpm status`, or "
                                    "`rpm shutdown`")
            self.sleep(startup.poll_interval_seconds)

    def _mark_ready(self, pod: Pod) -> None:
        with self.transaction(None) as state:
            record = state.record(self.name)
            if record.pod_id == pod.id:
                record.ready_pod_id, record.last_status = pod.id, pod.status.value
        self.events.write("ready", config=self.name, pod_id=pod.id)
        if record.replacing_pod_id:
            self.reconcile(wait_seconds=None)  # the replacement is ready: the old pod goes now

    # ------------------------------------------------------------------------------------- shutdown

    def shutdown(self, *, stop: bool = False, all_pods: bool = False, dry_run: bool = False,
                 wait_seconds: float | None = -1.0) -> ShutdownResult:
        """Close the lease, end the pod (terminate, or stop with stop=True) and stop every proxy; idempotent.

        Raises (with the failure's own type and exit code) when a pod could not be ended, or when RunPod could
        not be asked at all: "nothing running" is said only when it was verified.
        """
        end_action = "stop" if stop else "terminate"
        # The proxies go first: their in-flight streams finish on a pod that still runs, and they cannot wake
        # the pod again (a new lease) between the end of the pod below and their own end.
        stopped = [] if dry_run else self.proxy.stop_all()
        with self.transaction(self._lock_wait(wait_seconds), dry_run=dry_run) as state:
            record = state.record(self.name)
            self.check_world(record)
            record.lease, record.last_lease_end_reason, record.lease_end_action = None, "shutdown", end_action
            record.proxy_wanted = False
            outcome = self._pass(state, Options(shutdown_action=end_action), dry_run=dry_run, sweep=True)
            orphans = self._sweep_all_rpm_pods(record, dry_run=dry_run) if all_pods else []
        if not dry_run:  # a watchdog may have restarted one (lease open, proxy wanted) before the lock was ours
            stopped += [pid for pid in self.proxy.stop_all() if pid not in stopped]
        ending = (*policy.ENDS, ActionKind.TERMINATE_ORPHAN)
        ended = ([AppliedAction(a) for a in outcome.plan.actions if a.kind in ending] if dry_run
                 else [a for a in outcome.applied if a.action.kind in ending and a.ok])
        failed = [a for a in outcome.applied if a.action.kind in ending and a.error is not None]
        if failed and failed[0].error is not None:
            done = "; ".join(f"{a.action.kind.value} {a.action.pod_id} done" for a in ended)
            raise _retold(failed[0].error, "could not end pod " + ", ".join(
                f"{a.action.pod_id} ({a.error.message if a.error else '?'})" for a in failed)
                + (f"; {done}" if done else ""),
                hint="it may still bill: run `rpm shutdown` again; the watchdog also retries")
        if outcome.observe_errors and not dry_run:
            known = (f"state last saw pod {record.pod_id} {record.last_status or ''}".strip() if record.pod_id
                     else "state knows no pod")
            first = outcome.observe_errors[0]
            raise _retold(first, f"could not verify that nothing of config '{self.name}' runs: {first.message} "
                          f"({known})", hint="the lease is closed; run `rpm shutdown` again when RunPod answers")
        return ShutdownResult(ended=ended, orphans_terminated=orphans, proxies_stopped=stopped, record=record,
                              dry_run=dry_run, plan=outcome.plan, notices=self.take_notices())

    def _sweep_all_rpm_pods(self, record: PodRecord, *, dry_run: bool) -> list[str]:
        """--all: every rpm- pod of the account that state does not know."""
        known = {record.pod_id, record.replacing_pod_id}
        swept = []
        for pod in self.client.list_pods_with_prefix("rpm-"):
            if pod.id in known or pod.status == PodStatus.TERMINATED:
                continue
            if not dry_run:
                self.client.terminate_pod(pod.id)
                self.events.write("terminate_orphan", config=self.name, pod_id=pod.id, pod_name=pod.name,
                                  reason="rpm shutdown --all")
            swept.append(f"{pod.id} ({pod.name})")
        return swept

    # ---------------------------------------------------------------------------------------- proxy

    def ensure_proxy(self, running_pid: int | None = None) -> str:
        """Run the proxy in the background for the open lease (restarted by reconcile if it dies); return the
        OpenAI base URL. `running_pid`: this config's own proxy already serves the port (process.claim_port),
        so none is started and none is marked wanted (it is not ours to restart)."""
        if running_pid is None:
            with self.transaction(None) as state:
                record = state.record(self.name)
                if record.lease is None:
                    raise NotReady("the lease was closed before the proxy started (shutdown or a limit)",
                                   hint="nothing of this config runs; see `rpm status`")
                record.proxy_wanted = True
            try:
                self.proxy.start()
            except RpmError as exc:
                record = self.store.load().record(self.name)
                still = (f"pod {record.pod_id} keeps running under its lease (until "
                         f"{record.lease.deadline.astimezone():%Y-%m-%d %H:%M %Z}); `rpm proxy` serves it, "
                         "`rpm shutdown` ends it") if record.pod_id and record.lease else "nothing else runs"
                exc.hint = f"{exc.hint}; {still}" if exc.hint else still
                raise
        return proxy_base_url(self.config)

    def proxy_stopped(self, stopped_by: str | None = None) -> ProxyStopResult:
        """A proxy of this config stopped: what that means for the pod (README, "Stopping the proxy").

        A lease the proxy opened by waking the pod ends with the idle action, because the proxy was what would
        have noticed the pod going idle. A lease `rpm start` opened stays: the pod keeps to its limits (the
        watchdog from cron enforces idle stop and the deadline), and the result says until when.
        """
        with self.transaction(self.config.startup.lock_wait_seconds) as state:
            record = state.record(self.name)
            self.check_world(record)
            lease, pod_id = record.lease, record.pod_id
            if lease is not None and lease.opened_by == "wake" and pod_id is not None:
                record.lease, record.last_lease_end_reason = None, "the proxy that woke the pod stopped"
                record.lease_end_action = self.config.limits.idle_action
                ends = [a for a in self._pass(state, Options(), dry_run=False).applied if a.action.kind in policy.ENDS]
                return ProxyStopResult(pod_id=pod_id, ended=[a for a in ends if a.ok],
                                       failed=[a for a in ends if not a.ok], kept_until=None, idle_ends_at=None,
                                       stopped_by=stopped_by)
        if lease is not None and pod_id is not None:
            view = policy.limit_view(self.clock(), self.config, record, policy.activity_of(record))
            return ProxyStopResult(pod_id=pod_id, ended=[], failed=[], kept_until=view.deadline,
                                   idle_ends_at=view.idle_ends_at, stopped_by=stopped_by)
        return ProxyStopResult(pod_id=None, ended=[], failed=[], kept_until=None, idle_ends_at=None,
                               stopped_by=stopped_by)

    def status(self) -> StatusResult:
        """`rpm status` (status.py); kept here for callers of the lifecycle."""
        from runpod_manager.status import build_status

        return build_status(self)


def proxy_base_url(config: Config) -> str:
    """The OpenAI base URL clients on this machine use: the one derivation shown by start, status and demo."""
    from runpod_manager.proxy import process

    return f"{process.proxy_url(config)}/v1"


def _note_pod(record: PodRecord, pod: Pod, now: datetime) -> None:
    record.gpu_type_id = pod.gpu_type_id or record.gpu_type_id
    record.data_center_id = pod.data_center_id or record.data_center_id
    if pod.status != PodStatus.RUNNING:
        record.ready_pod_id = None
    record.last_status = pod.status.value
    if pod.runtime and any((gpu.util_percent or 0) > 0 for gpu in pod.runtime.gpus):
        record.last_gpu_busy_at = now


def _forget(record: PodRecord, pod_id: str) -> None:
    if record.pod_id == pod_id:
        spend.pod_ended(record)
        record.pod_id = record.pod_name = record.ready_pod_id = record.upstream_key = None
        record.last_status = PodStatus.TERMINATED.value
    if record.replacing_pod_id == pod_id:
        record.replacing_pod_id = None


def _start_failure(record: PodRecord, outcome: PassOutcome) -> RpmError | None:
    """Why a start's pass did not give the lease a pod, as the typed error, or None."""
    alarms = [a for a in outcome.applied if a.action.kind == ActionKind.ALARM]
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
