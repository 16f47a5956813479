"""Serving the proxy: bind checks, TLS, the runner, signals and graceful shutdown.

`run_proxy` blocks until SIGTERM/SIGINT (or `ProxyReady.stop()`), so `rpm proxy` can call it in the
foreground and a supervisor can run it as a subprocess. On stop it closes the listening socket, gives
in-flight requests (streams included) up to SHUTDOWN_GRACE_SECONDS to finish, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import logging.handlers
import queue
import signal
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from runpod_manager.config import Config, ProxyConfig
from runpod_manager.errors import ConfigError
from runpod_manager.paths import Paths, ensure_private_dir, log_open_error, open_private_log
from runpod_manager.proxy.app import SHUTDOWN_GRACE_SECONDS, build_app, build_listen_app, start_jobs
from runpod_manager.proxy.bind import build_ssl_context, check_bind, has_team_keys
from runpod_manager.proxy.connection import IDLE_CONNECTION_TIMEOUT_SECONDS, ProxyAppRunner
from runpod_manager.proxy.controller import ProxyController
from runpod_manager.proxy.state import STATE

log = logging.getLogger("runpod_manager.proxy")


@dataclass(frozen=True)
class ProxyReady:
    """Given to `ready_callback` once the proxy listens. `stop()` may be called from any thread."""

    url: str
    host: str
    port: int
    _stop: Callable[[], None] = field(repr=False)

    def stop(self) -> None:
        self._stop()


PROXY_LOG_MAX_BYTES = 5 * 1024 * 1024


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose file is 0600 whatever the umask, including each file it reopens after a
    rollover (the stock handler opens them 0666 minus the umask: request lines name models, keys' labels and
    client addresses). A file left looser by an older rpm is tightened when opened."""

    def _open(self) -> Any:
        fd = open_private_log(Path(self.baseFilename))  # appends (maxBytes forces mode "a"); never via a symlink
        return open(fd, self.mode.replace("b", ""), encoding=self.encoding, errors=self.errors)


def configure_proxy_logging(paths: Paths, *, level: int = logging.INFO) -> Callable[[], None]:
    """Send the proxy's log lines to paths.proxy_log (rotated, 0600, in the private log directory).

    The request path only formats a record and puts it on a queue; a listener thread does the file
    writes, so a slow disk never shows up in request latency. Returns a function that flushes and
    detaches the handlers (call it after run_proxy returns).
    """
    ensure_private_dir(paths.log_dir)
    try:
        file_handler = PrivateRotatingFileHandler(paths.proxy_log, maxBytes=PROXY_LOG_MAX_BYTES, backupCount=3,
                                                  encoding="utf-8")
    except OSError as exc:
        raise log_open_error(paths.proxy_log, exc) from None
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    queue_handler = logging.handlers.QueueHandler(records)
    listener = logging.handlers.QueueListener(records, file_handler)
    logger = logging.getLogger("runpod_manager.proxy")
    logger.addHandler(queue_handler)
    logger.setLevel(level)
    listener.start()

    def close() -> None:
        logger.removeHandler(queue_handler)
        listener.stop()
        file_handler.close()

    return close


async def serve(
    config: Config,
    controller: ProxyController,
    paths: Paths,
    *,
    ready_callback: Callable[[ProxyReady], None] | None = None,
    handle_signals: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    idle_connection_timeout_seconds: float = IDLE_CONNECTION_TIMEOUT_SECONDS,
    **app_options: Any,
) -> str | None:
    """Serve until stopped (signal or ProxyReady.stop()); the async core of run_proxy. Returns the name of
    the signal that stopped it ("SIGINT", "SIGTERM"), or None when stopped through ProxyReady.stop().

    `idle_connection_timeout_seconds` (a test knob) bounds both a connection that has not finished its
    request's headers and an idle keep-alive connection; a request under way is never cut by it.
    """
    proxy = config.proxy
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    app = build_app(config, controller, paths=paths, **app_options)
    # handler_cancellation: a client that goes away cancels its handler at once, which closes the
    # upstream request (the pod stops generating). access_log=None: we log one line per request ourselves.
    # keepalive_timeout: aiohttp closes a connection still waiting for a request's headers after it
    # (slowloris), counted from the connection's start or its previous answer.
    runner = ProxyAppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
                            access_log=None, keepalive_timeout=idle_connection_timeout_seconds)
    await runner.setup()
    installed: list[signal.Signals] = []
    stopped_by: list[str] = []
    listen_runners: list[ProxyAppRunner] = []
    try:
        site = web.TCPSite(runner, proxy.host, proxy.port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {proxy.host}:{proxy.port} ([proxy] host / port): "
                              f"{exc.strerror or exc}",
                              hint="another process (maybe another `rpm proxy`) uses the port; "
                                   "stop it or choose another [proxy] port") from None
        port = _bound_port(runner, proxy.port)
        await _start_listen_ports(app, proxy, ssl_context, idle_connection_timeout_seconds, listen_runners)
        scheme = "https" if ssl_context is not None else "http"
        shown_host = "127.0.0.1" if proxy.host in ("0.0.0.0", "") else proxy.host  # noqa: S104 - display only
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"
        url = f"{scheme}://{shown_host}:{port}"

        def request_stop(signal_name: str | None = None) -> None:
            if signal_name is not None and not stopped_by:
                stopped_by.append(signal_name)
            if stopping.is_set():
                # A second signal: stop waiting for in-flight requests.
                log.warning("second stop request: cancelling in-flight requests")
                for task in asyncio.all_tasks(loop):
                    if task is not asyncio.current_task(loop):
                        task.cancel()
                return
            log.info("stopping: no new connections; in-flight requests get %.0f s", SHUTDOWN_GRACE_SECONDS)
            stopping.set()

        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):  # Windows event loops
                    loop.add_signal_handler(signum, request_stop, signum.name)
                    installed.append(signum)
        log.info("proxy listening on %s", url)
        await start_jobs(app, url)  # jobs are replayed to the proxy's own bound address (jobs.py)
        def stop_from_any_thread() -> None:
            loop.call_soon_threadsafe(request_stop)

        if ready_callback is not None:
            ready_callback(ProxyReady(url=url, host=proxy.host, port=port, _stop=stop_from_any_thread))
        await stopping.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await app[STATE].sockets.close_all("the rpm proxy is stopping")  # before the runners wait for them
        for listen_runner in listen_runners:
            await listen_runner.cleanup()
        await runner.cleanup()
        log.info("proxy stopped")
    return stopped_by[0] if stopped_by else None


async def _start_listen_ports(app: web.Application, proxy: ProxyConfig, ssl_context: ssl.SSLContext | None,
                              idle_connection_timeout_seconds: float, runners: list[ProxyAppRunner]) -> None:
    """Each http pod's listen_port: the same bind (host, TLS, keys) as the main port, its own application.
    Appends each runner to `runners` as soon as it exists, so the caller cleans up after a failed bind."""
    for listen_port, route in app[STATE].routes.listen_ports.items():
        runner = ProxyAppRunner(build_listen_app(app, route), handler_cancellation=True,
                                shutdown_timeout=SHUTDOWN_GRACE_SECONDS, access_log=None,
                                keepalive_timeout=idle_connection_timeout_seconds)
        await runner.setup()
        runners.append(runner)
        try:
            await web.TCPSite(runner, proxy.host, listen_port, ssl_context=ssl_context, reuse_address=True).start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {proxy.host}:{listen_port} ([pods.{route.name}] listen_port): "
                              f"{exc.strerror or exc}",
                              hint="another program uses the port; stop it or choose another listen_port") from None
        log.info("pod %s listens on port %d", route.name, listen_port)


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured


def loop_factory(use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (the optional `fast` extra), else None: asyncio's own.
    What it gains is measured in BENCHMARKS.md ("uvloop"); never required, and the proxy behaves the same on
    either loop (the suite passes on both)."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_proxy(
    config: Config,
    controller: ProxyController,
    paths: Paths,
    *,
    ready_callback: Callable[[ProxyReady], None] | None = None,
    use_uvloop: bool = True,
    **app_options: Any,
) -> str | None:
    """Serve the proxy on [proxy] host/port until SIGTERM/SIGINT or ProxyReady.stop(); blocks. Returns the
    name of the signal that stopped it, or None.

    Raises ConfigError before binding when the bind would be open to others without api_keys, when the
    TLS files cannot be loaded, or when the port is taken. `ready_callback` runs on the proxy's loop
    once it listens (keep it short: write a pid file, print the URL). `app_options` go to build_app
    (test knobs). Signal handlers are installed only when called from the main thread. The loop is
    uvloop's when it is importable and `use_uvloop` (loop_factory), else asyncio's.
    """
    check_bind(config.proxy, team_keys=has_team_keys(paths))
    ssl_context = build_ssl_context(config.proxy)
    # Everything imported so far lives as long as the process. Freezing it keeps the cyclic GC's full
    # collections from re-scanning it: measured under load, each one stalled the loop for ~20 ms about once a
    # second, which was most of the proxy's p99 (BENCHMARKS.md, "GC").
    gc.collect()
    gc.freeze()
    factory = loop_factory(use_uvloop)
    with asyncio.Runner(loop_factory=factory) as runner:
        log.info("event loop: %s", "uvloop" if factory is not None else "asyncio")
        return runner.run(serve(config, controller, paths, ready_callback=ready_callback,
                                ssl_context=ssl_context, **app_options))
