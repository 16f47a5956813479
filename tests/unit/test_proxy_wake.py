"""proxy/wake.py's PodGroup: which replica a request goes to, which one a wake starts, each pod's own activity,
and when a second replica is woken, on an event loop whose clock the test moves (no wall-clock timing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.config import PodConfig
from runpod_manager.errors import LeaseClosed, LimitRefused
from runpod_manager.proxy.controller import PodView
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.routing import route_of
from runpod_manager.proxy.wake import PodGroup
from tests.support.proxy_fakes import FakeController, FakePod

ONE = UpstreamTarget("pod-1", "http://127.0.0.1:1", "k")
TWO = UpstreamTarget("pod-2", "http://127.0.0.1:2", "k")
THREE = UpstreamTarget("pod-3", "http://127.0.0.1:3", "k")


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose time moves only when the test says so: timers fire exactly at `advance`."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def run(scenario: Callable[[ClockLoop], Coroutine[Any, Any, None]]) -> None:
    loop = ClockLoop()
    try:
        loop.run_until_complete(scenario(loop))
    finally:
        loop.close()


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until `predicate` holds (a wake thread's answer lands); the loop's clock stays put."""
    give_up = time.monotonic() + 10  # a bound on a hang, never a timing assertion
    while not predicate():
        assert time.monotonic() < give_up, "it never happened"
        await asyncio.sleep(0)


async def advance(loop: ClockLoop, seconds: float) -> None:
    loop.now += seconds
    for _ in range(3):  # let the timers now due, and what they scheduled, run
        await asyncio.sleep(0)


def group_of(controller: FakeController, *, replicas: int = 3, depth: int = 2, seconds: float = 10.0,
             **options: Any) -> PodGroup:
    route = route_of(PodConfig(name="chat", model="m/chat", replicas=replicas, replica_queue_depth=depth,
                               replica_queue_seconds=seconds))
    return PodGroup(route, controller, wake_on_request=True, max_queue_size=50, queue_timeout_seconds=60,
                    **options)


def replicas(*targets: UpstreamTarget | None, hold_wake: bool = True) -> FakeController:
    names = ["chat", "chat-r2", "chat-r3"][:len(targets)]
    return FakeController(pods={name: FakePod(target, wake_target=THREE, hold_wake=hold_wake)
                                for name, target in zip(names, targets, strict=True)})


def test_a_request_goes_to_the_ready_replica_with_the_fewest_in_flight_the_first_on_a_tie() -> None:
    async def scenario(loop: ClockLoop) -> None:
        group = group_of(replicas(ONE, TWO, None), depth=100)
        first, second, third = group.gates
        first.target, second.target = ONE, TWO
        assert group.pick() == (first, ONE)  # a tie: the first, so light traffic leaves the others idle
        group.begin(first)
        assert group.pick() == (second, TWO)
        group.begin(second)
        group.begin(second)
        assert group.pick() == (first, ONE)
        group.end(second)
        group.end(second)
        assert group.pick() == (second, TWO)
        second.forget("pod-2")  # stopped answering
        assert group.pick() == (first, ONE)
        assert third.target is None and group.pick() != (third, None)

    run(scenario)


def test_the_second_replica_wakes_only_when_the_load_stays_over_the_depth_for_the_configured_time() -> None:
    async def scenario(loop: ClockLoop) -> None:
        controller = replicas(ONE, None, None)
        group = group_of(controller, depth=2, seconds=10.0)
        first = group.gates[0]
        first.target = ONE
        for _ in range(3):  # 3 in flight on one awake replica: over 2 per replica
            group.begin(first)
        await advance(loop, 9.0)
        group.end(first)  # a dip to the depth (2): not "stayed over"; the count starts again
        await advance(loop, 0.5)
        group.begin(first)
        await advance(loop, 9.9)  # 19.4 s of load in all, but only 9.9 s of it uninterrupted
        assert not any(gate.waking for gate in group.gates)
        await advance(loop, 0.2)
        assert controller.pods["chat-r2"].wake_started.wait(5)
        assert controller.wake_order == ["chat-r2"]  # one more, not all of them
        # Now two replicas are awake (one waking): 3 in flight is not over 2 × 2, so no third wakes.
        await advance(loop, 60.0)
        assert not group.gates[2].waking
        for _ in range(2):  # 5 > 4: the count starts again for the third
            group.begin(first)
        await advance(loop, 10.0)
        assert controller.pods["chat-r3"].wake_started.wait(5)
        assert controller.wake_order == ["chat-r2", "chat-r3"]
        controller.release_all()

    run(scenario)


def test_a_short_spike_wakes_no_second_replica_and_one_pod_never_scales() -> None:
    async def scenario(loop: ClockLoop) -> None:
        controller = replicas(ONE, None)
        group = group_of(controller, replicas=2, depth=1, seconds=5.0)
        first = group.gates[0]
        first.target = ONE
        for _ in range(10):
            group.begin(first)
        await advance(loop, 4.0)
        for _ in range(10):
            group.end(first)
        await advance(loop, 60.0)
        assert not group.gates[1].waking

        solo = FakeController(ONE)
        alone = PodGroup(route_of(PodConfig(name="default", replica_queue_depth=1, replica_queue_seconds=0)), solo,
                         wake_on_request=True, max_queue_size=5, queue_timeout_seconds=5)
        for _ in range(10):
            alone.begin(alone.gates[0])
        await advance(loop, 60.0)
        assert not alone.waking

    run(scenario)


def test_one_wake_for_waiting_requests_a_stopped_replica_before_one_never_created() -> None:
    async def scenario(loop: ClockLoop) -> None:
        controller = replicas(None, None, None)
        for pod in controller.pods.values():
            pod.wake_target = TWO
        group = group_of(controller, depth=100)
        group.views = {"chat": PodView(name="chat"),  # never created
                       "chat-r2": PodView(name="chat-r2", pod_id="gone", status="TERMINATED"),
                       "chat-r3": PodView(name="chat-r3", pod_id="p3", status="EXITED")}  # stopped: resumes fast
        waiters = [asyncio.ensure_future(group.wait_for_target()) for _ in range(5)]
        await until(lambda: group.waiting == 5)
        assert [gate.name for gate in group.gates if gate.waking] == ["chat-r3"]
        assert group.oldest_wait_seconds() == 0.0  # the loop's clock has not moved
        await advance(loop, 2.5)
        assert group.oldest_wait_seconds() == 2.5
        controller.pods["chat-r3"].release_wake.set()
        served = await asyncio.gather(*waiters)
        assert {(gate.name, target) for gate, target, *_ in served} == {("chat-r3", TWO)}
        assert controller.wake_order == ["chat-r3"] and group.waiting == 0
        assert group.oldest_wait_seconds() is None

    run(scenario)


def test_a_failed_wake_answers_its_waiters_unless_another_replica_still_wakes() -> None:
    async def scenario(loop: ClockLoop) -> None:
        controller = replicas(None, None)
        controller.pods["chat"].wake_error = LimitRefused("pod chat: daily spend cap reached")
        controller.pods["chat-r2"].wake_target = TWO
        group = group_of(controller, replicas=2, depth=1, seconds=1.0)
        waiters = [asyncio.ensure_future(group.wait_for_target()) for _ in range(3)]
        await until(lambda: group.waiting == 3)
        await advance(loop, 1.0)  # 3 waiting > 1 for a second: the second replica wakes too
        assert controller.pods["chat-r2"].wake_started.wait(5)
        controller.pods["chat"].release_wake.set()
        await until(lambda: not group.gates[0].waking)
        assert not any(waiter.done() for waiter in waiters)  # chat-r2 still wakes: they wait for it
        controller.pods["chat-r2"].release_wake.set()
        assert {result[0].name for result in await asyncio.gather(*waiters)} == {"chat-r2"}

        lone = replicas(None, hold_wake=False)
        lone.pods["chat"].wake_error = LimitRefused("daily spend cap reached")
        group = group_of(lone, replicas=1)
        with pytest.raises(ProxyError, match="daily spend cap reached") as caught:
            await group.wait_for_target()
        assert caught.value.code == "limit_refused"

    run(scenario)


def test_each_pod_reports_its_own_activity() -> None:
    async def scenario(loop: ClockLoop) -> None:
        group = group_of(replicas(ONE, TWO, None), depth=100)
        first, second, third = group.gates
        first.target, second.target = ONE, TWO
        now = 5000.0
        assert [group.activity(gate, now) for gate in group.gates] == [None, None, None]
        group.begin(first)
        assert group.activity(first, now) == now  # serving: in use right now, however long it takes
        assert group.activity(second, now) is None  # the other replica's traffic is not its own
        group.end(first)
        ended = first.last_request_at
        assert ended is not None and group.activity(first, now) == ended
        assert group.activity(third, now) is None

    run(scenario)


def test_a_retry_after_the_waking_503_is_told_the_wakes_whole_length_not_only_its_own_wait() -> None:
    """240 s held and answered 503, a retry 2 s later, ready 87 s after that: the caller waited for the wake
    329 s, and that is what it is told (its own wait, 87 s, is kept beside it)."""
    async def scenario(loop: ClockLoop) -> None:
        controller = FakeController(None, wake_target=ONE, hold_wake=True, name="chat")
        group = PodGroup(route_of(PodConfig(name="chat", model="m/chat")), controller, wake_on_request=True,
                         max_queue_size=50, queue_timeout_seconds=900)
        first = asyncio.ensure_future(group.wait_for_target(answer_by=loop.time() + 240))
        await until(controller.wake_started.is_set)
        await advance(loop, 240)
        await until(first.done)
        with pytest.raises(ProxyError) as caught:
            await first
        assert caught.value.code == "pod_waking"
        await advance(loop, 2)
        retry = asyncio.ensure_future(group.wait_for_target(answer_by=loop.time() + 240))
        await until(lambda: group.waiting == 1)  # it joined the wake in progress
        await advance(loop, 87)
        controller.release_wake.set()
        await until(retry.done)
        _gate, target, waited, wake_seconds = await retry
        assert target == ONE
        assert (waited, wake_seconds) == (87, 329)
        # A request that finds the pod ready waited for nothing.
        assert (await group.wait_for_target())[2:] == (None, None)

    run(scenario)


def test_a_stop_during_a_wake_answers_its_waiters_retryable_and_a_request_after_it_opens_a_new_wake() -> None:
    """The pod is stopped (the management API, `rpm shutdown <pod>`, another process) while requests wait for
    its wake: the wake ends with LeaseClosed when the lifecycle sees the closed lease. The waits of that
    moment end with a retryable 503 (x-should-retry: true; the SDKs' retry wakes it again, as a second later
    any request would); a request that came after the stop was noticed waits on and is served by a new wake."""
    async def scenario(loop: ClockLoop) -> None:
        controller = FakeController(None, wake_target=ONE, hold_wake=True, name="chat")
        stops = [LeaseClosed("the lease was closed while waiting (stopped by the API)")]
        wake = controller.wake

        def wake_once_stopped(pod: str) -> UpstreamTarget:
            target = wake(pod)
            if stops:
                raise stops.pop()
            return target

        controller.wake = wake_once_stopped  # type: ignore[method-assign]
        group = PodGroup(route_of(PodConfig(name="chat", model="m/chat")), controller, wake_on_request=True,
                         max_queue_size=50, queue_timeout_seconds=900)
        gate = group.gates[0]
        before = asyncio.ensure_future(group.wait_for_target())
        await until(controller.wake_started.is_set)
        await advance(loop, 1)
        group.note_stopped(gate)  # the proxy saw the lease close (its own stop, or the views)
        await advance(loop, 1)
        after = asyncio.ensure_future(group.wait_for_target())
        await until(lambda: group.waiting == 2)
        controller.release_wake.set()
        await until(before.done)
        with pytest.raises(ProxyError) as caught:
            await before
        assert (caught.value.status, caught.value.code, caught.value.should_retry) == (503, "pod_stopped", True)
        assert caught.value.retry_after_seconds is not None
        await until(after.done)
        assert controller.wake_calls == 2  # the request after the stop woke the pod again
        assert (await after)[:2] == (gate, ONE)

    run(scenario)


def test_a_stop_the_proxy_did_not_notice_before_the_wake_ended_answers_every_waiter_retryable() -> None:
    async def scenario(loop: ClockLoop) -> None:
        controller = FakeController(None, wake_target=ONE, hold_wake=True, name="chat",
                                    wake_error=LeaseClosed("the lease was closed while waiting (shutdown)"))
        group = PodGroup(route_of(PodConfig(name="chat", model="m/chat")), controller, wake_on_request=True,
                         max_queue_size=50, queue_timeout_seconds=900)
        waiters = [asyncio.ensure_future(group.wait_for_target()) for _ in range(2)]
        await until(lambda: group.waiting == 2 and controller.wake_started.is_set())
        controller.release_wake.set()
        for waiter in waiters:
            await until(waiter.done)
            assert isinstance(waiter.exception(), ProxyError)
            assert waiter.exception().should_retry is True  # type: ignore[union-attr]
        assert controller.wake_calls == 1 and not group.waking  # a retry opens a new lease

    run(scenario)


def test_the_views_tell_a_stop_during_a_wake_only_after_they_showed_its_lease_open() -> None:
    async def scenario(loop: ClockLoop) -> None:
        controller = FakeController(None, wake_target=ONE, hold_wake=True, name="chat")
        group = PodGroup(route_of(PodConfig(name="chat", model="m/chat")), controller, wake_on_request=True,
                         max_queue_size=50, queue_timeout_seconds=900)
        gate = group.gates[0]
        waiter = asyncio.ensure_future(group.wait_for_target())
        await until(controller.wake_started.is_set)
        gate.observe_lease(False)  # a view from before the wake opened its lease: not a stop
        assert gate.lease_closed_at is None
        gate.observe_lease(True)
        await advance(loop, 3)
        gate.observe_lease(False)  # open, then closed: stopped
        assert gate.lease_closed_at == loop.now
        controller.release_wake.set()
        await until(waiter.done)
        gate.observe_lease(False)  # no wake runs: nothing to note
        assert gate.lease_closed_at == loop.now

    run(scenario)
