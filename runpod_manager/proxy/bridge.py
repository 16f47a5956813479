"""The real ProxyController: the proxy's window on state and on the lifecycle.

The proxy depends on the lifecycle through this module only (and the lifecycle never on the proxy). Wake
and reconcile use separate Lifecycle instances (and so separate HTTP sessions), because a wake waits
minutes for readiness while reconcile keeps enforcing limits every few seconds. Every fact the views show
comes from the function the planner uses for it (`PodRecord.ready`, `policy.limit_view`, `spend.today_usd`).
"""

from __future__ import annotations

import threading
from datetime import datetime

from runpod_manager import control, policy, spend
from runpod_manager.errors import NotReady
from runpod_manager.lifecycle import Lifecycle
from runpod_manager.proxy.controller import PodView, UpstreamTarget
from runpod_manager.state import PodRecord


class LifecycleProxyController:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._waker = lifecycle.sibling()
        self._wake_lock = threading.Lock()

    def _record(self) -> PodRecord | None:
        return self._lifecycle.store.load().pods.get(self._lifecycle.name)

    def current_target(self) -> UpstreamTarget | None:
        record = self._record()
        if record is None or record.lease is None or not record.ready or record.pod_id is None:
            return None
        return UpstreamTarget(record.pod_id, self._lifecycle.pod_url(record.pod_id), record.upstream_key)

    def wake(self) -> UpstreamTarget:
        with self._wake_lock:
            target = self.current_target()
            if target is not None:
                return target
            record = control.start(self._waker, wait=True, opened_by="wake", wait_seconds=None).record
            if record.pod_id is None:
                raise NotReady("the pod did not start")
            return UpstreamTarget(record.pod_id, self._lifecycle.pod_url(record.pod_id), record.upstream_key)

    def reconcile(self, last_request_at: datetime | None) -> PodView:
        self._lifecycle.reconcile(wait_seconds=0, activity_at=last_request_at)
        return self.view()

    def view(self) -> PodView:
        lifecycle = self._lifecycle
        config = lifecycle.config
        record = self._record() or PodRecord(config_name=lifecycle.name)
        now = lifecycle.clock()
        limits = policy.limit_view(now, config, record, policy.activity_of(record))
        return PodView(
            pod_id=record.pod_id, status=record.last_status if record.pod_id else None,
            ready=record.ready and record.lease is not None,
            lease_open=record.lease is not None, gpu_type_id=record.gpu_type_id,
            cost_per_hour=record.cost_per_hour if record.pod_id else 0.0,
            spend_today_usd=spend.today_usd(record, policy.local_day(now, config.zone)),
            max_daily_spend_usd=config.limits.max_daily_spend_usd,
            deadline=limits.deadline,
            limits={"runtime": limits.runtime_ends_at, "cutoff": limits.cutoff_at, "idle": limits.idle_ends_at},
            last_action=record.last_action, last_reason=record.last_reason,
        )

    def mark_unreachable(self, pod_id: str) -> None:
        with self._lifecycle.transaction(None) as state:
            record = state.record(self._lifecycle.name)
            if record.ready_pod_id == pod_id:
                record.ready_pod_id = None
