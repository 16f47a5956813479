"""Spawn, find and stop the proxy subprocess: pid file, readiness deadline, log file.

`rpm start` launches `python -m runpod_manager proxy` in its own session (it outlives the terminal),
waits until its /health answers, and records the pid; `rpm shutdown` sends SIGTERM (in-flight streams get
up to 10 s) and SIGKILL after that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from runpod_manager.config import Config
from runpod_manager.errors import RpmError
from runpod_manager.paths import Paths, ensure_private_dir, write_private_file

READY_DEADLINE_SECONDS = 20.0
STOP_GRACE_SECONDS = 12.0


def proxy_url(config: Config) -> str:
    scheme = "https" if config.proxy.use_https else "http"
    host = config.proxy.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind is reached through loopback
        host = "127.0.0.1"
    return f"{scheme}://{host}:{config.proxy.port}"


def running_pid(paths: Paths) -> int | None:
    """The pid of a live proxy started by rpm, or None (a stale pid file is removed)."""
    info = _read_pid_file(paths.proxy_pid_file)
    if info is None:
        return None
    pid = int(info.get("pid", 0))
    if pid <= 0 or not _alive(pid):
        with contextlib.suppress(OSError):
            paths.proxy_pid_file.unlink()
        return None
    return pid


def start_proxy_process(config: Config, paths: Paths, *, ready_deadline_seconds: float = READY_DEADLINE_SECONDS
                        ) -> int:
    """Start the proxy in the background unless one runs; return its pid once /health answers."""
    existing = running_pid(paths)
    if existing:
        return existing
    ensure_private_dir(paths.log_dir)
    command = [sys.executable, "-m", "runpod_manager", "proxy"]
    if config.source is not None:
        command += ["--config", str(config.source)]
    log_fd = os.open(paths.proxy_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    _write_pid_file(paths.proxy_pid_file, process.pid, proxy_url(config))
    deadline = time.monotonic() + ready_deadline_seconds
    health = f"{proxy_url(config)}/health"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with contextlib.suppress(OSError):
                paths.proxy_pid_file.unlink()
            raise RpmError(f"the proxy exited at start (code {process.returncode}); see {paths.proxy_log}",
                           hint=_last_line(paths.proxy_log))
        with contextlib.suppress(requests.RequestException):
            # A self-signed certificate is normal for a local TLS proxy: only liveness is checked here.
            if requests.get(health, timeout=1, verify=False).status_code == 200:  # noqa: S501
                return process.pid
        time.sleep(0.1)
    stop_proxy_process(paths)
    raise RpmError(f"the proxy did not answer {health} within {int(ready_deadline_seconds)} s; "
                   f"see {paths.proxy_log}")


def stop_proxy_process(paths: Paths, *, grace_seconds: float = STOP_GRACE_SECONDS) -> bool:
    """SIGTERM the proxy, wait for in-flight streams, SIGKILL after the grace. True if one was running."""
    pid = running_pid(paths)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        paths.proxy_pid_file.unlink()
    return True


def _alive(pid: int) -> bool:
    try:
        waited, _status = os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _write_pid_file(path: Path, pid: int, url: str) -> None:
    ensure_private_dir(path.parent)
    # 0600 whatever the umask, like every file rpm writes (write_text made it 0644).
    write_private_file(path, json.dumps({"pid": pid, "url": url, "started_at": time.time()}).encode("utf-8"))


def _read_pid_file(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _last_line(path: Path) -> str | None:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:200] if lines else None
