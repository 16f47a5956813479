"""Running the sandbox: options, the application with its background tick, the command, the embedding.

- `SandboxOptions` holds every flag and checks values (`validate` raises ValueError naming the flag).
- `start_sandbox` binds the socket and starts the app on the running loop; `RunningSandbox.stop` undoes it
  (kills container processes, saves `--state`).
- `run_command` is the blocking entry of `rpm sandbox` and `python -m runpod_manager.sandbox`: it writes
  the ready lines, serves until SIGINT/SIGTERM and returns the exit code.
- `EmbeddedSandbox` runs the same thing on its own loop in a daemon thread (for `rpm demo` and tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from aiohttp import web

from runpod_manager.errors import ExitCode, RpmError, UsageError
from runpod_manager.events import redact
from runpod_manager.sandbox.api import create_app
from runpod_manager.sandbox.containers import ContainerRunner
from runpod_manager.sandbox.faults import Faults, Settings
from runpod_manager.sandbox.timeline import Clock
from runpod_manager.sandbox.world import World

log = logging.getLogger("runpod_manager.sandbox")

DEFAULT_PORT = 8787
DEFAULT_API_KEY = "sandbox-key"
TICK_SECONDS = 0.1
SAVE_EVERY_SECONDS = 0.5

T = TypeVar("T")


class Interrupted(RpmError):
    exit_code = ExitCode.INTERRUPTED


class SandboxStartError(RpmError):
    """The sandbox could not start (port in use, unreadable state file): one line and a hint, exit 1."""


@dataclass
class SandboxOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str = DEFAULT_API_KEY
    provision_seconds: float = 1.0
    start_seconds: float = 1.5
    model_load_seconds: float = 2.0
    token_delay_seconds: float = 0.02
    service_progress_seconds: float = 1.0
    bill_speed: float = 1.0
    balance_usd: float = 1000.0
    fail_creates: int = 0
    refuse_resumes: int = 0
    rate_limit: int = 0
    error_rate: float = 0.0
    latency_seconds: float = 0.0
    quota_per_minute: int = 6000
    state_file: Path | None = None
    quiet: bool = False
    seed: int | None = None
    extra_faults: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError with a one-line message naming the flag of the first impossible value.

        Messages never echo --api-key's value: it is the account's secret."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535, got {self.port}")
        if not self.api_key.strip() or any(c.isspace() for c in self.api_key):
            raise ValueError("--api-key must be a non-empty string without spaces")
        non_negative = {
            "--provision-seconds": self.provision_seconds, "--start-seconds": self.start_seconds,
            "--model-load-seconds": self.model_load_seconds, "--token-delay": self.token_delay_seconds,
            "--service-progress-seconds": self.service_progress_seconds,
            "--bill-speed": self.bill_speed, "--balance": self.balance_usd,
            "--fail-creates": self.fail_creates, "--refuse-resumes": self.refuse_resumes,
            "--rate-limit": self.rate_limit, "--latency": self.latency_seconds,
        }
        for flag, value in non_negative.items():
            if not value >= 0 or value == float("inf"):  # `not >=` also rejects NaN
                raise ValueError(f"{flag} must be a non-negative number, got {value}")
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"--error-rate must be between 0 and 1, got {self.error_rate}")
        if self.quota_per_minute < 1:
            raise ValueError(f"--quota-per-minute must be at least 1, got {self.quota_per_minute}")

    def settings(self) -> Settings:
        return Settings(provision_seconds=self.provision_seconds, start_seconds=self.start_seconds,
                        model_load_seconds=self.model_load_seconds, bill_speed=self.bill_speed,
                        balance_usd=self.balance_usd, quota_per_minute=self.quota_per_minute)

    def faults(self) -> Faults:
        faults = Faults(fail_creates=self.fail_creates, refuse_resumes=self.refuse_resumes,
                        rate_limit=self.rate_limit, error_rate=self.error_rate,
                        latency_seconds=self.latency_seconds)
        problems = faults.update(self.extra_faults)
        if problems:
            raise ValueError("; ".join(problems))
        return faults


def build_world(options: SandboxOptions, clock: Clock = time.time) -> World:
    """A world from the options, loaded from --state when that file exists."""
    world = World(options.settings(), options.faults(), clock=clock, rng=random.Random(options.seed))
    if options.state_file is not None:
        try:
            world.load(options.state_file)
        except (OSError, ValueError) as exc:  # ValueError covers bad JSON, bad UTF-8 and bad shapes
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise SandboxStartError(f"cannot load sandbox state from {options.state_file}: {reason}",
                                    hint="fix the file or move it aside to start an empty world") from None
    return world


def ready_lines(base_url: str, api_key: str) -> list[str]:
    """What the command prints once it listens: the URL, then shell exports that point rpm at it."""
    return [
        f"rpm sandbox: RunPod v2 emulator listening on {base_url}",
        f"export RUNPOD_API_URL={base_url}",
        f"export RUNPOD_API_KEY={api_key}",
        f"export RPM_API_POD_URL_TEMPLATE='{base_url}/pods/{{pod_id}}-{{port}}'",
    ]


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise SandboxStartError(f"cannot resolve --host {host}: {exc.strerror}",
                                hint="give an address such as 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SandboxStartError(f"port {port} on {host} is already in use",
                                    hint="pick another with --port; 0 picks a free one") from None
        raise SandboxStartError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                hint="check --host and --port") from None
    sock.setblocking(False)
    return sock


def reachable_base_url(sock: socket.socket) -> str:
    """The URL of the bound socket that reaches it from this machine: the bound address itself (not a host
    name, which may resolve to an address not bound), or loopback of its family for a wildcard bind."""
    host, port = sock.getsockname()[:2]
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}"


def beyond_loopback_warning(sock: socket.socket, api_key: str) -> str | None:
    """A one-line warning when the bound address is reachable from other machines, else None."""
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_loopback:
        return None
    shown = f"[{host}]" if ":" in host else host
    default_key = " The API key is the default one, which anyone can guess: pass --api-key." if (
        api_key == DEFAULT_API_KEY) else ""
    return (f"listening on {shown}:{port}, which other machines can reach: anyone who can reach it and has the "
            f"API key can create, stop and read pods and their keys.{default_key}")


class RunningSandbox:
    """A sandbox serving on the current event loop."""

    def __init__(self, options: SandboxOptions, world: World, app_runner: web.AppRunner,
                 containers: ContainerRunner, base_url: str) -> None:
        self.options = options
        self.world = world
        self.app_runner = app_runner
        self.containers = containers
        self.base_url = base_url
        self.warning: str | None = None  # set when the bind reaches beyond this machine
        self._tick_task: asyncio.Task[None] | None = None

    @property
    def pod_url_template(self) -> str:
        return f"{self.base_url}/pods/{{pod_id}}-{{port}}"

    def _start_tick(self) -> None:
        self._tick_task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        """Advance timelines, reconcile container processes, save the state file when it changed."""
        last_save = 0.0
        while True:
            try:
                self.containers.sync(self.world)
                state_file = self.options.state_file
                due = time.monotonic() - last_save > SAVE_EVERY_SECONDS
                if state_file is not None and self.world.dirty and due:
                    self.world.save(state_file)
                    last_save = time.monotonic()
            except Exception:
                log.exception("sandbox: background tick failed; continuing")
            await asyncio.sleep(TICK_SECONDS)

    async def stop(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        await self.app_runner.cleanup()
        self.containers.close()
        if self.options.state_file is not None:
            self.world.save(self.options.state_file)


async def start_sandbox(options: SandboxOptions, world: World | None = None) -> RunningSandbox:
    """Bind, start serving and return; raises SandboxStartError for a one-line reason."""
    world = world or build_world(options)
    sock = _bind(options.host, options.port)
    base_url = reachable_base_url(sock)
    warning = beyond_loopback_warning(sock, options.api_key)
    containers = ContainerRunner(api_url=base_url)
    app = create_app(world, api_key=options.api_key, token_delay_seconds=options.token_delay_seconds,
                     runner=containers, service_progress_seconds=options.service_progress_seconds)
    app_runner = web.AppRunner(app, access_log=None if options.quiet else logging.getLogger("aiohttp.access"),
                               handle_signals=False)
    await app_runner.setup()
    site = web.SockSite(app_runner, sock)
    await site.start()
    running = RunningSandbox(options, world, app_runner, containers, base_url)
    running.warning = warning
    running._start_tick()
    return running


def serve_forever(options: SandboxOptions, on_ready: Callable[[list[str]], None],
                  on_warning: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; `on_ready` receives the ready lines once the port listens, after
    `on_warning` got the warning of a bind beyond loopback, if any."""

    async def main() -> None:
        running = await start_sandbox(options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if running.warning is not None and on_warning is not None:
                on_warning(running.warning)
            on_ready(ready_lines(running.base_url, options.api_key))
            await stop.wait()
        finally:
            await running.stop()

    asyncio.run(main())


def run_command(options: SandboxOptions, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """The `rpm sandbox` command: 0 after a clean stop, 2 for a bad flag value, 1 when it cannot start.

    Errors look like every other rpm command's (`error: <message> (<hint>)` on stderr, through the
    renderer) and exit with the RpmError's ExitCode; nothing unexpected ends in a traceback unless
    RPM_DEBUG=1, and no message carries the API key.
    """
    from rich.console import Console

    from runpod_manager.render import Renderer

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    renderer = Renderer("sandbox")
    if stderr is not None:
        renderer.err = Console(file=stderr, soft_wrap=True, highlight=False)

    def fail(exc: RpmError) -> int:
        renderer.error(exc, int(exc.exit_code))
        return int(exc.exit_code)

    try:
        options.validate()
        options.faults()
    except ValueError as exc:
        return fail(UsageError(str(exc), hint="see rpm sandbox --help"))
    if not options.quiet:
        logging.basicConfig(level=logging.INFO, stream=err, format="%(asctime)s %(name)s %(message)s")

    def warn(text: str) -> None:
        err.write(f"warning: {text}\n")
        err.flush()

    def announce(lines: list[str]) -> None:
        out.write("\n".join(lines) + "\n")
        out.flush()

    try:
        serve_forever(options, announce, warn)
    except RpmError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        return fail(Interrupted("interrupted"))
    except Exception as exc:
        if os.environ.get("RPM_DEBUG") == "1":
            raise
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        return fail(RpmError(f"unexpected {type(exc).__name__}: {redact(text, (options.api_key,))}",
                             hint="set RPM_DEBUG=1 for the traceback"))
    return 0


class EmbeddedSandbox:
    """The sandbox on its own event loop in a daemon thread; a context manager.

    `EmbeddedSandbox(provision_seconds=0.05)` overrides options; the port defaults to 0 (a free one)
    and request logging is off. `world` is the live world: read it freely, but change it through
    `call(fn)`, which runs `fn(world)` on the sandbox's loop.
    """

    def __init__(self, options: SandboxOptions | None = None, *, clock: Clock = time.time,
                 start_timeout_seconds: float = 10.0, **overrides: Any) -> None:
        base = options or SandboxOptions(port=0, quiet=True)
        self.options = replace(base, **overrides)
        self.options.validate()
        self._clock = clock
        self._start_timeout_seconds = start_timeout_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: RunningSandbox | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self._require().base_url

    @property
    def api_key(self) -> str:
        return self.options.api_key

    @property
    def pod_url_template(self) -> str:
        return self._require().pod_url_template

    @property
    def world(self) -> World:
        return self._require().world

    def _require(self) -> RunningSandbox:
        if self._running is None:
            raise RuntimeError("the embedded sandbox is not running; use start() or a with block")
        return self._running

    def start(self) -> EmbeddedSandbox:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._thread_main, name="rpm-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout_seconds):
            seconds = self._start_timeout_seconds
            raise SandboxStartError(f"the embedded sandbox did not start within {seconds} s")
        if isinstance(self._error, RpmError):
            raise self._error
        if self._error is not None:
            raise SandboxStartError(str(self._error)) from self._error
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            self._running = await start_sandbox(self.options, build_world(self.options, clock=self._clock))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._running.stop()

    def call(self, fn: Callable[[World], T], timeout_seconds: float = 10.0) -> T:
        """Run `fn(world)` on the sandbox's loop (the world belongs to that thread); returns its result."""
        loop, running = self._loop, self._require()
        assert loop is not None  # noqa: S101 - set before _running

        async def invoke() -> T:
            return fn(running.world)

        future: Future[T] = asyncio.run_coroutine_threadsafe(invoke(), loop)
        return future.result(timeout_seconds)

    def close(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10.0)
        self._thread = None
        self._running = None

    def __enter__(self) -> EmbeddedSandbox:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
