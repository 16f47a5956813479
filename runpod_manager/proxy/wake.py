"""The cold-start gate: which pod a request goes to, and what it does while none is ready.

Two levels, both living on the proxy's loop:
- `WakeGate`, one per pod (a configured pod, or one of its replicas "chat-r2"): where to send (`target`),
  its one wake at a time, its requests in flight and when it last had one (its own idle clock).
- `PodGroup`, one per configured pod, i.e. per model: its replicas' gates, the model's bounded queue of
  requests waiting for a wake, the choice of replica, and when to wake another replica.

Hot path: `PodGroup.pick()` reads the gates' `target` attributes (one attribute read for a pod without
replicas) and returns the ready replica with the fewest requests in flight (the first on a tie, so light
traffic stays on the first replica and the others go idle). Targets are refreshed off the loop — by a
wake, by the app's reconcile loop (every `reconcile_interval_seconds`), and on the slow path — and
cleared when a pod stops answering. So a request to a known pod costs no thread hop and no I/O.

Slow path (`PodGroup.wait_for_target`): ask the controller once more for every replica (in a thread;
concurrent requests share the one call), then — when `wake_on_request` is on — wake ONE replica (in a
worker thread; one already created and stopped before one never created, when the views tell) and let up
to `max_queue_size` requests wait until a replica is ready, each for at most `queue_timeout_seconds`.
Everything that cannot be served turns into a ProxyError with an OpenAI-shaped message; nothing waits
forever or is dropped silently. Streaming callers pass `on_tick`, called every `keepalive_interval_seconds`
while they wait, to keep editors and RunPod's 100 s cut-off seeing bytes. Other callers pass `answer_by`:
a request without response headers by then gets a retryable 503 (the wake goes on; the retry joins it),
because Node's fetch gives up on a request whose headers take 300 s and would lose it instead.

Replicas: the model's load is its requests outstanding — waiting for a wake, or in flight at a replica —
per replica that is ready or waking. When it stays over `replica_queue_depth` for `replica_queue_seconds`
(the loop's clock; any moment at or under the depth restarts the count), one more replica is woken, and
the count starts again with it. A short spike wakes nothing; the control plane stops idle replicas on
their own clocks, because each gate reports its own activity (`activity`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.errors import ApiError, LeaseClosed, LimitRefused, LockBusy, NotReady, RpmError
from runpod_manager.proxy.controller import PodView, ProxyController
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.metrics import ProxyMetrics
from runpod_manager.proxy.routing import PodRoute

log = logging.getLogger("runpod_manager.proxy")

TickCallback = Callable[[float], Awaitable[None]]


class WakeGate:
    """One pod: its current target, its wake (at most one at a time), its requests in flight."""

    def __init__(self, name: str, controller: ProxyController, *, metrics: ProxyMetrics | None = None) -> None:
        self.name = name
        self.target: UpstreamTarget | None = None
        self.in_flight = 0  # requests sent to this pod and not finished: the replica choice, and activity
        self.last_request_at: float | None = None  # unix time a request to this pod last started or ended
        self.last_wake_error: str | None = None
        # Who started the latest wake: the key's name (None: no key, or a replica woken for load) and when
        # (unix time). Shown on the dashboard; set where the wake starts.
        self.woken_by: str | None = None
        self.woken_at: float | None = None
        self.on_settled: Callable[[WakeGate, BaseException | None], None] | None = None
        self.on_started: Callable[[WakeGate], None] | None = None  # on the loop, as a wake starts
        self._controller = controller
        self._metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the latest wake (its clock)
        self._waking_since: float | None = None  # loop time the wake in progress started
        # Loop times the last wake that made this pod ready began and ended: the wake's whole length, which a
        # request that waited for it is told (its retry after a 503 too), not only its own part of it.
        self.last_wake_span: tuple[float, float] | None = None
        # A stop during the wake: the loop time the proxy saw the wake's lease close (its own management
        # API's stop, or the views showing the lease closed after the wake opened it), None while not seen.
        # Requests that came after it are not answered by the doomed wake's end: they wake the pod again.
        self.lease_closed_at: float | None = None
        self._lease_seen = False  # the views showed this wake's lease open

    @property
    def waking(self) -> bool:
        return self._waking_since is not None

    def wake_seconds(self) -> float:
        """How long the wake in progress has taken so far (0 when none runs)."""
        if self._waking_since is None or self._loop is None:
            return 0.0
        return self._loop.time() - self._waking_since

    def set_target(self, target: UpstreamTarget | None) -> None:
        """Called by the reconcile loop with the controller's latest answer."""
        if target is None and self.waking:
            return  # the wake in progress will set it; do not race it with a stale None
        self.target = target

    def observe_lease(self, lease_open: bool) -> None:
        """The views' word on this pod's lease (each reconcile): closed after the wake opened it is a stop."""
        if self._waking_since is None:
            return
        if lease_open:
            self._lease_seen = True
        elif self._lease_seen:
            self.note_stopped()

    def note_stopped(self) -> None:
        """The pod was stopped while it woke: the wake in progress ends without it (see lease_closed_at)."""
        if self._waking_since is not None and self._loop is not None and self.lease_closed_at is None:
            self.lease_closed_at = self._loop.time()

    def forget(self, pod_id: str) -> None:
        """The pod stopped answering: the next request goes through the slow path (and wakes)."""
        if self.target is not None and self.target.instance_id == pod_id:
            self.target = None

    def start_wake(self, loop: asyncio.AbstractEventLoop, woken_by: str | None = None) -> None:
        """Run controller.wake(pod) in a worker thread; the result lands on the loop (`on_settled`).
        `woken_by`: the name of the key whose request (or management call) asked for it."""
        if self._waking_since is not None:
            return
        self._loop = loop
        self.lease_closed_at, self._lease_seen = None, False
        started = self._waking_since = loop.time()
        self.woken_by, self.woken_at = woken_by, time.time()
        if self.on_started is not None:
            self.on_started(self)
        name = self.name
        log.info("no ready pod: waking %s for waiting requests", name)

        def settle(target: UpstreamTarget | None, error: BaseException | None) -> None:
            self._waking_since = None
            ended = loop.time()
            duration = ended - started
            if error is None and not isinstance(target, UpstreamTarget):
                error = TypeError(f"controller.wake() returned {type(target).__name__}, not UpstreamTarget")
            if error is None:
                assert isinstance(target, UpstreamTarget)  # noqa: S101 - narrowed for mypy; checked above
                self.target = target
                self.last_wake_error = None
                self.last_wake_span = (started, ended)
                outcome = "ok"
                log.info("pod %s (%s) ready after %.1f s", name, target.instance_id, duration)
            else:
                outcome = "limit_refused" if isinstance(error, LimitRefused) else "failed"
                self.last_wake_error = str(error) if isinstance(error, RpmError) else type(error).__name__
                if isinstance(error, RpmError):
                    log.warning("waking %s failed after %.1f s: %s", name, duration, error)
                else:
                    log.error("waking %s failed after %.1f s", name, duration, exc_info=error)
            if self._metrics is not None:
                self._metrics.wakes.labels(name, outcome).inc()
                self._metrics.wake_duration.labels(name).observe(duration)
            if self.on_settled is not None:
                self.on_settled(self, error)

        def run() -> None:
            try:
                target = self._controller.wake(name)
            except BaseException as exc:  # handed to the loop, which reports it to every waiter
                result: tuple[UpstreamTarget | None, BaseException | None] = (None, exc)
            else:
                result = (target, None)
            try:
                loop.call_soon_threadsafe(settle, *result)
            except RuntimeError:  # the loop closed while we woke (proxy shut down): nobody is waiting
                log.info("wake of %s finished after the proxy stopped", name)

        # A daemon thread, not the default executor: a wake can block for ready_timeout_seconds, and
        # shutting the proxy down must not wait for it (the lifecycle records its intent before acting,
        # so an abandoned wake is recovered like a crash).
        threading.Thread(target=run, name=f"rpm-proxy-wake-{name}", daemon=True).start()


class PodGroup:
    """A configured pod and its replicas: the model's queue, the choice of replica, waking more of them."""

    def __init__(
        self,
        route: PodRoute,
        controller: ProxyController,
        *,
        wake_on_request: bool,
        max_queue_size: int,
        queue_timeout_seconds: float,
        keepalive_interval_seconds: float = 5.0,
        queue_full_retry_after_seconds: float = 5.0,
        waking_retry_after_seconds: float = 1.0,
        metrics: ProxyMetrics | None = None,
        solo: bool = True,
    ) -> None:
        self.route = route
        self.solo = solo and len(route.replicas) == 1  # the config's one pod: messages say "the pod"
        self.name = route.name
        self.gates = tuple(WakeGate(name, controller, metrics=metrics) for name in route.replicas)
        self.only = self.gates[0] if len(self.gates) == 1 else None  # the hot path of a pod without replicas
        self.waiting = 0
        self.wake_on_request = wake_on_request
        self.max_queue_size = max_queue_size
        self.queue_timeout_seconds = queue_timeout_seconds
        self.keepalive_interval_seconds = keepalive_interval_seconds
        self.queue_full_retry_after_seconds = queue_full_retry_after_seconds
        self.waking_retry_after_seconds = waking_retry_after_seconds
        self.views: Mapping[str, PodView] = {}  # the latest views (set by the app): which replica to wake
        self.last_failure: BaseException | None = None  # the last wake's error, until a wake starts or works
        self.on_wake_settled: Callable[[WakeGate, BaseException | None], None] | None = None
        # The pod's last own GET /v1/models answer (any replica's: they serve one model) and the ids in it.
        self.models_body: bytes | None = None
        self.model_ids: frozenset[str] = frozenset()
        self._controller = controller
        self._queue_gauge = metrics.queue_depth.labels(route.name) if metrics is not None else None
        self._refresh: asyncio.Future[list[UpstreamTarget | None]] | None = None
        self._changed: asyncio.Future[None] | None = None  # resolved when a wake starts or ends
        self._waiting_since: dict[object, float] = {}  # loop time each waiting request arrived
        # Waiting requests whose wake a stop ended (they waited before the stop): the error each gets.
        self._stopped_waits: dict[object, BaseException] = {}
        self._deep_since: float | None = None  # loop time the load went over replica_queue_depth
        self._scale_timer: asyncio.TimerHandle | None = None
        for gate in self.gates:
            gate.on_settled = self._settled

    # ------------------------------------------------------------------------------------- hot path

    def pick(self) -> tuple[WakeGate, UpstreamTarget] | None:
        """The ready replica with the fewest requests in flight (the first on a tie), or None."""
        only = self.only
        if only is not None:
            target = only.target
            return None if target is None else (only, target)
        best: tuple[WakeGate, UpstreamTarget] | None = None
        for gate in self.gates:
            target = gate.target
            if target is not None and (best is None or gate.in_flight < best[0].in_flight):
                best = (gate, target)
        return best

    def begin(self, gate: WakeGate) -> None:
        """A request is sent to `gate` (its activity from now until `end`)."""
        gate.in_flight += 1
        gate.last_request_at = time.time()
        if self.only is None:
            self._check_load()

    def end(self, gate: WakeGate) -> None:
        gate.in_flight -= 1
        gate.last_request_at = time.time()
        if self.only is None:
            self._check_load()

    # --------------------------------------------------------------------------------- observation

    @property
    def waking(self) -> bool:
        return any(gate.waking for gate in self.gates)

    def activity(self, gate: WakeGate, now: float) -> float | None:
        """When `gate`'s pod was last used (unix time): now while it serves a request or wakes for waiting
        ones (a boot longer than the idle timeout is not idleness), else its last request's start or end.
        Another replica's traffic never counts."""
        if gate.in_flight or (self.waiting and gate.waking):
            return now
        return gate.last_request_at

    def oldest_wait_seconds(self) -> float | None:
        """How long the longest-waiting request of this model has waited (None: none waits)."""
        if not self._waiting_since:
            return None
        return asyncio.get_running_loop().time() - min(self._waiting_since.values())

    # ---------------------------------------------------------------------------------- slow path

    async def refresh(self) -> tuple[WakeGate, UpstreamTarget] | None:
        """Ask the controller for every replica's target (one thread); concurrent callers share the call."""
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(asyncio.to_thread(self._read_targets))
            self._refresh.add_done_callback(self._refresh_done)
        try:
            targets = await asyncio.shield(self._refresh)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken state file must not take requests down with it
            log.warning("could not read the current pods of %s from the controller: %s", self.name, exc)
            return None
        for gate, target in zip(self.gates, targets, strict=True):
            if target is not None:
                gate.target = target
        return self.pick()

    def _read_targets(self) -> list[UpstreamTarget | None]:
        return [self._controller.current_target(gate.name) for gate in self.gates]

    def _refresh_done(self, future: asyncio.Future[list[UpstreamTarget | None]]) -> None:
        self._refresh = None
        if not future.cancelled():
            future.exception()  # retrieved here so asyncio does not log it again

    async def wait_for_target(self, on_tick: TickCallback | None = None, *, answer_by: float | None = None,
                              woken_by: str | None = None
                              ) -> tuple[WakeGate, UpstreamTarget, float | None, float | None]:
        """The replica to send to, its target, how long this request waited for a wake, and how long that wake
        took from its start (X-RPM-Cold-Start: a retry after a 503 joined a wake older than itself). Nones:
        the request did not wait.

        `answer_by` (loop time): when no replica is ready by then, raise a retryable 503 (pod_waking).
        `woken_by`: the request's key name, recorded on the gate when this request starts a wake.
        """
        chosen = self.pick()
        if chosen is not None:
            return chosen[0], chosen[1], None, None
        if not self.waking:
            chosen = await self.refresh()
            if chosen is not None:
                return chosen[0], chosen[1], None, None
        self._check_may_wait()
        loop = asyncio.get_running_loop()
        started = loop.time()
        token = object()
        self._waiting_since[token] = started
        self._set_waiting(self.waiting + 1)
        try:
            if not self.waking:
                self._wake_one(loop, woken_by)
            deadline = started + self.queue_timeout_seconds
            give_up_at = deadline if answer_by is None else min(deadline, answer_by)
            while True:
                chosen = self.pick()
                if chosen is not None:
                    break
                stopped = self._stopped_waits.pop(token, None)
                if stopped is not None:
                    raise wake_error(stopped)
                if not self.waking:
                    if self.last_failure is not None:
                        raise wake_error(self.last_failure)
                    self._wake_one(loop, woken_by)  # a replica woke and went away again before this request got it
                remaining = give_up_at - loop.time()
                if remaining <= 0:
                    raise self._gave_up(waking_answer=give_up_at < deadline)
                step = remaining if on_tick is None else min(remaining, self.keepalive_interval_seconds)
                await asyncio.wait((self._changed_future(loop),), timeout=step)
                if on_tick is not None and self.pick() is None and self.waking and loop.time() < deadline:
                    await on_tick(loop.time() - started)
        finally:
            del self._waiting_since[token]
            self._stopped_waits.pop(token, None)
            self._set_waiting(self.waiting - 1)
        waited = loop.time() - started
        span = chosen[0].last_wake_span
        # The wake this request waited for is the one that ended while it waited; a replica found ready
        # another way (the reconcile loop saw `rpm start`'s pod) had no wake of the proxy's: its own wait.
        wake_seconds = span[1] - span[0] if span is not None and span[1] >= started else waited
        return chosen[0], chosen[1], waited, max(wake_seconds, waited)

    def _check_may_wait(self) -> None:
        """Raise the answer of a request that may not wait for a wake: wakes are off, or the queue is full."""
        if not self.wake_on_request:
            raise ProxyError(
                503, f"{self._pod_words()} is not running and [proxy] wake_on_request is off; run `rpm start` "
                "to start it", code="pod_not_running", should_retry=False)
        if self.waiting >= self.max_queue_size:
            raise ProxyError(
                503, f"{self.waiting} requests are already waiting for {self._pod_words()} to wake "
                f"([proxy] max_queue_size = {self.max_queue_size}); retry in a few seconds",
                code="queue_full", retry_after_seconds=self.queue_full_retry_after_seconds,
                should_retry=True)

    def _gave_up(self, *, waking_answer: bool) -> ProxyError:
        """The answer to a request that waited as long as it may: the retryable 503 a plain request gets at
        `answer_by` (the wake goes on), or the 504 at queue_timeout_seconds."""
        if waking_answer:
            waking_seconds = max(gate.wake_seconds() for gate in self.gates)
            return ProxyError(
                503, f"{self._pod_words()} is still waking ({waking_seconds:.0f} s so far); retry: the retry "
                "joins the same wake. A request without a response by [proxy] wake_hold_seconds is answered so, "
                "before clients that give up silently drop it",
                code="pod_waking", retry_after_seconds=self.waking_retry_after_seconds, should_retry=True)
        return ProxyError(
            504, f"{self._pod_words()} did not become ready within {self.queue_timeout_seconds:g} s "
            "([proxy] queue_timeout_seconds); it is still starting, retry shortly",
            code="queue_timeout", retry_after_seconds=5.0, should_retry=True)

    def _pod_words(self) -> str:
        return "the pod" if self.solo else f"pod {self.name!r}"

    def _set_waiting(self, count: int) -> None:
        self.waiting = count
        if self._queue_gauge is not None:
            self._queue_gauge.set(count)
        if self.only is None:
            self._check_load()

    def _changed_future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        if self._changed is None:
            self._changed = loop.create_future()
        return self._changed

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _choose_wake(self) -> WakeGate | None:
        """The replica to wake next: one neither ready nor waking, an existing (stopped) pod before one
        never created (a resume is much faster than a create), then in order."""
        def rank(item: tuple[int, WakeGate]) -> tuple[int, int]:
            index, gate = item
            view = self.views.get(gate.name)
            exists = view is not None and view.pod_id is not None and view.status != "TERMINATED"
            return (0 if exists else 1, index)

        candidates = [(index, gate) for index, gate in enumerate(self.gates) if gate.target is None and not gate.waking]
        return min(candidates, key=rank)[1] if candidates else None

    def _wake_one(self, loop: asyncio.AbstractEventLoop, woken_by: str | None = None) -> None:
        gate = self._choose_wake()
        if gate is None:
            return
        self.last_failure = None
        gate.start_wake(loop, woken_by)
        self._notify()

    def note_stopped(self, gate: WakeGate) -> None:
        """`gate`'s pod was stopped (by this proxy's management API): a wake in progress ends without it."""
        gate.note_stopped()

    def _settled(self, gate: WakeGate, error: BaseException | None) -> None:
        if isinstance(error, LeaseClosed) and not self.waking:
            # A stop ended the wake. The requests that waited before it get a retryable answer (their
            # retry wakes the pod, as any request to a stopped pod does); those that came after the proxy
            # saw the stop are such requests already: they wake it again now (last_failure stays None).
            closed_at = gate.lease_closed_at
            for token, since in self._waiting_since.items():
                if closed_at is None or since <= closed_at:
                    self._stopped_waits[token] = error
            error_for_waiters: BaseException | None = None
        else:
            error_for_waiters = error
        self.last_failure = error_for_waiters
        if self.on_wake_settled is not None:
            self.on_wake_settled(gate, error)
        self._notify()
        if self.only is None:
            self._check_load()

    # ------------------------------------------------------------------------------------ replicas

    def _check_load(self) -> None:
        """Start the clock when the load goes over replica_queue_depth per awake replica; stop it at or under."""
        awake = 0
        load = self.waiting
        for gate in self.gates:
            load += gate.in_flight
            if gate.target is not None or gate.waking:
                awake += 1
        if (self.wake_on_request and awake < len(self.gates)
                and load > self.route.replica_queue_depth * max(awake, 1)):
            if self._deep_since is None:
                loop = asyncio.get_running_loop()
                self._deep_since = loop.time()
                self._scale_timer = loop.call_later(self.route.replica_queue_seconds, self._deep_for_long)
            return
        self._deep_since = None
        if self._scale_timer is not None:
            self._scale_timer.cancel()
            self._scale_timer = None

    def _deep_for_long(self) -> None:
        self._scale_timer = None
        if self._deep_since is None:
            return
        self._deep_since = None
        gate = self._choose_wake()
        if gate is not None:
            log.info("the load of %s stayed over replica_queue_depth = %d per replica for %g s: waking %s",
                     self.name, self.route.replica_queue_depth, self.route.replica_queue_seconds, gate.name)
            self._wake_one(asyncio.get_running_loop())
        self._check_load()  # one more replica awake: the count starts again if the load is still too high

    def close(self) -> None:
        if self._scale_timer is not None:
            self._scale_timer.cancel()
            self._scale_timer = None


def wake_error(exc: BaseException) -> ProxyError:
    """A failed wake as the answer every waiting request gets."""
    if isinstance(exc, LimitRefused):
        return ProxyError(503, f"the pod was not started: {exc}", code="limit_refused", should_retry=False)
    if isinstance(exc, LeaseClosed):
        return ProxyError(503, f"the pod was stopped while it woke: {exc}; a retry wakes it again",
                          code="pod_stopped", retry_after_seconds=1.0, should_retry=True)
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
