"""The seam between the proxy (asyncio, data plane) and the lifecycle (synchronous, control plane).

The proxy never talks to RunPod or the state file itself: it asks a ProxyController. Blocking methods are
called from a worker thread (`asyncio.to_thread`). `proxy/bridge.LifecycleProxyController` is the real one;
tests use fakes.

Many pods: every method names the pod it is about by its pod name: a configured pod ("chat") or one of its
replicas ("chat-r2", see config.replica_name). `pod_names()` lists them all in config order; which model
goes to which pod is the proxy's routing (routing.py), derived from the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from runpod_manager.backends.base import UpstreamTarget


@dataclass(frozen=True)
class PodView:
    """What the proxy shows on /health, /dashboard and /metrics. Cheap to produce (no API call)."""

    name: str = ""  # the pod's name (config name, or a replica's "<name>-r<k>")
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
    def pod_names(self) -> tuple[str, ...]:
        """Every pod the proxy may route to: each configured pod and each of its replicas, in config order."""

    def current_target(self, pod: str) -> UpstreamTarget | None:
        """The ready pod to forward to, from state (no API call); None when it must be woken first."""

    def wake(self, pod: str) -> UpstreamTarget:
        """Blocking: open a lease and start/resume/create the pod, wait until ready.

        Raises runpod_manager.errors.LimitRefused when a limit forbids it (spend cap, cutoff), and other
        RpmError subclasses when it fails.
        """

    def reconcile(self, last_request_at: Mapping[str, datetime | None]) -> Mapping[str, PodView]:
        """Blocking: record each pod's last request and run one enforcement pass over every pod (one lock,
        one RunPod list call). Never raises for a busy lock (another rpm acts); may raise RpmError for other
        failures. Returns every pod's view."""

    def view(self, pod: str) -> PodView:
        """Cheap: the current picture of one pod from state."""

    def views(self) -> Mapping[str, PodView]:
        """Cheap: every pod's view (one state read)."""

    def mark_unreachable(self, pod: str, pod_id: str) -> None:
        """The pod URL failed after retries: forget readiness so the next request wakes/rechecks."""

    def start(self, pod: str, opened_by: str) -> PodView:
        """Blocking: open a lease (as `rpm start NAME`) and ask RunPod to create or resume the pod, without
        waiting for readiness (a wake does that). LimitRefused when a limit forbids it; a start that fails
        leaves no lease (control.start). Returns the pod's view."""

    def stop(self, pod: str, *, terminate: bool) -> PodView:
        """Blocking: close the lease and stop (or terminate) the pod, as `rpm shutdown [--stop] NAME` without
        touching any proxy. NotOwned for terminating an adopted pod (nothing is done then)."""
