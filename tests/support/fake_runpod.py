"""An in-memory RunPod for the lifecycle's unit tests: the client methods Lifecycle calls, no HTTP.

- Pods are real `runpod_manager.runpod.models.Pod` objects, parsed by `Pod.from_api` from the REST v2
  JSON the fake keeps, so every answer goes through the same parser as a real one.
- Statuses move only when a test says so (`advance(pod_id, status)`) or, with `auto_progress`, one step
  (PROVISIONING → STARTING → RUNNING) per `get_pod`. The actions follow runpod-api.md: start needs EXITED or
  ERROR, stop needs a pod that is not stopped nor locked (`lock()`; 409 `Conflict` otherwise), an unknown id
  is `NotFound`, a terminated pod is gone (404 on get, absent from the list), a stopped pod costs 0 per hour.
- Every call is recorded in order in `history` as `(verb, subject)`: `("create", name)`, `("get", id)`,
  `("list", prefix)`, `("start", id)`, `("stop", id)`, `("terminate", id)`, `("update", id)`,
  `("spend", id)`, `("gpu_types", cloud)`. `calls` counts them, like `RunPodClient.calls` counts requests.
  A failed call is recorded too: it was sent.
- Failures are injected per verb (and per GPU type for create, per pod id for the others): `fail(verb,
  error, times=N, subject=...)` raises the given `RpmError` instance on the next N matching calls
  (`times=None`: every call). `create_then_raise()` makes the next create succeed at RunPod and still raise
  (the client lost the answer), which is the crash between the intent and the pod id.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runpod_manager.errors import ApiUnavailable, Conflict, InvalidRequest, NoCapacity, NotFound, RpmError
from runpod_manager.runpod.models import GpuType, Pod, PodSpec, PodStatus
from runpod_manager.sandbox.pods import ALLOWED_ACTIONS  # the spec's table, as the emulator has it

DEFAULT_GPU_PRICES: Mapping[str, float] = {
    "NVIDIA GeForce RTX 4090": 0.69,
    "NVIDIA L40S": 0.86,
    "NVIDIA A100 80GB PCIe": 1.64,
}
DATA_CENTER = "EU-RO-1"
MUTATING_VERBS = frozenset({"create", "start", "stop", "terminate", "update"})
_BOOT_ORDER = (PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakePod:
    """What the fake RunPod stores for one pod (mutable); `to_api()` is its REST v2 JSON."""

    id: str
    name: str
    gpu_type_id: str
    cost_per_hour: float
    status: PodStatus
    created_at: datetime
    started_at: datetime | None
    image: str = ""
    args: str = ""
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()
    gpu_util_percent: int = 0
    locked: bool = False  # RunPod: a locked pod cannot be stopped or reset (terminate is allowed)

    def to_api(self) -> dict[str, Any]:
        running = self.status == PodStatus.RUNNING
        active = self.status in _BOOT_ORDER
        data: dict[str, Any] = {
            "id": self.id, "name": self.name, "status": self.status.value,
            "actions": [a for a in ALLOWED_ACTIONS.get(self.status, ())
                        if not (self.locked and a in ("stop", "restart"))], "image": self.image,
            "locked": self.locked,
            "gpu": {"id": self.gpu_type_id, "count": 1}, "cloud": "SECURE", "dataCenterId": DATA_CENTER,
            "cost": self.cost_per_hour if active else 0, "createdAt": _iso(self.created_at),
            "env": dict(self.env), "ports": list(self.ports), "args": self.args,
            "runtime": {"uptime": 60, "gpus": [{"util": self.gpu_util_percent, "memoryUtil": 10}], "ports": []}
            if running else None,
        }
        if self.started_at is not None:
            data["startedAt"] = _iso(self.started_at)
        return data


@dataclass
class _Failure:
    error: RpmError
    remaining: int | None  # None: forever
    subject: str | None  # GPU type for create, pod id for the others; None: any
    create_first: bool = False  # create: the pod is made, then the call raises


class FakeRunPod:
    """In-memory RunPod; see the module docstring. `clock` stamps createdAt/startedAt (the test's clock)."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gpu_prices: Mapping[str, float] = DEFAULT_GPU_PRICES,
        create_status: PodStatus = PodStatus.RUNNING,
        auto_progress: bool = False,
    ) -> None:
        self.clock = clock
        self.gpu_prices = dict(gpu_prices)
        # v2 recordings show RUNNING (with no runtime) right after create; PROVISIONING is what the spec says.
        self.create_status = create_status
        self.auto_progress = auto_progress
        self.pods: dict[str, FakePod] = {}
        self.specs: list[PodSpec] = []  # every create request, failed ones included
        self.history: list[tuple[str, str]] = []
        self.calls = 0
        self.billed_usd: dict[str, float] = {}
        self.closed = False
        self._failures: dict[str, list[_Failure]] = {}
        self._ids = itertools.count(1)

    # ----------------------------------------------------------------------------------- test control

    def fail(self, verb: str, error: RpmError, *, times: int | None = 1, subject: str | None = None) -> None:
        """Raise `error` on the next `times` calls of `verb` (about `subject`, when given)."""
        self._failures.setdefault(verb, []).append(_Failure(error, times, subject))

    def no_capacity(self, gpu_type_id: str, *, times: int | None = None) -> None:
        self.fail("create", NoCapacity(
            "There are no longer any instances available with the requested specifications. "
            "Please refresh and try again.", status=400), times=times, subject=gpu_type_id)

    def create_then_raise(self, error: RpmError | None = None) -> None:
        """The next create makes the pod at RunPod, then the call raises (a 5xx the client could not recover)."""
        failure = _Failure(error or ApiUnavailable("create pod: 502 Bad Gateway", status=502), 1, None,
                           create_first=True)
        self._failures.setdefault("create", []).append(failure)

    def unreachable(self) -> None:
        """Every call fails from now on, as when RunPod cannot be reached."""
        for verb in ("get", "list", "create", "start", "stop", "terminate", "update", "spend", "gpu_types"):
            self.fail(verb, ApiUnavailable(f"{verb}: connection refused (api.runpod.io)"), times=None)

    def heal(self) -> None:
        """Forget every injected failure."""
        self._failures.clear()

    def add_pod(self, name: str, status: PodStatus = PodStatus.RUNNING, *,
                gpu_type_id: str = "NVIDIA GeForce RTX 4090") -> str:
        """A pod that exists at RunPod without rpm having created it (another config, a notebook, an orphan)."""
        pod = self._new_pod(name, gpu_type_id, status)
        return pod.id

    def advance(self, pod_id: str, status: PodStatus) -> None:
        pod = self.pods[pod_id]
        pod.status = status
        if status == PodStatus.RUNNING and pod.started_at is None:
            pod.started_at = self.clock()

    def lock(self, pod_id: str, locked: bool = True) -> None:
        """PATCH `locked` as a user would in the console: stop is refused (409) while it is set."""
        self.pods[pod_id].locked = locked

    def set_gpu_util(self, pod_id: str, percent: int) -> None:
        self.pods[pod_id].gpu_util_percent = percent

    def status_of(self, pod_id: str) -> PodStatus:
        """The status RunPod holds (TERMINATED for a pod that is gone); not an API call."""
        pod = self.pods.get(pod_id)
        return pod.status if pod is not None else PodStatus.TERMINATED

    def live_pods(self) -> dict[str, str]:
        """name → id of every pod that is not terminated; not an API call."""
        return {pod.name: pod.id for pod in self.pods.values() if pod.status != PodStatus.TERMINATED}

    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.history]

    def mutations(self) -> list[tuple[str, str]]:
        return [call for call in self.history if call[0] in MUTATING_VERBS]

    def reset_history(self) -> None:
        self.history.clear()
        self.calls = 0

    # ------------------------------------------------------------------------------- client methods

    def close(self) -> None:
        self.closed = True

    def get_pod(self, pod_id: str) -> Pod:
        self._call("get", pod_id)
        pod = self._existing(pod_id, "get")
        if self.auto_progress and pod.status in _BOOT_ORDER[:-1]:
            self.advance(pod_id, _BOOT_ORDER[_BOOT_ORDER.index(pod.status) + 1])
        return Pod.from_api(pod.to_api())

    def list_pods(self) -> list[Pod]:
        self._call("list", "")
        return [Pod.from_api(pod.to_api()) for pod in self.pods.values() if pod.status != PodStatus.TERMINATED]

    def list_pods_with_prefix(self, prefix: str) -> list[Pod]:
        self._call("list", prefix)
        return [Pod.from_api(pod.to_api()) for pod in self.pods.values()
                if pod.name.startswith(prefix) and pod.status != PodStatus.TERMINATED]

    def create_pod(self, spec: PodSpec) -> Pod:
        self.specs.append(spec)
        failure = self._due("create", spec.gpu_type_id)
        self.calls += 1
        self.history.append(("create", spec.name))
        if failure is not None and not failure.create_first:
            raise copy.copy(failure.error)
        if spec.gpu_type_id not in self.gpu_prices:
            raise InvalidRequest(f"create pod '{spec.name}': 422 gpu.id: unknown GPU type {spec.gpu_type_id!r}",
                                 status=422, field_errors=(f"$.gpu.id: unknown GPU type {spec.gpu_type_id!r}",))
        pod = self._new_pod(spec.name, spec.gpu_type_id, self.create_status, image=spec.image or "",
                            args=spec.args or "", env=dict(spec.env), ports=spec.ports)
        if failure is not None:
            raise copy.copy(failure.error)
        return Pod.from_api(pod.to_api())

    def start_pod(self, pod_id: str) -> Pod:
        self._call("start", pod_id)
        pod = self._existing(pod_id, "start")
        if pod.status not in (PodStatus.EXITED, PodStatus.ERROR):
            raise Conflict(f"start pod {pod_id}: 409 not allowed in status {pod.status.value}", status=409)
        pod.status = self.create_status
        pod.started_at = self.clock()
        return Pod.from_api(pod.to_api())

    def stop_pod(self, pod_id: str) -> Pod:
        self._call("stop", pod_id)
        pod = self._existing(pod_id, "stop")
        if pod.status not in _BOOT_ORDER or pod.locked:
            raise Conflict(f"stop pod {pod_id}: 409 not allowed in status {pod.status.value}", status=409)
        pod.status = PodStatus.EXITED
        return Pod.from_api(pod.to_api())

    def terminate_pod(self, pod_id: str) -> bool:
        self._call("terminate", pod_id)
        pod = self._existing(pod_id, "terminate")
        pod.status = PodStatus.TERMINATED
        return True

    def update_pod(self, pod_id: str, *, name: str | None = None, image: str | None = None,
                   args: str | None = None, env: Mapping[str, str] | None = None,
                   ports: tuple[str, ...] | None = None) -> Pod:
        self._call("update", pod_id)
        pod = self._existing(pod_id, "update")
        pod.name = name if name is not None else pod.name
        pod.image = image if image is not None else pod.image
        pod.args = args if args is not None else pod.args
        pod.env = dict(env) if env is not None else pod.env
        pod.ports = tuple(ports) if ports is not None else pod.ports
        return Pod.from_api(pod.to_api())

    def pod_spend_usd(self, pod_id: str, *, since: datetime) -> float:
        self._call("spend", pod_id)
        return self.billed_usd.get(pod_id, 0.0)

    def list_gpu_types(self, *, gpu_count: int = 1, cloud: str = "SECURE",
                       include_availability: bool = True) -> list[GpuType]:
        self._call("gpu_types", cloud)
        return [GpuType.from_api({"id": gpu_id, "name": gpu_id, "memory": 24, "secure": True, "community": True,
                                  "price": {"secure": price, "community": price}})
                for gpu_id, price in self.gpu_prices.items()]

    # ---------------------------------------------------------------------------------------- inside

    def _call(self, verb: str, subject: str) -> None:
        self.calls += 1
        self.history.append((verb, subject))
        failure = self._due(verb, subject)
        if failure is not None:
            raise copy.copy(failure.error)  # a copy: callers add hints to what they catch

    def _due(self, verb: str, subject: str) -> _Failure | None:
        for failure in self._failures.get(verb, []):
            if failure.subject not in (None, subject) or failure.remaining == 0:
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
            return failure
        return None

    def _existing(self, pod_id: str, verb: str) -> FakePod:
        pod = self.pods.get(pod_id)
        if pod is None or pod.status == PodStatus.TERMINATED:
            raise NotFound(f"{verb} pod {pod_id}: 404 pod not found", status=404)
        return pod

    def _new_pod(self, name: str, gpu_type_id: str, status: PodStatus, **fields: Any) -> FakePod:
        now = self.clock()
        pod = FakePod(id=f"pod-{next(self._ids)}", name=name, gpu_type_id=gpu_type_id,
                      cost_per_hour=self.gpu_prices.get(gpu_type_id, 0.5), status=status, created_at=now,
                      started_at=now if status == PodStatus.RUNNING else None, **fields)
        self.pods[pod.id] = pod
        return pod
