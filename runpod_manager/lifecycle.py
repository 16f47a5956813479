"""start / shutdown / reconcile: observe → plan → apply, under the state lock; readiness wait.

Every change to a pod goes through `Lifecycle.reconcile()`: `rpm start` opens a lease and reconciles,
`rpm shutdown` closes it and reconciles, `rpm watchdog` and the running proxy just reconcile. The
decision is `policy.plan()`; this module only observes and acts, saving the state after each action and
logging one JSON line per action with its reason.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NoReturn

import requests

from runpod_manager import policy
from runpod_manager.config import Config
from runpod_manager.errors import (
    ApiError,
    AuthError,
    ConfigError,
    Conflict,
    InsufficientBalance,
    Interrupted,
    LimitRefused,
    LockBusy,
    NoCapacity,
    NotFound,
    NotReady,
    ResumeRefused,
    RpmError,
)
from runpod_manager.events import EventLog
from runpod_manager.paths import Paths
from runpod_manager.policy import Action, ActionKind, Activity, Observation, Options, Plan
from runpod_manager.runpod.models import Pod, PodSpec, PodStatus
from runpod_manager.state import Intent, Lease, PodRecord, State, StateStore

if TYPE_CHECKING:
    from runpod_manager.proxy.controller import PodView, UpstreamTarget
    from runpod_manager.runpod.client import RunPodClient

# A billing read costs an API call, so a pass estimates spend from cost × time and asks billing only
# near the cap or this often.
BILLING_CHECK_SECONDS = 600.0
ORPHAN_SWEEP_SECONDS = 3600.0


@dataclass(frozen=True)
class Progress:
    """One line of the readiness wait, for the renderer's progress display."""

    pod_id: str | None
    status: str
    elapsed_seconds: float
    attempt: int
    detail: str = ""


@dataclass
class AppliedAction:
    action: Action
    ok: bool = True
    error: RpmError | None = None  # the typed failure: callers decide by its class, never by its text


@dataclass
class PassResult:
    """The outcome of one reconcile pass."""

    plan: Plan
    applied: list[AppliedAction] = field(default_factory=list)
    dry_run: bool = False
    busy: bool = False
    record: PodRecord | None = None
    pod: Pod | None = None
    spend_today_usd: float = 0.0
    api_calls: int = 0
    notices: list[str] = field(default_factory=list)
    observe_errors: list[ApiError] = field(default_factory=list)  # what the pass could not see

    @property
    def auth_error(self) -> AuthError | None:
        """The key stopped working (revoked, wrong, lacking permission): an alarm on every pass."""
        errors: list[RpmError] = [*self.observe_errors, *(a.error for a in self.applied if a.error)]
        return next((e for e in errors if isinstance(e, AuthError)), None)

    @property
    def failed(self) -> list[AppliedAction]:
        return [a for a in self.applied if not a.ok]

    @property
    def enforcement_failed(self) -> bool:
        """A limit (an end of a pod, or an alarm) could not be enforced: cron should mail this."""
        return any(
            not a.ok and a.action.kind in (*policy.ENDS, ActionKind.TERMINATE_ORPHAN) for a in self.applied
        ) or any(a.action.kind == ActionKind.ALARM for a in self.applied)


@dataclass
class StartResult:
    pod: Pod | None
    record: PodRecord
    created: bool
    resumed: bool
    already_running: bool
    ready: bool
    base_url: str | None
    pod_url: str | None
    plan: Plan
    dry_run: bool = False
    wait_seconds: float = 0.0
    proxy_url: str | None = None


@dataclass
class ShutdownResult:
    ended: list[AppliedAction]  # the record's pods stopped or terminated, and orphans of this config
    orphans_terminated: list[str]
    proxies_stopped: list[int]  # pids of every proxy of this config that was stopped
    record: PodRecord
    dry_run: bool = False
    plan: Plan = field(default_factory=Plan)

    @property
    def proxy_stopped(self) -> bool:
        return bool(self.proxies_stopped)


@dataclass
class ProxyStopResult:
    """What a stopped proxy leaves behind: the pod it ended, or the pod that keeps running and until when."""

    pod_id: str | None
    ended: list[AppliedAction]
    failed: list[AppliedAction]
    kept_until: datetime | None  # the lease's deadline, when the pod keeps running
    idle_ends_at: datetime | None  # when the watchdog stops it for idleness, if idle stop is on


@dataclass
class StatusResult:
    config_name: str
    record: PodRecord
    pod: Pod | None
    pod_observed: bool
    observe_error: str | None
    spend_today_usd: float
    limits: policy.LimitView
    now: datetime
    proxy_pid: int | None
    proxy_url: str | None
    pod_url: str | None
    max_daily_spend_usd: float
    idle_seconds: float | None


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
    """The executor. Clock, sleep, client and readiness probe are injected so tests can swap them."""

    def __init__(
        self,
        config: Config,
        paths: Paths,
        *,
        client_factory: Callable[[], RunPodClient] | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        probe: Callable[[str, str | None], bool] = probe_model_server,
        proxy_alive: Callable[[], int | None] | None = None,
    ) -> None:
        self.config = config
        self.paths = paths
        self.store = StateStore(paths)
        self._client_factory = client_factory
        self._client: RunPodClient | None = None
        self.clock = clock
        self.sleep = sleep
        self.probe = probe
        self._proxy_alive = proxy_alive
        self.events = EventLog(paths.event_log, clock=clock, secrets=(config.api.api_key,))
        self.observe_errors: list[ApiError] = []  # what the last pass could not observe

    # ------------------------------------------------------------------------------------- plumbing

    @property
    def client(self) -> RunPodClient:
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:
                from runpod_manager.runpod.client import RunPodClient

                api = self.config.api
                self._client = RunPodClient(
                    self.config.require_api_key(), api.base_url,
                    connect_timeout_seconds=api.connect_timeout_seconds,
                    read_timeout_seconds=api.read_timeout_seconds, max_retries=api.max_retries,
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @property
    def name(self) -> str:
        return self.config.pod.name

    def pod_url(self, pod_id: str) -> str:
        return self.config.pod_url(pod_id)

    def _calls(self) -> int:
        return getattr(self._client, "calls", 0) if self._client is not None else 0

    def proxy_pid(self) -> int | None:
        return self._proxy_alive() if self._proxy_alive else None

    @contextlib.contextmanager
    def _locked_state(self, wait_seconds: float | None) -> Iterator[State]:
        with self.store.lock(wait_seconds=wait_seconds):
            yield self.store.load()

    # ------------------------------------------------------------------------------------- observe

    def _observe(self, state: State, record: PodRecord, now: datetime, *, list_named: bool,
                 resume_refused: bool = False, check_ready: bool = False) -> Observation:
        pod: Pod | None = None
        observed = True
        named: tuple[Pod, ...] | None = None
        need_list = list_named or record.intent is not None or record.pod_id is None
        if record.pod_id is not None:
            try:
                pod = self.client.get_pod(record.pod_id)
            except NotFound:
                pod = None
            except ApiError as exc:
                observed = False
                self.observe_errors.append(exc)
                self.events.write("observe_failed", config=self.name, pod_id=record.pod_id, error=exc.message)
        if need_list:
            try:
                named = tuple(self.client.list_pods_with_prefix(self.config.pod_name_prefix))
            except ApiError as exc:
                self.events.write("list_failed", config=self.name, error=exc.message)
                named = None
                if record.pod_id is None:
                    observed = False
                    self.observe_errors.append(exc)
            record.last_sweep_at_epoch = now.timestamp()
        replaced: Pod | None = None
        if record.replacing_pod_id:
            try:
                replaced = self.client.get_pod(record.replacing_pod_id)
                if replaced.status == PodStatus.TERMINATED:
                    replaced = None
            except NotFound:
                replaced = None
            except ApiError:
                replaced = None
            if replaced is None:
                record.replacing_pod_id = None
        if pod is not None:
            self._note_pod(record, pod, now)
        spend = self._spend_today(record, pod, now)
        ready = False
        if check_ready and pod is not None and pod.status == PodStatus.RUNNING:
            ready = self.probe(self.pod_url(pod.id), record.upstream_key)
        proxy_running: bool | None = None
        if record.proxy_wanted and self._proxy_alive is not None:
            proxy_running = self._proxy_alive() is not None
        return Observation(pod=pod, pod_observed=observed, spend_today_usd=spend, named_pods=named,
                           replaced_pod=replaced, resume_refused=resume_refused, pod_ready=ready,
                           proxy_running=proxy_running)

    def _note_pod(self, record: PodRecord, pod: Pod, now: datetime) -> None:
        record.gpu_type_id = pod.gpu_type_id or record.gpu_type_id
        record.data_center_id = pod.data_center_id or record.data_center_id
        if pod.status != PodStatus.RUNNING:
            record.ready_pod_id = None
        record.last_status = pod.status.value
        if pod.runtime and any((gpu.util_percent or 0) > 0 for gpu in pod.runtime.gpus):
            record.last_gpu_busy_at = now

    def _spend_today(self, record: PodRecord, pod: Pod | None, now: datetime) -> float:
        """Spend today: accumulated cost × time (billing lags), corrected by billing near the cap."""
        today = policy.local_day(now, self.config.zone).isoformat()
        if record.spend_day != today:
            record.spend_day, record.spend_usd, record.spend_accounted_at = today, 0.0, None
            record.spend_of_ended_pods_usd, record.billed_usd, record.billing_checked_at = 0.0, 0.0, None
        midnight = datetime.combine(policy.local_day(now, self.config.zone), datetime.min.time())
        day_start = policy._localize(midnight, self.config.zone)
        if pod is not None and pod.status in policy.ACTIVE_STATUSES and pod.cost_per_hour > 0:
            since = record.spend_accounted_at or pod.started_at or pod.created_at or now
            since = max(since, day_start)
            if now > since:
                record.spend_usd += pod.cost_per_hour * (now - since).total_seconds() / 3600.0
        record.spend_accounted_at = now
        record.cost_per_hour = pod.cost_per_hour if pod is not None else 0.0
        cap = self.config.limits.max_daily_spend_usd
        due = (record.billing_checked_at is None
               or (now - record.billing_checked_at).total_seconds() >= self.config.limits.billing_check_seconds)
        if pod is not None and cap and (record.spend_usd >= cap * 0.5 or due):
            with contextlib.suppress(ApiError):
                billed = self.client.pod_spend_usd(pod.id, since=day_start)
                record.billing_checked_at = now
                record.billed_usd = billed
        return policy.spend_today_usd(record, policy.local_day(now, self.config.zone))

    # ------------------------------------------------------------------------------------ reconcile

    def reconcile(
        self,
        *,
        wait_seconds: float | None = 0,
        dry_run: bool = False,
        report_orphans_only: bool = False,
        sweep: bool = False,
        activity_at: datetime | None = None,
        shutdown_action: str = "terminate",
    ) -> PassResult:
        """One pass: lock, observe, plan, apply. wait_seconds=0 (cron) returns busy instead of waiting."""
        try:
            with self._locked_state(wait_seconds) as state:
                result = self._pass(state, dry_run=dry_run, report_orphans_only=report_orphans_only,
                                    sweep=sweep, activity_at=activity_at, shutdown_action=shutdown_action)
                result.notices.extend(self.store.notices)
                return result
        except LockBusy:
            if wait_seconds == 0:
                return PassResult(plan=Plan(), busy=True)
            raise

    def _pass(self, state: State, *, dry_run: bool, report_orphans_only: bool = False, sweep: bool = False,
              activity_at: datetime | None = None, shutdown_action: str = "terminate",
              check_ready: bool = False) -> PassResult:
        calls_before = self._calls()
        self.observe_errors = []
        record = state.record(self.name)
        self._check_world(record)
        now = self.clock()
        if activity_at is not None and (record.last_activity_at is None or activity_at > record.last_activity_at):
            record.last_activity_at = activity_at
        sweep_due = (self.config.limits.sweep_orphans and (
            sweep or record.last_sweep_at_epoch is None
            or now.timestamp() - record.last_sweep_at_epoch >= ORPHAN_SWEEP_SECONDS))
        resume_refused = False
        result = PassResult(plan=Plan(), dry_run=dry_run)
        options = Options(report_orphans_only=report_orphans_only, shutdown_action=shutdown_action)
        # A pass may need a second look: a refused resume turns into a replacement.
        for _attempt in range(3):
            observation = self._observe(state, record, now, list_named=sweep_due, resume_refused=resume_refused,
                                        check_ready=check_ready or record.replacing_pod_id is not None)
            if not dry_run:
                self.store.save(state)
            activity = Activity(last_request_at=record.last_activity_at, last_gpu_busy_at=record.last_gpu_busy_at,
                                proxy_wanted=record.proxy_wanted)
            plan = policy.plan(now, self.config, record, observation, activity, options)
            result.plan = Plan(result.plan.actions + plan.actions)
            result.pod = observation.pod
            result.spend_today_usd = observation.spend_today_usd
            if dry_run:
                break
            retry = False
            for action in plan.actions:
                applied = self._apply(state, record, action, observation, now)
                result.applied.append(applied)
                self.store.save(state)
                if isinstance(applied.error, ResumeRefused):
                    resume_refused, retry = True, True
                    break
            if not retry:
                break
            sweep_due = False
        result.record = record
        result.api_calls = self._calls() - calls_before
        result.observe_errors = list(self.observe_errors)
        return result

    def _check_world(self, record: PodRecord) -> None:
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

    # ---------------------------------------------------------------------------------------- apply

    def _apply(self, state: State, record: PodRecord, action: Action, observation: Observation,
               now: datetime) -> AppliedAction:
        applied = AppliedAction(action)
        try:
            self._apply_one(record, action, observation, now)
        except RpmError as exc:
            applied.ok = False
            applied.error = exc
        self.events.write(
            action.kind.value, config=self.name, pod_id=action.pod_id, pod_name=action.pod_name,
            reason=action.reason, ok=applied.ok, error=applied.error.message if applied.error else None,
        )
        if applied.ok and action.kind not in (ActionKind.REPORT_ORPHAN,):
            record.last_action = action.kind.value
            record.last_reason = action.reason
        return applied

    def _apply_one(self, record: PodRecord, action: Action, observation: Observation, now: datetime) -> None:
        kind = action.kind
        if kind == ActionKind.CLOSE_LEASE:
            record.lease = None
            record.last_lease_end_reason = action.reason
            if action.limit == "spend_cap":
                record.spend_cap_day = policy.local_day(now, self.config.zone).isoformat()
            record.lease_end_action = {
                "idle": self.config.limits.idle_action,
                "cutoff": self.config.limits.cutoff_action,
                "runtime": self.config.limits.cutoff_action,
            }.get(action.limit or "", "terminate")
        elif kind == ActionKind.CREATE:
            self._create(record, now)
        elif kind == ActionKind.REPLACE:
            old = action.pod_id
            self._create(record, now, purpose="replace")
            record.replacing_pod_id = old
        elif kind == ActionKind.RESUME:
            assert action.pod_id is not None  # noqa: S101 - the planner always names the pod
            self._refresh_guard(record, action.pod_id, now)
            pod = self.client.start_pod(action.pod_id)
            record.last_status = pod.status.value
            record.spend_accounted_at = now
        elif kind == ActionKind.STOP:
            assert action.pod_id is not None  # noqa: S101
            try:
                record.last_status = self.client.stop_pod(action.pod_id).status.value
            except Conflict:
                # RunPod refuses stop only for a pod that is not running (EXITED or ERROR): the goal, a pod
                # that bills no GPU time, holds. (Reached when the pod could not be observed first.)
                record.last_status = PodStatus.EXITED.value
            except NotFound:
                self._forget(record, action.pod_id)
            record.ready_pod_id = None
        elif kind in (ActionKind.TERMINATE, ActionKind.TERMINATE_ORPHAN):
            assert action.pod_id is not None  # noqa: S101
            with contextlib.suppress(NotFound):  # already gone is what terminate wants
                self.client.terminate_pod(action.pod_id)
            self._forget(record, action.pod_id)
        elif kind == ActionKind.FORGET_POD:
            assert action.pod_id is not None  # noqa: S101
            self._forget(record, action.pod_id)
        elif kind == ActionKind.ADOPT:
            record.pod_id = action.pod_id
            record.pod_name = action.pod_name
            record.intent = None
        elif kind == ActionKind.FORGET_INTENT:
            record.intent = None
            if record.pod_id is None:
                record.upstream_key = None
        elif kind == ActionKind.RESTART_PROXY:
            from runpod_manager.proxy import process

            process.start_proxy_process(self.config, self.paths)
        elif kind in (ActionKind.REPORT_ORPHAN, ActionKind.ALARM):
            pass

    def _forget(self, record: PodRecord, pod_id: str) -> None:
        if record.pod_id == pod_id:
            # What billing saw of the pod stays in today's total once the pod is gone.
            record.spend_usd = record.spend_of_ended_pods_usd + max(
                record.spend_usd - record.spend_of_ended_pods_usd, record.billed_usd)
            record.spend_of_ended_pods_usd = record.spend_usd
            record.pod_id = None
            record.pod_name = None
            record.ready_pod_id = None
            record.last_status = PodStatus.TERMINATED.value
            record.upstream_key = None
            record.billing_checked_at = None
            record.billed_usd = 0.0
        if record.replacing_pod_id == pod_id:
            record.replacing_pod_id = None

    # --------------------------------------------------------------------------------------- create

    def _create(self, record: PodRecord, now: datetime, *, purpose: str = "create") -> None:
        """Create the pod, trying GPU types (and data centers) in order, within the max price.

        The intent (the name about to be created) is saved before the call; a crash between the call
        and the save is recovered by finding the pod by name.
        """
        candidates = self.gpu_candidates()
        pod_name = f"{self.config.pod_name_prefix}{secrets.token_hex(3)}"
        upstream_key = record.upstream_key if purpose == "create" and record.upstream_key else \
            secrets.token_urlsafe(32)
        record.intent = Intent(pod_name=pod_name, created_at=now, purpose=purpose)
        record.upstream_key = upstream_key
        self.store.save(self._state_of(record))
        errors: list[str] = []
        last_error: RpmError | None = None
        for gpu_type_id in candidates:
            for _attempt in range(self.config.startup.max_startup_attempts):
                spec = self.build_spec(pod_name, gpu_type_id, upstream_key, record, now)
                try:
                    pod = self.client.create_pod(spec)
                except NoCapacity as exc:
                    errors.append(f"{gpu_type_id}: no capacity")
                    last_error = exc
                    break  # another attempt on the same type rarely helps right away: next type
                except InsufficientBalance:
                    record.intent = None
                    raise
                record.pod_id = pod.id
                record.pod_name = pod.name
                record.intent = None
                record.ready_pod_id = None
                record.gpu_type_id = pod.gpu_type_id
                record.data_center_id = pod.data_center_id
                record.cost_per_hour = pod.cost_per_hour
                record.last_status = pod.status.value
                record.spend_accounted_at = now
                record.spend_of_ended_pods_usd = record.spend_usd
                # Billing of a pod just created is 0: the first check is due a full interval from now.
                record.billed_usd, record.billing_checked_at = 0.0, now
                self.events.write("created", config=self.name, pod_id=pod.id, pod_name=pod.name,
                                  gpu=gpu_type_id, cost_per_hour=pod.cost_per_hour)
                return
        record.intent = None
        if last_error is not None:
            raise NoCapacity(f"no capacity for any configured GPU type ({'; '.join(errors)})",
                             hint="add GPU types to [pod] gpu_types, widen data_centers, or try later")
        raise NoCapacity("no configured GPU type is within [pod] max_price_per_hour",
                         hint="run `rpm refresh-catalog` to see prices")

    def _state_of(self, record: PodRecord) -> State:
        state = self.store.load() if self.store.path.exists() else State()
        state.pods[record.config_name] = record
        return state

    def gpu_candidates(self) -> list[str]:
        """Configured GPU types in order, skipping ones the cached catalog prices above the max."""
        from runpod_manager import catalog

        types = list(self.config.pod.gpu_types)
        max_price = self.config.pod.max_price_per_hour
        if not max_price:
            return types
        prices = catalog.cached_prices(self.paths, self.config)
        if prices is None:
            try:
                prices = catalog.fetch_prices(self.client, self.paths, self.config)
            except ApiError:
                return types  # the create itself will tell; do not block a start on the catalog
        return [t for t in types if prices.get(t) is None or prices[t] <= max_price]

    def build_spec(self, pod_name: str, gpu_type_id: str, upstream_key: str, record: PodRecord,
                   now: datetime) -> PodSpec:
        pod = self.config.pod
        return PodSpec(
            name=pod_name,
            gpu_type_id=gpu_type_id,
            image=pod.image or None,
            template_id=pod.template_id or None,
            gpu_count=pod.gpu_count,
            cloud=pod.cloud,
            container_disk_gb=pod.container_disk_gb,
            volume_gb=pod.volume_gb or None,
            volume_mount_path=pod.volume_mount_path,
            network_volume_id=pod.network_volume_id or None,
            ports=(f"{pod.port}/http",),
            env=dict(pod.env),
            args=self.container_args(upstream_key, record, now),
            data_center_ids=pod.data_centers,
            allowed_cuda_versions=pod.allowed_cuda_versions,
        )

    def container_args(self, upstream_key: str, record: PodRecord, now: datetime) -> str:
        pod = self.config.pod
        custom = bool(pod.args)
        if custom:
            args = pod.args.format(upstream_key=upstream_key, model=pod.model, port=pod.port)
        else:
            parts = ["--model", pod.model, "--port", str(pod.port), "--api-key", upstream_key]
            if pod.max_model_len:
                parts += ["--max-model-len", str(pod.max_model_len)]
            args = shlex.join(parts) + (f" {pod.extra_args}" if pod.extra_args else "")
        if self.config.limits.pod_guard and record.lease is not None:
            from runpod_manager import guard

            args = guard.wrap(args, deadline=record.lease.deadline, api_base_url=self.config.api.base_url,
                              is_vllm_args=not custom)
        return args

    def _refresh_guard(self, record: PodRecord, pod_id: str, now: datetime) -> None:
        """A resumed pod restarts its container with its old args: move the guard to the new deadline."""
        if not (self.config.limits.pod_guard and record.lease is not None and record.upstream_key):
            return
        self.client.update_pod(pod_id, args=self.container_args(record.upstream_key, record, now))

    # ---------------------------------------------------------------------------------------- start

    def start(self, *, wait: bool = True, dry_run: bool = False, wait_seconds: float | None = -1.0,
              progress: Callable[[Progress], None] | None = None, opened_by: str = "start") -> StartResult:
        """Open a lease (if none), create or resume the pod, and wait until it is ready.

        A lease opens only for a start that has what it needs (the key here; the caller checks the proxy's
        port and bind first), and a start that fails closes its lease unless its own pod is verifiably still
        coming up: a later watchdog pass must never create or resume a pod for a start that gave up.
        wait_seconds: how long to wait for the state lock (-1: the configured lock_wait_seconds).
        """
        if wait_seconds is not None and wait_seconds < 0:
            wait_seconds = self.config.startup.lock_wait_seconds
        _ = self.client  # no key, no lease (ConfigError before anything is written)
        started = time.monotonic()
        with self._locked_state(wait_seconds) as state:
            record = state.record(self.name)
            self._check_world(record)
            now = self.clock()
            # Observe first, so the refusal sees today's spend.
            had_lease = record.lease is not None
            if record.lease is None:
                spend = self._peek_spend(state, record, now)
                refusal = policy.start_refusal(now, self.config, record, spend)
                if refusal:
                    raise LimitRefused(refusal)
                lease_candidate = Lease(opened_at=now, deadline=policy.lease_deadline(now, self.config),
                                        opened_by=opened_by)
                if dry_run:
                    state = _copy_state(state)
                    record = state.record(self.name)
                record.lease = lease_candidate
                record.last_activity_at = now
                record.last_lease_end_reason = None
                record.lease_end_action = None
                if not dry_run:
                    self.store.save(state)
                    self.events.write("lease_opened", config=self.name, deadline=lease_candidate.deadline,
                                      opened_by=opened_by)
            try:
                result = self._pass(state, dry_run=dry_run, check_ready=True)
            except RpmError as exc:
                if not dry_run:
                    self._fail_start(state, record, None, exc)
                raise
            created = any(a.action.kind in (ActionKind.CREATE, ActionKind.REPLACE) and a.ok for a in result.applied)
            resumed = any(a.action.kind == ActionKind.RESUME and a.ok for a in result.applied)
            failure = None if dry_run else self._start_failure(record, result)
            if failure is not None:
                self._fail_start(state, record, result.pod, failure)
            pod = result.pod
        if dry_run:
            return StartResult(pod=pod, record=record, created=False, resumed=False,
                               already_running=had_lease and pod is not None, ready=False,
                               base_url=None, pod_url=None, plan=result.plan, dry_run=True)
        already = had_lease and not created and not resumed and pod is not None
        if record.pod_id is None:
            raise NotReady("no pod exists for the open lease", hint="see `rpm status` and the event log")
        if progress:
            progress(Progress(record.pod_id, pod.status.value if pod else record.last_status or "unknown",
                              time.monotonic() - started, 0,
                              "created" if created else "resumed" if resumed else ""))
        ready = record.ready
        waited = 0.0
        if wait and not ready:
            pod, waited = self.wait_ready(progress=progress)
            ready = True
        elif pod is None or pod.id != record.pod_id:
            with contextlib.suppress(ApiError):
                pod = self.client.get_pod(record.pod_id)
        record = self.store.load().record(self.name)
        pod_url = self.pod_url(record.pod_id) if record.pod_id else None
        return StartResult(pod=pod, record=record, created=created, resumed=resumed, already_running=already,
                           ready=ready, base_url=f"{pod_url}/v1" if pod_url else None, pod_url=pod_url,
                           plan=result.plan, wait_seconds=waited)

    def interrupted_start(self) -> Interrupted:
        """Ctrl-C during a start: the pod it asked for keeps to its limits; say which and until when."""
        with self._locked_state(self.config.startup.lock_wait_seconds) as state:
            record = state.record(self.name)
            if record.lease is not None and record.pod_id is None:
                # No pod of its own yet: like any failed start, it leaves no lease for cron to act on. A pod
                # that a create in flight made is found by name and terminated by the next pass.
                record.lease = None
                record.last_lease_end_reason = "start interrupted"
                record.lease_end_action = "terminate"
                self.store.save(state)
                self.events.write("lease_closed", config=self.name, reason=record.last_lease_end_reason)
        if record.lease is None:
            return Interrupted("interrupted; the lease is closed and nothing of this config runs"
                               + (" (a pod being created is terminated by the next `rpm watchdog` or "
                                  "`rpm shutdown`)" if record.intent else ""))
        until = f"until {record.lease.deadline.astimezone():%Y-%m-%d %H:%M %Z} at the latest"
        return Interrupted(f"interrupted; pod {record.pod_id} keeps coming up under its lease {until} "
                           "(idle stop applies)", hint="`rpm shutdown` ends it now")

    def _peek_spend(self, state: State, record: PodRecord, now: datetime) -> float:
        pod = None
        if record.pod_id:
            with contextlib.suppress(ApiError):
                pod = self.client.get_pod(record.pod_id)
        return self._spend_today(record, pod, now)

    def _start_failure(self, record: PodRecord, result: PassResult) -> RpmError | None:
        """Why this start's pass did not give the lease a pod, as the typed error, or None."""
        replaced = any(a.ok and a.action.kind == ActionKind.REPLACE for a in result.applied)
        alarms = [a for a in result.applied if a.action.kind == ActionKind.ALARM]
        if alarms and record.pod_id is not None and not replaced:
            return ResumeRefused(f"could not start the pod: {alarms[0].action.reason}",
                                 hint='set [limits] on_resume_failure = "replace", or `rpm shutdown` and start')
        if result.observe_errors and record.pod_id is None:
            return result.observe_errors[0]
        for applied in result.applied:
            # A refused resume is not a failure when the pass went on to create a replacement.
            if (not applied.ok and applied.action.kind in policy.STARTS and applied.error is not None
                    and not (replaced and isinstance(applied.error, ResumeRefused))):
                return applied.error
        return None

    def _fail_start(self, state: State, record: PodRecord, pod: Pod | None, error: RpmError) -> NoReturn:
        """Close the lease of a failed start unless its own pod is verifiably coming up; raise the error
        (its own type, so its exit code) saying what still runs."""
        coming_up = (pod is not None and record.pod_id == pod.id and pod.status in policy.ACTIVE_STATUSES)
        if coming_up:
            still = f"pod {record.pod_id} is still coming up under its lease; `rpm shutdown` ends it"
        else:
            if record.lease is not None:
                record.lease = None
                record.last_lease_end_reason = f"start failed: {error.message}"
                # A stopped pod stays stopped (a fast resume later); a pod that a lost create may have made
                # is terminated when a later pass finds it by name.
                record.lease_end_action = "stop" if record.pod_id is not None else "terminate"
                record.proxy_wanted = False
                self.store.save(state)
                self.events.write("lease_closed", config=self.name, reason=record.last_lease_end_reason)
            if record.pod_id is not None:
                still = f"the lease is closed; pod {record.pod_id} stays {record.last_status or 'as it is'}"
            elif record.intent is not None:
                still = ("the lease is closed; a pod this start may have created is found by name and "
                         "terminated by the next `rpm watchdog` or `rpm shutdown`")
            else:
                still = "the lease is closed and nothing of this config runs"
        error.hint = f"{error.hint}; {still}" if error.hint else still
        raise error

    def wait_ready(self, *, progress: Callable[[Progress], None] | None = None) -> tuple[Pod, float]:
        """Poll until RunPod says RUNNING and GET /v1/models answers through the pod URL.

        Runs without holding the lock (a watchdog may act meanwhile); re-reads the record every poll,
        so a replacement created by recovery is followed.
        """
        startup = self.config.startup
        started = time.monotonic()
        deadline = started + startup.ready_timeout_seconds
        attempt = 0
        recoveries = 0
        self.sleep(min(startup.initial_wait_seconds, startup.ready_timeout_seconds))
        while True:
            attempt += 1
            record = self.store.load().record(self.name)
            if record.lease is None:
                raise NotReady(f"the lease was closed while waiting ({record.last_lease_end_reason or 'shutdown'})")
            if record.pod_id is None:
                raise NotReady("the pod disappeared while waiting")
            elapsed = time.monotonic() - started
            try:
                pod = self.client.get_pod(record.pod_id)
            except NotFound:
                pod = None
            except ApiError as exc:
                if progress:
                    progress(Progress(record.pod_id, "unknown", elapsed, attempt, exc.message))
                pod = None
                if time.monotonic() >= deadline:
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
            if time.monotonic() >= deadline:
                raise NotReady(
                    f"pod {pod.id} not ready after {int(elapsed)} s (status {pod.status.value})",
                    hint="the pod keeps running under its lease limits; check `rpm status`, or `rpm shutdown`",
                )
            self.sleep(startup.poll_interval_seconds)

    def _mark_ready(self, pod: Pod) -> None:
        with self.store.lock(wait_seconds=None):
            state = self.store.load()
            record = state.record(self.name)
            if record.pod_id == pod.id:
                record.ready_pod_id = pod.id
                record.last_status = pod.status.value
                self.store.save(state)
        self.events.write("ready", config=self.name, pod_id=pod.id)
        if record.replacing_pod_id:
            self.reconcile(wait_seconds=None)

    # ------------------------------------------------------------------------------------- shutdown

    def shutdown(self, *, stop: bool = False, all_pods: bool = False, dry_run: bool = False,
                 wait_seconds: float | None = -1.0) -> ShutdownResult:
        """Close the lease, end the pod (terminate, or stop with stop=True) and stop every proxy; idempotent.

        Raises (with the failure's own type and exit code) when a pod could not be ended, or when RunPod
        could not be asked at all: "nothing running" is said only when it was verified.
        """
        if wait_seconds is not None and wait_seconds < 0:
            wait_seconds = self.config.startup.lock_wait_seconds
        from runpod_manager.proxy import process

        end_action = "stop" if stop else "terminate"
        stopped: list[int] = []
        if not dry_run:
            # The proxies go first: their in-flight streams finish on a pod that still runs, and they cannot
            # wake the pod again (a new lease) between the end of the pod below and their own end.
            stopped += [proxy.pid for proxy in process.stop_proxies(self.paths)]
        with self._locked_state(wait_seconds) as state:
            if dry_run:
                state = _copy_state(state)
            record = state.record(self.name)
            self._check_world(record)
            record.lease = None
            record.last_lease_end_reason = "shutdown"
            record.lease_end_action = end_action
            record.proxy_wanted = False
            if not dry_run:
                self.store.save(state)
            result = self._pass(state, dry_run=dry_run, shutdown_action=end_action, sweep=True)
            orphans: list[str] = []
            if all_pods:
                orphans = self._sweep_all_rpm_pods(record, dry_run=dry_run)
        if not dry_run:
            # A watchdog may have restarted one (lease open, proxy wanted) before the lock was ours.
            stopped += [proxy.pid for proxy in process.stop_proxies(self.paths) if proxy.pid not in stopped]
        ending = (*policy.ENDS, ActionKind.TERMINATE_ORPHAN)
        if dry_run:
            ended = [AppliedAction(a) for a in result.plan.actions if a.kind in ending]
        else:
            ended = [a for a in result.applied if a.action.kind in ending and a.ok]
        failed = [a for a in result.applied if not a.ok and a.action.kind in ending and a.error is not None]
        if failed and failed[0].error is not None:
            done = "; ".join(f"{a.action.kind.value} {a.action.pod_id} done" for a in ended)
            raise _retold(failed[0].error, "could not end pod " + ", ".join(
                f"{a.action.pod_id} ({a.error.message if a.error else '?'})" for a in failed)
                + (f"; {done}" if done else ""),
                hint="it may still bill: run `rpm shutdown` again; the watchdog also retries")
        if result.observe_errors and not dry_run:
            known = f"state last saw pod {record.pod_id} {record.last_status or ''}".strip() if record.pod_id \
                else "state knows no pod"
            raise _retold(result.observe_errors[0], f"could not verify that nothing of config '{self.name}' runs: "
                          f"{result.observe_errors[0].message} ({known})",
                          hint="the lease is closed; run `rpm shutdown` again when RunPod answers")
        return ShutdownResult(ended=ended, orphans_terminated=orphans, proxies_stopped=stopped,
                              record=record, dry_run=dry_run, plan=result.plan)

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
        from runpod_manager.proxy import process

        if running_pid is None:
            with self.store.lock(wait_seconds=None):
                state = self.store.load()
                record = state.record(self.name)
                if record.lease is None:
                    raise NotReady("the lease was closed before the proxy started (shutdown or a limit)",
                                   hint="nothing of this config runs; see `rpm status`")
                record.proxy_wanted = True
                self.store.save(state)
            try:
                process.start_proxy_process(self.config, self.paths)
            except RpmError as exc:
                record = self.store.load().record(self.name)
                still = (f"pod {record.pod_id} keeps running under its lease (until "
                         f"{record.lease.deadline.astimezone():%Y-%m-%d %H:%M %Z}); `rpm proxy` serves it, "
                         "`rpm shutdown` ends it") if record.pod_id and record.lease else "nothing else runs"
                exc.hint = f"{exc.hint}; {still}" if exc.hint else still
                raise
        return proxy_base_url(self.config)

    def proxy_stopped(self) -> ProxyStopResult:
        """A proxy of this config stopped: what that means for the pod (README, "Stopping the proxy").

        A lease the proxy opened by waking the pod ends with the idle action, because the proxy was what
        would have noticed the pod going idle. A lease `rpm start` opened stays: the pod keeps to its limits
        (the watchdog from cron enforces idle stop and the deadline), and the result says until when.
        """
        with self._locked_state(self.config.startup.lock_wait_seconds) as state:
            record = state.record(self.name)
            self._check_world(record)
            lease = record.lease
            if lease is not None and lease.opened_by == "wake" and record.pod_id is not None:
                record.lease = None
                record.last_lease_end_reason = "the proxy that woke the pod stopped"
                record.lease_end_action = self.config.limits.idle_action
                self.store.save(state)
                result = self._pass(state, dry_run=False)
                ended = [a for a in result.applied if a.action.kind in policy.ENDS]
                failed = [a for a in ended if not a.ok]
                return ProxyStopResult(pod_id=record.pod_id or (ended[0].action.pod_id if ended else None),
                                       ended=[a for a in ended if a.ok], failed=failed, kept_until=None,
                                       idle_ends_at=None)
            if lease is not None and record.pod_id is not None:
                view = policy.limit_view(self.clock(), self.config, record, policy.activity_of(record))
                return ProxyStopResult(pod_id=record.pod_id, ended=[], failed=[], kept_until=view.deadline,
                                       idle_ends_at=view.idle_ends_at)
        return ProxyStopResult(pod_id=None, ended=[], failed=[], kept_until=None, idle_ends_at=None)

    # --------------------------------------------------------------------------------------- status

    def status(self) -> StatusResult:
        state = self.store.load()
        record = state.pods.get(self.name) or PodRecord(config_name=self.name)
        self._check_world(replace(record))
        now = self.clock()
        pod = None
        observed = True
        error = None
        if record.pod_id:
            try:
                pod = self.client.get_pod(record.pod_id)
            except NotFound:
                pod = None
            except ApiError as exc:
                observed, error = False, exc.message
        spend = self._spend_today(replace(record), pod, now) if (pod or record.spend_usd) else 0.0
        activity = policy.activity_of(record)
        idle = None
        if record.lease is not None:
            idle = (now - policy.last_active_at(now, record.lease, activity)).total_seconds()
        proxy_pid = self.proxy_pid()
        return StatusResult(
            config_name=self.name, record=record, pod=pod, pod_observed=observed, observe_error=error,
            spend_today_usd=spend, limits=policy.limit_view(now, self.config, record, activity), now=now,
            proxy_pid=proxy_pid, proxy_url=proxy_base_url(self.config) if proxy_pid else None,
            pod_url=self.pod_url(record.pod_id) if record.pod_id else None,
            max_daily_spend_usd=self.config.limits.max_daily_spend_usd, idle_seconds=idle,
        )


def proxy_base_url(config: Config) -> str:
    """The OpenAI base URL clients on this machine use: the one derivation shown by start, status and demo."""
    from runpod_manager.proxy import process

    return f"{process.proxy_url(config)}/v1"


def _retold(error: RpmError, message: str, *, hint: str | None) -> RpmError:
    """The same failure (same class, so the same exit code) told in the words of the command that met it."""
    retold = copy.copy(error)
    retold.message = message
    retold.args = (message,)
    retold.hint = hint
    return retold


def _copy_state(state: State) -> State:
    import json

    from runpod_manager.state import decode_state

    return decode_state(json.dumps(state.to_json()))


def deadline_in(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


class LifecycleProxyController:
    """The real ProxyController: the proxy's window on state and on the lifecycle.

    Wake and reconcile use separate Lifecycle instances (and so separate HTTP sessions), because a
    wake waits minutes for readiness while reconcile keeps enforcing limits every few seconds.
    """

    def __init__(self, lifecycle: Lifecycle) -> None:
        import threading

        self._lifecycle = lifecycle
        self._waker = Lifecycle(lifecycle.config, lifecycle.paths, clock=lifecycle.clock, probe=lifecycle.probe,
                                proxy_alive=lifecycle._proxy_alive)
        self._wake_lock = threading.Lock()

    def _record(self) -> PodRecord | None:
        return self._lifecycle.store.load().pods.get(self._lifecycle.name)

    def current_target(self) -> UpstreamTarget | None:
        from runpod_manager.proxy.controller import UpstreamTarget

        record = self._record()
        if record is None or record.lease is None or not record.ready or record.pod_id is None:
            return None
        return UpstreamTarget(record.pod_id, self._lifecycle.pod_url(record.pod_id), record.upstream_key)

    def wake(self) -> UpstreamTarget:
        from runpod_manager.proxy.controller import UpstreamTarget

        with self._wake_lock:
            target = self.current_target()
            if target is not None:
                return target
            result = self._waker.start(wait=True, opened_by="wake", wait_seconds=None)
            record = result.record
            if record.pod_id is None:
                raise NotReady("the pod did not start")
            return UpstreamTarget(record.pod_id, self._lifecycle.pod_url(record.pod_id), record.upstream_key)

    def reconcile(self, last_request_at: datetime | None) -> PodView:
        self._lifecycle.reconcile(wait_seconds=0, activity_at=last_request_at)
        return self.view()

    def view(self) -> PodView:
        from runpod_manager.proxy.controller import PodView

        lifecycle = self._lifecycle
        record = self._record() or PodRecord(config_name=lifecycle.name)
        now = lifecycle.clock()
        limits = policy.limit_view(now, lifecycle.config, record, policy.activity_of(record))
        return PodView(
            pod_id=record.pod_id, status=record.last_status if record.pod_id else None,
            ready=record.ready and record.lease is not None,
            lease_open=record.lease is not None, gpu_type_id=record.gpu_type_id,
            cost_per_hour=record.cost_per_hour if record.pod_id else 0.0,
            spend_today_usd=policy.spend_today_usd(record, policy.local_day(now, lifecycle.config.zone)),
            max_daily_spend_usd=lifecycle.config.limits.max_daily_spend_usd,
            deadline=limits.deadline,
            limits={"runtime": limits.runtime_ends_at, "cutoff": limits.cutoff_at, "idle": limits.idle_ends_at},
            last_action=record.last_action, last_reason=record.last_reason,
        )

    def mark_unreachable(self, pod_id: str) -> None:
        with self._lifecycle.store.lock(wait_seconds=None):
            state = self._lifecycle.store.load()
            record = state.record(self._lifecycle.name)
            if record.ready_pod_id == pod_id:
                record.ready_pod_id = None
                self._lifecycle.store.save(state)
