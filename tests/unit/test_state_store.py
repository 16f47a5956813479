"""pod_state.json: private modes, atomic writes, the lock, corrupt and newer files, upgrades, round trips.

Real files in tmp_path; the lock is contended by a real second process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runpod_manager.errors import LockBusy, StateError
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.state import STATE_VERSION, Intent, Lease, PodRecord, State, StateStore

T0 = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
UPSTREAM_KEY = "sk-upstream-SECRET-77"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return resolve_paths({"RPM_HOME": str(tmp_path / "home")})


@pytest.fixture
def store(paths: Paths) -> StateStore:
    return StateStore(paths, clock=T0.timestamp)


def full_record() -> PodRecord:
    return PodRecord(
        config_name="main", pod_id="abc123", pod_name="rpm-main-x1y2z3", upstream_key=UPSTREAM_KEY,
        lease=Lease(opened_at=T0, deadline=T0 + timedelta(hours=4), opened_by="wake"),
        intent=Intent(pod_name="rpm-main-q9", created_at=T0, purpose="replace"),
        last_activity_at=T0, gpu_type_id="NVIDIA L40S", data_center_id="US-KS-2", cost_per_hour=0.86,
        last_status="RUNNING", last_observed_at=T0, spend_day="2026-11-23", spend_usd=1.25,
        spend_cap_day=None, replacing_pod_id="old1", last_action="create", last_reason="wake",
        last_lease_end_reason="idle", lease_end_action="stop", proxy_wanted=True,
        last_gpu_busy_at=T0 - timedelta(minutes=1), ready_pod_id="abc123", last_sweep_at_epoch=T0.timestamp(),
        spend_accounted_at=T0, spend_of_ended_pods_usd=0.5, billed_usd=0.75, billing_checked_at=T0,
    )


# --- modes and round trip -------------------------------------------------------------------------------


def test_every_record_field_survives_a_save_and_load(store: StateStore) -> None:
    state = State(pods={"main": full_record(), "other": PodRecord(config_name="other")})
    store.save(state)
    assert store.load() == state


def test_the_file_is_0600_in_a_0700_directory_and_holds_the_key_only_there(store: StateStore,
                                                                           paths: Paths) -> None:
    store.save(State(pods={"main": full_record()}))
    assert paths.state_file.stat().st_mode & 0o777 == 0o600
    assert paths.state_dir.stat().st_mode & 0o777 == 0o700
    assert UPSTREAM_KEY in paths.state_file.read_text()  # it must be here: the proxy needs it
    assert UPSTREAM_KEY not in repr(full_record())


def test_a_loose_state_directory_is_tightened(store: StateStore, paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_dir.chmod(0o755)
    store.save(State())
    assert paths.state_dir.stat().st_mode & 0o777 == 0o700


def test_no_file_is_an_empty_state(store: StateStore) -> None:
    assert store.load() == State() and store.notices == []


# --- atomic writes ----------------------------------------------------------------------------------


def test_a_crash_mid_write_leaves_the_old_file_whole_and_no_temp_file(store: StateStore, paths: Paths,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(State(pods={"main": full_record()}))
    before = paths.state_file.read_bytes()

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    changed = State(pods={"main": PodRecord(config_name="main", pod_id="other")})
    with pytest.raises(OSError, match="No space left"):
        store.save(changed)
    assert paths.state_file.read_bytes() == before
    assert sorted(p.name for p in paths.state_dir.iterdir() if p.name.startswith(".pod_state.")) == []


def test_a_transaction_that_raises_saves_nothing(store: StateStore) -> None:
    store.save(State(pods={"main": PodRecord(config_name="main", pod_id="keep")}))
    def fail_midway() -> None:
        with store.transaction() as state:
            state.record("main").pod_id = "lost"
            raise RuntimeError("the API call failed")

    with pytest.raises(RuntimeError):
        fail_midway()
    assert store.load().pods["main"].pod_id == "keep"
    with store.transaction() as state:
        state.record("main").pod_id = "saved"
    assert store.load().pods["main"].pod_id == "saved"


def test_intent_before_create_then_id_after_each_saved(store: StateStore) -> None:
    """The write-ahead order the executor relies on: a crash between the two leaves the intent on disk."""
    with store.transaction() as state:
        state.record("main").intent = Intent(pod_name="rpm-main-k3", created_at=T0)
    on_disk = store.load().pods["main"]
    assert on_disk.intent is not None and on_disk.intent.pod_name == "rpm-main-k3" and on_disk.pod_id is None
    with store.transaction() as state:
        record = state.record("main")
        record.pod_id, record.pod_name, record.intent = "newid", "rpm-main-k3", None
    on_disk = store.load().pods["main"]
    assert (on_disk.pod_id, on_disk.intent) == ("newid", None)


# --- the lock -------------------------------------------------------------------------------------------


HOLDER = """
import sys, time
from runpod_manager.paths import resolve_paths
from runpod_manager.state import StateStore
store = StateStore(resolve_paths({"RPM_HOME": sys.argv[1]}))
with store.lock(wait_seconds=5):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(paths: Paths, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(paths.config_dir), str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_busy_lock_fails_after_the_wait_naming_the_holders_pid(store: StateStore, paths: Paths) -> None:
    holder = hold_lock(paths, 5)
    try:
        started = time.monotonic()
        with pytest.raises(LockBusy) as caught, store.lock(wait_seconds=0.3):
            pass
        waited = time.monotonic() - started
        assert caught.value.holder_pid == holder.pid
        assert f"process {holder.pid}" in caught.value.message and str(paths.lock_file) in caught.value.message
        assert int(caught.value.exit_code) == 6
        assert waited >= 0.25  # it did wait (bounded), rather than failing at once
        with pytest.raises(LockBusy), store.lock(wait_seconds=0):  # cron's mode: one try
            pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_free_again_after_the_holder_dies(store: StateStore, paths: Paths) -> None:
    holder = hold_lock(paths, 30)
    holder.kill()  # SIGKILL: no cleanup; the OS releases the flock with the process
    holder.wait()
    with store.lock(wait_seconds=2):
        pass


def test_the_lock_serialises_read_modify_write_across_processes(store: StateStore, paths: Paths) -> None:
    script = """
import sys
from runpod_manager.paths import resolve_paths
from runpod_manager.state import StateStore
store = StateStore(resolve_paths({"RPM_HOME": sys.argv[1]}))
for _ in range(25):
    with store.transaction(wait_seconds=None) as state:
        record = state.record("main")
        record.spend_usd += 1
"""
    workers = [subprocess.Popen([sys.executable, "-c", script, str(paths.config_dir)]) for _ in range(4)]
    for worker in workers:
        assert worker.wait(60) == 0
    assert store.load().pods["main"].spend_usd == 100.0  # no lost update


# --- corrupt, newer, older -----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"{not json", b"\xff\xfe\x00garbage", b"[]", b'{"version": 2, "pods": []}', b'{"pods": {}}',
    b'{"version": 2, "pods": {"main": {"lease": {"opened_at": 5}}}}',
    b'{"version": 2, "pods": {"main": {"spend_usd": "lots"}}}', b'{"version": 2, "pods": {"main": 7}}',
    b'{"version": 2, "pods": {"ma', b"[" * 100_000,
], ids=["syntax", "utf8", "array", "pods-list", "no-version", "bad-time", "bad-number", "bad-record",
        "truncated", "deep"])
def test_a_corrupt_file_is_moved_aside_whole_and_reported_in_one_line(store: StateStore, paths: Paths,
                                                                     content: bytes) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.write_bytes(content)
    assert store.load() == State()
    aside = paths.state_dir / f"{paths.state_file.name}.corrupt-20261123T093000Z"
    assert aside.read_bytes() == content  # kept for the user, byte for byte
    assert not paths.state_file.exists()  # never silently replaced: the next save writes a fresh one
    (notice,) = store.notices
    assert "\n" not in notice and str(paths.state_file) in notice and aside.name in notice


def test_two_corrupt_files_in_the_same_second_do_not_overwrite_each_other(store: StateStore, paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    for content in (b"first", b"second"):
        paths.state_file.write_bytes(content)
        store.load()
    kept = sorted(p.read_bytes() for p in paths.state_dir.glob("pod_state.json.corrupt-*"))
    assert kept == [b"first", b"second"]


def test_a_newer_version_is_refused_and_left_untouched(store: StateStore, paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    content = json.dumps({"version": STATE_VERSION + 1, "pods": {}, "future": True}).encode()
    paths.state_file.write_bytes(content)
    with pytest.raises(StateError) as caught:
        store.load()
    assert f"state version {STATE_VERSION + 1}" in caught.value.message and "upgrade rpm" in (caught.value.hint or "")
    assert paths.state_file.read_bytes() == content and store.notices == []


def test_version_1_is_upgraded_to_a_lease_with_its_deadline(store: StateStore, paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.write_text(json.dumps({"version": 1, "pods": {"main": {
        "pod_id": "old1", "started_at": "2026-11-23T09:30:00Z", "runtime_seconds": 3600, "upstream_key": "k"}}}))
    record = store.load().pods["main"]
    assert record.pod_id == "old1" and record.upstream_key == "k"
    assert record.lease == Lease(opened_at=T0, deadline=T0 + timedelta(hours=1), opened_by="start")
    store.save(store.load())
    assert json.loads(paths.state_file.read_text())["version"] == STATE_VERSION


def test_a_malformed_version_1_file_counts_as_corrupt(store: StateStore, paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.write_text(json.dumps({"version": 1, "pods": {"main": {"started_at": 5,
                                                                             "runtime_seconds": 1}}}))
    assert store.load() == State()
    assert "corrupt" in store.notices[0]


def test_an_unreadable_file_is_an_error_not_a_reset(store: StateStore, paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.mkdir()  # reading a directory fails for root too
    with pytest.raises(StateError, match="cannot read state"):
        store.load()
    assert paths.state_file.is_dir()


def test_unknown_record_fields_from_a_later_minor_change_are_ignored(store: StateStore, paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.write_text(json.dumps({"version": STATE_VERSION, "pods": {"main": {
        "pod_id": "p1", "some_future_field": [1, 2]}}}))
    assert store.load().pods["main"].pod_id == "p1" and store.notices == []
