"""The real ProxyController: the proxy's window on state and on the control plane, for every pod.

The proxy depends on the lifecycle through this module only (and the lifecycle never on the proxy). The
enforcement pass runs over all pods at once (`control.reconcile`: one lock, one list call); each wake uses
a Lifecycle of its own per pod (its own HTTP session), because a wake waits minutes for readiness while the
pass keeps enforcing limits every few seconds. Every fact the views show comes from the function the planner
uses for it (`PodRecord.ready`, `policy.limit_view`, `spend.today_usd`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime

from runpod_manager import control, policy, spend
from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.errors import ConfigError, NotOwned, NotReady
from runpod_manager.lifecycle import Lifecycle
from runpod_manager.proxy.controller import PodView
from runpod_manager.state import PodRecord


class LifecycleProxyController:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self._fleet = control.Fleet(lifecycle)
        self._store = lifecycle.store
        self._wakers: dict[str, Lifecycle] = {}
        self._wake_locks = {name: threading.Lock() for name in self._fleet.names}
        self._wakers_lock = threading.Lock()
        self._managers: dict[str, Lifecycle] = {}  # the management API's starts and stops, per pod
        self._manage_locks = {name: threading.Lock() for name in self._fleet.names}

    def pod_names(self) -> tuple[str, ...]:
        return self._fleet.names

    def _member(self, pod: str) -> Lifecycle:
        try:
            return self._fleet.members[pod]
        except KeyError:
            raise ConfigError(f"no pod named {pod!r} in this proxy's config") from None

    def current_target(self, pod: str) -> UpstreamTarget | None:
        self._member(pod)
        record = self._store.load().pods.get(pod)
        # The entry's backend says where its requests go (empty unless a lease is open and it is ready).
        targets = () if record is None else self._fleet.backends[pod].upstreams(record)
        return targets[0] if targets else None

    def wake(self, pod: str) -> UpstreamTarget:
        self._member(pod)  # ConfigError for a pod not in the config
        with self._wake_locks[pod]:
            target = self.current_target(pod)
            if target is not None:
                return target
            record = control.start(self._waker(pod), wait=True, opened_by="wake", wait_seconds=None).record
            targets = self._fleet.backends[pod].upstreams(record)
            if not targets:
                raise NotReady(f"pod {pod} did not start")
            return targets[0]

    def _waker(self, pod: str) -> Lifecycle:
        with self._wakers_lock:
            if pod not in self._wakers:
                self._wakers[pod] = self._member(pod).sibling()  # same store and ports, its own HTTP session
            return self._wakers[pod]

    def _manager(self, pod: str) -> Lifecycle:
        with self._wakers_lock:
            if pod not in self._managers:
                self._managers[pod] = self._member(pod).sibling()  # its own HTTP session: a wake may run
            return self._managers[pod]

    def start(self, pod: str, opened_by: str) -> PodView:
        self._member(pod)
        with self._manage_locks[pod]:
            control.start(self._manager(pod), wait=False, opened_by=opened_by)
        return self.view(pod)

    def stop(self, pod: str, *, terminate: bool) -> PodView:
        member = self._member(pod)
        if terminate and member.config.pod.pod_id:
            raise NotOwned(f"pod {pod!r} is adopted (pod_id = {member.config.pod.pod_id!r} in the config): rpm did "
                           "not create it and never terminates it; stop it instead, or terminate it on RunPod")
        with self._manage_locks[pod]:
            # The proxies stay: this proxy answers the call, and it keeps serving the other pods.
            control.shutdown(self._manager(pod), stop=not terminate, stop_proxies=False)
        return self.view(pod)

    def reconcile(self, last_request_at: Mapping[str, datetime | None]) -> Mapping[str, PodView]:
        control.reconcile(self._fleet, wait_seconds=0, last_request_at=last_request_at)
        return self.views()

    def view(self, pod: str) -> PodView:
        member = self._member(pod)
        return _view(member, self._store.load().pods.get(pod))

    def views(self) -> Mapping[str, PodView]:
        state = self._store.load()
        return {name: _view(member, state.pods.get(name)) for name, member in self._fleet.members.items()}

    def mark_unreachable(self, pod: str, pod_id: str) -> None:
        with self._member(pod).transaction(None) as state:
            record = state.record(pod)
            if record.ready_pod_id == pod_id:
                record.ready_pod_id = None




def _view(member: Lifecycle, record: PodRecord | None) -> PodView:
    config = member.config
    record = record or PodRecord(config_name=member.name)
    now = member.clock()
    limits = policy.limit_view(now, config, record, policy.activity_of(record))
    return PodView(
        name=member.name, pod_id=record.pod_id, status=record.last_status if record.pod_id else None,
        ready=record.ready and record.lease is not None,
        lease_open=record.lease is not None, gpu_type_id=record.gpu_type_id,
        cost_per_hour=record.cost_per_hour if record.pod_id else 0.0,
        spend_today_usd=spend.today_usd(record, policy.local_day(now, config.zone)),
        max_daily_spend_usd=config.limits.max_daily_spend_usd,
        deadline=limits.deadline,
        limits={policy.Limit.RUNTIME: limits.runtime_ends_at, policy.Limit.CUTOFF: limits.cutoff_at,
                policy.Limit.IDLE: limits.idle_ends_at},
        last_action=record.last_action, last_reason=record.last_reason,
    )
