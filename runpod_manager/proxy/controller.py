"""The seam between the proxy (asyncio, data plane) and the lifecycle (synchronous, control plane).

The proxy never talks to RunPod or the state file itself: it asks a ProxyController. Blocking methods are
called from a worker thread (`asyncio.to_thread`). `lifecycle.LifecycleProxyController` is the real one;
tests use fakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class UpstreamTarget:
    """Where to send a request: the pod URL (no trailing slash) and the key vLLM was started with."""

    pod_id: str
    base_url: str
    upstream_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PodView:
    """What the proxy shows on /health, /dashboard and /metrics. Cheap to produce (no API call)."""

    pod_id: str | None = None
    status: str | None = None  # RunPod status, or None when there is no pod
    ready: bool = False
    lease_open: bool = False
    gpu_type_id: str | None = None
    cost_per_hour: float = 0.0
    spend_today_usd: float = 0.0
    max_daily_spend_usd: float = 0.0
    deadline: datetime | None = None
    limits: dict[str, Any] = field(default_factory=dict)  # limit name -> ISO time it fires, or reason
    last_action: str | None = None
    last_reason: str | None = None


class ProxyController(Protocol):
    def current_target(self) -> UpstreamTarget | None:
        """The ready pod to forward to, from state (no API call); None when it must be woken first."""

    def wake(self) -> UpstreamTarget:
        """Blocking: open a lease and start/resume/create the pod, wait until ready.

        Raises runpod_manager.errors.LimitRefused when a limit forbids it (spend cap, cutoff), and other
        RpmError subclasses when it fails.
        """

    def reconcile(self, last_request_at: datetime | None) -> PodView:
        """Blocking: record activity and run one enforcement pass (idle stop, limits). Never raises
        for a busy lock (another rpm acts); may raise RpmError for other failures."""

    def view(self) -> PodView:
        """Cheap: the current picture from state."""

    def mark_unreachable(self, pod_id: str) -> None:
        """The pod URL failed after retries: forget readiness so the next request wakes/rechecks."""
