"""The cold-start gate: which pod to send to, and what a request does while there is none.

Hot path: `WakeGate.target` is a plain attribute read by every request. It is refreshed off the loop —
by a wake, by the app's reconcile loop (every `reconcile_interval_seconds`), and on the slow path —
and cleared when the pod stops answering. So a request to a known pod costs no thread hop and no I/O.

Slow path (`wait_for_target`): ask the controller once more (in a thread; concurrent requests share the
one call), then — when `wake_on_request` is on — start `controller.wake()` once in a worker thread and
let up to `max_queue_size` requests wait for it, each for at most `queue_timeout_seconds`. Everything
that cannot be served turns into a ProxyError with an OpenAI-shaped message; nothing waits forever or
is dropped silently. Streaming callers pass `on_tick`, called every `keepalive_interval_seconds` while
they wait, to keep editors and RunPod's 100 s cut-off seeing bytes. Other callers pass `answer_by`: a
request without response headers by then gets a retryable 503 (the wake goes on; the retry joins it),
because Node's fetch gives up on a request whose headers take 300 s and would lose it instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from runpod_manager.errors import ApiError, LimitRefused, LockBusy, NotReady, RpmError
from runpod_manager.proxy.controller import ProxyController, UpstreamTarget
from runpod_manager.proxy.forward import ProxyError
from runpod_manager.proxy.metrics import ProxyMetrics

log = logging.getLogger("runpod_manager.proxy")

TickCallback = Callable[[float], Awaitable[None]]


class WakeGate:
    """Holds the current target and runs at most one wake at a time."""

    def __init__(
        self,
        controller: ProxyController,
        *,
        wake_on_request: bool,
        max_queue_size: int,
        queue_timeout_seconds: float,
        keepalive_interval_seconds: float = 5.0,
        queue_full_retry_after_seconds: float = 5.0,
        waking_retry_after_seconds: float = 1.0,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.target: UpstreamTarget | None = None
        self.waiting = 0
        self.wake_on_request = wake_on_request
        self.max_queue_size = max_queue_size
        self.queue_timeout_seconds = queue_timeout_seconds
        self.keepalive_interval_seconds = keepalive_interval_seconds
        self.queue_full_retry_after_seconds = queue_full_retry_after_seconds
        self.waking_retry_after_seconds = waking_retry_after_seconds
        self.last_wake_error: str | None = None
        self._controller = controller
        self._metrics = metrics
        self._wake: asyncio.Future[UpstreamTarget] | None = None
        self._wake_started_at = 0.0
        self._refresh: asyncio.Future[UpstreamTarget | None] | None = None

    @property
    def waking(self) -> bool:
        return self._wake is not None

    def set_target(self, target: UpstreamTarget | None) -> None:
        """Called by the reconcile loop with the controller's latest answer."""
        if target is None and self._wake is not None:
            return  # the wake in progress will set it; do not race it with a stale None
        self.target = target

    def forget(self, pod_id: str) -> None:
        """The pod stopped answering: the next request goes through the slow path (and wakes)."""
        if self.target is not None and self.target.pod_id == pod_id:
            self.target = None

    async def refresh(self) -> UpstreamTarget | None:
        """Ask the controller for the target (in a thread); concurrent callers share one call."""
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(asyncio.to_thread(self._controller.current_target))
            self._refresh.add_done_callback(self._refresh_done)
        try:
            target = await asyncio.shield(self._refresh)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken state file must not take requests down with it
            log.warning("could not read the current pod from the controller: %s", exc)
            return None
        if target is not None:
            self.target = target
        return target

    def _refresh_done(self, future: asyncio.Future[UpstreamTarget | None]) -> None:
        self._refresh = None
        if not future.cancelled():
            future.exception()  # retrieved here so asyncio does not log it again

    async def wait_for_target(self, on_tick: TickCallback | None = None, *,
                              answer_by: float | None = None) -> tuple[UpstreamTarget, float | None]:
        """The target to send to, and how long this request waited for a wake (None: no wait).

        `answer_by` (loop time): when the wake is still running then, raise a retryable 503 (pod_waking).
        """
        target = self.target
        if target is not None:
            return target, None
        if self._wake is None:
            target = await self.refresh()
            if target is not None:
                return target, None
            if self.target is not None:
                return self.target, None
        if not self.wake_on_request:
            raise ProxyError(
                503, "the pod is not running and [proxy] wake_on_request is off; run `rpm start` "
                "to start it", code="pod_not_running", should_retry=False)
        if self.waiting >= self.max_queue_size:
            raise ProxyError(
                503, f"{self.waiting} requests are already waiting for the pod to wake "
                f"([proxy] max_queue_size = {self.max_queue_size}); retry in a few seconds",
                code="queue_full", retry_after_seconds=self.queue_full_retry_after_seconds,
                should_retry=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._set_waiting(self.waiting + 1)
        try:
            wake = self._wake if self._wake is not None else self._start_wake(loop)
            deadline = started + self.queue_timeout_seconds
            give_up_at = deadline if answer_by is None else min(deadline, answer_by)
            while not wake.done():
                remaining = give_up_at - loop.time()
                if remaining <= 0 and give_up_at < deadline:
                    raise ProxyError(
                        503, f"the pod is still waking ({time.monotonic() - self._wake_started_at:.0f} s so "
                        "far); retry: the retry joins the same wake. A request without a response by [proxy] "
                        "wake_hold_seconds is answered so, before clients that give up silently drop it",
                        code="pod_waking", retry_after_seconds=self.waking_retry_after_seconds,
                        should_retry=True)
                if remaining <= 0:
                    raise ProxyError(
                        504, f"the pod did not become ready within {self.queue_timeout_seconds:g} s "
                        "([proxy] queue_timeout_seconds); it is still starting, retry shortly",
                        code="queue_timeout", retry_after_seconds=5.0, should_retry=True)
                step = remaining if on_tick is None else min(remaining, self.keepalive_interval_seconds)
                await asyncio.wait((wake,), timeout=step)
                if on_tick is not None and not wake.done() and loop.time() < deadline:
                    await on_tick(loop.time() - started)
        finally:
            self._set_waiting(self.waiting - 1)
        try:
            target = wake.result()
        except Exception as exc:
            raise wake_error(exc) from None
        return target, loop.time() - started

    def _set_waiting(self, count: int) -> None:
        self.waiting = count
        if self._metrics is not None:
            self._metrics.queue_depth.set(count)

    def _start_wake(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[UpstreamTarget]:
        wake: asyncio.Future[UpstreamTarget] = loop.create_future()
        self._wake = wake
        self._wake_started_at = time.monotonic()
        log.info("no ready pod: waking it for a waiting request")

        def settle(target: UpstreamTarget | None, error: BaseException | None) -> None:
            if self._wake is wake:
                self._wake = None
            duration = time.monotonic() - self._wake_started_at
            if error is None and not isinstance(target, UpstreamTarget):
                error = TypeError(f"controller.wake() returned {type(target).__name__}, not UpstreamTarget")
            if error is None:
                assert isinstance(target, UpstreamTarget)  # noqa: S101 - narrowed for mypy; checked above
                self.target = target
                self.last_wake_error = None
                outcome = "ok"
                log.info("pod %s ready after %.1f s", target.pod_id, duration)
                wake.set_result(target)
            else:
                outcome = "limit_refused" if isinstance(error, LimitRefused) else "failed"
                self.last_wake_error = str(error) if isinstance(error, RpmError) else type(error).__name__
                if isinstance(error, RpmError):
                    log.warning("wake failed after %.1f s: %s", duration, error)
                else:
                    log.error("wake failed after %.1f s", duration, exc_info=error)
                wake.set_exception(error)
                wake.exception()  # marked retrieved: waiters may all have timed out already
            if self._metrics is not None:
                self._metrics.wakes.labels(outcome).inc()
                self._metrics.wake_duration.observe(duration)

        def run() -> None:
            try:
                target = self._controller.wake()
            except BaseException as exc:  # handed to the loop, which reports it to every waiter
                result: tuple[UpstreamTarget | None, BaseException | None] = (None, exc)
            else:
                result = (target, None)
            try:
                loop.call_soon_threadsafe(settle, *result)
            except RuntimeError:  # the loop closed while we woke (proxy shut down): nobody is waiting
                log.info("wake finished after the proxy stopped")

        # A daemon thread, not the default executor: a wake can block for ready_timeout_seconds, and
        # shutting the proxy down must not wait for it (the lifecycle records its intent before acting,
        # so an abandoned wake is recovered like a crash).
        threading.Thread(target=run, name="rpm-proxy-wake", daemon=True).start()
        return wake


def wake_error(exc: BaseException) -> ProxyError:
    """A failed wake as the answer every waiting request gets."""
    if isinstance(exc, LimitRefused):
        return ProxyError(503, f"the pod was not started: {exc}", code="limit_refused", should_retry=False)
    if isinstance(exc, LockBusy):
        return ProxyError(503, f"the pod could not be woken now: {exc}", code="state_busy",
                          retry_after_seconds=5.0, should_retry=True)
    if isinstance(exc, NotReady):
        return ProxyError(503, f"the pod did not become ready: {exc}", code="pod_not_ready",
                          should_retry=False)
    if isinstance(exc, ApiError):
        return ProxyError(502, f"waking the pod failed: {exc}", code="wake_failed", should_retry=False)
    if isinstance(exc, RpmError):
        return ProxyError(503, f"waking the pod failed: {exc}", code="wake_failed", should_retry=False)
    # Unexpected: the traceback is in the proxy log; the client gets the type, never locals.
    return ProxyError(502, f"waking the pod failed unexpectedly ({type(exc).__name__}); see the proxy log",
                      code="wake_failed", should_retry=False)
