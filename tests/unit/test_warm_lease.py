"""Warm hours in the control plane: `control.reconcile` (the watchdog's and the proxy's pass) opens one lease per
warm_hours window WARM_LEAD_SECONDS before it starts, and the same pass creates the pod; a limit or a shutdown
that closes it inside the window is not undone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from runpod_manager import control
from runpod_manager.policy import WARM_LEAD_SECONDS
from runpod_manager.report import Event, build_timeline
from runpod_manager.runpod.models import PodStatus
from tests.unit.test_lifecycle import T0, Rig, make_lifecycle

# T0 is Wednesday 2026-06-10 09:00 UTC; the window opens at 09:30.
WINDOW_START = datetime(2026, 6, 10, 9, 30, tzinfo=UTC)
WARM = {"warm_hours": "Mon-Fri 09:30-18:00", "warm_idle_timeout_seconds": 3600}


def warm_rig(tmp_path: Path) -> Rig:
    return make_lifecycle(tmp_path, **WARM)


def creates(rig: Rig) -> list[tuple[str, str]]:
    return [call for call in rig.fake.history if call[0] == "create"]


def test_nothing_happens_before_the_lead(tmp_path: Path) -> None:
    rig = warm_rig(tmp_path)
    assert timedelta(seconds=WARM_LEAD_SECONDS) < WINDOW_START - T0
    control.reconcile(control.Fleet(rig.lifecycle))
    assert creates(rig) == []
    assert rig.saved().lease is None


def test_the_pass_before_the_window_opens_a_lease_and_creates_once(tmp_path: Path) -> None:
    rig = warm_rig(tmp_path)
    rig.clock.set(WINDOW_START - timedelta(seconds=WARM_LEAD_SECONDS - 10))
    outcome = control.reconcile(control.Fleet(rig.lifecycle))
    assert len(creates(rig)) == 1
    record = rig.saved()
    assert record.lease is not None and record.lease.opened_by == "warm"
    assert record.warm_opened_for == WINDOW_START.isoformat()
    assert record.pod_id is not None
    assert "lease_opened" in rig.events()
    assert outcome.outcomes[rig.lifecycle.name].plan is not None
    rig.clock.set(WINDOW_START + timedelta(minutes=5))
    control.reconcile(control.Fleet(rig.lifecycle))
    assert len(creates(rig)) == 1  # the second pass keeps the lease it opened


def test_inside_the_window_the_warm_idle_timeout_keeps_the_pod(tmp_path: Path) -> None:
    rig = warm_rig(tmp_path)
    rig.clock.set(WINDOW_START - timedelta(seconds=60))
    control.reconcile(control.Fleet(rig.lifecycle))
    pod_id = rig.saved().pod_id
    assert pod_id is not None
    rig.fake.advance(pod_id, PodStatus.RUNNING)
    rig.clock.set(WINDOW_START + timedelta(minutes=30))  # idle 31 min: past 15 min, within the warm hour
    control.reconcile(control.Fleet(rig.lifecycle))
    assert rig.saved().lease is not None
    rig.clock.set(WINDOW_START + timedelta(minutes=62))
    control.reconcile(control.Fleet(rig.lifecycle))
    record = rig.saved()
    assert record.lease is None and ("stop", pod_id) in rig.fake.history


def test_after_a_shutdown_inside_the_window_nothing_reopens(tmp_path: Path) -> None:
    rig = warm_rig(tmp_path)
    rig.clock.set(WINDOW_START - timedelta(seconds=60))
    control.reconcile(control.Fleet(rig.lifecycle))
    control.shutdown(rig.lifecycle)
    assert rig.saved().lease is None
    rig.clock.set(WINDOW_START + timedelta(hours=1))
    control.reconcile(control.Fleet(rig.lifecycle))
    assert rig.saved().lease is None and len(creates(rig)) == 1


def test_the_next_window_opens_again(tmp_path: Path) -> None:
    rig = warm_rig(tmp_path)
    rig.clock.set(WINDOW_START - timedelta(seconds=60))
    control.reconcile(control.Fleet(rig.lifecycle))
    control.shutdown(rig.lifecycle)
    tomorrow = WINDOW_START + timedelta(days=1)
    rig.clock.set(tomorrow - timedelta(seconds=60))
    control.reconcile(control.Fleet(rig.lifecycle))
    record = rig.saved()
    assert record.lease is not None and record.lease.opened_by == "warm"
    assert record.warm_opened_for == tomorrow.isoformat()


def test_a_refused_start_opens_no_lease(tmp_path: Path) -> None:
    rig = make_lifecycle(tmp_path, max_daily_spend_usd=0.01, **WARM)
    with rig.lifecycle.transaction(None) as state:
        record = state.record(rig.lifecycle.name)
        record.spend_day, record.spend_usd = "2026-06-10", 5.0
    rig.clock.set(WINDOW_START - timedelta(seconds=60))
    control.reconcile(control.Fleet(rig.lifecycle))
    assert rig.saved().lease is None and creates(rig) == []
    assert "warm_start_refused" in rig.events()


def test_rpm_report_does_not_count_a_warm_lease_as_a_cold_start() -> None:
    at = WINDOW_START.timestamp()
    events = [Event(at - 60, "lease_opened", "llm", {"config": "llm", "opened_by": "warm"}),
              Event(at - 59, "created", "llm", {"config": "llm", "pod_id": "p1", "cost_per_hour": 0.69}),
              Event(at, "ready", "llm", {"config": "llm", "pod_id": "p1"})]
    assert build_timeline(events, until=at + 3600).wakes == []
