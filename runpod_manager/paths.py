"""Where config, state, cache and logs live: the one override point, and how rpm's files are made and read.

`RPM_HOME` puts everything under one directory (tests point it at tmp_path). Otherwise the XDG base
directories are used (`XDG_CONFIG_HOME`, `XDG_STATE_HOME`, `XDG_CACHE_HOME`).

Files and directories: rpm creates its files 0600 and its directories 0700 whatever the umask (state holds
upstream keys, logs hold request details). It tightens only directories it owns by construction — the
state, log and cache directories named here — and never one a user names (`[cache] dir`): see
proxy/cache.py for that case. Files rpm reads back are read through `read_regular_file`, which refuses what
is not a regular file and bounds the read (`ln -s /dev/zero pod_state.json` must not fill the memory).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runpod_manager.errors import StateError

APP = "rpm"
CONFIG_FILENAME = "pod_config.toml"
STATE_FILENAME = "pod_state.json"


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    cache_dir: Path

    @property
    def user_config_file(self) -> Path:
        return self.config_dir / CONFIG_FILENAME

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILENAME

    @property
    def lock_file(self) -> Path:
        return self.state_dir / (STATE_FILENAME + ".lock")

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def event_log(self) -> Path:
        return self.log_dir / "events.jsonl"

    @property
    def request_log(self) -> Path:
        """One JSON line per proxied request (requestlog.py)."""
        return self.log_dir / "requests.jsonl"

    @property
    def keys_file(self) -> Path:
        """The team keys, hashed (keys.py)."""
        return self.state_dir / "keys.json"

    @property
    def key_usage_file(self) -> Path:
        """Requests, tokens and spend per key per day, written by the proxy (proxy/limits.py)."""
        return self.state_dir / "key_usage.json"

    @property
    def catalog_cache(self) -> Path:
        return self.state_dir / "gpu_catalog.json"

    @property
    def proxy_pid_file(self) -> Path:
        return self.state_dir / "proxy.pid"

    @property
    def watchdog_pass_file(self) -> Path:
        """When `rpm watchdog` last ran a pass (control.py: whether cron enforces the limits)."""
        return self.state_dir / "watchdog_last_pass"

    @property
    def proxy_registry_dir(self) -> Path:
        """One file per running proxy (background or foreground), written by the proxy itself."""
        return self.state_dir / "proxies"

    @property
    def proxy_log(self) -> Path:
        return self.log_dir / "proxy.log"

    @property
    def response_cache_dir(self) -> Path:
        return self.cache_dir / "responses"

    @property
    def spool_dir(self) -> Path:
        """Uploads received while their pod wakes (proxy/passthrough.py WakeSpool), 0700/0600, deleted when sent."""
        return self.state_dir / "spool"

    @property
    def jobs_dir(self) -> Path:
        """The proxy's queued jobs (proxy/jobs.py): their sqlite store and spooled bodies, 0700/0600."""
        return self.state_dir / "jobs"


def resolve_paths(env: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if env is None else env
    home = env.get("RPM_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(config_dir=root, state_dir=root / "state", cache_dir=root / "cache")
    user_home = Path(env.get("HOME") or Path.home())
    config = Path(env.get("XDG_CONFIG_HOME") or user_home / ".config") / APP
    state = Path(env.get("XDG_STATE_HOME") or user_home / ".local" / "state") / APP
    cache = Path(env.get("XDG_CACHE_HOME") or user_home / ".cache") / APP
    return Paths(config_dir=config, state_dir=state, cache_dir=cache)


def ensure_private_dir(path: Path) -> Path:
    """An rpm-owned directory (state, logs, its default cache): created 0700 with any missing parents 0700,
    whatever the umask, and tightened to 0700 if it exists looser. Never call it on a user-named directory."""
    make_dirs(path)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def make_dirs(path: Path) -> list[Path]:
    """Create `path` and its missing parents 0700 whatever the umask (as the XDG spec asks for directories it
    creates); return the ones created, outermost first. Existing directories are left as they are."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    created = []
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process: not ours to change
            continue
        directory.chmod(0o700)  # mkdir's mode passes through the umask, which may take bits away
        created.append(directory)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    return created


class NotRegularFile(OSError):
    """A path rpm reads is a device, FIFO, socket or directory."""


class FileTooLarge(OSError):
    """A file rpm reads is larger than any it writes."""


def read_regular_file(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. FileNotFoundError when absent; NotRegularFile or
    FileTooLarge (both OSError, with a strerror for messages) otherwise; other OSErrors as they come."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise FileTooLarge(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return data


def write_private_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp file in the same directory, then rename), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # a temp file left behind by an older rpm may be looser
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_lines(path: Path, *, max_bytes: int) -> list[bytes]:
    """The lines of a log file rpm wrote (JSON lines), at most `max_bytes` of it; [] when it is absent, not a
    regular file or unreadable: a log that cannot be read is reported as empty, never as a crash."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return []
    with os.fdopen(fd, "rb") as handle:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            return handle.read(max_bytes).splitlines()
        except OSError:
            return []


def open_private_log(path: Path) -> int:
    """A descriptor appending to the log file `path`, created 0600 (one left looser is tightened). Never
    through a symbolic link (O_NOFOLLOW, as `write_private_file` and `private_sqlite_files`): a link planted
    where a log goes must not make rpm append to, or chmod, the file it points at. O_NONBLOCK: a FIFO planted
    there fails at once instead of hanging the open. OSError (ELOOP: a link) when it cannot."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    fd = os.open(path, flags, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_mode & 0o077:  # left looser by an older rpm or by hand
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def log_open_error(path: Path, exc: OSError) -> StateError:
    """The error of a log file that `open_private_log` could not open, naming it."""
    if exc.errno == errno.ELOOP:
        return StateError(f"{path} is a symbolic link: rpm never writes a log through one",
                          hint="remove the link; rpm creates the file itself")
    return StateError(f"cannot open the log file {path}: {exc.strerror or exc}")


def private_sqlite_files(db_path: Path) -> None:
    """Create an sqlite database file 0600 before sqlite does (sqlite uses 0644 minus the umask, and gives -wal
    and -shm the database file's mode), and tighten files of these names an older rpm left looser."""
    fd = os.open(db_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            companion = db_path.with_name(db_path.name + suffix)
            if companion.lstat().st_mode & 0o077 and not companion.is_symlink():
                companion.chmod(0o600)
