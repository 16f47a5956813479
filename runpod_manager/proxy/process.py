"""Spawn, find and stop the proxy processes of a config: registry, process table, port, log file.

`rpm start` launches `python -P -m runpod_manager proxy` in its own session (it outlives the terminal;
`-P` so that nothing in the caller's directory can be imported as a module), waits until its /health
answers as that very process, and records the pid. Every proxy, background or foreground, registers
itself in `<state dir>/proxies/` while it runs, and `rpm shutdown` also looks for proxies of this state
directory in the process table ("by what they are"), so a proxy whose pid file was never written (its
starter was killed) is still found and stopped. Before any lease opens, `claim_port()` checks that the
proxy port is free or served by this config's own proxy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from runpod_manager.config import Config
from runpod_manager.errors import ConfigError, RpmError
from runpod_manager.paths import (
    Paths,
    ensure_private_dir,
    log_open_error,
    open_private_log,
    read_regular_file,
    resolve_paths,
    write_private_file,
)

READY_DEADLINE_SECONDS = 20.0
STOP_GRACE_SECONDS = 12.0


@dataclass(frozen=True)
class ProxyProcess:
    """A live proxy of this state directory, and how it was found."""

    pid: int
    url: str | None
    found_by: str  # "registry" | "pid file" | "process table"


def proxy_url(config: Config) -> str:
    """The URL a client on this machine uses to reach the proxy (a wildcard bind is reached on loopback)."""
    scheme = "https" if config.proxy.use_https else "http"
    host = config.proxy.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind is reached through loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{config.proxy.port}"


# ----------------------------------------------------------------------------------------- finding


def find_proxies(paths: Paths, *, scan: bool = False) -> list[ProxyProcess]:
    """Live proxies of this state directory: registered ones and the pid file's; with `scan`, also every
    `rpm proxy` process in the process table whose environment resolves to this state directory."""
    found: dict[int, ProxyProcess] = {}
    for pid, url, start_ticks in _registry_entries(paths):
        if _alive(pid) and _start_ticks(pid) in (None, start_ticks):
            found.setdefault(pid, ProxyProcess(pid, url, "registry"))
        else:
            _unregister(paths, pid)
    info = _read_pid_file(paths.proxy_pid_file)
    if info is not None:
        written_pid, written_url = _as_pid(info.get("pid")), info.get("url")
        if written_pid and _alive(written_pid):
            found.setdefault(written_pid, ProxyProcess(
                written_pid, written_url if isinstance(written_url, str) else None, "pid file"))
        else:
            with contextlib.suppress(OSError):
                paths.proxy_pid_file.unlink()
    if scan:
        for pid in _scan_process_table(paths):
            found.setdefault(pid, ProxyProcess(pid, None, "process table"))
    return sorted(found.values(), key=lambda proxy: proxy.pid)


def running_pid(paths: Paths) -> int | None:
    """The pid of a live proxy of this state directory (background or foreground), or None."""
    proxies = find_proxies(paths)
    return proxies[0].pid if proxies else None


@contextlib.contextmanager
def registered(paths: Paths, url: str) -> Iterator[None]:
    """Register the current process as a proxy of `paths` while the block runs."""
    directory = ensure_private_dir(paths.proxy_registry_dir)
    path = directory / f"{os.getpid()}.json"
    write_private_file(path, json.dumps({"pid": os.getpid(), "url": url, "start_ticks": _start_ticks(os.getpid()),
                                         "started_at": time.time()}).encode("utf-8"))
    try:
        yield
    finally:
        _unregister(paths, os.getpid())


def _registry_entries(paths: Paths) -> list[tuple[int, str | None, int | None]]:
    """(pid, url, start ticks) of each registry file; malformed files are removed."""
    entries = []
    with contextlib.suppress(OSError):
        for path in paths.proxy_registry_dir.glob("*.json"):
            data = _read_pid_file(path) or {}
            pid = _as_pid(data.get("pid"))
            if pid is None or path.stem != str(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            url, ticks = data.get("url"), data.get("start_ticks")
            entries.append((pid, url if isinstance(url, str) else None, ticks if isinstance(ticks, int) else None))
    return entries


def _unregister(paths: Paths, pid: int) -> None:
    with contextlib.suppress(OSError):
        (paths.proxy_registry_dir / f"{pid}.json").unlink()


def _as_pid(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _scan_process_table(paths: Paths) -> list[int]:
    """`rpm proxy` processes (console script or `-m runpod_manager`) whose environment puts their state
    directory at ours. Linux only (/proc); elsewhere the registry and the pid file are what there is."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    ours = _real(paths.state_dir)
    me = os.getpid()
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not _is_proxy_command([arg.decode("utf-8", "replace") for arg in argv if arg]):
                continue
            environ = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0")
                           if b"=" in item)
            cwd = os.readlink(entry / "cwd")
        except (OSError, ValueError):
            continue
        env = {key.decode("utf-8", "replace"): value.decode("utf-8", "replace") for key, value in environ.items()}
        if env.get("RPM_HOME") and not os.path.isabs(os.path.expanduser(env["RPM_HOME"])):
            env["RPM_HOME"] = os.path.join(cwd, env["RPM_HOME"])
        if _real(resolve_paths(env).state_dir) == ours and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _is_proxy_command(argv: list[str]) -> bool:
    if "proxy" not in argv[1:]:
        return False
    return "runpod_manager" in argv or any(os.path.basename(arg) == "rpm" for arg in argv[:2])


def _real(path: Path) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return int(handle.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- the port


def claim_port(config: Config, paths: Paths) -> int | None:
    """Before a lease opens: may a proxy of this config serve [proxy] host:port?

    Returns the pid of this config's own proxy when one already serves the port (use it, start none), or
    None when the port is free. Raises ConfigError when the bind is not permitted (beyond loopback without
    client keys, TLS files that do not load) or when another program holds the port.
    """
    from runpod_manager.proxy.bind import build_ssl_context, check_bind, has_team_keys

    check_bind(config.proxy, team_keys=has_team_keys(paths))
    build_ssl_context(config.proxy)
    host, port = config.proxy.host, config.proxy.port
    where = f"[proxy] host/port {host}:{port}"
    error = _bind_error(host, port, where)
    if error is None:
        _claim_listen_ports(config)
        return None
    if error.errno != errno.EADDRINUSE:
        raise ConfigError(f"{where}: cannot listen there ({error.strerror or error})")
    owner = _health_instance(config)
    if owner is not None and owner.get("state_dir") == str(paths.state_dir):
        pid = _as_pid(owner.get("pid"))
        if pid is not None:
            return pid
    who = (f"the rpm proxy of another state directory ({owner.get('state_dir')})" if owner is not None
           else "another program")
    raise ConfigError(f"{where} is in use by {who}; nothing was started",
                      hint="stop it, or choose another [proxy] port (RPM_PROXY_PORT)")


def _claim_listen_ports(config: Config) -> None:
    """With the proxy's port free, each http pod's listen_port must be free too (the proxy binds them all)."""
    for pod in config.all_pods:
        if not pod.listen_port:
            continue
        table = f"pods.{pod.name}" if config.pods else "pod"
        where = f"[{table}] listen_port {pod.listen_port}"
        error = _bind_error(config.proxy.host, pod.listen_port, where)
        if error is not None:
            raise ConfigError(f"{where} is in use ({error.strerror or error}); nothing was started",
                              hint="stop the program that holds it, or choose another listen_port")


def _bind_error(host: str, port: int, where: str) -> OSError | None:
    """Why a socket could not bind host:port as the proxy binds it (None: it could); ConfigError naming
    `where` when the host does not resolve."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot resolve the host ({exc.strerror or exc})") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds: TIME_WAIT is no owner
        try:
            probe.bind(address)
        except OSError as exc:
            return exc
    return None


def _health_instance(config: Config) -> Mapping[str, object] | None:
    """The `instance` section of an rpm proxy's /health at our URL; None when something else answers."""
    try:
        # A self-signed certificate is normal for a local TLS proxy: only its identity is read here.
        response = requests.get(f"{proxy_url(config)}/health", timeout=2, verify=False)  # noqa: S501
        instance = response.json().get("instance") if response.status_code == 200 else None
    except (requests.RequestException, ValueError, AttributeError, RecursionError):
        return None
    return instance if isinstance(instance, dict) else None


# ------------------------------------------------------------------------------------- start / stop


def open_proxy_log(paths: Paths) -> int:
    """The descriptor a background proxy's output goes to: its log, never through a symlink (StateError)."""
    try:
        return open_private_log(paths.proxy_log)
    except OSError as exc:
        raise log_open_error(paths.proxy_log, exc) from None


def start_proxy_process(config: Config, paths: Paths, *, ready_deadline_seconds: float = READY_DEADLINE_SECONDS,
                        wait: bool = True) -> int:
    """Start the proxy in the background unless one runs; return its pid once /health answers as it (at once
    with wait=False: a reconcile pass restarting it under the state lock checks it on the next pass)."""
    existing = running_pid(paths)
    if existing:
        return existing
    ensure_private_dir(paths.log_dir)
    # -P: `python -m` would put the caller's directory first on sys.path, so a secrets.py there would run
    # as the proxy. The interpreter is our own; the rest of sys.path is the installation's.
    command = [sys.executable, "-P", "-m", "runpod_manager", "proxy"]
    if config.source is not None:
        command += ["--config", str(config.source.resolve())]
    log_fd = open_proxy_log(paths)
    try:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    _write_pid_file(paths.proxy_pid_file, process.pid, proxy_url(config))
    if not wait:
        return process.pid
    deadline = time.monotonic() + ready_deadline_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with contextlib.suppress(OSError):
                paths.proxy_pid_file.unlink()
            raise RpmError(f"the proxy exited at start (code {process.returncode}); see {paths.proxy_log}",
                           hint=_last_line(paths.proxy_log))
        instance = _health_instance(config)
        if instance is not None and instance.get("pid") == process.pid:
            return process.pid
        time.sleep(0.1)
    stop_proxies(paths)
    raise RpmError(f"the proxy did not answer {proxy_url(config)}/health within {int(ready_deadline_seconds)} s; "
                   f"see {paths.proxy_log}")


def stop_proxies(paths: Paths, *, grace_seconds: float = STOP_GRACE_SECONDS) -> list[ProxyProcess]:
    """SIGTERM every proxy of this state directory (found by registry, pid file and process table), wait
    for their in-flight streams, SIGKILL after the grace. Returns the proxies that were running."""
    proxies = find_proxies(paths, scan=True)
    for proxy in proxies:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proxy.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_alive(proxy.pid) for proxy in proxies):
        time.sleep(0.05)
    for proxy in proxies:
        if _alive(proxy.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proxy.pid, signal.SIGKILL)
        _unregister(paths, proxy.pid)
    with contextlib.suppress(OSError):
        paths.proxy_pid_file.unlink()
    return proxies


def stop_proxy_process(paths: Paths, *, grace_seconds: float = STOP_GRACE_SECONDS) -> bool:
    """Stop every proxy of this state directory; True if one was running."""
    return bool(stop_proxies(paths, grace_seconds=grace_seconds))


def _alive(pid: int) -> bool:
    try:
        waited, _status = os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    return pid_exists(pid) and not _is_zombie(pid)


def pid_exists(pid: int) -> bool:
    """A process with this pid exists (perhaps another user's, perhaps a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        data = json.loads(read_regular_file(path, max_bytes=64 * 1024).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _last_line(path: Path) -> str | None:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:200] if lines else None
