"""Lifecycle (start, shutdown, reconcile, wait_ready, status, the proxy's controller) against FakeRunPod.

These pin what the control plane does today, so a refactor that changes it fails here: each test asserts
the RunPod calls made (in order where it matters) and the record saved, read back through a fresh
`StateStore(paths).load()`. The clock is a settable fake and `sleep` only advances it, so nothing waits.
No test starts or signals a process: `proxy.process` is stubbed (see `proxy_stops`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runpod_manager import control, policy
from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.config import Config
from runpod_manager.errors import (
    ApiError,
    ApiUnavailable,
    AuthError,
    BootFailed,
    Conflict,
    ExitCode,
    InsufficientBalance,
    InvalidRequest,
    LeaseClosed,
    LimitRefused,
    LockBusy,
    NoCapacity,
    NotFound,
    NotReady,
    PodLocked,
    ResumeRefused,
    RpmError,
    StateError,
)
from runpod_manager.events import EventLog
from runpod_manager.lifecycle import Lifecycle
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.policy import Action, ActionKind, Limit, Plan
from runpod_manager.proxy.bridge import LifecycleProxyController
from runpod_manager.runpod.models import PodSpec, PodStatus
from runpod_manager.state import Lease, PodRecord, State, StateStore
from runpod_manager.status import build_status
from tests.support.fake_runpod import FakeRunPod

T0 = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)  # a Wednesday morning, in UTC (the configured zone)
CONFIG_NAME = "llm"  # pods are rpm-llm-<random>
PREFIX = "rpm-llm-"
RTX_4090 = "NVIDIA GeForce RTX 4090"  # $0.69/h in the fake's catalog
L40S = "NVIDIA L40S"  # $0.86/h
READ_VERBS = {"get", "list", "spend", "gpu_types"}


# ------------------------------------------------------------------------------------------- harness


class FakeClock:
    """`clock()` for Lifecycle; `sleep()` advances it instead of waiting and remembers each wait."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


class Probe:
    """The readiness probe (GET /v1/models through the pod URL): False `not_ready_polls` times, then True."""

    def __init__(self, not_ready_polls: int = 0, *, never: bool = False) -> None:
        self.not_ready_polls = not_ready_polls
        self.never = never
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, pod_url: str, upstream_key: str | None) -> bool:
        self.asked.append((pod_url, upstream_key))
        return not self.never and len(self.asked) > self.not_ready_polls


@dataclass
class Rig:
    """One Lifecycle wired to a FakeRunPod, a fake clock and a probe, with its state in tmp_path."""

    lifecycle: Lifecycle
    fake: FakeRunPod
    clock: FakeClock
    probe: Probe
    paths: Paths
    config: Config

    def saved(self) -> PodRecord:
        """The record as a fresh process would read it."""
        return StateStore(self.paths).load().pods[CONFIG_NAME]

    def state_bytes(self) -> bytes | None:
        path = self.paths.state_file
        return path.read_bytes() if path.exists() else None

    def events(self) -> list[str]:
        return [event["event"] for event in EventLog(self.paths.event_log).tail(limit=10_000)]

    def later(self, seconds: float) -> None:
        """Set the clock to T0 + seconds (the start's readiness wait has already moved it a little)."""
        self.clock.set(T0 + timedelta(seconds=seconds))

    def started(self) -> str:
        """Start (create, wait until ready) and return the pod id; forget the calls it made."""
        result = control.start(self.lifecycle)
        assert result.ready and result.record.pod_id is not None
        self.fake.reset_history()
        return result.record.pod_id


def make_lifecycle(
    tmp_path: Path,
    *,
    gpu_types: tuple[str, ...] = (RTX_4090, L40S),
    pod: dict[str, Any] | None = None,
    startup: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    fake: FakeRunPod | None = None,
    probe: Probe | None = None,
    **limits: Any,
) -> Rig:
    """A Lifecycle for config "llm" in UTC with no daily cutoff unless a test sets one; `limits` overrides
    [limits] (runtime 4 h, idle stop after 15 min, $20 a day, replace on a refused resume by default)."""
    base = Config()
    config = replace(
        base,
        pod=replace(base.pod, name=CONFIG_NAME, gpu_types=gpu_types, **(pod or {})),
        limits=replace(base.limits, **{
            "timezone": "UTC", "daily_cutoff": "", "runtime_seconds": 4 * 3600, "idle_timeout_seconds": 900,
            "idle_action": "stop", "cutoff_action": "terminate", "max_daily_spend_usd": 20.0,
            "on_resume_failure": "replace", "sweep_orphans": True, **limits}),
        startup=replace(base.startup, **{"initial_wait_seconds": 5.0, "poll_interval_seconds": 5.0,
                                         **(startup or {})}),
        api=replace(base.api, **(api or {})),
    )
    clock = FakeClock()
    fake = fake or FakeRunPod(clock=clock)
    fake.clock = clock
    probe = probe or Probe()
    paths = resolve_paths({"RPM_HOME": str(tmp_path / "home")})
    lifecycle = Lifecycle(config, paths, client_factory=lambda: fake, clock=clock, sleep=clock.sleep,
                          probe=probe, proxy_alive=lambda: None)
    return Rig(lifecycle, fake, clock, probe, paths, config)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_lifecycle(tmp_path)


@pytest.fixture(autouse=True)
def proxy_stops(monkeypatch: pytest.MonkeyPatch) -> list[Paths]:
    """shutdown() stops every proxy of the state dir (signals, /proc scan): recorded here instead. Starting a
    proxy process is never expected in these tests."""
    from runpod_manager.proxy import process

    stops: list[Paths] = []

    def stop_proxies(paths: Paths, **_: Any) -> list[Any]:
        stops.append(paths)
        return []

    def start_proxy_process(*_: Any, **__: Any) -> None:
        raise AssertionError("a unit test of the lifecycle must not start a proxy process")

    monkeypatch.setattr(process, "stop_proxies", stop_proxies)
    monkeypatch.setattr(process, "start_proxy_process", start_proxy_process)
    return stops


@dataclass
class StoreUse:
    locks: int = 0
    loads: int = 0
    saves: int = 0


def count_store_use(store: StateStore) -> StoreUse:
    """Wrap a store's lock/load/save with counters."""
    use = StoreUse()
    lock, load, save = store.lock, store.load, store.save

    def counted_lock(*args: Any, **kwargs: Any) -> AbstractContextManager[None]:
        use.locks += 1
        return lock(*args, **kwargs)

    def counted_load() -> State:
        use.loads += 1
        return load()

    def counted_save(state: State) -> None:
        use.saves += 1
        save(state)

    store.lock = counted_lock  # type: ignore[method-assign]
    store.load = counted_load  # type: ignore[method-assign]
    store.save = counted_save  # type: ignore[method-assign]
    return use


def summary_of(actions: Iterable[Action]) -> list[str]:
    """A plan's actions as short strings: `close_lease:<limit>` or the kind."""
    return [f"close_lease:{action.limit}" if action.kind is ActionKind.CLOSE_LEASE else action.kind.value
            for action in actions]


# --------------------------------------------------------------------------------------------- start


def test_start_creates_a_pod_and_waits_until_the_model_server_answers(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, probe=Probe(not_ready_polls=2))

    result = control.start(rig.lifecycle)

    pod_id = result.record.pod_id
    assert pod_id is not None
    name = rig.fake.specs[0].name
    assert name.startswith(PREFIX)
    # One listing (intents and orphans), one create, then a GET per readiness poll.
    assert rig.fake.history == [("list", PREFIX), ("create", name), ("get", pod_id), ("get", pod_id),
                                ("get", pod_id)]
    assert rig.clock.slept == [5.0, 5.0, 5.0]  # initial wait, then two polls that were not ready yet
    assert (result.created, result.ready, result.resumed, result.already_running) == (True, True, False, False)
    assert result.pod_url == rig.config.pod_url(pod_id)
    assert result.base_url == f"{rig.config.pod_url(pod_id)}/v1"
    record = rig.saved()
    assert record.lease is not None
    assert (record.lease.opened_at, record.lease.opened_by) == (T0, "start")
    assert record.lease.deadline == T0 + timedelta(hours=4)
    assert (record.pod_id, record.pod_name, record.intent) == (pod_id, name, None)
    assert record.ready_pod_id == pod_id and record.ready
    assert record.gpu_type_id == RTX_4090 and record.cost_per_hour == 0.69
    assert record.upstream_key and len(record.upstream_key) >= 32
    # The probe and vLLM's --api-key are the same key: the one saved.
    assert rig.probe.asked == [(rig.config.pod_url(pod_id), record.upstream_key)] * 3
    assert f"--api-key {record.upstream_key}" in rig.fake.pods[pod_id].args
    assert rig.events() == ["lease_opened", "created", "create", "ready"]


def test_the_intent_is_on_disk_before_the_create_call_and_the_pod_id_after_it(rig: Rig) -> None:
    seen_at_create: list[PodRecord] = []
    create = rig.fake.create_pod

    def create_and_look(spec: Any) -> Any:
        seen_at_create.append(rig.saved())
        return create(spec)

    rig.fake.create_pod = create_and_look  # type: ignore[method-assign]

    control.start(rig.lifecycle)

    [before] = seen_at_create
    assert before.intent is not None and before.intent.pod_name == rig.fake.specs[0].name
    assert before.intent.purpose == "create" and before.intent.created_at == T0
    assert before.pod_id is None and before.lease is not None and before.upstream_key
    after = rig.saved()
    assert after.intent is None and after.pod_id == rig.fake.live_pods()[before.intent.pod_name]
    assert after.upstream_key == before.upstream_key


def test_start_again_is_already_running_and_creates_nothing(rig: Rig) -> None:
    pod_id = rig.started()

    again = control.start(rig.lifecycle)

    assert (again.already_running, again.created, again.resumed, again.ready) == (True, False, False, True)
    assert rig.fake.history == [("get", pod_id)]
    assert again.record.pod_id == pod_id and again.record.lease == rig.saved().lease


def test_a_pod_coming_up_is_polled_until_running_and_only_then_probed(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, fake=FakeRunPod(create_status=PodStatus.PROVISIONING, auto_progress=True))

    result = control.start(rig.lifecycle)

    pod_id = result.record.pod_id
    assert pod_id is not None and result.ready
    # PROVISIONING at create; each GET moves it one step: STARTING, then RUNNING.
    assert rig.fake.verbs() == ["list", "create", "get", "get"]
    assert len(rig.probe.asked) == 1  # readiness is asked of a RUNNING pod only, and it answered
    assert rig.saved().last_status == "RUNNING"


def test_a_model_server_that_never_answers_keeps_its_lease_while_the_watchdog_enforces(tmp_path: Path) -> None:
    # The wait's deadline is time.monotonic() (not the injected clock), so a zero timeout is the only
    # way to reach it without waiting for real.
    rig = make_lifecycle(tmp_path, probe=Probe(never=True), startup={"ready_timeout_seconds": 0.0})
    control.note_watchdog_pass(rig.paths, rig.clock() - timedelta(minutes=4))  # cron ran it 4 minutes ago

    with pytest.raises(NotReady, match="not ready after") as raised:
        control.start(rig.lifecycle)

    assert raised.value.exit_code == ExitCode.FAILED
    assert raised.value.hint is not None and "the watchdog (cron) enforces its limits" in raised.value.hint
    record = rig.saved()
    assert record.lease is not None and record.pod_id is not None and not record.ready
    assert rig.fake.status_of(record.pod_id) == PodStatus.RUNNING
    assert rig.fake.mutations() == [("create", record.pod_name)]


def test_a_start_given_up_on_boot_failures_closes_its_lease_even_while_something_enforces(tmp_path: Path) -> None:
    # An enforcer (here cron's watchdog; in the e2e test a running proxy) recovers a failed pod by creating another
    # under the open lease: the pod seen when the start gives up may be that replacement, coming up. The start
    # gave up, so its lease closes and that pod is ended; a pod merely slow to answer may stay (test above).
    rig = make_lifecycle(tmp_path, fake=FakeRunPod(create_status=PodStatus.PROVISIONING))
    control.start(rig.lifecycle, wait=False)
    replacement = rig.saved().pod_id
    assert replacement is not None and rig.fake.status_of(replacement) == PodStatus.PROVISIONING
    control.note_watchdog_pass(rig.paths, rig.clock())

    error = control.failed_wait(rig.lifecycle, BootFailed("pod p0 failed 3 times while starting"))

    assert error.hint is not None and f"the lease is closed and pod {replacement} was" in error.hint
    assert "nothing would enforce" not in error.hint  # something would: it was ended because the start gave up
    assert rig.saved().lease is None
    assert rig.fake.status_of(replacement) in (PodStatus.EXITED, PodStatus.TERMINATED)


def test_a_start_given_up_between_a_failed_pod_and_its_replacement_closes_its_lease(tmp_path: Path) -> None:
    # The enforcer's pass ended the failed pod and its replacement is not created yet: no pod id, the lease
    # open. Left open, that enforcer creates again for a start that gave up.
    rig = make_lifecycle(tmp_path)
    control.start(rig.lifecycle, wait=False)
    with rig.lifecycle.transaction(None) as state:
        state.record(rig.lifecycle.name).pod_id = None

    error = control.failed_wait(rig.lifecycle, BootFailed("pod p0 failed 3 times while starting"))

    assert rig.saved().lease is None
    assert error.hint is not None and "lease is closed" in error.hint


@pytest.mark.parametrize("watchdog_minutes_ago", [None, 11])
def test_a_start_not_ready_in_time_with_nothing_enforcing_stops_its_pod(
    tmp_path: Path, watchdog_minutes_ago: int | None,
) -> None:
    rig = make_lifecycle(tmp_path, probe=Probe(never=True), startup={"ready_timeout_seconds": 0.0})
    if watchdog_minutes_ago is not None:  # cron stopped running it
        control.note_watchdog_pass(rig.paths, rig.clock() - timedelta(minutes=watchdog_minutes_ago))

    with pytest.raises(NotReady, match="not ready after") as raised:
        control.start(rig.lifecycle)

    record = rig.saved()
    assert raised.value.hint is not None
    assert f"the lease is closed and pod {record.pod_id} was stopped" in raised.value.hint
    assert "nothing would enforce its limits" in raised.value.hint
    assert record.lease is None and record.pod_id is not None
    assert rig.fake.status_of(record.pod_id) == PodStatus.EXITED
    assert rig.fake.mutations() == [("create", record.pod_name), ("stop", record.pod_id)]


def test_a_watchdog_pass_is_recorded_also_when_the_lock_is_busy_and_never_by_a_dry_run(rig: Rig) -> None:
    fleet = control.Fleet(rig.lifecycle)
    control.reconcile(fleet, dry_run=True, watchdog=True)
    assert control.last_watchdog_pass(rig.paths) is None
    control.reconcile(fleet)  # the proxy's pass: not the watchdog's
    assert control.last_watchdog_pass(rig.paths) is None
    with StateStore(rig.paths).lock(wait_seconds=None):
        assert control.reconcile(fleet, watchdog=True).busy
    assert control.last_watchdog_pass(rig.paths) == rig.clock()
    assert control.enforcer(rig.lifecycle) == "the watchdog (cron)"
    rig.later(3600)
    assert control.enforcer(rig.lifecycle) is None


def test_a_pod_that_stops_while_waiting_is_resumed_by_the_wait(rig: Rig) -> None:
    started = control.start(rig.lifecycle, wait=False)
    pod_id = started.record.pod_id
    assert pod_id is not None and started.created and not started.ready
    rig.fake.advance(pod_id, PodStatus.EXITED)  # a host interruption while the model loads
    rig.fake.reset_history()

    pod, _ = rig.lifecycle.wait_ready()

    assert pod.id == pod_id and pod.status == PodStatus.RUNNING
    # The wait sees EXITED and runs a pass (GET, resume), then sees it RUNNING and answering.
    assert rig.fake.history == [("get", pod_id), ("get", pod_id), ("start", pod_id), ("get", pod_id)]
    assert rig.saved().ready_pod_id == pod_id
    assert rig.events()[-2:] == ["resume", "ready"]


def test_a_lease_closed_while_waiting_ends_the_wait(rig: Rig) -> None:
    pod_id = control.start(rig.lifecycle, wait=False).record.pod_id
    control.shutdown(rig.lifecycle, stop=True)
    rig.fake.reset_history()

    # Its own type: the proxy answers the wake's waiters with a retryable 503 (a stop, not a failure).
    with pytest.raises(LeaseClosed, match=r"the lease was closed while waiting \(shutdown\)"):
        rig.lifecycle.wait_ready()

    assert rig.fake.history == []
    assert pod_id is not None and rig.fake.status_of(pod_id) == PodStatus.EXITED


def test_start_resumes_a_stopped_pod(rig: Rig) -> None:
    pod_id = rig.started()
    control.shutdown(rig.lifecycle, stop=True)
    assert rig.fake.status_of(pod_id) == PodStatus.EXITED
    rig.fake.reset_history()

    result = control.start(rig.lifecycle)

    assert (result.resumed, result.created, result.ready) == (True, False, True)
    assert result.record.pod_id == pod_id
    # One GET before the lease opens (the spend check; the pass reuses it), start, GET while waiting.
    assert rig.fake.history == [("get", pod_id), ("start", pod_id), ("get", pod_id)]
    assert rig.fake.status_of(pod_id) == PodStatus.RUNNING
    record = rig.saved()
    assert record.lease is not None
    assert record.lease.opened_at == T0 + timedelta(seconds=5)  # after the first start's readiness wait
    assert record.ready_pod_id == pod_id and record.last_action == "resume"


def test_a_refused_resume_is_replaced_and_the_old_pod_terminated_once_the_new_one_is_ready(rig: Rig) -> None:
    old = rig.started()
    control.shutdown(rig.lifecycle, stop=True)
    rig.fake.reset_history()
    rig.fake.fail("start", ResumeRefused("There are not enough free GPUs on the host machine to start this pod."))
    old_status_when_probed: list[PodStatus] = []

    def probe(pod_url: str, upstream_key: str | None) -> bool:
        old_status_when_probed.append(rig.fake.status_of(old))
        return True

    rig.lifecycle.probe = probe

    result = control.start(rig.lifecycle)

    new = result.record.pod_id
    assert new is not None and new != old
    assert (result.created, result.resumed, result.ready) == (True, False, True)
    new_name = rig.fake.pods[new].name
    assert rig.fake.mutations() == [("start", old), ("create", new_name), ("terminate", old)]
    # The old pod was kept (stopped) until the replacement answered, and removed only then.
    assert old_status_when_probed[0] == PodStatus.EXITED
    assert rig.fake.status_of(old) == PodStatus.TERMINATED
    record = rig.saved()
    assert (record.pod_id, record.replacing_pod_id, record.ready_pod_id) == (new, None, new)
    assert record.lease is not None
    assert "replace" in rig.events() and "terminate" in rig.events()


def test_a_refused_resume_with_on_resume_failure_fail_raises_and_leaves_the_pod_stopped(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, on_resume_failure="fail")
    pod_id = rig.started()
    control.shutdown(rig.lifecycle, stop=True)
    rig.fake.reset_history()
    rig.fake.fail("start", ResumeRefused("There are not enough free GPUs on the host machine to start this pod."))

    with pytest.raises(ResumeRefused, match="could not start the pod") as raised:
        control.start(rig.lifecycle)

    assert raised.value.exit_code == ExitCode.CAPACITY
    assert raised.value.hint is not None and f"pod {pod_id} stays" in raised.value.hint
    assert rig.fake.mutations() == [("start", pod_id)]  # no replacement, no terminate
    assert rig.fake.status_of(pod_id) == PodStatus.EXITED
    record = rig.saved()
    assert record.lease is None and record.pod_id == pod_id
    assert record.lease_end_action == "stop"
    assert record.last_lease_end_reason is not None and record.last_lease_end_reason.startswith("start failed")


def test_no_capacity_on_the_first_gpu_type_tries_the_next(rig: Rig) -> None:
    rig.fake.no_capacity(RTX_4090)

    result = control.start(rig.lifecycle)

    assert [spec.gpu_type_id for spec in rig.fake.specs] == [RTX_4090, L40S]
    name = rig.fake.specs[0].name
    assert rig.fake.specs[1].name == name  # the same intent: one name, tried on each type
    assert rig.fake.mutations() == [("create", name), ("create", name)]
    assert result.created and result.record.gpu_type_id == L40S
    assert rig.saved().cost_per_hour == 0.86


def test_no_capacity_anywhere_raises_closes_the_lease_and_leaves_no_intent(rig: Rig) -> None:
    rig.fake.no_capacity(RTX_4090)
    rig.fake.no_capacity(L40S)

    with pytest.raises(NoCapacity, match="no capacity for any configured GPU type") as raised:
        control.start(rig.lifecycle)

    assert type(raised.value) is NoCapacity and raised.value.exit_code == ExitCode.CAPACITY
    assert raised.value.hint is not None and "nothing of this config runs" in raised.value.hint
    assert [spec.gpu_type_id for spec in rig.fake.specs] == [RTX_4090, L40S]
    assert rig.fake.live_pods() == {}
    record = rig.saved()
    assert (record.lease, record.intent, record.pod_id) == (None, None, None)
    assert record.lease_end_action == "terminate"
    assert rig.events()[-1] == "lease_closed"


def test_gpu_types_above_max_price_are_skipped_using_the_catalog(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, gpu_types=(L40S, RTX_4090), pod={"max_price_per_hour": 0.80})

    result = control.start(rig.lifecycle)

    assert [spec.gpu_type_id for spec in rig.fake.specs] == [RTX_4090]  # L40S costs $0.86/h
    assert rig.fake.verbs()[:3] == ["list", "gpu_types", "create"]
    assert result.record.gpu_type_id == RTX_4090
    assert rig.paths.catalog_cache.exists()  # the next start reads prices from the cache


def test_no_gpu_type_within_max_price_raises_no_capacity_without_a_create(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, pod={"max_price_per_hour": 0.50})

    with pytest.raises(NoCapacity, match="max_price_per_hour"):
        control.start(rig.lifecycle)

    assert rig.fake.specs == [] and rig.fake.mutations() == []
    assert rig.saved().lease is None


@pytest.mark.parametrize(("error_type", "exit_code", "setup"), [
    pytest.param(InsufficientBalance, ExitCode.CAPACITY,
                 lambda fake: fake.fail("create", InsufficientBalance(
                     "Your account balance is too low to rent a pod.", status=402)), id="balance"),
    pytest.param(AuthError, ExitCode.AUTH,
                 lambda fake: fake.fail("create", AuthError("access denied", status=403)), id="auth"),
    # A GPU id RunPod does not know: the fake answers 422 itself, as RunPod would.
    pytest.param(InvalidRequest, ExitCode.USAGE,
                 lambda fake: fake.gpu_prices.pop(RTX_4090), id="invalid-gpu-id"),
])
def test_a_create_refused_by_runpod_raises_its_own_type_and_closes_the_lease(
    rig: Rig, error_type: type[ApiError], exit_code: ExitCode, setup: Callable[[FakeRunPod], object],
) -> None:
    setup(rig.fake)

    with pytest.raises(ApiError) as raised:
        control.start(rig.lifecycle)

    assert type(raised.value) is error_type and raised.value.exit_code == exit_code
    assert [spec.gpu_type_id for spec in rig.fake.specs] == [RTX_4090]  # no other GPU type is tried
    assert rig.fake.live_pods() == {}
    record = rig.saved()
    assert record.lease is None and record.pod_id is None
    assert record.last_lease_end_reason is not None and record.last_lease_end_reason.startswith("start failed")


@pytest.mark.parametrize("error", [
    pytest.param(AuthError("access denied", status=403), id="auth"),
    pytest.param(InvalidRequest("422 gpu.id: unknown", status=422), id="invalid"),
])
def test_a_create_refused_by_runpod_leaves_no_intent_and_says_nothing_runs(rig: Rig, error: ApiError) -> None:
    rig.fake.fail("create", error)

    with pytest.raises(type(error)) as raised:
        control.start(rig.lifecycle)

    assert rig.saved().intent is None
    assert raised.value.hint is not None and "nothing of this config runs" in raised.value.hint


def test_a_crash_between_create_and_its_answer_is_adopted_by_name_and_terminated_by_the_next_sweep(
    rig: Rig,
) -> None:
    rig.fake.create_then_raise()

    with pytest.raises(ApiUnavailable) as raised:
        control.start(rig.lifecycle)

    assert raised.value.exit_code == ExitCode.API
    assert raised.value.hint is not None and "found by name and terminated" in raised.value.hint
    [(name, pod_id)] = rig.fake.live_pods().items()  # RunPod made it; rpm never learnt its id
    record = rig.saved()
    assert record.lease is None and record.pod_id is None
    assert record.intent is not None and record.intent.pod_name == name
    rig.fake.reset_history()

    result = rig.lifecycle.reconcile(sweep=True)

    assert summary_of(result.plan.actions) == ["adopt", "terminate"]
    assert rig.fake.history == [("list", PREFIX), ("terminate", pod_id)]
    assert rig.fake.status_of(pod_id) == PodStatus.TERMINATED
    record = rig.saved()
    assert (record.intent, record.pod_id, record.lease) == (None, None, None)
    rig.fake.reset_history()
    rig.lifecycle.reconcile(sweep=True)
    assert rig.fake.mutations() == []  # and never a second pod


def test_a_start_after_a_lost_create_adopts_that_pod_instead_of_making_a_second(rig: Rig) -> None:
    rig.fake.create_then_raise()
    with pytest.raises(ApiUnavailable):
        control.start(rig.lifecycle)
    [(name, pod_id)] = rig.fake.live_pods().items()
    rig.fake.reset_history()

    result = control.start(rig.lifecycle)

    assert result.record.pod_id == pod_id and result.ready
    assert rig.fake.mutations() == []
    assert len(rig.fake.specs) == 1
    record = rig.saved()
    assert (record.pod_name, record.intent, record.ready_pod_id) == (name, None, pod_id)
    assert record.lease is not None


# --------------------------------------------------------------------------------- limits (reconcile)

IDLE_REASON = "idle for 900 s (idle_timeout_seconds 900)"
LIMIT_ROWS = [
    # [limits] (each row turns the others off), seconds after T0 when the limit is due, the limit,
    # the RunPod call that ends the pod, the reason saved, and the lease_end_action saved.
    pytest.param({"runtime_seconds": 3600, "idle_timeout_seconds": 0}, 3600, "runtime", "terminate",
                 "runtime limit 3600 s reached", id="runtime-terminate"),
    pytest.param({"runtime_seconds": 3600, "idle_timeout_seconds": 0, "cutoff_action": "stop"}, 3600, "runtime",
                 "stop", "runtime limit 3600 s reached", id="runtime-stop"),
    pytest.param({"daily_cutoff": "10:00", "idle_timeout_seconds": 0}, 3600, "cutoff", "terminate",
                 "daily cutoff 10:00 passed", id="cutoff-terminate"),
    pytest.param({"daily_cutoff": "10:00", "idle_timeout_seconds": 0, "cutoff_action": "stop"}, 3600, "cutoff",
                 "stop", "daily cutoff 10:00 passed", id="cutoff-stop"),
    pytest.param({"idle_timeout_seconds": 900, "idle_action": "stop"}, 900, "idle", "stop", IDLE_REASON,
                 id="idle-stop"),
    pytest.param({"idle_timeout_seconds": 900, "idle_action": "terminate"}, 900, "idle", "terminate", IDLE_REASON,
                 id="idle-terminate"),
]


@pytest.mark.parametrize(("limits", "due_seconds", "limit", "verb", "reason"), LIMIT_ROWS)
def test_a_limit_that_is_due_ends_the_pod_through_reconcile(
    tmp_path: Path, limits: dict[str, Any], due_seconds: int, limit: str, verb: str, reason: str,
) -> None:
    rig = make_lifecycle(tmp_path, **limits)
    pod_id = rig.started()

    rig.later(due_seconds - 1)
    quiet = rig.lifecycle.reconcile()
    assert quiet.plan.empty and rig.fake.mutations() == []
    rig.later(due_seconds)
    result = rig.lifecycle.reconcile()

    assert summary_of(result.plan.actions) == [f"close_lease:{limit}", verb]
    assert rig.fake.mutations() == [(verb, pod_id)]
    assert not result.failures and not result.enforcement_failed
    record = rig.saved()
    assert record.lease is None and record.last_lease_end_reason == reason
    assert record.lease_end_action == verb and record.last_action == verb
    if verb == "stop":
        assert rig.fake.status_of(pod_id) == PodStatus.EXITED
        assert (record.pod_id, record.last_status, record.ready_pod_id) == (pod_id, "EXITED", None)
    else:
        assert rig.fake.status_of(pod_id) == PodStatus.TERMINATED
        assert (record.pod_id, record.last_status) == (None, "TERMINATED")
    rig.fake.reset_history()
    rig.lifecycle.reconcile()
    assert rig.fake.mutations() == []  # the next pass finds nothing to do


def test_the_lease_end_saved_is_the_plans_decision_not_the_configs(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The planner decides how a lease's end treats its pod (the CLOSE_LEASE's lease_end); the executor records
    # it and never maps the limit to [limits] itself (the simulator does the same: test_simulate).
    rig = make_lifecycle(tmp_path, idle_timeout_seconds=900, idle_action="stop")
    rig.started()
    decided = Action(ActionKind.CLOSE_LEASE, "idle for 900 s", limit=Limit.IDLE, lease_end=ActionKind.TERMINATE)
    monkeypatch.setattr(policy, "plan", lambda *_args: Plan((decided,)))
    rig.lifecycle.reconcile()
    record = rig.saved()
    assert record.lease is None and record.lease_end_action == "terminate"


def test_the_spend_cap_terminates_on_the_estimate_and_refuses_a_start_the_same_day(tmp_path: Path) -> None:
    # $0.69/h against a $1.00 cap: below it after 1 h, over it after 1.5 h. Billing (the fake's 0) lags.
    rig = make_lifecycle(tmp_path, max_daily_spend_usd=1.0, idle_timeout_seconds=0)
    pod_id = rig.started()

    rig.later(3600)
    below = rig.lifecycle.reconcile()
    assert below.plan.empty and below.spend_today_usd == pytest.approx(0.69)
    rig.later(5400)
    result = rig.lifecycle.reconcile()

    assert summary_of(result.plan.actions) == ["close_lease:spend_cap", "terminate"]
    assert result.spend_today_usd == pytest.approx(0.69 * 1.5)
    assert rig.fake.mutations() == [("terminate", pod_id)]
    record = rig.saved()
    assert record.lease is None and record.pod_id is None
    assert record.spend_cap_day == "2026-06-10" and record.spend_usd == pytest.approx(0.69 * 1.5)
    rig.fake.reset_history()

    with pytest.raises(LimitRefused, match="spend cap reached"):
        control.start(rig.lifecycle)
    assert rig.fake.mutations() == [] and rig.saved().lease is None

    rig.clock.set(T0 + timedelta(days=1))  # the day rolls over: starting is allowed again
    assert control.start(rig.lifecycle).created


def test_raising_the_spend_cap_lifts_its_refusal_at_once(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, max_daily_spend_usd=1.0, idle_timeout_seconds=0)
    rig.started()
    rig.later(5400)  # $1.035 of $1.00: terminated, starts refused
    rig.lifecycle.reconcile()
    with pytest.raises(LimitRefused, match="raise max_daily_spend_usd"):
        control.start(rig.lifecycle)

    raised = make_lifecycle(tmp_path, fake=rig.fake, max_daily_spend_usd=5.0, idle_timeout_seconds=0)
    raised.clock.set(T0 + timedelta(seconds=5500))  # the same day: the spend still counts against the new cap

    assert control.start(raised.lifecycle).created
    assert raised.saved().spend_usd == pytest.approx(0.69 * 1.5)


def test_a_spend_cap_refusal_prints_the_cap_and_the_spend_with_the_digits_they_have(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, max_daily_spend_usd=0.001, idle_timeout_seconds=0)
    rig.started()
    rig.later(6)  # $0.69/h for 6 s: $0.00115
    ended = rig.lifecycle.reconcile()
    assert summary_of(ended.plan.actions) == ["close_lease:spend_cap", "terminate"]
    assert "$0.0011 of $0.001 today" in ended.plan.actions[0].reason

    with pytest.raises(LimitRefused) as refused:
        control.start(rig.lifecycle)

    assert "$0.0011 of $0.001 today" in refused.value.message and "$0.00 " not in refused.value.message


def test_billing_above_the_estimate_counts_against_the_spend_cap(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, max_daily_spend_usd=2.0, idle_timeout_seconds=0, billing_check_seconds=1800)
    pod_id = rig.started()
    rig.fake.billed_usd[pod_id] = 5.0  # billing knows better than cost × time

    rig.later(1799)
    early = rig.lifecycle.reconcile()  # billing not due yet, the estimate is far below the cap
    assert early.plan.empty and ("spend", pod_id) not in rig.fake.history
    rig.later(1805)
    result = rig.lifecycle.reconcile()

    assert ("spend", pod_id) in rig.fake.history
    assert summary_of(result.plan.actions) == ["close_lease:spend_cap", "terminate"]
    assert result.spend_today_usd == pytest.approx(5.0)
    assert rig.fake.status_of(pod_id) == PodStatus.TERMINATED


def test_gpu_work_reported_by_runpod_keeps_a_pod_without_requests_from_idling(rig: Rig) -> None:
    pod_id = rig.started()
    rig.fake.set_gpu_util(pod_id, 85)

    rig.later(1000)  # past idle_timeout_seconds (900) since the lease opened, no proxied request
    result = rig.lifecycle.reconcile()

    assert result.plan.empty and rig.fake.mutations() == []
    assert rig.saved().last_gpu_busy_at == T0 + timedelta(seconds=1000)


def test_a_request_seen_by_the_proxy_resets_the_idle_clock(rig: Rig) -> None:
    pod_id = rig.started()

    rig.later(1000)
    kept = rig.lifecycle.reconcile(activity_at=T0 + timedelta(seconds=950))
    assert kept.plan.empty
    rig.later(950 + 900)
    ended = rig.lifecycle.reconcile()

    assert summary_of(ended.plan.actions) == ["close_lease:idle", "stop"]
    assert rig.fake.mutations() == [("stop", pod_id)]


def test_a_limit_due_while_get_pod_fails_still_ends_the_pod_by_id(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, runtime_seconds=3600, idle_timeout_seconds=0)
    pod_id = rig.started()
    rig.fake.fail("get", ApiUnavailable("get pod: 503 Service Unavailable", status=503), times=None)

    rig.later(3600)
    result = rig.lifecycle.reconcile()

    assert summary_of(result.plan.actions) == ["close_lease:runtime", "terminate"]
    assert "status unknown" in result.plan.actions[1].reason
    assert rig.fake.mutations() == [("terminate", pod_id)]
    assert [type(error) for error in result.observe_errors] == [ApiUnavailable]
    assert not result.enforcement_failed
    record = rig.saved()
    assert record.lease is None and record.pod_id is None


def test_a_limit_that_cannot_be_enforced_is_an_alarm_and_is_retried_by_the_next_pass(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, runtime_seconds=3600, idle_timeout_seconds=0)
    pod_id = rig.started()
    rig.fake.unreachable()

    rig.later(3600)
    failed = rig.lifecycle.reconcile()

    assert failed.enforcement_failed
    assert [(a.action.kind, type(a.error)) for a in failed.failures] == [(ActionKind.TERMINATE, ApiUnavailable)]
    record = rig.saved()
    assert record.lease is None and record.pod_id == pod_id  # kept, so the next pass ends it
    rig.fake.heal()
    rig.fake.reset_history()

    retried = rig.lifecycle.reconcile()

    assert summary_of(retried.plan.actions) == ["terminate"]
    assert rig.fake.mutations() == [("terminate", pod_id)]
    assert rig.saved().pod_id is None


def test_a_pass_while_another_process_holds_the_lock_is_busy_and_calls_nothing(rig: Rig) -> None:
    rig.started()
    before = rig.state_bytes()

    with StateStore(rig.paths).lock(wait_seconds=None):
        result = rig.lifecycle.reconcile(wait_seconds=0)

    assert result.busy and result.plan.empty
    assert rig.fake.history == []
    assert rig.state_bytes() == before


# ------------------------------------------------------------------------------------------ shutdown


def test_shutdown_stops_the_proxies_first_terminates_the_pod_and_closes_the_lease(
    rig: Rig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runpod_manager.proxy import process

    pod_id = rig.started()
    mutations_when_proxies_stopped: list[list[tuple[str, str]]] = []
    monkeypatch.setattr(process, "stop_proxies",
                        lambda paths, **_: mutations_when_proxies_stopped.append(rig.fake.mutations()) or [])

    result = control.shutdown(rig.lifecycle)

    assert [(a.action.kind, a.action.pod_id) for a in result.ended] == [(ActionKind.TERMINATE, pod_id)]
    # The first GET checks the key before anything changes; the pass's own comes after the proxies stopped.
    assert rig.fake.history == [("get", pod_id), ("get", pod_id), ("list", PREFIX), ("terminate", pod_id)]
    # The proxies go before the pod (their streams finish on a live pod), and are looked for again after.
    assert mutations_when_proxies_stopped[0] == []
    assert len(mutations_when_proxies_stopped) == 2
    record = rig.saved()
    assert (record.lease, record.pod_id, record.proxy_wanted) == (None, None, False)
    assert (record.last_lease_end_reason, record.lease_end_action) == ("shutdown", "terminate")
    assert rig.fake.status_of(pod_id) == PodStatus.TERMINATED


def test_shutdown_with_stop_keeps_the_pod_stopped_for_a_fast_resume(rig: Rig) -> None:
    pod_id = rig.started()

    result = control.shutdown(rig.lifecycle, stop=True)

    assert [(a.action.kind, a.action.pod_id) for a in result.ended] == [(ActionKind.STOP, pod_id)]
    assert rig.fake.mutations() == [("stop", pod_id)]
    assert rig.fake.status_of(pod_id) == PodStatus.EXITED
    record = rig.saved()
    assert (record.lease, record.pod_id, record.last_status) == (None, pod_id, "EXITED")
    assert record.lease_end_action == "stop"


@pytest.mark.parametrize("stop", [False, True], ids=["terminate", "stop"])
def test_a_second_shutdown_makes_no_mutating_call(rig: Rig, stop: bool) -> None:
    rig.started()
    control.shutdown(rig.lifecycle, stop=stop)
    saved_after_first = rig.saved()
    rig.fake.reset_history()

    again = control.shutdown(rig.lifecycle, stop=stop)

    assert again.ended == [] and again.orphans_terminated == []
    assert rig.fake.mutations() == []
    assert set(rig.fake.verbs()) <= READ_VERBS
    assert rig.saved().pod_id == saved_after_first.pod_id and rig.saved().lease is None


def test_shutdown_refused_by_a_busy_lock_or_a_revoked_key_stops_no_proxy(rig: Rig, proxy_stops: list[Paths]) -> None:
    pod_id = rig.started()
    with StateStore(rig.paths).lock(wait_seconds=None), pytest.raises(LockBusy, match="nothing was changed"):
        control.shutdown(rig.lifecycle, wait_seconds=0)
    rig.fake.fail("get", AuthError("RunPod rejected the API key"), times=None)
    with pytest.raises(AuthError, match="nothing was changed"):
        control.shutdown(rig.lifecycle)
    assert proxy_stops == [] and rig.fake.mutations() == []
    assert rig.saved().lease is not None and rig.saved().pod_id == pod_id


def test_shutdown_refused_by_a_newer_state_stops_no_proxy(rig: Rig, proxy_stops: list[Paths]) -> None:
    rig.started()
    rig.paths.state_file.write_text('{"version": 999, "pods": {}}', encoding="utf-8")
    with pytest.raises(StateError, match="nothing was changed"):
        control.shutdown(rig.lifecycle)
    assert proxy_stops == [] and rig.fake.mutations() == []


def test_shutdown_with_runpod_unreachable_raises_the_api_error_naming_the_pod(rig: Rig) -> None:
    pod_id = rig.started()
    rig.fake.unreachable()

    with pytest.raises(ApiUnavailable) as raised:
        control.shutdown(rig.lifecycle)

    assert type(raised.value) is ApiUnavailable and raised.value.exit_code == ExitCode.API
    assert raised.value.message.startswith(f"could not end pod {pod_id}")
    # The key's check before any change (unanswered: it refuses nothing), then the pass.
    assert rig.fake.history == [("get", pod_id), ("get", pod_id), ("list", PREFIX), ("terminate", pod_id)]
    record = rig.saved()
    assert record.lease is None  # closed anyway: no pass may start it again
    assert record.pod_id == pod_id  # kept, so the next shutdown or watchdog ends it


def test_shutdown_that_ends_the_pod_but_cannot_list_says_it_could_not_verify(rig: Rig) -> None:
    pod_id = rig.started()
    rig.fake.fail("get", ApiUnavailable("get: timeout"), times=None)
    rig.fake.fail("list", ApiUnavailable("list: timeout"), times=None)

    with pytest.raises(ApiUnavailable, match="could not verify that nothing of config 'llm' runs"):
        control.shutdown(rig.lifecycle)

    assert rig.fake.mutations() == [("terminate", pod_id)]  # ended by id although unobserved
    assert rig.fake.status_of(pod_id) == PodStatus.TERMINATED


# ------------------------------------------------------------------------------------- a locked pod
# RunPod: "a locked pod cannot be stopped or reset" (409 on stop); terminate is allowed.


def test_idle_stop_of_a_locked_pod_fails_as_pod_locked_and_its_spend_keeps_counting(rig: Rig) -> None:
    pod_id = rig.started()
    rig.fake.lock(pod_id)

    rig.later(1000)  # idle 900 s: stop
    result = rig.lifecycle.reconcile()

    assert summary_of(result.plan.actions) == ["close_lease:idle", "stop"]
    [failed] = result.failures
    assert isinstance(failed.error, PodLocked) and "locked" in failed.error.message
    assert result.exit_code == ExitCode.FAILED and result.enforcement_failed
    assert rig.fake.status_of(pod_id) == PodStatus.RUNNING
    record = rig.saved()
    assert (record.pod_id, record.last_status, record.cost_per_hour) == (pod_id, "RUNNING", 0.69)
    spent = record.spend_usd

    rig.later(4600)  # an hour later: still refused, still counted
    again = rig.lifecycle.reconcile()

    assert [type(a.error) for a in again.failures] == [PodLocked]
    assert rig.saved().spend_usd == pytest.approx(spent + 0.69)


def test_shutdown_stop_of_a_locked_pod_raises_pod_locked_and_leaves_it_counted(rig: Rig) -> None:
    pod_id = rig.started()
    rig.fake.lock(pod_id)

    with pytest.raises(PodLocked) as raised:
        control.shutdown(rig.lifecycle, stop=True)

    assert raised.value.exit_code == ExitCode.FAILED
    assert pod_id in raised.value.message and "locked" in raised.value.message
    assert raised.value.hint is not None and "unlock" in raised.value.hint
    record = rig.saved()
    assert (record.lease, record.pod_id, record.last_status, record.cost_per_hour) == (None, pod_id, "RUNNING", 0.69)


def test_a_locked_pod_is_still_terminated_by_a_plain_shutdown(rig: Rig) -> None:
    pod_id = rig.started()
    rig.fake.lock(pod_id)

    control.shutdown(rig.lifecycle)

    assert rig.fake.status_of(pod_id) == PodStatus.TERMINATED


def test_a_runtime_limit_that_would_stop_a_locked_owned_pod_terminates_it_and_says_so(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, runtime_seconds=3600, idle_timeout_seconds=0, cutoff_action="stop")
    pod_id = rig.started()
    rig.fake.lock(pod_id)

    rig.later(3600)
    result = rig.lifecycle.reconcile()

    assert summary_of(result.plan.actions) == ["close_lease:runtime", "terminate"]
    assert "locked" in result.plan.actions[1].reason and "terminat" in result.plan.actions[1].reason
    assert not result.failures and result.exit_code == ExitCode.OK
    assert rig.fake.mutations() == [("terminate", pod_id)]


def test_a_locked_adopted_pod_is_never_terminated_by_a_limit(tmp_path: Path) -> None:
    fake = FakeRunPod()
    pod_id = fake.add_pod("my-own-pod")
    rig = make_lifecycle(tmp_path, fake=fake, pod={"pod_id": pod_id}, runtime_seconds=3600,
                         idle_timeout_seconds=0, cutoff_action="terminate")
    rig.started()
    fake.lock(pod_id)

    rig.later(3600)
    result = rig.lifecycle.reconcile()

    assert [type(a.error) for a in result.failures] == [PodLocked]
    assert rig.fake.mutations() == [("stop", pod_id)]
    assert rig.fake.status_of(pod_id) == PodStatus.RUNNING


def test_a_stop_refused_because_the_pod_is_already_stopped_counts_as_stopped(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, runtime_seconds=3600, idle_timeout_seconds=0, cutoff_action="stop")
    pod_id = rig.started()
    rig.fake.advance(pod_id, PodStatus.EXITED)  # stopped meanwhile, e.g. in the console
    rig.fake.fail("get", ApiUnavailable("get pod: 503 Service Unavailable", status=503), times=1)

    rig.later(3600)
    result = rig.lifecycle.reconcile()  # status unknown: stop by id, 409, a fresh look says EXITED

    assert summary_of(result.plan.actions) == ["close_lease:runtime", "stop"]
    assert not result.failures
    assert rig.fake.history[-2:] == [("stop", pod_id), ("get", pod_id)]
    assert (rig.saved().last_status, rig.saved().cost_per_hour) == ("EXITED", 0.0)


def _add_neighbours(fake: FakeRunPod, install: str) -> dict[str, str]:
    return {
        "orphan": fake.add_pod(f"rpm-llm-{install}-0a0a0a"),  # this config's name and install, unknown to state
        "other-config": fake.add_pod(f"rpm-other-{install}-1b1b1b"),
        "other-config-stopped": fake.add_pod(f"rpm-big-{install}-2c2c2c", PodStatus.EXITED),
        # config "llm-big" shares the "rpm-llm-" prefix
        "longer-config": fake.add_pod(f"rpm-llm-big-{install}-3d3d3d"),
        "notebook": fake.add_pod("my-notebook"),
        "lookalike": fake.add_pod(f"rpmx-{install}-4e4e4e"),
        # Another rpm install on the same account (same pod name, another install id), and an older rpm's pod
        # (no install id) that no record holds: neither can be proved this install's.
        "other-install": fake.add_pod("rpm-llm-zzzzzzzz-5f5f5f"),
        "older-rpm": fake.add_pod("rpm-llm-6a6a6a"),
        "other-install-config": fake.add_pod("rpm-other-zzzzzzzz-7b7b7b"),
    }


def test_shutdown_all_pods_terminates_unknown_rpm_pods_of_this_install_and_never_others(rig: Rig) -> None:
    pod_id = rig.started()
    pods = _add_neighbours(rig.fake, rig.lifecycle.store.load().install_id)

    result = control.shutdown(rig.lifecycle, all_pods=True)

    terminated = {subject for verb, subject in rig.fake.mutations() if verb == "terminate"}
    assert terminated == {pod_id, pods["orphan"], pods["other-config"], pods["other-config-stopped"],
                          pods["longer-config"]}
    assert len(rig.fake.mutations()) == len(terminated)  # each once
    for untouched in ("notebook", "lookalike", "other-install", "older-rpm", "other-install-config"):
        assert rig.fake.status_of(pods[untouched]) == PodStatus.RUNNING
    install = rig.lifecycle.store.load().install_id
    assert sorted(result.orphans_terminated) == sorted([
        f"{pods['other-config']} (rpm-other-{install}-1b1b1b)",
        f"{pods['other-config-stopped']} (rpm-big-{install}-2c2c2c)",
        f"{pods['longer-config']} (rpm-llm-big-{install}-3d3d3d)"])
    assert sorted(result.other_installs) == sorted([
        f"{pods['other-install']} (rpm-llm-zzzzzzzz-5f5f5f)", f"{pods['older-rpm']} (rpm-llm-6a6a6a)",
        f"{pods['other-install-config']} (rpm-other-zzzzzzzz-7b7b7b)"])


def test_shutdown_without_all_pods_ends_only_this_configs_pods(rig: Rig) -> None:
    pod_id = rig.started()
    pods = _add_neighbours(rig.fake, rig.lifecycle.store.load().install_id)

    result = control.shutdown(rig.lifecycle)

    assert sorted(rig.fake.mutations()) == sorted([("terminate", pod_id), ("terminate", pods["orphan"])])
    for other in ("other-config", "longer-config", "notebook", "lookalike", "other-install", "older-rpm"):
        assert rig.fake.status_of(pods[other]) == PodStatus.RUNNING
    # The pods named like this one that are not this install's are shown (a pod of another config is not).
    assert sorted(result.other_installs) == sorted([
        f"{pods['other-install']} (rpm-llm-zzzzzzzz-5f5f5f)", f"{pods['older-rpm']} (rpm-llm-6a6a6a)"])


def test_status_lists_the_rpm_pods_of_other_installs_and_not_this_ones(rig: Rig) -> None:
    pod_id = rig.started()
    pods = _add_neighbours(rig.fake, rig.lifecycle.store.load().install_id)
    others = {pod.id for pod in build_status(rig.lifecycle).other_installs}
    assert others == {pods["other-install"], pods["older-rpm"], pods["other-install-config"]}
    assert pod_id not in others and rig.fake.mutations() == []


def test_a_record_keeps_its_older_named_pod_and_a_sweep_never_claims_one_by_name(rig: Rig) -> None:
    """State upgraded from version 2 holds a live pod named without an install id: still this record's pod
    (ended by shutdown); an older-named pod no record holds is never swept."""
    held, stray = rig.fake.add_pod("rpm-llm-3f2a1c"), rig.fake.add_pod("rpm-llm-4e5f6a")
    with rig.lifecycle.store.transaction() as state:
        record = state.record("llm")
        record.pod_id, record.pod_name = held, "rpm-llm-3f2a1c"
        now = rig.lifecycle.clock()
        record.lease = Lease(opened_at=now, deadline=now + timedelta(hours=1))
        record.last_activity_at = now
    rig.lifecycle.reconcile(sweep=True)
    assert rig.fake.mutations() == []
    result = control.shutdown(rig.lifecycle)
    assert rig.fake.mutations() == [("terminate", held)]
    assert result.other_installs == [f"{stray} (rpm-llm-4e5f6a)"]


# ------------------------------------------------------------------------------------------ dry runs


def _stopped(rig: Rig) -> None:
    rig.started()
    control.shutdown(rig.lifecycle, stop=True)


def _past_runtime(rig: Rig) -> None:
    rig.started()
    rig.later(3600)


DRY_RUNS: list[Any] = [
    pytest.param(_stopped, lambda lifecycle: control.start(lifecycle, dry_run=True).plan, ["resume"],
                 id="start-resumes"),
    pytest.param(lambda rig: None, lambda lifecycle: control.start(lifecycle, dry_run=True).plan, ["create"],
                 id="start-creates"),
    pytest.param(_past_runtime, lambda lifecycle: lifecycle.reconcile(dry_run=True).plan,
                 ["close_lease:runtime", "terminate"], id="reconcile-past-runtime"),
    pytest.param(lambda rig: rig.started(), lambda lifecycle: control.shutdown(lifecycle, dry_run=True).plan,
                 ["terminate"], id="shutdown"),
]


@pytest.mark.parametrize(("prepare", "act", "planned"), DRY_RUNS)
def test_a_dry_run_plans_and_changes_nothing(
    tmp_path: Path, proxy_stops: list[Paths], prepare: Callable[[Rig], object],
    act: Callable[[Lifecycle], Any], planned: list[str],
) -> None:
    rig = make_lifecycle(tmp_path, runtime_seconds=3600, idle_timeout_seconds=0)
    prepare(rig)
    rig.fake.reset_history()
    proxy_stops.clear()
    state_before, events_before = rig.state_bytes(), rig.events()
    statuses_before = {pod_id: rig.fake.status_of(pod_id) for pod_id in rig.fake.pods}
    creates_before = len(rig.fake.specs)

    plan = act(rig.lifecycle)

    assert summary_of(plan.actions) == planned
    assert rig.fake.mutations() == [] and len(rig.fake.specs) == creates_before
    assert set(rig.fake.verbs()) <= READ_VERBS
    assert {pod_id: rig.fake.status_of(pod_id) for pod_id in rig.fake.pods} == statuses_before
    assert rig.state_bytes() == state_before  # byte-identical (None: still no state file at all)
    assert rig.events() == events_before
    assert proxy_stops == []


def test_a_dry_run_shutdown_reports_what_it_would_end(rig: Rig) -> None:
    pod_id = rig.started()

    result = control.shutdown(rig.lifecycle, dry_run=True)

    assert result.dry_run and [(a.action.kind, a.action.pod_id) for a in result.ended] == [
        (ActionKind.TERMINATE, pod_id)]
    assert rig.saved().lease is not None and rig.fake.status_of(pod_id) == PodStatus.RUNNING


# ------------------------------------------------------------------------------- what a pass costs


def test_a_quiet_pass_costs_one_api_call_one_lock_one_load_one_save(rig: Rig) -> None:
    pod_id = rig.started()
    rig.later(60)  # inside every limit; no sweep (hourly) and no billing check (30 min) due
    use = count_store_use(rig.lifecycle.store)

    result = rig.lifecycle.reconcile(wait_seconds=0)

    assert result.plan.empty and not result.busy
    assert rig.fake.history == [("get", pod_id)]
    assert result.api_calls == 1 and rig.fake.calls == 1
    # One lock, one load, one save (the spend ledger's accounting time moves every pass).
    assert (use.locks, use.loads, use.saves) == (1, 1, 1)


def test_a_start_that_creates_costs_three_api_calls_two_locks_three_loads_three_saves(rig: Rig) -> None:
    use = count_store_use(rig.lifecycle.store)

    result = control.start(rig.lifecycle)

    assert result.created and result.ready
    assert rig.fake.verbs() == ["list", "create", "get"]
    assert rig.fake.calls == 3
    # Where they come from (docs/architecture.md has the same table):
    #   locks: the start's transaction, and marking the pod ready after the wait.
    #   loads: the transaction; wait_ready's poll; marking ready.
    #   saves: the intent before the create call (with the new lease); the transaction's end; ready.
    assert (use.locks, use.loads, use.saves) == (2, 3, 3)


def test_a_start_that_resumes_costs_three_api_calls_two_locks_three_loads_four_saves(rig: Rig) -> None:
    pod_id = rig.started()
    control.shutdown(rig.lifecycle, stop=True)
    rig.fake.reset_history()
    use = count_store_use(rig.lifecycle.store)

    result = control.start(rig.lifecycle)

    assert result.resumed and result.ready
    assert rig.fake.history == [("get", pod_id), ("start", pod_id), ("get", pod_id)]
    #   saves: the write-ahead before the resume call; the transaction's end; ready.
    assert (use.locks, use.loads, use.saves) == (2, 3, 3)


def test_a_wake_costs_what_a_start_does_plus_one_look_at_the_target(rig: Rig) -> None:
    rig.started()
    control.shutdown(rig.lifecycle, stop=True)
    rig.fake.reset_history()
    controller = LifecycleProxyController(rig.lifecycle)
    use = count_store_use(rig.lifecycle.store)  # the wake's lifecycle shares the store

    controller.wake(CONFIG_NAME)

    assert rig.fake.verbs() == ["get", "start", "get"]
    # A start's 2 locks, 3 loads and 3 saves, and one load to look for a target first.
    assert (use.locks, use.loads, use.saves) == (2, 4, 3)


# -------------------------------------------------------------------------------------------- status


def test_status_observes_the_pod_with_one_call_lists_other_installs_with_one_and_writes_nothing(rig: Rig) -> None:
    pod_id = rig.started()
    rig.later(600)
    before = rig.state_bytes()

    status = build_status(rig.lifecycle)

    assert rig.fake.history == [("get", pod_id), ("list", "rpm-")]
    assert rig.state_bytes() == before
    assert status.pod_observed and status.pod is not None and status.pod.status == PodStatus.RUNNING
    assert status.pod_url == rig.config.pod_url(pod_id)
    assert status.limits.deadline == T0 + timedelta(hours=4)
    assert status.idle_seconds == 600
    assert status.spend_today_usd == pytest.approx(0.69 * 600 / 3600)


# ---------------------------------------------------------------------------- the proxy's controller


def test_current_target_is_none_until_the_pod_is_ready_then_names_the_pod_url_and_key(rig: Rig) -> None:
    controller = LifecycleProxyController(rig.lifecycle)
    assert controller.current_target(CONFIG_NAME) is None

    started = control.start(rig.lifecycle, wait=False)
    pod_id = started.record.pod_id
    assert pod_id is not None and not started.ready
    assert controller.current_target(CONFIG_NAME) is None  # created, not yet answering

    rig.lifecycle.wait_ready()
    record = rig.saved()
    # UpstreamTarget compares its upstream_key too (it is only kept out of the repr).
    expected = UpstreamTarget(pod_id, rig.config.pod_url(pod_id), record.upstream_key)
    assert controller.current_target(CONFIG_NAME) == expected

    control.shutdown(rig.lifecycle, stop=True)
    assert controller.current_target(CONFIG_NAME) is None


def test_wake_opens_a_lease_opened_by_wake_and_returns_the_ready_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The controller builds its own Lifecycle for waking, without the injected client factory or sleep:
    # it is reached through the class the real client comes from, and zero startup waits.
    rig = make_lifecycle(tmp_path, api={"api_key": "rpa_test_key"},
                         startup={"initial_wait_seconds": 0.0, "poll_interval_seconds": 0.0})
    monkeypatch.setattr("runpod_manager.runpod.client.RunPodClient", lambda *_, **__: rig.fake)
    controller = LifecycleProxyController(rig.lifecycle)

    target = controller.wake(CONFIG_NAME)

    record = rig.saved()
    assert record.lease is not None and record.lease.opened_by == "wake"
    assert record.pod_id is not None and record.ready
    assert target == UpstreamTarget(record.pod_id, rig.config.pod_url(record.pod_id), record.upstream_key)
    assert rig.fake.verbs() == ["list", "create", "get"]
    rig.fake.reset_history()
    assert controller.wake(CONFIG_NAME) == target  # ready already: no API call
    assert rig.fake.history == []


def test_a_wake_refused_by_the_spend_cap_raises_limit_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_lifecycle(tmp_path, api={"api_key": "rpa_test_key"}, max_daily_spend_usd=1.0, idle_timeout_seconds=0)
    monkeypatch.setattr("runpod_manager.runpod.client.RunPodClient", lambda *_, **__: rig.fake)
    rig.started()
    rig.later(2 * 3600)
    rig.lifecycle.reconcile()  # the cap ends the pod
    rig.fake.reset_history()

    with pytest.raises(LimitRefused):
        LifecycleProxyController(rig.lifecycle).wake(CONFIG_NAME)

    assert rig.fake.mutations() == [] and rig.saved().lease is None


def test_view_shows_readiness_lease_spend_and_deadline(rig: Rig) -> None:
    controller = LifecycleProxyController(rig.lifecycle)
    assert controller.view(CONFIG_NAME).pod_id is None and not controller.view(CONFIG_NAME).lease_open
    pod_id = rig.started()
    rig.later(600)
    rig.lifecycle.reconcile(activity_at=T0 + timedelta(seconds=500))

    view = controller.view(CONFIG_NAME)

    assert (view.pod_id, view.status, view.gpu_type_id) == (pod_id, "RUNNING", RTX_4090)
    assert view.ready and view.lease_open
    assert view.cost_per_hour == 0.69 and view.max_daily_spend_usd == 20.0
    assert view.spend_today_usd == pytest.approx(0.69 * 600 / 3600)
    assert view.deadline == T0 + timedelta(hours=4)
    assert view.limits == {"runtime": T0 + timedelta(hours=4), "cutoff": None,
                           "idle": T0 + timedelta(seconds=500 + 900)}
    assert view.last_action == "create"

    control.shutdown(rig.lifecycle, stop=True)
    stopped = controller.view(CONFIG_NAME)
    assert (stopped.ready, stopped.lease_open, stopped.deadline, stopped.status) == (False, False, None, "EXITED")
    assert stopped.last_action == "stop" and stopped.last_reason == "shutdown"


def test_the_view_of_a_pod_just_stopped_shows_no_hourly_cost(rig: Rig) -> None:
    rig.started()
    control.shutdown(rig.lifecycle, stop=True)

    view = LifecycleProxyController(rig.lifecycle).view(CONFIG_NAME)

    assert view.status == "EXITED" and view.cost_per_hour == 0.0


def test_the_next_pass_corrects_the_hourly_cost_of_a_stopped_pod(rig: Rig) -> None:
    rig.started()
    control.shutdown(rig.lifecycle, stop=True)

    rig.lifecycle.reconcile()

    assert LifecycleProxyController(rig.lifecycle).view(CONFIG_NAME).cost_per_hour == 0.0


def test_the_controllers_reconcile_records_the_last_request_and_returns_the_view(rig: Rig) -> None:
    pod_id = rig.started()
    controller = LifecycleProxyController(rig.lifecycle)

    rig.later(1000)
    view = controller.reconcile({CONFIG_NAME: T0 + timedelta(seconds=990)})[CONFIG_NAME]

    assert view.lease_open and rig.fake.history == [("list", "")]  # the pass over every pod: one list
    assert pod_id
    assert rig.saved().last_activity_at == T0 + timedelta(seconds=990)


# ------------------------------------------------------------------------------------- proxy_stopped


@pytest.mark.parametrize(("idle_action", "verb", "status"), [
    ("stop", "stop", PodStatus.EXITED), ("terminate", "terminate", PodStatus.TERMINATED)])
def test_a_proxy_that_woke_the_pod_ends_it_with_the_idle_action_when_it_stops(
    tmp_path: Path, idle_action: str, verb: str, status: PodStatus,
) -> None:
    rig = make_lifecycle(tmp_path, idle_action=idle_action)
    pod_id = control.start(rig.lifecycle, opened_by="wake").record.pod_id
    assert pod_id is not None
    rig.fake.reset_history()

    result = control.proxy_stopped(rig.lifecycle)

    assert result.pod_id == pod_id and result.failed == [] and result.kept_until is None
    assert [(a.action.kind.value, a.action.pod_id) for a in result.ended] == [(verb, pod_id)]
    assert rig.fake.mutations() == [(verb, pod_id)]
    assert rig.fake.status_of(pod_id) == status
    record = rig.saved()
    assert record.lease is None and record.lease_end_action == idle_action
    assert record.last_lease_end_reason == "the proxy that woke the pod stopped"


def test_a_lease_opened_by_start_outlives_its_proxy_and_says_until_when(rig: Rig) -> None:
    pod_id = rig.started()
    before = rig.state_bytes()

    result = control.proxy_stopped(rig.lifecycle)

    assert (result.pod_id, result.ended, result.failed) == (pod_id, [], [])
    assert result.kept_until == T0 + timedelta(hours=4)
    assert result.idle_ends_at == T0 + timedelta(seconds=900)
    assert rig.fake.history == []
    assert rig.state_bytes() == before and rig.saved().lease is not None


def test_proxy_stopped_with_nothing_running_reports_no_pod(rig: Rig) -> None:
    result = control.proxy_stopped(rig.lifecycle)

    assert (result.pod_id, result.ended, result.kept_until) == (None, [], None)
    assert rig.fake.history == []


# ------------------------------------------------------------------------------------------ the fake
# The tests above trust the fake to behave like RunPod (runpod-api.md); these keep it honest.


def test_the_fake_refuses_actions_the_status_does_not_allow() -> None:
    fake = FakeRunPod()
    pod_id = fake.add_pod("rpm-llm-aaaaaa")
    with pytest.raises(Conflict):
        fake.start_pod(pod_id)  # RUNNING: start is not allowed
    fake.stop_pod(pod_id)
    with pytest.raises(Conflict):
        fake.stop_pod(pod_id)  # EXITED: stop is not allowed
    stopped = fake.get_pod(pod_id)
    assert stopped.status == PodStatus.EXITED and stopped.cost_per_hour == 0.0 and stopped.runtime is None
    assert stopped.actions == ("start", "terminate")
    fake.terminate_pod(pod_id)
    with pytest.raises(NotFound):
        fake.get_pod(pod_id)
    assert fake.list_pods_with_prefix("rpm-") == []
    assert fake.verbs() == ["start", "stop", "stop", "get", "terminate", "get", "list"]


def test_the_fake_injects_failures_per_subject_and_counts() -> None:
    fake = FakeRunPod()
    first, second = fake.add_pod("rpm-llm-aaaaaa"), fake.add_pod("rpm-llm-bbbbbb")
    fake.fail("get", ApiUnavailable("down"), times=2, subject=first)
    for _ in range(2):
        with pytest.raises(ApiUnavailable):
            fake.get_pod(first)
    assert fake.get_pod(first).id == first and fake.get_pod(second).id == second
    fake.create_then_raise()
    spec = PodSpec(name="rpm-llm-cccccc", gpu_type_id=RTX_4090, image="vllm/vllm-openai:latest")
    with pytest.raises(ApiUnavailable):
        fake.create_pod(spec)
    assert "rpm-llm-cccccc" in fake.live_pods()  # made at RunPod although the call raised
    assert fake.calls == len(fake.history) == 5


@pytest.mark.parametrize("watchdog_runs", [False, True])
def test_a_proxy_that_cannot_start_leaves_the_pod_running_only_when_something_enforces(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, watchdog_runs: bool,
) -> None:
    from runpod_manager.proxy import process

    def fails(*_: Any, **__: Any) -> int:
        raise RpmError("the proxy exited at start (code 1)")

    monkeypatch.setattr(process, "start_proxy_process", fails)
    pod_id = rig.started()
    if watchdog_runs:
        control.note_watchdog_pass(rig.paths, rig.clock())

    with pytest.raises(RpmError, match="the proxy exited at start") as raised:
        control.ensure_proxy(rig.lifecycle)

    assert raised.value.hint is not None
    if watchdog_runs:
        assert "the watchdog (cron) enforces its limits" in raised.value.hint
        assert rig.saved().lease is not None and rig.fake.mutations() == []
    else:
        assert f"pod {pod_id} was stopped" in raised.value.hint and "nothing would enforce" in raised.value.hint
        assert rig.saved().lease is None and rig.fake.mutations() == [("stop", pod_id)]
