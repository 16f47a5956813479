"""The backend conformance suite: every registered backend (`backends.registry.FACTORIES`), each against its
in-memory fake, driven through the protocol (`backends.base.Backend`) alone.

What every backend must do: start from nothing to ready under a lease, end at idle with the idle action,
end at a limit, observe every entry from one listing (one list call per pass, none when nothing is live),
report spend today from its ledger, and give the proxy an upstream target only while ready under a lease.
A second backend is added by implementing the protocol, registering its factory and adding its harness
to `HARNESSES` (a test fails until it has one). Needs nothing outside the repository (no ../shared).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest

from runpod_manager import control, policy
from runpod_manager.backends import registry
from runpod_manager.backends.base import Backend, UpstreamTarget
from runpod_manager.config import build_config
from runpod_manager.lifecycle import Lifecycle
from runpod_manager.outcomes import PassOutcome
from runpod_manager.paths import resolve_paths
from runpod_manager.policy import Action, ActionKind, Options
from runpod_manager.runpod.models import PodStatus
from runpod_manager.state import Lease, State, StateStore
from tests.support.fake_runpod import DEFAULT_GPU_PRICES, FakeRunPod

T0 = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)  # a Wednesday morning, UTC (the configured zone)
GPU = "NVIDIA GeForce RTX 4090"
RUNTIME_SECONDS = 4 * 3600
IDLE_SECONDS = 900


class Clock:
    """The injected clock: a datetime that only the test moves."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Harness(Protocol):
    """A backend's entries wired to its in-memory fake: what the suite needs beyond the protocol."""

    clock: Clock
    store: StateStore
    backends: dict[str, Backend[Any]]
    price_per_hour: float  # what one running instance of an entry costs

    def boot(self, entry: str) -> None:
        """The entry's instance comes up and its server answers."""

    def instances(self) -> dict[str, str]:
        """Every instance the fake holds that is not gone: id → "running" | "stopped"."""

    def list_calls(self) -> int:
        """How many list calls the fake has answered."""


# ------------------------------------------------------------------------------------------ pod harness


@dataclass
class PodHarness:
    clock: Clock
    store: StateStore
    backends: dict[str, Backend[Any]]
    fake: FakeRunPod
    serving: set[str] = field(default_factory=set)  # pod URLs whose server answers
    price_per_hour: float = DEFAULT_GPU_PRICES[GPU]

    def boot(self, entry: str) -> None:
        record = self.store.load().record(entry)
        assert record.pod_id is not None
        self.fake.advance(record.pod_id, PodStatus.RUNNING)
        self.serving.add(self.backends[entry].config.pod_url(record.pod_id))

    def instances(self) -> dict[str, str]:
        return {pod.id: "running" if pod.status in policy.ACTIVE_STATUSES else "stopped"
                for pod in self.fake.pods.values() if pod.status != PodStatus.TERMINATED}

    def list_calls(self) -> int:
        return sum(1 for verb, _ in self.fake.history if verb == "list")


def pod_harness(tmp_path: Path, entries: tuple[str, ...], limits: dict[str, Any]) -> PodHarness:
    clock = Clock()
    fake = FakeRunPod(clock=clock, create_status=PodStatus.PROVISIONING)
    document = {"version": 1, "pods": {name: {"backend": "pod", "gpu_types": [GPU], "model": f"org/{name}"}
                                       for name in entries},
                "limits": {"timezone": "UTC", "daily_cutoff": "", "runtime_seconds": RUNTIME_SECONDS,
                           "idle_timeout_seconds": IDLE_SECONDS, "max_daily_spend_usd": 20.0, **limits}}
    config = build_config(document, source=None, env={})
    paths = resolve_paths({"RPM_HOME": str(tmp_path / "home")})
    serving: set[str] = set()
    lead = Lifecycle(config, paths, client_factory=lambda: fake, clock=clock, sleep=clock.sleep,
                     probe=lambda url, _key: url in serving, proxy_alive=lambda: None)
    fleet = control.Fleet(lead)
    return PodHarness(clock, lead.store, fleet.backends, fake, serving)


HARNESSES: dict[str, Callable[[Path, tuple[str, ...], dict[str, Any]], Harness]] = {"pod": pod_harness}


def test_every_registered_backend_has_a_harness_here() -> None:
    assert set(HARNESSES) == set(registry.FACTORIES)


@pytest.fixture(params=sorted(registry.FACTORIES))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Harness]:
    harness = HARNESSES[request.param]

    def made(*entries: str, **limits: Any) -> Harness:
        built = harness(tmp_path, entries or ("llm",), limits)
        assert {backend.backend for backend in built.backends.values()} == {request.param}
        return built

    return made


# ---------------------------------------------------------------------------------------------- drive


@contextmanager
def transaction(h: Harness) -> Iterator[State]:
    with h.store.transaction(wait_seconds=None) as state:
        yield state


def one_pass(h: Harness, *, check_ready: bool = False) -> dict[str, PassOutcome]:
    """A pass as `control.reconcile` makes it: one listing per backend, each entry's pass reading it."""
    members = list(h.backends.values())
    with transaction(h) as state:
        listing = members[0].listing(wanted=any(m.wants_listing(state, sweep=False) for m in members))
        return {m.name: m.run_pass(state, Options(), dry_run=False, check_ready=check_ready, listing=listing)
                for m in members}


def open_lease(h: Harness, entry: str) -> None:
    backend = h.backends[entry]
    with transaction(h) as state:
        record = state.record(entry)
        now = h.clock()
        record.lease = Lease(opened_at=now, deadline=policy.lease_deadline(now, backend.config))
        record.last_activity_at = now


def confirm_ready(h: Harness, entry: str) -> bool:
    backend = h.backends[entry]
    with transaction(h) as state:
        return backend.confirm_ready(state, backend.listing(wanted=True))


def kinds(outcome: PassOutcome) -> list[ActionKind]:
    assert all(applied.ok for applied in outcome.applied), outcome.applied
    return [applied.action.kind for applied in outcome.applied]


def started(h: Harness, entry: str = "llm") -> str:
    """From nothing to ready: the instance id."""
    open_lease(h, entry)
    one_pass(h)
    h.boot(entry)
    assert confirm_ready(h, entry)
    instance = h.store.load().record(entry).pod_id
    assert instance is not None
    return instance


def upstreams(h: Harness, entry: str = "llm") -> tuple[UpstreamTarget, ...]:
    return h.backends[entry].upstreams(h.store.load().record(entry))


# ---------------------------------------------------------------------------------------------- suite


def test_from_nothing_to_ready_and_an_upstream_target(make: Callable[..., Harness]) -> None:
    h = make()
    backend = h.backends["llm"]
    assert not one_pass(h)["llm"].plan.actions and h.instances() == {}  # no lease, nothing made
    open_lease(h, "llm")
    outcome = one_pass(h)["llm"]
    assert ActionKind.CREATE in kinds(outcome) and set(kinds(outcome)) <= backend.actions
    record = h.store.load().record("llm")
    assert record.pod_id in h.instances() and record.backend == backend.backend
    assert not backend.ready(record) and upstreams(h) == ()  # made, not answering yet
    assert not confirm_ready(h, "llm")
    h.boot("llm")
    assert confirm_ready(h, "llm") and backend.ready(h.store.load().record("llm"))
    (target,) = upstreams(h)
    record = h.store.load().record("llm")
    assert (target.instance_id, target.key) == (record.pod_id, record.upstream_key)
    assert target.base_url.startswith(("http://", "https://")) and not target.base_url.endswith("/")
    assert kinds(one_pass(h, check_ready=True)["llm"]) == []  # ready under its lease: a quiet pass


@pytest.mark.parametrize(("idle_action", "end", "left"), [
    ("stop", ActionKind.STOP, "stopped"), ("terminate", ActionKind.TERMINATE, None),
])
def test_an_idle_entry_ends_with_the_idle_action(make: Callable[..., Harness], idle_action: str, end: ActionKind,
                                                 left: str | None) -> None:
    h = make(idle_action=idle_action)
    instance = started(h)
    h.clock.sleep(IDLE_SECONDS - 1)
    assert kinds(one_pass(h)["llm"]) == []  # not idle yet
    h.clock.sleep(2)
    outcome = one_pass(h)["llm"]
    assert kinds(outcome) == [ActionKind.CLOSE_LEASE, end]
    assert outcome.plan.actions[0].limit == "idle" and outcome.applied[1].action.pod_id == instance
    assert h.instances().get(instance) == left
    record = h.store.load().record("llm")
    assert record.lease is None and not h.backends["llm"].ready(record) and upstreams(h) == ()
    assert kinds(one_pass(h)["llm"]) == []  # a closed lease never starts anything


def test_a_limit_ends_the_entry_with_the_cutoff_action(make: Callable[..., Harness]) -> None:
    h = make(cutoff_action="terminate", idle_timeout_seconds=RUNTIME_SECONDS * 2)
    instance = started(h)
    h.clock.sleep(RUNTIME_SECONDS + 1)
    with transaction(h) as state:
        state.record("llm").last_activity_at = h.clock()  # busy to the end: the runtime limit, not idle
    outcome = one_pass(h)["llm"]
    assert kinds(outcome) == [ActionKind.CLOSE_LEASE, ActionKind.TERMINATE]
    assert outcome.plan.actions[0].limit == "runtime"
    assert instance not in h.instances() and upstreams(h) == ()


def test_every_entry_is_observed_from_one_listing(make: Callable[..., Harness]) -> None:
    h = make("chat", "coder")
    one_pass(h)
    assert h.list_calls() == 1  # the first pass sweeps (for orphans and lost creates): one call for both
    one_pass(h)
    assert h.list_calls() == 1  # nothing live, no sweep due: nothing asked
    chat, coder = started(h, "chat"), started(h, "coder")
    before = h.list_calls()
    outcomes = one_pass(h, check_ready=True)
    assert h.list_calls() == before + 1 and all(kinds(o) == [] for o in outcomes.values())
    members = h.backends
    with transaction(h) as state:
        listing = members["chat"].listing(wanted=True)
        seen = {name: members[name].observe(state, listing) for name in ("chat", "coder")}
    assert h.list_calls() == before + 2
    assert seen["chat"].pod is not None and seen["chat"].pod.id == chat
    assert seen["coder"].pod is not None and seen["coder"].pod.id == coder
    assert all(observation.pod_observed for observation in seen.values())


def test_spend_today_comes_from_the_ledger_the_pass_keeps(make: Callable[..., Harness]) -> None:
    h = make(idle_timeout_seconds=3 * 3600)
    started(h)
    with transaction(h) as state:
        assert h.backends["llm"].spend_today(state, h.clock()) == pytest.approx(0.0, abs=0.01)
    h.clock.sleep(3600)
    outcome = one_pass(h)["llm"]
    with transaction(h) as state:
        spent = h.backends["llm"].spend_today(state, h.clock())
    assert spent == pytest.approx(outcome.spend_today_usd)
    assert spent == pytest.approx(h.price_per_hour, rel=0.05)


def test_a_planned_end_applied_alone_is_saved_ahead_and_done(make: Callable[..., Harness]) -> None:
    h = make()
    instance = started(h)
    backend = h.backends["llm"]
    with transaction(h) as state:
        state.record("llm").lease = None
        applied = backend.apply(state, Action(ActionKind.STOP, "shutdown --stop", pod_id=instance))
        assert h.store.load().record("llm").lease is None  # on disk before RunPod was asked
    assert applied.ok and ActionKind.STOP in backend.actions
    assert h.instances() == {instance: "stopped"}
    assert not backend.ready(h.store.load().record("llm")) and upstreams(h) == ()
