"""The simulated RunPod world: pods and their status timeline, GPU stock, costs, billing and faults.

Plain Python with an injectable clock and random source, so every rule is unit-testable without a
server. Status advances lazily: each read computes where a pod's timeline has got to by now, with the
exact transition times (PROVISIONING → STARTING → RUNNING, then the model server loads; a pod whose image
is not a vLLM image runs the fake generic service instead, on the same timeline). Nothing here
sleeps. Container commands (`sh -c ...` args) run as real processes through `ContainerRunner`, which the
server calls from a small background tick.

Errors that RunPod answers with a problem body are raised as `WorldError(status, detail)`; the API layer
renders them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import shlex
import signal
import string
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from runpod_manager.paths import make_dirs, read_regular_file

Clock = Callable[[], float]

STATE_VERSION = 1
MAX_STATE_BYTES = 256 * 1024 * 1024  # a world of thousands of pods with their logs is a few megabytes

# The sentences RunPod itself sends (runpod-api.md section 6); clients match on them.
NO_CAPACITY_DETAIL = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
RESUME_REFUSED_DETAIL = "There are not enough free GPUs on the host machine to start this pod."
LOW_BALANCE_DETAIL = "Your account balance is too low to rent a pod. Please add funds to your account."

_ID_ALPHABET = string.ascii_lowercase + string.digits
_MAX_LOG_LINES_PER_POD = 5000
SERVICE_RECENT_REQUESTS = 100


class PodStatus(StrEnum):
    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    ERROR = "ERROR"
    TERMINATED = "TERMINATED"


# Which actions each status allows (the spec's table, published in the pod's `actions` field).
ALLOWED_ACTIONS: dict[PodStatus, tuple[str, ...]] = {
    PodStatus.PROVISIONING: ("stop", "terminate"),
    PodStatus.STARTING: ("stop", "terminate"),
    PodStatus.RUNNING: ("stop", "restart", "terminate"),
    PodStatus.EXITED: ("start", "terminate"),
    PodStatus.ERROR: ("start", "terminate"),
    PodStatus.TERMINATED: (),
}
# Statuses in which a pod holds its GPUs and is billed (RunPod bills from the moment of rental).
ACTIVE_STATUSES = frozenset({PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING})


class WorldError(Exception):
    """A refusal RunPod answers with an RFC 9457 problem body."""

    TITLES: ClassVar[dict[int, str]] = {
        400: "Bad Request", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
        409: "Conflict", 422: "Unprocessable Entity",
    }

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def title(self) -> str:
        return self.TITLES.get(self.status, "Error")


# --- catalog -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuModel:
    id: str
    name: str
    manufacturer: str
    memory_gb: int
    secure_usd_per_hour: float
    community_usd_per_hour: float
    max_count_secure: int
    max_count_community: int
    pool: str | None

    def price(self, cloud: str) -> float:
        return self.secure_usd_per_hour if cloud == "SECURE" else self.community_usd_per_hour

    def max_count(self, cloud: str) -> int:
        return self.max_count_secure if cloud == "SECURE" else self.max_count_community


@dataclass(frozen=True)
class DataCenter:
    id: str
    name: str
    country: str
    cuda_version: str  # what its hosts report; simplified to one version per data center


GPU_MODELS: tuple[GpuModel, ...] = (
    GpuModel("NVIDIA GeForce RTX 4090", "RTX 4090", "NVIDIA", 24, 0.69, 0.34, 8, 8, "ADA_24"),
    GpuModel("NVIDIA RTX A5000", "RTX A5000", "NVIDIA", 24, 0.27, 0.16, 8, 8, "AMPERE_24"),
    GpuModel("NVIDIA L40S", "L40S", "NVIDIA", 48, 0.86, 0.79, 8, 8, "ADA_48_PRO"),
    GpuModel("NVIDIA A100 80GB PCIe", "A100 PCIe", "NVIDIA", 80, 1.64, 1.19, 8, 4, "AMPERE_80"),
    GpuModel("NVIDIA H100 80GB HBM3", "H100 SXM", "NVIDIA", 80, 2.69, 2.39, 8, 8, "HOPPER_141"),
    GpuModel("NVIDIA RTX A6000", "RTX A6000", "NVIDIA", 48, 0.49, 0.33, 8, 4, "AMPERE_48"),
)
GPU_BY_ID = {gpu.id: gpu for gpu in GPU_MODELS}

DATA_CENTERS: tuple[DataCenter, ...] = (
    DataCenter("US-TX-3", "US Texas 3", "US", "12.8"),
    DataCenter("EU-RO-1", "EU Romania 1", "RO", "12.4"),
    DataCenter("CA-MTL-1", "CA Montreal 1", "CA", "12.6"),
    DataCenter("US-KS-2", "US Kansas 2", "US", "12.8"),
    DataCenter("EUR-IS-1", "Europe Iceland 1", "IS", "12.2"),
)
DC_BY_ID = {dc.id: dc for dc in DATA_CENTERS}

# Free GPUs per GPU type, cloud and data center when the world starts. A GPU type with no entry for a
# cloud is not offered there (L40S and H100 are Secure Cloud only here).
_INITIAL_STOCK: dict[str, dict[str, dict[str, int]]] = {
    "NVIDIA GeForce RTX 4090": {"SECURE": {"US-TX-3": 12, "EU-RO-1": 24, "CA-MTL-1": 6, "US-KS-2": 3},
                                "COMMUNITY": {"EU-RO-1": 10, "US-TX-3": 2}},
    "NVIDIA RTX A5000": {"SECURE": {"US-TX-3": 8, "EUR-IS-1": 16, "CA-MTL-1": 4},
                         "COMMUNITY": {"CA-MTL-1": 6}},
    "NVIDIA L40S": {"SECURE": {"US-KS-2": 8, "EU-RO-1": 4, "EUR-IS-1": 2}},
    "NVIDIA A100 80GB PCIe": {"SECURE": {"US-KS-2": 8, "CA-MTL-1": 2}, "COMMUNITY": {"US-TX-3": 1}},
    "NVIDIA H100 80GB HBM3": {"SECURE": {"US-TX-3": 16, "EUR-IS-1": 8}},
    "NVIDIA RTX A6000": {"SECURE": {"EU-RO-1": 8, "US-TX-3": 4, "CA-MTL-1": 2},
                         "COMMUNITY": {"EU-RO-1": 4, "US-KS-2": 2}},
}

StockKey = tuple[str, str, str]  # (gpu id, data center id, cloud)


def initial_stock() -> dict[StockKey, int]:
    return {(gpu, dc, cloud): free
            for gpu, clouds in _INITIAL_STOCK.items()
            for cloud, per_dc in clouds.items()
            for dc, free in per_dc.items()}


def availability_level(free_gpus: int, count: int) -> str:
    """RunPod's coarse stock level for `count`-GPU pods from a free-GPU count."""
    units = free_gpus // max(count, 1)
    if units <= 0:
        return "NONE"
    if units <= 2:
        return "LOW"
    if units <= 7:
        return "MEDIUM"
    return "HIGH"


def cuda_key(version: str) -> tuple[int, ...]:
    """'12.11' sorts above '12.2': CUDA versions compare numerically per part."""
    return tuple(int(part) for part in version.split("."))


# --- settings and faults ---------------------------------------------------------------------------


@dataclass
class Settings:
    """How the world behaves; fixed at start (flags), except balance which the control API may set."""

    provision_seconds: float = 1.0
    start_seconds: float = 1.5
    model_load_seconds: float = 2.0
    bill_speed: float = 1.0
    balance_usd: float = 1000.0
    quota_per_minute: int = 6000


@dataclass
class Faults:
    """Failures to inject. Counters are consumed one per affected call; rates apply to every v2 call."""

    fail_creates: int = 0
    refuse_resumes: int = 0
    rate_limit: int = 0
    retry_after_seconds: int = 1
    error_rate: float = 0.0
    latency_seconds: float = 0.0
    latency_rate: float = 1.0
    create_5xx_but_created: int = 0
    fail_boots: int = 0  # the next N pods to finish STARTING go to ERROR instead of RUNNING (a broken host)
    model_load_seconds: float | None = None

    _COUNTERS = ("fail_creates", "refuse_resumes", "rate_limit", "create_5xx_but_created", "fail_boots")
    _RATES = ("error_rate", "latency_rate")

    def take(self, name: str) -> bool:
        """Consume one unit of a counter fault; True when the fault fires for this call."""
        remaining = getattr(self, name)
        if remaining > 0:
            setattr(self, name, remaining - 1)
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: Mapping[str, Any]) -> list[str]:
        """Apply a partial update after checking every value; returns problems and changes nothing then."""
        known = {f.name for f in fields(self)}
        problems: list[str] = []
        for name, value in changes.items():
            if name not in known:
                problems.append(f"$.{name}: unknown fault")
            elif name == "model_load_seconds" and value is None:
                continue
            elif name in self._COUNTERS or name == "retry_after_seconds":
                if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                    problems.append(f"$.{name}: expected a non-negative integer")
            elif not (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
                problems.append(f"$.{name}: expected a non-negative number")
            elif name in self._RATES and value > 1:
                problems.append(f"$.{name}: must be between 0 and 1")
        if not problems:
            for name, value in changes.items():
                setattr(self, name, value)
        return problems


# --- pods, logs, billing ---------------------------------------------------------------------------


@dataclass
class LogLine:
    ts: float
    seq: int
    source: str  # "system" (the platform) or "container" (the pod's own output)
    line: str


@dataclass
class BillingSegment:
    """A stretch of time during which a pod was billed at a fixed rate (an open one has end None)."""

    pod_id: str
    start: float
    end: float | None
    usd_per_hour: float
    bill_speed: float

    def amount_usd(self, window_start: float, window_end: float) -> float:
        end = window_end if self.end is None else min(self.end, window_end)
        seconds = end - max(self.start, window_start)
        return max(seconds, 0.0) * self.usd_per_hour * self.bill_speed / 3600.0


@dataclass
class ModelStats:
    """Live counters of one pod's model server (not persisted: a restart starts a fresh server)."""

    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)


@dataclass
class ServiceStats:
    """Live counters of one pod's generic service (not persisted, like ModelStats), for tests to read."""

    requests: int = 0
    active: int = 0
    open_websockets: int = 0
    websocket_frames: int = 0
    received_bytes: int = 0
    # The latest requests as {method, path, query, port, status}: no header values (they may hold keys).
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=SERVICE_RECENT_REQUESTS))

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "active": self.active, "openWebsockets": self.open_websockets,
                "websocketFrames": self.websocket_frames, "receivedBytes": self.received_bytes,
                "recent": list(self.recent)}


def serves_vllm(image: str) -> bool:
    """Whether a pod of this image runs the fake vLLM (else the fake generic service): its name contains
    `vllm` (any case), or it is empty (a template's image, which the emulator cannot see)."""
    return not image or "vllm" in image.lower()


@dataclass
class Pod:
    id: str
    name: str
    image: str
    args: str
    env: dict[str, str]
    ports: list[str]
    disk_gb: int
    mounts: dict[str, Any]
    registry: str | None
    gpu_id: str
    gpu_count: int
    cloud: str
    data_center_id: str
    cuda_version: str
    locked: bool
    global_networking: bool
    created_at: float
    status: PodStatus
    phase_started_at: float
    pod_key: str
    started_at: float | None = None
    running_since: float | None = None
    model_ready_at: float | None = None
    model_loaded_logged: bool = False
    model_crashed: bool = False
    host_taken: bool = False
    container_generation: int = 0
    logs: list[LogLine] = field(default_factory=list)

    @property
    def actions(self) -> tuple[str, ...]:
        allowed = ALLOWED_ACTIONS[self.status]
        if self.locked:
            # RunPod: "Locked pods cannot be stopped or reset."
            allowed = tuple(a for a in allowed if a not in ("stop", "restart"))
        return allowed

    def http_ports(self) -> set[int]:
        result = set()
        for spec in self.ports:
            number, _, protocol = spec.partition("/")
            if protocol == "http" and number.isdigit():
                result.add(int(number))
        return result

    def container_command(self) -> list[str] | None:
        """The argv to run for `sh -c '...'` / `bash -c '...'` args; None for anything else."""
        words = _split_args(self.args)
        if len(words) >= 3 and words[0] in ("sh", "bash") and words[1] == "-c":
            return words[:3]
        return None

    def arg_value(self, *flags: str) -> str | None:
        """The value of a vLLM-style flag in the args (also inside a `sh -c` command), if any."""
        words = _split_args(self.args)
        command = self.container_command()
        if command:
            words = words + _split_args(command[2])
        for index, word in enumerate(words):
            for flag in flags:
                if word == flag and index + 1 < len(words):
                    return words[index + 1]
                if word.startswith(flag + "="):
                    return word[len(flag) + 1:]
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pod:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = PodStatus(values["status"])
        values["logs"] = [LogLine(**line) for line in values.get("logs", [])]
        return cls(**values)


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_loaded_pod(pod: Pod) -> None:
    """A pod read from a state file has the types and ids every later computation relies on."""
    problem = None
    if not isinstance(pod.id, str) or not pod.id:
        problem = "an empty or non-string id"
    elif pod.gpu_id not in GPU_BY_ID or pod.data_center_id not in DC_BY_ID:
        problem = f"an unknown GPU type {pod.gpu_id!r} or data center {pod.data_center_id!r}"
    elif not all(_is_number(n) for n in (pod.created_at, pod.phase_started_at)) or not all(
            n is None or _is_number(n) for n in (pod.started_at, pod.running_since, pod.model_ready_at)):
        problem = "non-numeric timestamps"
    elif not isinstance(pod.gpu_count, int) or isinstance(pod.gpu_count, bool) or pod.gpu_count < 1:
        problem = "an invalid gpu_count"
    elif not (isinstance(pod.ports, list) and all(isinstance(p, str) for p in pod.ports)):
        problem = "ports that are not a list of strings"
    elif not (isinstance(pod.env, dict) and isinstance(pod.args, str) and isinstance(pod.pod_key, str)):
        problem = "env, args or pod_key of the wrong type"
    if problem is not None:
        raise ValueError(f"not a sandbox state file (pod {pod.id!r} has {problem})")


def _split_args(args: str) -> list[str]:
    try:
        return shlex.split(args)
    except ValueError:
        return args.split()


def rfc3339(epoch_seconds: float) -> str:
    """UTC timestamp to RFC 3339 with a Z, whole seconds like RunPod's examples."""
    # Not strftime: its %Y drops the leading zeros of years before 1000 on glibc ("1-01-01T...").
    moment = datetime.fromtimestamp(math.floor(epoch_seconds), UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


# --- billing buckets -------------------------------------------------------------------------------

BUCKET_SIZES = ("hour", "day", "week", "month", "year")


def bucket_floor(epoch_seconds: float, size: str) -> datetime:
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    if size == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if size == "day":
        return day
    if size == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if size == "month":
        return day.replace(day=1)
    if size == "year":
        return day.replace(month=1, day=1)
    raise ValueError(f"unknown bucket size {size!r}")


def bucket_next(start: datetime, size: str) -> datetime:
    if size == "hour":
        return start + timedelta(hours=1)
    if size == "day":
        return start + timedelta(days=1)
    if size == "week":
        return start + timedelta(weeks=1)
    if size == "month":
        if start.month == 12:
            return start.replace(year=start.year + 1, month=1)
        return start.replace(month=start.month + 1)
    return start.replace(year=start.year + 1)


def bucket_ceil(epoch_seconds: float, size: str) -> datetime:
    floor = bucket_floor(epoch_seconds, size)
    return floor if floor.timestamp() == epoch_seconds else bucket_next(floor, size)


# --- the world ---------------------------------------------------------------------------------------


class World:
    """All simulated state. Every method is called from one thread (the server's event loop)."""

    def __init__(
        self,
        settings: Settings | None = None,
        faults: Faults | None = None,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._initial_faults = Faults(**(faults or Faults()).to_dict())
        self._initial_balance = self.settings.balance_usd
        self.faults = Faults(**self._initial_faults.to_dict())
        self.clock = clock
        self.rng = rng or random.Random()
        self.pods: dict[str, Pod] = {}
        self.billing: list[BillingSegment] = []
        self.stock: dict[StockKey, int] = initial_stock()
        self.calls: dict[str, int] = {}
        self.model_stats: dict[str, ModelStats] = {}
        self.service_stats: dict[str, ServiceStats] = {}
        self.dirty = False
        self._log_seq = 0

    # -- housekeeping --

    def now(self) -> float:
        return self.clock()

    def reset(self) -> None:
        """Back to how the world started: no pods, no spend, full stock, startup faults, zero counters."""
        self.pods.clear()
        self.billing.clear()
        self.stock = initial_stock()
        self.calls.clear()
        self.model_stats.clear()
        self.service_stats.clear()
        self.faults = Faults(**self._initial_faults.to_dict())
        self.settings.balance_usd = self._initial_balance
        self.dirty = True

    def count_call(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1

    def advance(self) -> None:
        """Bring every pod's timeline up to now (the background tick calls this)."""
        now = self.now()
        for pod in self.pods.values():
            self._advance(pod, now)

    def _log(self, pod: Pod, source: str, line: str, at: float | None = None) -> None:
        self._log_seq += 1
        pod.logs.append(LogLine(self.now() if at is None else at, self._log_seq, source, line))
        if len(pod.logs) > _MAX_LOG_LINES_PER_POD:
            del pod.logs[: len(pod.logs) - _MAX_LOG_LINES_PER_POD]
        self.dirty = True

    def add_container_output(self, pod_id: str, lines: Iterable[str]) -> None:
        pod = self.pods.get(pod_id)
        if pod is not None:
            for line in lines:
                self._log(pod, "container", line)

    def _advance(self, pod: Pod, now: float) -> None:
        settings = self.settings
        while True:
            provisioned = pod.phase_started_at + settings.provision_seconds
            if pod.status == PodStatus.PROVISIONING and now >= provisioned:
                at = pod.phase_started_at + settings.provision_seconds
                pod.status, pod.phase_started_at = PodStatus.STARTING, at
                self._log(pod, "system", f"Image {pod.image} pulled; starting container", at)
            elif pod.status == PodStatus.STARTING and now >= pod.phase_started_at + settings.start_seconds:
                at = pod.phase_started_at + settings.start_seconds
                if self.faults.take("fail_boots"):
                    self._stop(pod, PodStatus.ERROR, "Pod failed at start: the host's GPU did not initialise")
                    pod.phase_started_at = at
                    break
                self._become_running(pod, at)
            else:
                break
        if (pod.status == PodStatus.RUNNING and not pod.model_loaded_logged and not pod.model_crashed
                and pod.model_ready_at is not None and now >= pod.model_ready_at):
            pod.model_loaded_logged = True
            loaded = (f"INFO: model {self.model_name(pod)} loaded; serving on port 8000" if serves_vllm(pod.image)
                      else f"INFO: service ready; listening on {self._http_ports_text(pod)}")
            self._log(pod, "container", loaded, pod.model_ready_at)

    def _become_running(self, pod: Pod, at: float) -> None:
        pod.status, pod.phase_started_at = PodStatus.RUNNING, at
        pod.running_since = at
        if pod.started_at is None:
            pod.started_at = at
        self._start_model(pod, at)
        self._log(pod, "system", "Container started; pod is RUNNING", at)

    def _start_model(self, pod: Pod, at: float) -> None:
        load = self.faults.model_load_seconds
        pod.model_ready_at = at + (self.settings.model_load_seconds if load is None else load)
        pod.model_loaded_logged = False
        pod.model_crashed = False
        pod.container_generation += 1
        self.model_stats[pod.id] = ModelStats()
        self.service_stats[pod.id] = ServiceStats()
        starting = (f"INFO: loading model {self.model_name(pod)}" if serves_vllm(pod.image)
                    else f"INFO: starting service {pod.image}")
        self._log(pod, "container", starting, at)

    @staticmethod
    def _http_ports_text(pod: Pod) -> str:
        return ", ".join(f"port {port}" for port in sorted(pod.http_ports())) or "no http port"

    # -- reads --

    def get_pod(self, pod_id: str) -> Pod:
        pod = self.pods.get(pod_id)
        if pod is None:
            raise WorldError(404, f"pod {pod_id} not found")
        self._advance(pod, self.now())
        return pod

    def list_pods(self) -> list[Pod]:
        self.advance()
        return list(self.pods.values())

    def pod_for_key(self, key: str) -> Pod | None:
        for pod in self.pods.values():
            if secrets.compare_digest(pod.pod_key, key):
                return pod
        return None

    def model_name(self, pod: Pod) -> str:
        return (pod.arg_value("--served-model-name") or pod.arg_value("--model")
                or pod.env.get("MODEL_NAME") or "sandbox-model")

    def max_model_len(self, pod: Pod) -> int:
        value = pod.arg_value("--max-model-len")
        return int(value) if value and value.isdigit() and int(value) > 0 else 8192

    def model_api_key(self, pod: Pod) -> str | None:
        return pod.arg_value("--api-key") or pod.env.get("VLLM_API_KEY") or None

    def model_state(self, pod_id: str, port: int) -> tuple[str, Pod | None]:
        """What RunPod's proxy would find at {pod_id}-{port}: 'missing' (404), 'down' (502) or 'ready'."""
        pod = self.pods.get(pod_id)
        if pod is None or port not in pod.http_ports():
            return "missing", pod
        self._advance(pod, self.now())
        ready = (pod.status == PodStatus.RUNNING and not pod.model_crashed
                 and pod.model_ready_at is not None and self.now() >= pod.model_ready_at)
        return ("ready" if ready else "down"), pod

    def cost_usd_per_hour(self, pod: Pod) -> float:
        if pod.status not in ACTIVE_STATUSES:
            return 0.0
        return round(GPU_BY_ID[pod.gpu_id].price(pod.cloud) * pod.gpu_count, 4)

    def spend_usd(self, until: float | None = None) -> float:
        end = self.now() if until is None else until
        return sum(segment.amount_usd(segment.start, end) for segment in self.billing)

    # -- the v2 Pod object --

    def pod_json(self, pod: Pod) -> dict[str, Any]:
        now = self.now()
        self._advance(pod, now)
        running = pod.status == PodStatus.RUNNING
        host = _digest(pod.id)
        public_ip = f"203.0.113.{host % 250 + 2}"  # TEST-NET-3: clearly not a real host
        ssh_public_port = 10000 + host % 50000
        ssh_user = f"{pod.id}-{host & 0xFFFFFFFF:08x}"
        direct = None
        if running and "22/tcp" in pod.ports:
            direct = {"host": public_ip, "port": ssh_public_port, "username": "root",
                      "command": f"ssh root@{public_ip} -p {ssh_public_port}"}
        return {
            "id": pod.id,
            "name": pod.name,
            "status": str(pod.status),
            "actions": list(pod.actions),
            "image": pod.image,
            "args": pod.args,
            "disk": pod.disk_gb,
            "mounts": pod.mounts,
            "ports": list(pod.ports),
            "env": dict(pod.env),
            "registry": pod.registry,
            "gpu": {"id": pod.gpu_id, "count": pod.gpu_count},
            "cloud": pod.cloud,
            "dataCenterId": pod.data_center_id,
            "cudaVersion": pod.cuda_version,
            "ssh": {
                "proxy": {"host": "ssh.runpod.io", "port": 22, "username": ssh_user,
                          "command": f"ssh {ssh_user}@ssh.runpod.io"},
                "direct": direct,
            },
            "template": None,
            "cost": self.cost_usd_per_hour(pod),
            "locked": pod.locked,
            "globalNetworking": {"enabled": pod.global_networking},
            "runtime": self._runtime_json(pod, now, public_ip, ssh_public_port) if running else None,
            "createdAt": rfc3339(pod.created_at),
            "startedAt": None if pod.started_at is None else rfc3339(pod.started_at),
        }

    def _runtime_json(self, pod: Pod, now: float, public_ip: str, ssh_port: int) -> dict[str, Any]:
        loaded = pod.model_ready_at is not None and now >= pod.model_ready_at and not pod.model_crashed
        busy = (self.model_stats.get(pod.id, ModelStats()).running > 0
                or self.service_stats.get(pod.id, ServiceStats()).active > 0)
        private_ip = f"100.65.{_digest(pod.id + 'ip') % 250}.{_digest(pod.id) % 250 + 2}"
        ports = []
        for spec in pod.ports:
            number, _, protocol = spec.partition("/")
            if not number.isdigit():
                continue
            if protocol == "tcp":
                public = ssh_port if number == "22" else 10000 + _digest(pod.id + number) % 50000
                ports.append({"ip": public_ip, "private": int(number), "public": public, "type": "tcp"})
            else:
                ports.append({"ip": private_ip, "private": int(number), "public": None, "type": protocol})
        return {
            "uptime": int(now - (pod.running_since or now)),
            # vLLM claims ~90% of GPU memory once the model is loaded; compute only moves while serving.
            "gpus": [{"util": 87 if busy else 0, "memoryUtil": 91 if loaded else 3}] * pod.gpu_count,
            "cpu": {"util": 12 if busy else 1},
            "memory": {"util": 35 if loaded else 4},
            "ports": ports,
        }

    # -- mutations --

    def create_pod(self, request: Mapping[str, Any]) -> Pod:
        """Place a pod from a CreatePodRequest that already passed validation (schema and rules)."""
        gpu_request = request["gpu"]
        gpu = GPU_BY_ID.get(gpu_request["id"])
        if gpu is None:
            known = ", ".join(g.id for g in GPU_MODELS)
            raise WorldError(400, f"unknown GPU type '{gpu_request['id']}'; the sandbox offers: {known}")
        count = int(gpu_request.get("count", 1))
        cloud = request.get("cloud", "SECURE")
        if count > gpu.max_count(cloud):
            raise WorldError(400, f"gpu.count {count} exceeds the largest {gpu.id} machine in {cloud} "
                                  f"cloud ({gpu.max_count(cloud)} GPUs)")
        self._check_balance()
        if self.faults.take("fail_creates"):
            raise WorldError(400, NO_CAPACITY_DETAIL)
        data_center = self._place(gpu.id, count, cloud, wanted=request.get("dataCenterIds") or [],
                                  allowed_cuda=gpu_request.get("allowedCudaVersions") or [],
                                  min_cuda=gpu_request.get("minCudaVersion"))
        if data_center is None:
            raise WorldError(400, NO_CAPACITY_DETAIL)
        now = self.now()
        pod = Pod(
            id=self._new_pod_id(),
            name=request["name"],
            image=request["image"],
            args=request.get("args", ""),
            env=dict(request.get("env", {})),
            ports=list(request.get("ports", [])),
            disk_gb=int(request.get("disk", 50)),
            mounts=dict(request.get("mounts", {})),
            registry=request.get("registry"),
            gpu_id=gpu.id,
            gpu_count=count,
            cloud=cloud,
            data_center_id=data_center.id,
            cuda_version=data_center.cuda_version,
            locked=False,
            global_networking=bool(request.get("globalNetworking", False)),
            created_at=now,
            status=PodStatus.PROVISIONING,
            phase_started_at=now,
            pod_key="rpa_" + secrets.token_hex(20).upper(),
        )
        self.pods[pod.id] = pod
        self._hold(pod)
        self._log(pod, "system", f"Pod rented: {count} x {gpu.id} in {data_center.id} ({cloud}); "
                                 f"pulling image {pod.image}", now)
        return pod

    def _place(self, gpu_id: str, count: int, cloud: str, *, wanted: list[str], allowed_cuda: list[str],
               min_cuda: str | None) -> DataCenter | None:
        def fits(dc: DataCenter) -> bool:
            if allowed_cuda and dc.cuda_version not in allowed_cuda:
                return False
            if min_cuda and cuda_key(dc.cuda_version) < cuda_key(min_cuda):
                return False
            return self.stock.get((gpu_id, dc.id, cloud), 0) >= count

        if wanted:
            # In the caller's order; ids the sandbox does not model simply have no stock.
            candidates = [DC_BY_ID[dc_id] for dc_id in wanted if dc_id in DC_BY_ID]
            return next((dc for dc in candidates if fits(dc)), None)
        # The scheduler's choice: the data center with the most free GPUs of the type.
        fitting = [dc for dc in DATA_CENTERS if fits(dc)]
        return max(fitting, key=lambda dc: self.stock[(gpu_id, dc.id, cloud)], default=None)

    def _new_pod_id(self) -> str:
        while True:
            pod_id = "".join(self.rng.choice(_ID_ALPHABET) for _ in range(14))
            if pod_id not in self.pods:
                return pod_id

    def _check_balance(self) -> None:
        if self.spend_usd() >= self.settings.balance_usd:
            raise WorldError(402, LOW_BALANCE_DETAIL)

    def _hold(self, pod: Pod) -> None:
        """Take the pod's GPUs from stock and start billing (the caller checked that stock suffices)."""
        key = (pod.gpu_id, pod.data_center_id, pod.cloud)
        self.stock[key] = self.stock.get(key, 0) - pod.gpu_count
        self.billing.append(BillingSegment(pod.id, self.now(), None, self.cost_usd_per_hour(pod),
                                           self.settings.bill_speed))
        self.dirty = True

    def _release(self, pod: Pod) -> None:
        key = (pod.gpu_id, pod.data_center_id, pod.cloud)
        self.stock[key] = self.stock.get(key, 0) + pod.gpu_count
        now = self.now()
        for segment in self.billing:
            if segment.pod_id == pod.id and segment.end is None:
                segment.end = now
        self.dirty = True

    def act(self, pod_id: str, action: str) -> Pod | None:
        """Apply a v2 pod action; returns the pod, or None after terminate."""
        pod = self.get_pod(pod_id)
        if action not in pod.actions:
            why = " (the pod is locked)" if pod.locked and action in ALLOWED_ACTIONS[pod.status] else ""
            allowed = ", ".join(pod.actions) or "none"
            raise WorldError(409, f"cannot {action} pod {pod.id} in status {pod.status}{why}; "
                                  f"allowed actions: {allowed}")
        if action == "terminate":
            self.terminate(pod_id)
            return None
        if action == "stop":
            self._stop(pod, PodStatus.EXITED, "Pod stopped by user")
        elif action == "start":
            self._start(pod)
        elif action == "restart":
            self._log(pod, "system", "Restarting container")
            pod.running_since = self.now()
            self._start_model(pod, self.now())
        self.dirty = True
        return pod

    def _stop(self, pod: Pod, status: PodStatus, reason: str) -> None:
        if pod.status in ACTIVE_STATUSES:
            self._release(pod)
        pod.status, pod.phase_started_at = status, self.now()
        pod.running_since = None
        pod.model_ready_at = None
        self._log(pod, "system", reason)

    def _start(self, pod: Pod) -> None:
        self._check_balance()
        free = self.stock.get((pod.gpu_id, pod.data_center_id, pod.cloud), 0)
        if self.faults.take("refuse_resumes") or pod.host_taken or free < pod.gpu_count:
            raise WorldError(400, RESUME_REFUSED_DETAIL)
        pod.status, pod.phase_started_at = PodStatus.STARTING, self.now()
        self._hold(pod)
        self._log(pod, "system", f"Pod resumed on its host in {pod.data_center_id}; starting container")

    def terminate(self, pod_id: str) -> None:
        pod = self.get_pod(pod_id)
        if pod.status in ACTIVE_STATUSES:
            self._release(pod)
        del self.pods[pod_id]
        self.model_stats.pop(pod_id, None)
        self.service_stats.pop(pod_id, None)
        self.dirty = True

    def update_pod(self, pod_id: str, changes: Mapping[str, Any]) -> Pod:
        """PATCH a pod (validated UpdatePodRequest). Changing the container resets it, like RunPod."""
        pod = self.get_pod(pod_id)
        if "templateId" in changes:
            raise WorldError(404, f"template {changes['templateId']} not found")
        if "mounts" in changes:
            self._check_mount_change(pod, changes["mounts"])
        container_changed = False
        simple = {"name": "name", "image": "image", "args": "args", "disk": "disk_gb", "locked": "locked",
                  "registry": "registry", "globalNetworking": "global_networking"}
        for key, attribute in simple.items():
            if key in changes and getattr(pod, attribute) != changes[key]:
                setattr(pod, attribute, changes[key])
                container_changed |= key in ("image", "args", "disk", "registry")
        if "env" in changes and changes["env"] != pod.env:
            pod.env, container_changed = dict(changes["env"]), True
        if "ports" in changes and changes["ports"] != pod.ports:
            pod.ports, container_changed = list(changes["ports"]), True
        if changes.get("mounts"):
            pod.mounts = {**pod.mounts, **changes["mounts"]}
        if container_changed and pod.status == PodStatus.RUNNING:
            self._log(pod, "system", "Pod configuration changed; resetting container")
            pod.running_since = self.now()
            self._start_model(pod, self.now())
        self.dirty = True
        return pod

    def _check_mount_change(self, pod: Pod, mounts: Mapping[str, Any]) -> None:
        if mounts.get("network") == []:
            raise WorldError(400, "mounts.network: clearing mounts is not supported")
        for kind in ("persistent", "network"):
            if kind in mounts and kind not in pod.mounts:
                raise WorldError(400, f"mounts.{kind}: the mount kind is fixed at create")
        if "network" in mounts and mounts["network"][0]["volumeId"] != pod.mounts["network"][0]["volumeId"]:
            raise WorldError(400, "mounts.network[0].volumeId: a network mount's volume cannot change")

    # -- the platform acting on pods (control endpoints) --

    def set_status(self, pod_id: str, status: str) -> Pod:
        """The platform stops (spot interruption) or breaks (host failure) a pod."""
        pod = self.get_pod(pod_id)
        if status not in ("EXITED", "ERROR"):
            raise WorldError(422, "status must be EXITED or ERROR")
        reason = ("Pod stopped by the platform (interrupted)" if status == "EXITED"
                  else "Pod failed: host error")
        self._stop(pod, PodStatus(status), reason)
        return pod

    def take_host(self, pod_id: str) -> Pod:
        """Someone else rents this pod's host GPUs: every later resume of it is refused."""
        pod = self.get_pod(pod_id)
        pod.host_taken = True
        self.dirty = True
        return pod

    def crash_model(self, pod_id: str) -> Pod:
        pod = self.get_pod(pod_id)
        pod.model_crashed = True
        self._log(pod, "container", "ERROR: model server crashed (engine dead); restart the pod")
        return pod

    def set_stock(self, gpu_id: str, data_center_id: str, cloud: str, free: int) -> None:
        if gpu_id not in GPU_BY_ID or data_center_id not in DC_BY_ID or cloud not in ("SECURE", "COMMUNITY"):
            raise WorldError(422, "unknown GPU type, data center or cloud")
        self.stock[(gpu_id, data_center_id, cloud)] = free
        self.dirty = True

    # -- catalog --

    def gpu_types(self, *, availability: bool, count: int = 1, cloud: str = "SECURE",
                  countries: list[str] | None = None, cuda_versions: list[str] | None = None,
                  min_cuda: str | None = None) -> list[dict[str, Any]]:
        result = []
        for gpu in GPU_MODELS:
            offered = {cloud_name: any(g == gpu.id and c == cloud_name for g, _, c in self.stock)
                       for cloud_name in ("SECURE", "COMMUNITY")}
            entry: dict[str, Any] = {
                "id": gpu.id, "name": gpu.name, "pool": gpu.pool, "manufacturer": gpu.manufacturer,
                "memory": gpu.memory_gb, "secure": offered["SECURE"], "community": offered["COMMUNITY"],
                "price": {"secure": gpu.secure_usd_per_hour, "community": gpu.community_usd_per_hour},
                "maxCount": {"secure": gpu.max_count_secure, "community": gpu.max_count_community},
            }
            if availability:
                centers = [dc for dc in DATA_CENTERS if (gpu.id, dc.id, cloud) in self.stock
                           and (not countries or dc.country in countries)]
                if countries and not any((gpu.id, dc.id, c) in self.stock for dc in DATA_CENTERS
                                         for c in ("SECURE", "COMMUNITY") if dc.country in countries):
                    continue  # no data center in those countries offers this type at all
                if cuda_versions:
                    centers = [dc for dc in centers if dc.cuda_version in cuda_versions]
                if min_cuda:
                    centers = [dc for dc in centers if cuda_key(dc.cuda_version) >= cuda_key(min_cuda)]
                fits_machine = count <= gpu.max_count(cloud)
                levels = {dc.id: availability_level(self.stock[(gpu.id, dc.id, cloud)], count) if fits_machine
                          else "NONE" for dc in centers}
                order = ["NONE", "LOW", "MEDIUM", "HIGH"]
                entry["availability"] = max(levels.values(), key=order.index, default="NONE")
                if entry["availability"] != "NONE":
                    entry["dataCenters"] = [{"id": dc.id, "name": dc.name, "availability": levels[dc.id]}
                                            for dc in centers]
                versions: dict[str, bool] = {}
                for dc in centers:
                    available = levels[dc.id] != "NONE"
                    versions[dc.cuda_version] = versions.get(dc.cuda_version, False) or available
                if versions:
                    entry["cudaVersions"] = [{"version": v, "available": versions[v]}
                                             for v in sorted(versions, key=cuda_key, reverse=True)]
            result.append(entry)
        return result

    # -- billing --

    def pod_billing(
        self, *, bucket_size: str, start: float, end: float, pod_id: str | None
    ) -> dict[str, Any]:
        """ListPodBillingResponse over [start, end) (already aligned to bucket boundaries)."""
        now = self.now()
        amounts: dict[tuple[float, str], float] = {}
        order: dict[str, int] = {}
        for segment in self.billing:
            if pod_id is not None and segment.pod_id != pod_id:
                continue
            seg_end = min(now if segment.end is None else segment.end, end)
            seg_start = max(segment.start, start)
            if seg_end <= seg_start:
                continue
            order.setdefault(segment.pod_id, len(order))
            bucket = bucket_floor(seg_start, bucket_size)
            while bucket.timestamp() < seg_end:
                following = bucket_next(bucket, bucket_size)
                key = (bucket.timestamp(), segment.pod_id)
                piece = segment.amount_usd(max(seg_start, bucket.timestamp()),
                                           min(seg_end, following.timestamp()))
                amounts[key] = amounts.get(key, 0.0) + piece
                bucket = following
        records: list[dict[str, Any]] = []
        ordered = sorted(amounts.items(), key=lambda item: (item[0][0], order[item[0][1]]))
        for (bucket_start, record_pod), amount in ordered:
            bucket_end = bucket_next(datetime.fromtimestamp(bucket_start, UTC), bucket_size).timestamp()
            records.append({"startTime": rfc3339(bucket_start), "endTime": rfc3339(bucket_end),
                            "podId": record_pod, "totalAmount": amount, "gpuAmount": amount,
                            "cpuAmount": 0.0, "diskAmount": 0.0})
        total = sum(amount for amount in amounts.values())
        return {
            "records": records,
            "metadata": {
                "query": {"startTime": rfc3339(start), "endTime": rfc3339(end), "bucketSize": bucket_size,
                          "podId": pod_id},
                "recordCount": len(records),
                "uniquePodCount": len({r["podId"] for r in records}),
                "totals": {"totalAmount": total, "gpuAmount": total, "cpuAmount": 0.0, "diskAmount": 0.0},
            },
        }

    # -- introspection and persistence --

    def snapshot(self) -> dict[str, Any]:
        """Everything, including fields the v2 API hides (pod keys, host state), for /_sandbox/state."""
        self.advance()
        now = self.now()
        pods = []
        for pod in self.pods.values():
            model, _ = self.model_state(pod.id, min(pod.http_ports(), default=-1))
            stats = self.model_stats.get(pod.id, ModelStats())
            pods.append({**self.pod_json(pod), "podKey": pod.pod_key, "hostTaken": pod.host_taken,
                         "modelCrashed": pod.model_crashed, "model": model, "modelName": self.model_name(pod),
                         "modelRunning": stats.running, "containerGeneration": pod.container_generation,
                         "serves": "vllm" if serves_vllm(pod.image) else "service",
                         "service": self.service_stats.get(pod.id, ServiceStats()).to_json(),
                         "spendUsd": sum(s.amount_usd(s.start, now) for s in self.billing
                                         if s.pod_id == pod.id)})
        return {
            "now": rfc3339(now),
            "pods": pods,
            "faults": self.faults.to_dict(),
            "calls": dict(self.calls),
            "settings": asdict(self.settings),
            "spendUsd": self.spend_usd(),
            "balanceUsd": self.settings.balance_usd,
            "stock": [{"gpu": g, "dataCenter": d, "cloud": c, "free": n}
                      for (g, d, c), n in self.stock.items()],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "pods": [pod.to_dict() for pod in self.pods.values()],
            "billing": [asdict(segment) for segment in self.billing],
            "stock": [[g, d, c, n] for (g, d, c), n in self.stock.items()],
            "balanceUsd": self.settings.balance_usd,
            "logSeq": self._log_seq,
        }

    def load_dict(self, data: Any) -> None:
        """Replace the state with a saved one; ValueError saying what is wrong when it is not one.

        Checked up front (shapes, ids, numbers) so that a damaged file fails at start with one line
        instead of as 500s on the first request that touches the bad pod.
        """
        if not isinstance(data, dict):
            raise ValueError(f"not a sandbox state file (expected a JSON object, got {_json_kind(data)})")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported sandbox state version {data.get('version')!r}")
        try:
            pods = {pod.id: pod for pod in (Pod.from_dict(p) for p in data["pods"])}
            billing = [BillingSegment(**segment) for segment in data["billing"]]
            stock = {(str(g), str(d), str(c)): int(n) for g, d, c, n in data["stock"]}
            balance_usd = data.get("balanceUsd", self.settings.balance_usd)
            log_seq = int(data.get("logSeq", 0))
        except KeyError as exc:
            raise ValueError(f"not a sandbox state file (missing {exc.args[0]!r})") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"not a sandbox state file ({exc})") from None
        if not _is_number(balance_usd):  # a NaN balance compares false with any spend: never exhausted
            raise ValueError(f"not a sandbox state file (balanceUsd must be a finite number, got {balance_usd!r})")
        for pod in pods.values():
            _check_loaded_pod(pod)
        for segment in billing:
            numbers = (segment.start, segment.usd_per_hour, segment.bill_speed,
                       segment.start if segment.end is None else segment.end)
            if segment.pod_id is None or not all(_is_number(n) for n in numbers):
                raise ValueError(f"not a sandbox state file (billing segment of pod {segment.pod_id!r} "
                                 "has a non-numeric field)")
        self.pods, self.billing, self.stock = pods, billing, stock
        self.settings.balance_usd = float(balance_usd)
        self._log_seq = log_seq
        self.dirty = False

    def save(self, path: Path) -> None:
        """Write the state atomically (temp file in the same directory, fsync, rename)."""
        make_dirs(path.parent)  # missing ones 0700 whatever the umask; existing ones are the user's
        fd, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp_name, 0o600)  # holds pod-scoped keys
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        self.dirty = False

    def load(self, path: Path) -> bool:
        """Load a saved world; False when the file does not exist yet."""
        try:
            text = read_regular_file(path, max_bytes=MAX_STATE_BYTES).decode("utf-8")
        except FileNotFoundError:
            return False
        try:
            data = json.loads(text)
        except RecursionError:  # `[[[[...` deep enough exhausts the decoder's stack: not a state file either
            raise ValueError("not a sandbox state file (JSON nested too deeply)") from None
        self.load_dict(data)
        return True


# --- container processes -----------------------------------------------------------------------------


@dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    generation: int
    output_path: Path
    offset: int = 0
    exit_reported: bool = False
    killed_at: float | None = None  # time.monotonic() of the first kill signal


class ContainerRunner:
    """Runs the `sh -c` / `bash -c` command of every RUNNING pod as a real process group.

    `sync` reconciles what runs with what the world says should run: it starts commands of pods that
    reached RUNNING (or were restarted), kills the process groups of pods that stopped or vanished, and
    copies their output into the pods' container logs.
    """

    KILL_GRACE_SECONDS = 2.0

    def __init__(self, api_url: str = "") -> None:
        self.api_url = api_url
        self._processes: dict[str, _Process] = {}
        self._dying: list[_Process] = []
        self._failed: dict[str, int] = {}  # pod id -> generation whose command could not start
        self._output_dir = Path(tempfile.mkdtemp(prefix="rpm-sandbox-containers-"))

    def pids(self) -> dict[str, int]:
        return {pod_id: proc.popen.pid for pod_id, proc in self._processes.items()}

    def sync(self, world: World) -> None:
        world.advance()
        wanted: dict[str, Pod] = {}
        for pod in world.pods.values():
            if pod.status == PodStatus.RUNNING and pod.container_command():
                wanted[pod.id] = pod
        for pod_id, proc in list(self._processes.items()):
            self._collect(world, pod_id, proc)
            wanted_pod = wanted.get(pod_id)
            if wanted_pod is None or wanted_pod.container_generation != proc.generation:
                del self._processes[pod_id]
                self._kill(proc, signal.SIGTERM)
            elif proc.popen.poll() is not None and not proc.exit_reported:
                proc.exit_reported = True  # exited on its own: report once, do not restart it
                code = proc.popen.returncode
                world.add_container_output(pod_id, [f"container command exited with code {code}"])
        for pod_id, pod in wanted.items():
            if pod_id not in self._processes and self._failed.get(pod_id) != pod.container_generation:
                self._start(world, pod)
        self._reap()

    def _start(self, world: World, pod: Pod) -> None:
        command = pod.container_command()
        assert command is not None  # noqa: S101 - sync only starts pods that have one
        # A container does not inherit the host's environment; only what finds programs and temp space.
        env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
        env.update(pod.env)
        env.update({"RUNPOD_POD_ID": pod.id, "RUNPOD_API_KEY": pod.pod_key, "RUNPOD_API_URL": self.api_url,
                    "RUNPOD_GPU_COUNT": str(pod.gpu_count), "RUNPOD_DC_ID": pod.data_center_id})
        output_path = self._output_dir / f"{pod.id}-{pod.container_generation}.log"
        with output_path.open("wb") as output:
            try:
                popen = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=output,  # noqa: S603
                                         stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                world.add_container_output(pod.id, [f"container command failed to start: {exc.strerror}"])
                self._failed[pod.id] = pod.container_generation
                return
        self._processes[pod.id] = _Process(popen, pod.container_generation, output_path)
        world.add_container_output(pod.id, [f"container command started: {' '.join(command[:2])} ..."])

    def _collect(self, world: World, pod_id: str, proc: _Process) -> None:
        try:
            with proc.output_path.open("rb") as output:
                output.seek(proc.offset)
                chunk = output.read(1 << 20)
        except OSError:
            return
        complete = chunk.rpartition(b"\n")[0]
        if complete:
            proc.offset += len(complete) + 1
            lines = complete.decode("utf-8", "replace").splitlines()
            world.add_container_output(pod_id, lines)

    def _kill(self, proc: _Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)
        if proc not in self._dying:
            proc.killed_at = time.monotonic()
            self._dying.append(proc)

    def _reap(self) -> None:
        for proc in list(self._dying):
            if proc.popen.poll() is not None:
                # The shell may be gone while its children live on in the group: finish them too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                self._dying.remove(proc)
                with contextlib.suppress(OSError):
                    proc.output_path.unlink()
            elif proc.killed_at is not None and time.monotonic() - proc.killed_at > self.KILL_GRACE_SECONDS:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill every container process group (the sandbox is exiting)."""
        for proc in self._processes.values():
            self._kill(proc, signal.SIGTERM)
        self._processes.clear()
        deadline = time.monotonic() + 1.0
        while self._dying and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for proc in self._dying:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1.0)
        self._dying.clear()
        for leftover in self._output_dir.glob("*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            self._output_dir.rmdir()
