"""Every file and directory rpm writes: 0600 files and 0700 directories whatever the umask, rotated logs
included; rpm-owned directories are tightened, and files it reads back are read bounded.

(The state file, the catalog cache and the response cache have their own tests in test_state.py,
test_catalog.py and test_proxy_cache.py; this covers the rest: the pid files, the logs and the directories.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from runpod_manager import events
from runpod_manager.errors import StateError
from runpod_manager.paths import (
    FileTooLarge,
    NotRegularFile,
    Paths,
    ensure_private_dir,
    make_dirs,
    read_regular_file,
    resolve_paths,
    write_private_file,
)
from runpod_manager.proxy import process
from runpod_manager.proxy.server import configure_proxy_logging
from runpod_manager.requestlog import RequestLog
from runpod_manager.state import StateStore


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return resolve_paths({"RPM_HOME": str(tmp_path / "home")})


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_under(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): mode_of(path) for path in sorted(root.rglob("*"))}


# --- directories ------------------------------------------------------------------------------------------


def test_rpm_owned_directories_and_their_missing_parents_are_0700_under_umask_000(paths: Paths) -> None:
    with umask(0):
        ensure_private_dir(paths.log_dir)
    assert mode_of(paths.config_dir) == mode_of(paths.state_dir) == mode_of(paths.log_dir) == 0o700


def test_an_rpm_owned_directory_found_loose_is_tightened(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True)
    paths.log_dir.chmod(0o777)
    ensure_private_dir(paths.log_dir)
    assert mode_of(paths.log_dir) == 0o700


def test_make_dirs_leaves_existing_directories_alone_and_says_what_it_made(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with umask(0o022):
        made = make_dirs(shared / "a" / "b")
    assert made == [shared / "a", shared / "a" / "b"]
    assert (mode_of(shared), mode_of(shared / "a"), mode_of(shared / "a" / "b")) == (0o1777, 0o700, 0o700)
    assert make_dirs(shared / "a" / "b") == []


# --- pid files ---------------------------------------------------------------------------------------------


def test_the_proxy_pid_file_is_0600_under_umask_000(paths: Paths) -> None:
    with umask(0):
        process._write_pid_file(paths.proxy_pid_file, 4242, "http://127.0.0.1:8080")
    assert mode_of(paths.proxy_pid_file) == 0o600 and mode_of(paths.state_dir) == 0o700
    assert process._read_pid_file(paths.proxy_pid_file) is not None
    assert [path.name for path in paths.state_dir.iterdir()] == ["proxy.pid"]  # no temp file left


def test_the_proxy_pid_file_replaces_a_loose_one(paths: Paths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.proxy_pid_file.write_text("{}")
    paths.proxy_pid_file.chmod(0o666)
    process._write_pid_file(paths.proxy_pid_file, 4242, "http://127.0.0.1:8080")
    assert mode_of(paths.proxy_pid_file) == 0o600


def test_the_lock_holder_pid_file_is_0600_under_umask_000(paths: Paths) -> None:
    store = StateStore(paths)
    with umask(0), store.lock(wait_seconds=0):
        holder = paths.state_dir / "lock.pid"
        assert holder.read_text() == str(os.getpid())
        assert mode_of(holder) == 0o600


def test_a_lock_holder_file_that_is_not_a_small_regular_file_names_no_holder(paths: Paths) -> None:
    store = StateStore(paths)
    paths.state_dir.mkdir(parents=True)
    (paths.state_dir / "lock.pid").symlink_to("/dev/zero")  # reading it whole would never end
    assert store._holder_pid() is None


# --- logs -----------------------------------------------------------------------------------------------


def test_the_proxy_log_and_its_rotated_files_are_0600_under_umask_000(paths: Paths, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    """RotatingFileHandler reopened proxy.log 0644 (0666 under umask 000) after each rollover."""
    from runpod_manager.proxy import server

    monkeypatch.setattr(server, "PROXY_LOG_MAX_BYTES", 2000)
    with umask(0):
        close = configure_proxy_logging(paths)
        try:
            logger = logging.getLogger("runpod_manager.proxy")
            for index in range(200):
                logger.info("request %d %s", index, "x" * 100)
        finally:
            close()
    names = sorted(path.name for path in paths.log_dir.iterdir())
    assert names == ["proxy.log", "proxy.log.1", "proxy.log.2", "proxy.log.3"]
    assert modes_under(paths.log_dir) == dict.fromkeys(names, 0o600)
    assert mode_of(paths.log_dir) == 0o700


def test_a_loose_proxy_log_left_by_an_older_rpm_is_tightened(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True)
    paths.proxy_log.write_text("old line\n")
    paths.proxy_log.chmod(0o644)
    configure_proxy_logging(paths)()
    assert mode_of(paths.proxy_log) == 0o600


def test_the_event_log_and_its_rotated_files_are_0600_under_umask_000(paths: Paths,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_LOG_BYTES", 500)
    log = events.EventLog(paths.event_log)
    with umask(0):
        for index in range(100):
            log.write("tick", index=index, reason="x" * 50)
    names = sorted(path.name for path in paths.log_dir.iterdir())
    assert names == ["events.jsonl", "events.jsonl.1", "events.jsonl.2", "events.jsonl.3"]
    assert modes_under(paths.log_dir) == dict.fromkeys(names, 0o600)
    assert mode_of(paths.state_dir) == mode_of(paths.log_dir) == 0o700


def test_a_loose_event_log_left_by_an_older_rpm_is_tightened(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True)
    paths.event_log.write_text("")
    paths.event_log.chmod(0o644)
    events.EventLog(paths.event_log).write("tick")
    assert mode_of(paths.event_log) == 0o600


def plant_symlink(link: Path, tmp_path: Path) -> Path:
    """A link where rpm writes a log, to a file of the user's that must stay as it is."""
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    target.chmod(0o644)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return target


def test_the_event_log_is_never_written_through_a_symlink(paths: Paths, tmp_path: Path) -> None:
    target = plant_symlink(paths.event_log, tmp_path)
    events.EventLog(paths.event_log).write("tick", reason="x")  # logging never breaks enforcement: no raise
    assert target.read_text() == "precious\n" and mode_of(target) == 0o644


def test_the_proxy_log_is_never_written_through_a_symlink(paths: Paths, tmp_path: Path) -> None:
    target = plant_symlink(paths.proxy_log, tmp_path)
    with pytest.raises(StateError, match="symbolic link"):
        configure_proxy_logging(paths)
    with pytest.raises(StateError, match="symbolic link"):
        process.open_proxy_log(paths)  # what a background proxy's output goes to
    assert target.read_text() == "precious\n" and mode_of(target) == 0o644


def test_the_request_log_is_never_written_through_a_symlink(paths: Paths, tmp_path: Path) -> None:
    target = plant_symlink(paths.request_log, tmp_path)
    log = RequestLog(paths.request_log, keep_days=30)
    log.start()
    log.append((1.0, 0.1, "default", "pod-1", "m", False, "POST", "/v1/chat/completions", 200, 0.05, None, 0.0,
                "miss", None, None, None))
    log.close()
    assert target.read_text() == "precious\n" and mode_of(target) == 0o644


def test_the_event_log_tail_reads_only_the_end(paths: Paths) -> None:
    paths.log_dir.mkdir(parents=True)
    paths.event_log.symlink_to("/dev/zero")  # reading it whole would never end
    assert events.EventLog(paths.event_log).tail() == []
    paths.event_log.unlink()
    with paths.event_log.open("w") as handle:  # as another program might leave it: past any rotation size
        handle.write("x" * (events.TAIL_BYTES * 40) + "\n")
        handle.writelines(f'{{"event": "tick", "index": {index}}}\n' for index in range(3))
    assert [event["index"] for event in events.EventLog(paths.event_log).tail(limit=2)] == [1, 2]


# --- reading ---------------------------------------------------------------------------------------------


def test_read_regular_file_refuses_devices_fifos_directories_and_oversized_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo, tmp_path):
        with pytest.raises(NotRegularFile) as caught:
            read_regular_file(path, max_bytes=10)
        assert caught.value.strerror == "not a regular file"
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    with pytest.raises(FileTooLarge, match="larger than 10 bytes"):
        read_regular_file(big, max_bytes=10)
    assert read_regular_file(big, max_bytes=11) == b"x" * 11
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", max_bytes=10)


def test_write_private_file_is_0600_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "target"
    target.write_text("old")
    target.chmod(0o644)
    with umask(0):
        write_private_file(target, b"new")
    assert target.read_bytes() == b"new" and mode_of(target) == 0o600
    assert [path.name for path in target.parent.iterdir()] == ["target"]
