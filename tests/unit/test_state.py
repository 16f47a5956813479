"""state.py as a library: private modes, atomic writes, the lock, corrupt/newer/older files, the write-ahead
intent and the round trip of every record field.

Real files in tmp_path and a fixed clock; the lock is contended by a thread (timing) and by one short
subprocess (a holder pid that is not ours).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from runpod_manager.errors import ExitCode, LockBusy, StateError
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.state import (
    STATE_VERSION,
    UPGRADES,
    Intent,
    Lease,
    PodRecord,
    State,
    StateStore,
    decode_state,
)

T0 = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
STAMP = "20261123T093000Z"  # T0 as the .corrupt-<time> suffix
UPSTREAM_KEY = "sk-upstream-UNIT-SECRET-31"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return resolve_paths({"RPM_HOME": str(tmp_path / "home")})


@pytest.fixture
def store(paths: Paths) -> StateStore:
    return StateStore(paths, clock=T0.timestamp)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def put(paths: Paths, content: bytes | str | dict[str, Any]) -> bytes:
    """Write the state file as some other program (or an older/newer rpm) left it."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    raw = (json.dumps(content) if isinstance(content, dict) else content)
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    paths.state_file.write_bytes(data)
    return data


def leftovers(paths: Paths) -> list[str]:
    return sorted(p.name for p in paths.state_dir.iterdir() if p.name.startswith(".pod_state."))


def full_record(name: str = "main") -> PodRecord:
    """A record with every field set to something other than its default."""
    return PodRecord(
        config_name=name, pod_id="pod-abc", pod_name=f"rpm-{name}-x1y2", upstream_key=UPSTREAM_KEY,
        lease=Lease(opened_at=T0, deadline=T0 + timedelta(hours=4), opened_by="wake"),
        intent=Intent(pod_name=f"rpm-{name}-q9r8", created_at=T0 + timedelta(seconds=1), purpose="replace"),
        last_activity_at=T0 + timedelta(minutes=3), gpu_type_id="NVIDIA L40S", data_center_id="EU-RO-1",
        cost_per_hour=0.86, last_status="RUNNING",
        spend_day="2026-11-23", spend_usd=1.25, spend_cap_day="2026-11-22", replacing_pod_id="pod-old",
        last_action="create", last_reason="wake on request", last_lease_end_reason="idle",
        lease_end_action="stop", proxy_wanted=True, last_gpu_busy_at=T0 - timedelta(minutes=1),
        ready_pod_id="pod-abc", last_sweep_at_epoch=T0.timestamp() + 0.5,
        spend_accounted_at=T0 + timedelta(minutes=5), spend_of_ended_pods_usd=0.5, billed_usd=0.75,
        billing_checked_at=T0 + timedelta(minutes=6), api_base_url="https://api.runpod.io",
        warm_opened_for="2026-06-10T08:55:00+00:00", backend="serverless",
    )


# --- round trip -----------------------------------------------------------------------------------------


def test_the_full_record_sets_every_field_away_from_its_default() -> None:
    # Guards the round-trip test: a field added later without a value here would not be tested.
    empty, full = PodRecord(config_name="main"), full_record()
    same = [f.name for f in dataclasses.fields(PodRecord)
            if f.name != "config_name" and getattr(empty, f.name) == getattr(full, f.name)]
    assert same == []


def test_every_record_field_survives_save_and_load(store: StateStore, paths: Paths) -> None:
    saved = State(pods={"main": full_record("main"), "empty": PodRecord(config_name="empty")})
    store.save(saved)
    loaded = StateStore(paths).load()
    assert loaded == saved
    for spec in dataclasses.fields(PodRecord):
        assert getattr(loaded.pods["main"], spec.name) == getattr(saved.pods["main"], spec.name), spec.name


def test_the_file_layout_is_versioned_with_utc_timestamps(store: StateStore, paths: Paths) -> None:
    store.save(State(pods={"main": full_record()}))
    document = json.loads(paths.state_file.read_text(encoding="utf-8"))
    assert set(document) == {"version", "install_id", "pods"} and document["version"] == STATE_VERSION == 4
    assert re.fullmatch(r"[a-z2-7]{8}", document["install_id"])
    record = document["pods"]["main"]
    assert set(record) == {f.name for f in dataclasses.fields(PodRecord)}
    assert record["lease"] == {"opened_at": "2026-11-23T09:30:00Z", "deadline": "2026-11-23T13:30:00Z",
                               "opened_by": "wake"}
    assert record["intent"] == {"pod_name": "rpm-main-q9r8", "created_at": "2026-11-23T09:30:01Z",
                                "purpose": "replace"}
    assert record["last_activity_at"] == "2026-11-23T09:33:00Z" and record["upstream_key"] == UPSTREAM_KEY


def test_times_in_other_zones_are_stored_as_utc_and_naive_ones_read_as_utc(store: StateStore, paths: Paths) -> None:
    berlin_winter = timezone(timedelta(hours=1))
    record = PodRecord(config_name="main", last_activity_at=T0.astimezone(berlin_winter))
    store.save(State(pods={"main": record}))
    assert json.loads(paths.state_file.read_text())["pods"]["main"]["last_activity_at"] == "2026-11-23T09:30:00Z"
    assert store.load().pods["main"].last_activity_at == T0
    put(paths, {"version": 2, "pods": {"main": {"last_activity_at": "2026-11-23T09:30:00"}}})
    loaded = store.load().pods["main"].last_activity_at
    assert loaded == T0 and loaded is not None and loaded.tzinfo is not None


def test_missing_record_fields_take_their_defaults(store: StateStore, paths: Paths) -> None:
    put(paths, {"version": 2, "pods": {"main": {"pod_id": "p1", "cost_per_hour": None, "spend_usd": 2}}})
    record = store.load().pods["main"]
    assert record == PodRecord(config_name="main", pod_id="p1", spend_usd=2.0)
    assert isinstance(record.spend_usd, float) and store.notices == []


def test_the_record_name_comes_from_its_key_not_its_body() -> None:
    loaded = decode_state(json.dumps({"version": 2, "pods": {"real": {"config_name": "fake"}}}))
    assert list(loaded.pods) == ["real"] and loaded.pods["real"].config_name == "real"


def test_record_creates_an_empty_record_once() -> None:
    state = State()
    first = state.record("main")
    first.pod_id = "p1"
    assert state.record("main") is first and state.pods == {"main": PodRecord(config_name="main", pod_id="p1")}
    assert first.holds_something and not state.record("other").holds_something


def test_the_upstream_key_is_kept_out_of_the_repr() -> None:
    record = full_record()
    assert UPSTREAM_KEY not in repr(record) + str(record) + repr(State(pods={"main": record}))
    assert "pod_id='pod-abc'" in repr(record)


# --- modes --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_file_is_0600_and_the_directory_0700_even_with_a_permissive_umask(store: StateStore,
                                                                              paths: Paths) -> None:
    with umask(0):
        store.save(State(pods={"main": full_record()}))
    assert mode_of(paths.state_file) == 0o600
    assert mode_of(paths.state_dir) == 0o700


def test_saving_over_a_loose_file_in_a_loose_directory_tightens_both(store: StateStore, paths: Paths) -> None:
    put(paths, {"version": 2, "pods": {}})
    paths.state_file.chmod(0o644)
    paths.state_dir.chmod(0o755)
    store.save(State(pods={"main": full_record()}))
    assert (mode_of(paths.state_file), mode_of(paths.state_dir)) == (0o600, 0o700)


def test_the_lock_file_is_private_and_lives_in_a_private_directory(store: StateStore, paths: Paths) -> None:
    with umask(0), store.lock(wait_seconds=0):
        assert paths.lock_file.exists()
        assert mode_of(paths.lock_file) == 0o600 and mode_of(paths.state_dir) == 0o700


# --- atomic writes ------------------------------------------------------------------------------------


def _raise_disk_full(*_args: object, **_kwargs: object) -> Any:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["json.dumps", "os.fsync", "os.replace", "os.fchmod"])
def test_a_crash_mid_write_keeps_the_old_file_whole_and_leaves_no_temp_file(
        store: StateStore, paths: Paths, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    store.save(State(pods={"main": full_record()}))
    before = paths.state_file.read_bytes()
    module, name = where.split(".")
    monkeypatch.setattr({"json": json, "os": os}[module], name, _raise_disk_full)  # the modules state.py uses
    with pytest.raises(OSError, match="No space left on device"):
        store.save(State(pods={"main": PodRecord(config_name="main", pod_id="half-written")}))
    monkeypatch.undo()
    assert paths.state_file.read_bytes() == before
    assert leftovers(paths) == []
    assert store.load().pods == {"main": full_record()}


def test_an_interrupt_mid_write_also_cleans_up(store: StateStore, paths: Paths,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(State())
    before = paths.state_file.read_bytes()

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.save(State(pods={"main": full_record()}))
    monkeypatch.undo()
    assert paths.state_file.read_bytes() == before and leftovers(paths) == []


def test_the_new_content_is_fsynced_in_the_same_directory_before_the_rename(
        store: StateStore, paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", fd))
        real_fsync(fd)

    def replace(source: str, target: Path) -> None:
        calls.append(("replace", (Path(source), Path(target))))
        # The temp file holds the full new content at the moment of the rename.
        assert json.loads(Path(source).read_text())["pods"]["main"]["pod_id"] == "pod-abc"
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.save(State(pods={"main": full_record()}))
    kinds = [kind for kind, _ in calls]
    assert kinds[:2] == ["fsync", "replace"]  # file fsync, then rename (then the directory fsync)
    source, target = calls[1][1]
    assert source.parent == paths.state_dir and target == paths.state_file
    assert source.name.startswith(".pod_state.") and source.name.endswith(".tmp")


def test_a_transaction_that_raises_writes_nothing(store: StateStore, paths: Paths) -> None:
    store.save(State(pods={"main": PodRecord(config_name="main", pod_id="keep")}))
    before = paths.state_file.read_bytes()
    def fail_midway() -> None:
        with store.transaction() as state:
            state.record("main").pod_id = "lost"
            raise RuntimeError("API call failed")

    with pytest.raises(RuntimeError, match="API call failed"):
        fail_midway()
    assert paths.state_file.read_bytes() == before


def test_a_transaction_saves_what_was_changed(store: StateStore, paths: Paths) -> None:
    with store.transaction() as state:
        state.record("main").spend_usd = 4.5
    with store.transaction() as state:
        state.record("main").spend_usd += 1.0
    assert json.loads(paths.state_file.read_text())["pods"]["main"]["spend_usd"] == 5.5


# --- intent before create, id after ---------------------------------------------------------------------


def test_the_intent_is_on_disk_before_the_create_and_survives_a_crash_after_it(store: StateStore,
                                                                                 paths: Paths) -> None:
    with store.transaction() as state:
        state.record("main").intent = Intent(pod_name="rpm-main-k3", created_at=T0)
    on_disk = json.loads(paths.state_file.read_text())["pods"]["main"]
    assert on_disk["intent"] == {"pod_name": "rpm-main-k3", "created_at": "2026-11-23T09:30:00Z",
                                 "purpose": "create"}
    assert on_disk["pod_id"] is None

    # The create "succeeded" but the process died before recording the id: the intent is what is left.
    def die_after_create() -> None:
        with store.transaction() as state:
            state.record("main").pod_id = "never-saved"
            raise SystemExit(1)

    with pytest.raises(SystemExit):
        die_after_create()
    after_crash = StateStore(paths).load().pods["main"]
    assert after_crash.pod_id is None
    assert after_crash.intent == Intent(pod_name="rpm-main-k3", created_at=T0, purpose="create")

    with store.transaction() as state:
        record = state.record("main")
        record.pod_id, record.pod_name, record.intent = "pod-new", "rpm-main-k3", None
    done = StateStore(paths).load().pods["main"]
    assert (done.pod_id, done.pod_name, done.intent) == ("pod-new", "rpm-main-k3", None)


# --- the lock ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def held_in_a_thread(paths: Paths, release_after: float = 5.0) -> Iterator[threading.Event]:
    """Another StateStore holds the lock in a thread until the yielded event is set (or release_after)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with StateStore(paths).lock(wait_seconds=1):
            holding.set()
            release.wait(release_after)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert holding.wait(5)
    try:
        yield release
    finally:
        release.set()
        thread.join(5)


def test_a_busy_lock_is_waited_for_a_bounded_time_then_names_the_holder(store: StateStore, paths: Paths) -> None:
    with held_in_a_thread(paths):
        started = time.monotonic()
        with pytest.raises(LockBusy) as caught, store.lock(wait_seconds=0.3):
            pytest.fail("the lock was granted twice")
        waited = time.monotonic() - started
    assert 0.25 <= waited < 2.0
    error = caught.value
    assert error.holder_pid == os.getpid()  # the thread's process
    assert error.message == f"state is locked by process {os.getpid()} ({paths.lock_file})"
    assert error.hint == "wait for it to finish, or stop it"
    assert error.exit_code is ExitCode.BUSY


def test_the_non_blocking_mode_fails_at_once(store: StateStore, paths: Paths) -> None:
    with held_in_a_thread(paths):
        started = time.monotonic()
        with pytest.raises(LockBusy), store.lock(wait_seconds=0):
            pytest.fail("the lock was granted twice")
        assert time.monotonic() - started < 0.1


def test_a_transaction_holds_the_lock_for_the_whole_read_modify_write(store: StateStore, paths: Paths) -> None:
    with store.transaction() as state:
        state.record("main").pod_id = "p1"
        with pytest.raises(LockBusy), StateStore(paths).transaction(wait_seconds=0):
            pytest.fail("a second writer got in")
    assert store.load().pods["main"].pod_id == "p1"


def test_a_waiter_gets_the_lock_when_the_holder_lets_go_in_time(store: StateStore, paths: Paths) -> None:
    with held_in_a_thread(paths, release_after=0.2):
        started = time.monotonic()
        with store.lock(wait_seconds=3):
            waited = time.monotonic() - started
    assert 0.1 <= waited < 2.0


def test_the_holder_pid_is_recorded_while_held_and_cleared_after(store: StateStore, paths: Paths) -> None:
    holder_file = paths.state_dir / "lock.pid"
    with store.lock(wait_seconds=0):
        assert holder_file.read_text(encoding="ascii") == str(os.getpid())
    assert not holder_file.exists()
    with store.lock(wait_seconds=0):  # and the lock itself is free again
        pass


def test_a_nested_lock_keeps_the_holder_pid_until_the_outer_one_ends(store: StateStore, paths: Paths) -> None:
    holder_file = paths.state_dir / "lock.pid"
    with store.lock(wait_seconds=0):
        with store.lock(wait_seconds=0):  # filelock is reentrant within a process
            pass
        assert holder_file.read_text(encoding="ascii") == str(os.getpid())
    assert not holder_file.exists()

def test_without_a_holder_record_the_error_says_another_process(store: StateStore, paths: Paths) -> None:
    with held_in_a_thread(paths):
        (paths.state_dir / "lock.pid").unlink()
        with pytest.raises(LockBusy) as caught, store.lock(wait_seconds=0):
            pytest.fail("the lock was granted twice")
    assert caught.value.holder_pid is None
    assert caught.value.message == f"state is locked by another rpm process ({paths.lock_file})"


HOLDER = """
import sys, time
from runpod_manager.paths import resolve_paths
from runpod_manager.state import StateStore
with StateStore(resolve_paths({"RPM_HOME": sys.argv[1]})).lock(wait_seconds=5):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_lock_held_by_another_process_names_that_process(store: StateStore, paths: Paths) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(paths.config_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy) as caught, store.lock(wait_seconds=0):
            pytest.fail("the lock was granted twice")
        assert caught.value.holder_pid == holder.pid != os.getpid()
        assert f"state is locked by process {holder.pid} " in caught.value.message
    finally:
        holder.communicate("\n", timeout=10)
    assert holder.returncode == 0
    with store.lock(wait_seconds=0):
        pass


def test_a_holder_killed_with_sigkill_leaves_the_lock_free(store: StateStore, paths: Paths) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(paths.config_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()  # no cleanup runs; the OS drops the flock with the process
    holder.wait()
    with store.lock(wait_seconds=2):
        pass


WRITER = """
import sys
from runpod_manager.paths import resolve_paths
from runpod_manager.state import StateStore
store = StateStore(resolve_paths({"RPM_HOME": sys.argv[1]}))
for _ in range(25):
    with store.transaction(wait_seconds=None) as state:
        state.record("main").spend_usd += 1
"""


def test_read_modify_writes_from_several_processes_lose_no_update(store: StateStore, paths: Paths) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(paths.config_dir)]) for _ in range(4)]
    for writer in writers:
        assert writer.wait(60) == 0
    assert store.load().pods["main"].spend_usd == 100.0


# --- corrupt files ---------------------------------------------------------------------------------------

CORRUPT: dict[str, bytes] = {
    "bad-json": b"{not json",
    "empty": b"",
    "truncated": json.dumps({"version": 2, "pods": {"main": full_record().to_json()}}).encode()[:150],
    "bad-utf8": b'{"version": 2, "pods": {"main": {"pod_name": "rpm-\xff\xfe"}}}',
    "utf16": json.dumps({"version": 2, "pods": {}}).encode("utf-16"),
    "top-level-list": b"[]",
    "top-level-string": b'"pods"',
    "pods-a-list": b'{"version": 2, "pods": []}',
    "no-version": b'{"pods": {}}',
    "version-string": b'{"version": "2", "pods": {}}',
    "version-bool": b'{"version": true, "pods": {}}',
    "version-zero": b'{"version": 0, "pods": {}}',
    "record-a-number": b'{"version": 2, "pods": {"main": 7}}',
    "lease-a-string": b'{"version": 2, "pods": {"main": {"lease": "yes"}}}',
    "lease-no-deadline": b'{"version": 2, "pods": {"main": {"lease": {"opened_at": "2026-11-23T09:30:00Z"}}}}',
    "bad-timestamp": b'{"version": 2, "pods": {"main": {"last_activity_at": "yesterday"}}}',
    "timestamp-number": b'{"version": 2, "pods": {"main": {"last_gpu_busy_at": 1700000000}}}',
    "intent-no-name": b'{"version": 2, "pods": {"main": {"intent": {"created_at": "2026-11-23T09:30:00Z"}}}}',
    "bad-number": b'{"version": 2, "pods": {"main": {"cost_per_hour": "cheap"}}}',
    "number-a-list": b'{"version": 2, "pods": {"main": {"spend_usd": [1]}}}',
    "deeply-nested": b"[" * 50_000,
}


@pytest.mark.parametrize("content", list(CORRUPT.values()), ids=list(CORRUPT))
def test_a_corrupt_file_is_moved_aside_byte_for_byte_and_reported(store: StateStore, paths: Paths,
                                                                  content: bytes) -> None:
    put(paths, content)
    assert store.load().pods == {}
    aside = paths.state_dir / f"pod_state.json.corrupt-{STAMP}"
    assert aside.read_bytes() == content
    assert not paths.state_file.exists()
    (notice,) = store.notices
    assert notice.startswith(f"{paths.state_file} was corrupt (")
    assert notice.endswith(f"); moved aside to {aside.name}, starting from an empty state")
    assert "\n" not in notice and len(notice) < 400


def test_a_corrupt_file_keeps_its_install_id(store: StateStore, paths: Paths) -> None:
    # The install id names this install's pods on RunPod: a new one would make them another install's, never
    # swept again. Kept when the corrupt bytes still show it (the first match; a truncated file usually does).
    put(paths, b'{"install_id": "abcd2345", "version": 3, "pods": {"main": {"pod_id": "p1"')
    state = store.load()
    assert (state.pods, state.install_id) == ({}, "abcd2345")
    (notice,) = store.notices
    assert notice.endswith("starting from an empty state with its install id abcd2345")
    with store.transaction() as saved:
        saved.record("main")
    assert store.load().install_id == "abcd2345"


def test_a_corrupt_file_is_never_replaced_in_place(store: StateStore, paths: Paths) -> None:
    content = put(paths, b'{"version": 2, "pods": {"main": {"pod_id": "p1"')
    with store.transaction() as state:
        assert state.pods == {}
        state.record("main").pod_id = "p2"
    assert (paths.state_dir / f"pod_state.json.corrupt-{STAMP}").read_bytes() == content
    assert store.load().pods["main"].pod_id == "p2"
    assert len(store.notices) == 1  # reported once, when it was found


def test_corrupt_files_found_in_the_same_second_are_all_kept(store: StateStore, paths: Paths) -> None:
    for content in (b"one", b"two", b"three"):
        put(paths, content)
        store.load()
    kept = {p.name: p.read_bytes() for p in paths.state_dir.glob("pod_state.json.corrupt-*")}
    assert kept == {f"pod_state.json.corrupt-{STAMP}": b"one", f"pod_state.json.corrupt-{STAMP}-1": b"two",
                    f"pod_state.json.corrupt-{STAMP}-2": b"three"}
    assert len(store.notices) == 3


def test_the_time_in_the_aside_name_comes_from_the_stores_clock(paths: Paths) -> None:
    later = T0 + timedelta(days=40, hours=3, seconds=7)
    put(paths, b"junk")
    StateStore(paths, clock=later.timestamp).load()
    assert [p.name for p in paths.state_dir.glob("*.corrupt-*")] == ["pod_state.json.corrupt-20270102T123007Z"]


def test_an_unreadable_file_is_an_error_and_is_left_where_it_is(store: StateStore, paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.mkdir()  # reading a directory fails, for root too
    with pytest.raises(StateError) as caught:
        store.load()
    assert caught.value.message.startswith(f"{paths.state_file}: cannot read state (")
    assert caught.value.hint == "rpm writes it as a small regular file; move this one away"
    assert paths.state_file.is_dir() and list(paths.state_dir.glob("*.corrupt-*")) == []


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "too-large"])
def test_a_state_path_rpm_never_wrote_is_refused_without_reading_it_whole(store: StateStore, paths: Paths,
                                                                       kind: str) -> None:
    """`ln -s /dev/zero pod_state.json` took 8.8 GB before; a FIFO would block the open forever."""
    from runpod_manager.state import MAX_STATE_BYTES

    paths.state_dir.mkdir(parents=True)
    if kind == "dev-zero":
        paths.state_file.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(paths.state_file)
    else:
        with paths.state_file.open("wb") as handle:
            handle.truncate(MAX_STATE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(StateError) as caught:
        store.load()
    assert caught.value.message.startswith(f"{paths.state_file}: cannot read state (")
    expected = "larger than" if kind == "too-large" else "not a regular file"
    assert expected in caught.value.message
    assert caught.value.hint == "rpm writes it as a small regular file; move this one away"
    assert os.path.lexists(paths.state_file) and list(paths.state_dir.glob("*.corrupt-*")) == []


def test_no_file_is_an_empty_state_and_no_notice(store: StateStore, paths: Paths) -> None:
    assert store.load().pods == {} and store.notices == []
    assert not paths.state_dir.exists()  # reading creates nothing


@pytest.mark.parametrize("record", [
    {"lease": {"opened_at": None, "deadline": "2026-11-23T13:30:00Z"}},
    {"lease": {"opened_at": "2026-11-23T09:30:00Z", "deadline": None}},
    {"intent": {"pod_name": "rpm-main-k3", "created_at": None}},
], ids=["lease-opened-null", "lease-deadline-null", "intent-created-null"])
def test_a_null_required_timestamp_is_corrupt_not_a_crash(store: StateStore, paths: Paths,
                                                          record: dict[str, Any]) -> None:
    content = put(paths, {"version": 2, "pods": {"main": record}})
    assert store.load().pods == {}
    assert (paths.state_dir / f"pod_state.json.corrupt-{STAMP}").read_bytes() == content


@pytest.mark.parametrize("record", [
    {"pod_id": ["pod-abc"]}, {"proxy_wanted": "no"}, {"upstream_key": 12345}, {"last_sweep_at_epoch": "soon"},
], ids=["pod_id-list", "proxy_wanted-string", "upstream_key-number", "sweep-epoch-string"])
def test_a_record_field_of_the_wrong_type_is_corrupt(store: StateStore, paths: Paths, record: dict[str, Any]) -> None:
    put(paths, {"version": 2, "pods": {"main": record}})
    assert store.load().pods == {}
    assert len(store.notices) == 1


@pytest.mark.parametrize("backend", ["lambda", None, ["pod"], "POD", 1],
                         ids=["unknown", "null", "list", "upper", "number"])
def test_a_record_of_no_known_backend_is_corrupt(store: StateStore, paths: Paths, backend: Any) -> None:
    content = put(paths, {"version": STATE_VERSION, "install_id": "lq7xw2ab",
                          "pods": {"main": {"pod_id": "pod-abc", "backend": backend}}})
    assert store.load().pods == {}
    assert (paths.state_dir / f"pod_state.json.corrupt-{STAMP}").read_bytes() == content
    (notice,) = store.notices
    assert "'main'" in notice and "backend" in notice, notice


# Values no rpm writes: acting on them would disable a limit (every comparison with NaN is false, so a NaN
# spend never reaches the cap) or crash every command (dates at datetime's edges overflow in arithmetic).
IMPOSSIBLE_VALUES = {
    "spend-nan": '{"spend_usd": NaN, "spend_day": "2026-11-23"}',
    "spend-infinity": '{"spend_usd": Infinity}',
    "spend-minus-infinity": '{"spend_usd": -Infinity}',
    "spend-overflows-to-inf": '{"spend_usd": 1e400}',
    "spend-nan-string": '{"spend_usd": "nan"}',
    "spend-number-string": '{"spend_usd": "1.5"}',
    "spend-bool": '{"spend_usd": true}',
    "spend-negative": '{"spend_usd": -3.5}',
    "spend-absurd": '{"spend_usd": 1e300}',
    "cost-nan": '{"cost_per_hour": NaN}',
    "cost-negative": '{"cost_per_hour": -0.5}',
    "ended-spend-infinity": '{"spend_of_ended_pods_usd": Infinity}',
    "billed-negative": '{"billed_usd": -1}',
    "billed-huge-int": '{"billed_usd": ' + "9" * 400 + "}",
    "sweep-nan": '{"last_sweep_at_epoch": NaN}',
    "sweep-negative": '{"last_sweep_at_epoch": -1}',
    "sweep-past-9999": '{"last_sweep_at_epoch": 1e12}',
    "nan-in-an-unknown-field": '{"from_a_later_patch": NaN}',
    "year-9999": '{"last_activity_at": "9999-12-31T23:59:59Z"}',
    "year-9999-behind-utc": '{"last_gpu_busy_at": "9999-12-31T23:00:00-05:00"}',
    "year-1-ahead-of-utc": '{"last_gpu_busy_at": "0001-01-01T00:00:00+01:00"}',
    "year-1": '{"spend_accounted_at": "0001-01-01T00:00:00Z"}',
    "lease-deadline-9999": '{"lease": {"opened_at": "2026-11-23T09:30:00Z", "deadline": "9999-12-31T23:59:59Z"}}',
    "lease-ends-before-it-opens": '{"lease": {"opened_at": "2026-11-23T09:30:00Z", '
                                  '"deadline": "2026-11-23T08:30:00Z"}}',
    "lease-longer-than-any-limit": '{"lease": {"opened_at": "2026-11-23T09:30:00Z", '
                                   '"deadline": "2028-11-23T09:30:00Z"}}',
    "intent-year-1": '{"intent": {"pod_name": "rpm-main-k3", "created_at": "0001-01-01T00:00:00Z"}}',
    "spend-day-not-a-date": '{"spend_day": "today"}',
    "spend-day-year-9999": '{"spend_day": "9999-12-31"}',
    "cap-day-month-13": '{"spend_cap_day": "2026-13-01"}',
}


@pytest.mark.parametrize("record", list(IMPOSSIBLE_VALUES.values()), ids=list(IMPOSSIBLE_VALUES))
def test_an_impossible_value_makes_the_record_corrupt_moved_aside_and_reported(store: StateStore, paths: Paths,
                                                                               record: str) -> None:
    content = put(paths, '{"version": 2, "pods": {"main": ' + record + "}}")
    assert store.load().pods == {}
    assert (paths.state_dir / f"pod_state.json.corrupt-{STAMP}").read_bytes() == content
    assert not paths.state_file.exists()
    (notice,) = store.notices
    assert notice.startswith(f"{paths.state_file} was corrupt (") and "\n" not in notice


def test_the_corrupt_notice_names_the_record_and_field(store: StateStore, paths: Paths) -> None:
    put(paths, '{"version": 2, "pods": {"main": {"pod_id": "pod-abc", "spend_usd": NaN}}}')
    store.load()
    (notice,) = store.notices
    assert "'main'" in notice and "spend_usd" in notice and "finite" in notice, notice


@pytest.mark.parametrize("record", [
    {"spend_usd": 0, "cost_per_hour": 0, "billed_usd": 0, "spend_of_ended_pods_usd": 0},
    {"spend_usd": 123456.78, "cost_per_hour": 31.92, "last_sweep_at_epoch": 1_795_000_000},
    {"lease": {"opened_at": "2026-11-23T09:30:00Z", "deadline": "2026-11-23T09:30:00Z"}},
    {"lease": {"opened_at": "2026-11-23T09:30:00Z", "deadline": "2027-11-23T09:30:00Z"}},
    {"spend_day": "2026-11-23", "spend_cap_day": "2026-11-22", "last_activity_at": "2026-11-23T09:30:00+09:00"},
], ids=["zeros", "large-but-real", "lease-of-no-time", "lease-of-a-year", "days-and-zones"])
def test_values_rpm_can_write_are_accepted(store: StateStore, paths: Paths, record: dict[str, Any]) -> None:
    put(paths, {"version": 2, "pods": {"main": record}})
    assert "main" in store.load().pods and store.notices == []


@pytest.mark.parametrize("command", ["watchdog", "status"])
def test_a_command_never_acts_on_an_impossible_state(tmp_path: Path, command: str) -> None:
    """Through the CLI: an out-of-range date broke every command with "unexpected OverflowError", and a NaN
    spend showed "spend today $nan" with the cap silently off."""
    from typer.testing import CliRunner

    from runpod_manager.cli import app

    home = tmp_path / "cli-home"
    (home / "state").mkdir(parents=True)
    (home / "pod_config.toml").write_text('version = 1\n[pod]\nname = "main"\ngpu_types = ["NVIDIA L40S"]\n'
                                          "[limits]\nmax_daily_spend_usd = 5\n", encoding="utf-8")
    env = {"RPM_HOME": str(home), "RPM_CONFIG": str(home / "pod_config.toml"), "RUNPOD_API_KEY": "sk-x",
           "RUNPOD_API_URL": "http://127.0.0.1:9", "RPM_API_MAX_RETRIES": "0", "RPM_DEBUG": None}
    for record in ('{"pod_id": "p1", "last_gpu_busy_at": "9999-12-31T23:00:00-05:00"}',
                   '{"pod_id": "p1", "spend_usd": NaN, "spend_day": "2026-11-23"}'):
        (home / "state" / "pod_state.json").write_text('{"version": 2, "pods": {"main": ' + record + "}}")
        result = CliRunner().invoke(app, [command], env=env)
        output = result.stdout + result.stderr
        assert "unexpected" not in output and "$nan" not in output and "Traceback" not in output, output
        assert "was corrupt" in output and "moved aside" in output, output
        asides = list((home / "state").glob("pod_state.json.corrupt-*"))
        assert [path.read_text() for path in asides] == ['{"version": 2, "pods": {"main": ' + record + "}}"]
        asides[0].unlink()


@pytest.mark.parametrize("change", [
    {"spend_usd": float("nan")}, {"billed_usd": -1.0}, {"last_sweep_at_epoch": float("inf")},
    {"last_activity_at": datetime(9999, 12, 31, tzinfo=UTC)},
    {"lease": Lease(opened_at=T0, deadline=T0 + timedelta(days=800))},
], ids=["nan-spend", "negative-billed", "infinite-sweep", "year-9999", "endless-lease"])
def test_rpm_never_writes_a_state_it_would_refuse_to_read(store: StateStore, paths: Paths,
                                                          change: dict[str, Any]) -> None:
    """The next load would move such a file aside and forget the pod: the save fails instead, naming the field,
    and the file on disk stays as it was."""
    store.save(State(pods={"main": full_record()}))
    before = paths.state_file.read_bytes()
    with pytest.raises(StateError) as caught:
        store.save(State(pods={"main": dataclasses.replace(full_record(), **change)}))
    assert caught.value.message.startswith(f"{paths.state_file}: not saved: ")
    field_name = next(iter(change))
    assert field_name in caught.value.message or "deadline" in caught.value.message
    assert UPSTREAM_KEY not in str(caught.value)
    assert paths.state_file.read_bytes() == before and leftovers(paths) == []


# --- newer and older versions ---------------------------------------------------------------------------


def test_a_newer_version_is_refused_and_the_file_left_untouched(store: StateStore, paths: Paths) -> None:
    content = put(paths, {"version": STATE_VERSION + 1, "pods": {"main": {"pod_id": "p1", "new_field": 1}},
                          "extra": True})
    mtime = paths.state_file.stat().st_mtime_ns
    for attempt in (store.load, lambda: store.transaction().__enter__()):
        with pytest.raises(StateError) as caught:
            attempt()
        assert caught.value.message == (f"{paths.state_file}: written by a newer rpm (state version "
                                        f"{STATE_VERSION + 1}, this rpm reads up to {STATE_VERSION})")
        assert caught.value.hint == "upgrade rpm; the file was left as it is"
    assert paths.state_file.read_bytes() == content and paths.state_file.stat().st_mtime_ns == mtime
    assert list(paths.state_dir.glob("*.corrupt-*")) == [] and store.notices == []
    with store.lock(wait_seconds=0):  # the failed transaction let go of the lock
        pass


def test_a_newer_version_with_a_new_layout_is_refused_too(store: StateStore, paths: Paths) -> None:
    content = put(paths, {"version": STATE_VERSION + 1, "pods": [{"name": "main", "pod_id": "p1"}]})
    with pytest.raises(StateError, match="written by a newer rpm"):
        store.load()
    assert paths.state_file.read_bytes() == content


def test_every_older_version_has_a_named_upgrade_step() -> None:
    assert sorted(UPGRADES) == list(range(1, STATE_VERSION))
    for version, step in UPGRADES.items():
        assert step.__name__ == f"_upgrade_{version}_to_{version + 1}" and step.__doc__
        assert step({"version": version, "pods": {}})["version"] == version + 1


def test_version_1_becomes_a_lease_with_its_deadline(store: StateStore, paths: Paths) -> None:
    content = put(paths, {"version": 1, "pods": {
        "main": {"pod_id": "old1", "pod_name": "rpm-main-a", "upstream_key": "k1",
                 "started_at": "2026-11-23T09:30:00Z", "runtime_seconds": 5400},
        "naive": {"pod_id": "old2", "started_at": "2026-11-23T09:30:00", "runtime_seconds": 60.5},
        "idle": {"pod_id": None, "started_at": None, "runtime_seconds": 3600},
    }})
    state = store.load()
    assert paths.state_file.read_bytes() == content  # reading upgrades in memory only
    main = state.pods["main"]
    assert (main.pod_id, main.pod_name, main.upstream_key) == ("old1", "rpm-main-a", "k1")
    assert main.lease == Lease(opened_at=T0, deadline=T0 + timedelta(seconds=5400), opened_by="start")
    assert state.pods["naive"].lease == Lease(opened_at=T0, deadline=T0 + timedelta(seconds=60.5))
    assert state.pods["idle"] == PodRecord(config_name="idle")
    assert store.notices == []
    store.save(state)
    written = json.loads(paths.state_file.read_text())
    assert written["version"] == STATE_VERSION
    assert "started_at" not in written["pods"]["main"] and "runtime_seconds" not in written["pods"]["main"]
    assert written["pods"]["main"]["lease"]["deadline"] == "2026-11-23T11:00:00Z"


def test_version_2_gets_its_install_id_once_and_keeps_its_records(store: StateStore, paths: Paths) -> None:
    """The upgrade to 3 makes the state directory's install id. The pods its records hold keep their older
    names (no install id): they stay this install's by their ids (the sweeps never claim a pod by such a name)."""
    record = {"pod_id": "old1", "pod_name": "rpm-main-3f2a1c", "upstream_key": "k1",
              "lease": {"opened_at": "2026-11-23T09:30:00Z", "deadline": "2026-11-23T11:00:00Z"}}
    content = put(paths, {"version": 2, "pods": {"main": record}})
    state = store.load()
    assert paths.state_file.read_bytes() == content  # reading upgrades in memory only
    assert re.fullmatch(r"[a-z2-7]{8}", state.install_id)
    assert (state.pods["main"].pod_id, state.pods["main"].pod_name) == ("old1", "rpm-main-3f2a1c")
    store.save(state)
    assert json.loads(paths.state_file.read_text())["install_id"] == state.install_id
    assert StateStore(paths).load().install_id == state.install_id  # made once: read back, never made again


def test_version_3_records_become_the_pod_backend(store: StateStore, paths: Paths) -> None:
    """The upgrade to 4 gives every record its backend: each record before it was a pod's."""
    record = {"pod_id": "old1", "pod_name": "rpm-main-lq7xw2ab-3f2a", "upstream_key": "k1"}
    content = put(paths, {"version": 3, "install_id": "lq7xw2ab", "pods": {"main": record, "idle": {}}})
    state = store.load()
    assert paths.state_file.read_bytes() == content  # reading upgrades in memory only
    assert store.notices == [] and state.install_id == "lq7xw2ab"
    assert {name: r.backend for name, r in state.pods.items()} == {"main": "pod", "idle": "pod"}
    assert (state.pods["main"].pod_id, state.pods["main"].upstream_key) == ("old1", "k1")
    store.save(state)
    written = json.loads(paths.state_file.read_text())
    assert written["version"] == 4 and written["pods"]["main"]["backend"] == "pod"


@pytest.mark.parametrize("install_id", [None, "", "UPPER123", "short", "abcdefgh1", 12345678],
                         ids=["missing", "empty", "upper", "short", "long", "number"])
def test_a_current_file_without_a_valid_install_id_is_corrupt(store: StateStore, paths: Paths,
                                                              install_id: Any) -> None:
    document: dict[str, Any] = {"version": STATE_VERSION, "pods": {}}
    if install_id is not None:
        document["install_id"] = install_id
    put(paths, document)
    assert store.load().pods == {} and len(store.notices) == 1


def test_a_new_state_has_an_install_id_of_its_own() -> None:
    assert State().install_id != State().install_id and re.fullmatch(r"[a-z2-7]{8}", State().install_id)


def test_version_1_keeps_a_lease_it_already_had(store: StateStore, paths: Paths) -> None:
    lease = {"opened_at": "2026-11-23T08:00:00Z", "deadline": "2026-11-23T10:00:00Z", "opened_by": "wake"}
    put(paths, {"version": 1, "pods": {"main": {"started_at": "2026-11-23T09:30:00Z", "runtime_seconds": 60,
                                                "lease": lease}}})
    assert store.load().pods["main"].lease == Lease(opened_at=T0 - timedelta(minutes=90),
                                                    deadline=T0 + timedelta(minutes=30), opened_by="wake")


@pytest.mark.parametrize("record", [
    [], {"started_at": 5, "runtime_seconds": 60}, {"started_at": "2026-11-23T09:30:00Z", "runtime_seconds": "long"},
    {"started_at": "soon", "runtime_seconds": 60},
], ids=["record-a-list", "start-a-number", "runtime-a-word", "start-a-word"])
def test_a_malformed_version_1_file_is_corrupt(store: StateStore, paths: Paths, record: Any) -> None:
    content = put(paths, {"version": 1, "pods": {"main": record}})
    assert store.load().pods == {}
    assert (paths.state_dir / f"pod_state.json.corrupt-{STAMP}").read_bytes() == content
    assert len(store.notices) == 1


@pytest.mark.parametrize("runtime", ["1e300", "Infinity"])
def test_a_version_1_runtime_out_of_range_is_corrupt_not_a_crash(store: StateStore, paths: Paths,
                                                                 runtime: str) -> None:
    put(paths, '{"version": 1, "pods": {"main": {"started_at": "2026-11-23T09:30:00Z", "runtime_seconds": '
               + runtime + "}}}")
    assert store.load().pods == {}
    assert len(store.notices) == 1


def test_unknown_fields_of_the_current_version_are_dropped_quietly(store: StateStore, paths: Paths) -> None:
    put(paths, {"version": STATE_VERSION, "install_id": "lq7xw2ab",
                "pods": {"main": {"pod_id": "p1", "from_a_later_patch": [1, 2]}}})
    state = store.load()
    assert state.pods["main"] == PodRecord(config_name="main", pod_id="p1") and store.notices == []


def test_decode_state_upgrades_and_builds_records_without_a_store() -> None:
    decoded = decode_state(json.dumps({"version": 1, "pods": {"main": {
        "started_at": "2026-11-23T09:30:00Z", "runtime_seconds": 60}}}))
    assert decoded.pods["main"].lease == Lease(opened_at=T0, deadline=T0 + timedelta(minutes=1))
    with pytest.raises(ValueError, match=r"record 'main' is invalid"):
        decode_state('{"version": 2, "pods": {"main": {"spend_usd": "x"}}}')


def test_records_convert_to_json_and_back_without_the_store() -> None:
    record = full_record()
    encoded: Callable[[], dict[str, Any]] = record.to_json
    assert PodRecord.from_json("main", json.loads(json.dumps(encoded()))) == record
    assert State(pods={"main": record}).to_json()["version"] == STATE_VERSION
