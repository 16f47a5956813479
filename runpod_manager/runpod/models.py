"""RunPod REST v2 objects as rpm sees them: parsed from API JSON, and the create request rpm builds.

Parsing is tolerant and strict in different places on purpose:
- unknown fields are ignored (RunPod adds fields over time and the emulator may add more);
- the fields rpm cannot act without (a pod's `id`, `name` and `status`) must be present and of the
  right type, or `ApiError` names the field — acting on a half-understood pod is worse than failing;
- optional fields of the wrong type are treated as absent, so one odd field (say, a new `runtime`
  shape) cannot stop the watchdog from stopping a pod that costs money.

`env` and `args` can hold secrets (tokens for the model server), so the reprs of `Pod` and `PodSpec`
show only the env keys and the length of args.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from runpod_manager.errors import ApiError

__all__ = [
    "BillingRecord",
    "DataCenterStock",
    "GpuType",
    "GpuUtilization",
    "Pod",
    "PodRuntime",
    "PodSpec",
    "PodStatus",
    "RuntimePort",
    "parse_timestamp",
]

CLOUDS = ("SECURE", "COMMUNITY")
AVAILABILITY_LEVELS = ("NONE", "LOW", "MEDIUM", "HIGH")
_CUDA_VERSION = re.compile(r"^\d+\.\d+$")
# The spec's PersistentMount has `minimum: 10`; smaller sizes would be a 422 at create time.
MIN_PERSISTENT_VOLUME_GB = 10


class PodStatus(StrEnum):
    """A pod's lifecycle status (REST v2 `status`).

    UNKNOWN is rpm's own fallback for a status string RunPod may add later. It is deliberately
    neither running nor stopped: the planner should treat such a pod as "observe again", never as
    gone or idle. `Pod.status_text` keeps RunPod's raw string for messages.
    """

    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    ERROR = "ERROR"
    TERMINATED = "TERMINATED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def from_api(cls, text: str) -> PodStatus:
        try:
            return cls(text.strip().upper())
        except ValueError:
            return cls.UNKNOWN


# --- timestamps -------------------------------------------------------------------------------

# Go's time.String(): "2026-06-01 12:00:00.123456789 +0000 UTC m=+0.000123" (zone name and the
# monotonic-clock suffix are optional; a live v1 recording used this format).
_GO_TIME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
    r" (?P<offset>[+-]\d{4})(?: [A-Za-z][A-Za-z0-9_/+-]*)?(?: m=[+-]\d+(?:\.\d+)?)?$"
)
# RFC 3339 / ISO 8601 with date and time; fractions may carry nanoseconds, which datetime cannot.
_ISO_TIME = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?P<offset>[Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_timestamp(text: str) -> datetime:
    """Parse a RunPod timestamp into an aware UTC datetime.

    Accepts RFC 3339 (`2026-06-01T12:00:00Z`, offsets, any number of fractional digits) and Go's
    `time.String()` format (`2026-06-01 12:00:00.123456789 +0000 UTC m=+0.000`). A timestamp with
    no offset is taken as UTC (RunPod reports UTC). Raises ValueError for anything else.
    """
    stripped = text.strip()
    match = _GO_TIME.match(stripped) or _ISO_TIME.match(stripped)
    if match is None:
        raise ValueError(f"not a timestamp RunPod is known to send: {text!r}")
    # datetime holds microseconds; Go and RunPod may send nanoseconds, so truncate (never round up
    # into the next second).
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    naive = datetime.fromisoformat(f"{match['date']}T{match['time']}.{fraction}")
    try:
        return naive.replace(tzinfo=_parse_offset(match["offset"])).astimezone(UTC)
    except OverflowError:  # year 1 ahead of UTC or year 9999 behind it
        raise ValueError(f"timestamp out of range: {text!r}") from None


def _parse_offset(offset: str | None) -> timezone:
    if offset is None or offset in ("Z", "z"):
        return UTC
    digits = offset[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return timezone(-delta if offset[0] == "-" else delta)


# --- helpers for tolerant parsing -------------------------------------------------------------


def _require_object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ApiError(f"RunPod returned {what} that is not a JSON object (got {type(data).__name__})")
    return data


def _require_str(data: Mapping[str, Any], key: str, what: str, *, allow_empty: bool = False) -> str:
    if key not in data or data[key] is None:
        raise ApiError(f"RunPod returned {what} without '{key}'")
    value = data[key]
    if not isinstance(value, str):
        raise ApiError(f"RunPod returned {what} whose '{key}' is not a string (got {type(value).__name__})")
    if not value and not allow_empty:
        raise ApiError(f"RunPod returned {what} with an empty '{key}'")
    return value


def _opt_object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _opt_number(value: object) -> float | None:
    """A finite number, or None. NaN and ±Infinity (json.loads accepts them, and 1e400 becomes inf) are not
    numbers to act on: every comparison with NaN is false, so a NaN price or spend would pass every limit."""
    # bool is an int subclass; `true` is never a price.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        # The v1 spec example sent cost as the string "0.74"; accept numeric strings.
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _opt_amount(value: object) -> float | None:
    """A price or amount in USD: finite and not negative, or None."""
    number = _opt_number(value)
    return number if number is not None and number >= 0 else None


def _opt_int(value: object) -> int | None:
    number = _opt_number(value)
    return int(number) if number is not None and number.is_integer() else None


def _opt_timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        # GraphQL-era APIs sent ports as one comma string ("8888/http,22/tcp").
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _str_mapping(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        return MappingProxyType({})
    return MappingProxyType(
        {
            str(key): item if isinstance(item, str) else str(item)
            for key, item in value.items()
            if item is not None
        }
    )


def _describe_env(env: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{key!r}: '***'" for key in sorted(env)) + "}"


def _redacted_repr(obj: object) -> str:
    """A dataclass repr that shows env keys but no env values, and only the length of args."""
    parts = []
    for fld in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, fld.name)
        if fld.name == "env":
            parts.append(f"env={_describe_env(value)}")
        elif fld.name == "args" and value:
            parts.append(f"args=<{len(value)} chars>")
        else:
            parts.append(f"{fld.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


# --- pods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuUtilization:
    """One GPU's utilisation while the pod runs (percent, 0–100)."""

    util_percent: int | None
    memory_util_percent: int | None


@dataclass(frozen=True)
class RuntimePort:
    """A live port mapping of a running pod."""

    private_port: int | None
    public_port: int | None
    type: str | None
    ip: str | None


@dataclass(frozen=True)
class PodRuntime:
    """Live metrics, present only while the container runs. Not proof the model server is ready."""

    uptime_seconds: int | None
    gpus: tuple[GpuUtilization, ...]
    ports: tuple[RuntimePort, ...]

    @classmethod
    def from_api(cls, data: object) -> PodRuntime | None:
        if not isinstance(data, Mapping):
            return None
        gpus = tuple(
            GpuUtilization(_opt_int(gpu.get("util")), _opt_int(gpu.get("memoryUtil")))
            for gpu in (data.get("gpus") or [])
            if isinstance(gpu, Mapping)
        )
        ports = tuple(
            RuntimePort(
                private_port=_opt_int(port.get("private")),
                public_port=_opt_int(port.get("public")),
                type=_opt_str(port.get("type")),
                ip=_opt_str(port.get("ip")),
            )
            for port in (data.get("ports") or [])
            if isinstance(port, Mapping)
        )
        return cls(uptime_seconds=_opt_int(data.get("uptime")), gpus=gpus, ports=ports)


@dataclass(frozen=True, repr=False)
class Pod:
    """A pod as RunPod reports it (GET /v2/pods, /v2/pods/{id}, create and action responses).

    `cost_per_hour` is USD/hour, 0.0 when RunPod omits it (stopped pods cost 0 per the spec); the
    billing endpoint, not this figure, is the authority on money spent.
    """

    id: str
    name: str
    status: PodStatus
    status_text: str  # RunPod's raw status string; differs from `status` only when it is UNKNOWN
    actions: tuple[str, ...] = ()
    image: str = ""
    gpu_type_id: str | None = None
    gpu_count: int = 0
    cloud: str | None = None
    data_center_id: str | None = None
    cost_per_hour: float = 0.0
    created_at: datetime | None = None
    started_at: datetime | None = None
    runtime: PodRuntime | None = None
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    ports: tuple[str, ...] = ()
    args: str = ""
    cuda_version: str | None = None
    locked: bool = False  # RunPod: "a locked pod cannot be stopped or reset"

    def __repr__(self) -> str:
        return _redacted_repr(self)

    @classmethod
    def from_api(cls, data: object) -> Pod:
        """Parse one pod object; raises ApiError naming a missing or invalid required field."""
        pod = _require_object(data, "a pod")
        pod_id = _require_str(pod, "id", "a pod")
        what = f"pod {pod_id}"
        # An empty name is legal on RunPod (just never one of rpm's pods); a missing one is not.
        name = _require_str(pod, "name", what, allow_empty=True)
        status_text = _require_str(pod, "status", what)
        gpu = pod.get("gpu")
        gpu_type_id = _opt_str(gpu.get("id")) if isinstance(gpu, Mapping) else None
        # GpuConfig.count defaults to 1 in the spec; a pod without `gpu` is a CPU pod (0 GPUs).
        gpu_count = (_opt_int(gpu.get("count")) or 1) if isinstance(gpu, Mapping) else 0
        cost = _opt_amount(pod.get("cost"))
        if cost is None:
            cost = _opt_amount(pod.get("costPerHr"))  # v1 field name, for an older emulator
        return cls(
            id=pod_id,
            name=name,
            status=PodStatus.from_api(status_text),
            status_text=status_text,
            actions=_str_tuple(pod.get("actions")),
            image=_opt_str(pod.get("image")) or _opt_str(pod.get("imageName")) or "",
            gpu_type_id=gpu_type_id,
            gpu_count=gpu_count,
            cloud=_opt_str(pod.get("cloud")),
            data_center_id=_opt_str(pod.get("dataCenterId")),
            cost_per_hour=cost or 0.0,
            created_at=_opt_timestamp(pod.get("createdAt")),
            started_at=_opt_timestamp(pod.get("startedAt")),
            runtime=PodRuntime.from_api(pod.get("runtime")),
            env=_str_mapping(pod.get("env")),
            ports=_str_tuple(pod.get("ports")),
            args=pod["args"] if isinstance(pod.get("args"), str) else "",
            cuda_version=_opt_str(pod.get("cudaVersion")),
            locked=pod.get("locked") is True,
        )

    def proxy_url(self, port: int) -> str:
        """The RunPod HTTP proxy URL of an `<port>/http` service on this pod."""
        return f"https://{self.id}-{port}.proxy.runpod.net"


# --- GPU catalog ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataCenterStock:
    """A data center offering a GPU type, with its stock level (NONE/LOW/MEDIUM/HIGH)."""

    id: str
    name: str
    availability: str | None


@dataclass(frozen=True)
class GpuType:
    """One GPU type of the catalog (GET /v2/catalog/gpus). Prices are USD/hour for one GPU."""

    id: str
    name: str
    memory_gb: int
    secure: bool
    community: bool
    price_secure: float | None
    price_community: float | None
    max_count_secure: int
    max_count_community: int
    availability: str | None = None  # present only when requested with include=AVAILABILITY
    data_centers: tuple[DataCenterStock, ...] = ()

    @classmethod
    def from_api(cls, data: object) -> GpuType:
        gpu = _require_object(data, "a GPU type")
        gpu_id = _require_str(gpu, "id", "a GPU type")
        price = _opt_object(gpu.get("price"))
        max_count = _opt_object(gpu.get("maxCount"))
        data_centers = tuple(
            DataCenterStock(
                id=center["id"],
                name=_opt_str(center.get("name")) or center["id"],
                availability=_availability(center.get("availability")),
            )
            for center in (gpu.get("dataCenters") or [])
            if isinstance(center, Mapping) and _opt_str(center.get("id"))
        )
        return cls(
            id=gpu_id,
            name=_opt_str(gpu.get("name")) or gpu_id,
            memory_gb=_opt_int(gpu.get("memory")) or 0,
            secure=gpu.get("secure") is True,
            community=gpu.get("community") is True,
            price_secure=_opt_amount(price.get("secure")),
            price_community=_opt_amount(price.get("community")),
            max_count_secure=_opt_int(max_count.get("secure")) or 0,
            max_count_community=_opt_int(max_count.get("community")) or 0,
            availability=_availability(gpu.get("availability")),
            data_centers=data_centers,
        )

    def price_for(self, cloud: str) -> float | None:
        """USD/hour for one GPU in `cloud` ("SECURE" or "COMMUNITY")."""
        return self.price_secure if cloud.upper() == "SECURE" else self.price_community


def _availability(value: object) -> str | None:
    # Kept as text (upper-cased) so a level RunPod adds later is shown rather than dropped.
    return value.strip().upper() if isinstance(value, str) and value.strip() else None


# --- billing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BillingRecord:
    """One time bucket of a pod's bill (GET /v2/billing/pods)."""

    pod_id: str | None
    start: datetime | None
    end: datetime | None
    total_amount_usd: float
    disk_amount_usd: float | None = None  # storage, billed also while the pod is stopped

    @classmethod
    def from_api(cls, data: object) -> BillingRecord:
        record = _require_object(data, "a billing record")
        total = _opt_amount(record.get("totalAmount"))
        if total is None:
            # Summing a record we cannot read as zero would under-report spend against a cap.
            raise ApiError("RunPod returned a billing record without a numeric 'totalAmount' (a finite amount, "
                           "not negative)")
        return cls(
            pod_id=_opt_str(record.get("podId")),
            start=_opt_timestamp(record.get("startTime")),
            end=_opt_timestamp(record.get("endTime")),
            total_amount_usd=total,
            disk_amount_usd=_opt_amount(record.get("diskAmount")),
        )


# --- the create request -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class PodSpec:
    """The pod rpm wants created, independent of the wire format; `to_api()` gives the JSON body.

    Impossible combinations raise ValueError at construction: config validation should have caught
    them, so reaching one is a bug in rpm rather than a user error.
    A `volume_gb` of None or 0 means no persistent volume.
    """

    name: str
    gpu_type_id: str
    image: str | None = None
    template_id: str | None = None
    gpu_count: int = 1
    cloud: str = "SECURE"
    container_disk_gb: int | None = None
    volume_gb: int | None = None
    volume_mount_path: str = "/workspace"
    network_volume_id: str | None = None
    # The spec gives network mounts no default path; rpm uses the same default as the pod volume.
    network_volume_mount_path: str = "/workspace"
    ports: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    args: str | None = None
    data_center_ids: tuple[str, ...] = ()
    allowed_cuda_versions: tuple[str, ...] = ()
    min_cuda_version: str | None = None
    start_ssh: bool = False

    def __post_init__(self) -> None:
        # Accept lists and dicts from callers but store immutable copies: the spec is frozen.
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "data_center_ids", tuple(self.data_center_ids))
        object.__setattr__(self, "allowed_cuda_versions", tuple(self.allowed_cuda_versions))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        problems = list(self._problems())
        if problems:
            raise ValueError(f"invalid pod spec for {self.name!r}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if not self.name:
            problems.append("name is empty")
        if not self.image and not self.template_id:
            problems.append("needs an image or a template_id")
        if not self.gpu_type_id:
            problems.append("gpu_type_id is empty")
        if self.gpu_count < 1:
            problems.append(f"gpu_count must be at least 1, not {self.gpu_count}")
        if self.cloud not in CLOUDS:
            problems.append(f"cloud must be SECURE or COMMUNITY, not {self.cloud!r}")
        if self.container_disk_gb is not None and self.container_disk_gb < 1:
            problems.append(f"container_disk_gb must be at least 1, not {self.container_disk_gb}")
        if self.volume_gb and self.volume_gb < MIN_PERSISTENT_VOLUME_GB:
            problems.append(
                f"volume_gb must be 0 or at least {MIN_PERSISTENT_VOLUME_GB}, not {self.volume_gb}"
            )
        if self.volume_gb and self.network_volume_id:
            problems.append("a pod takes a persistent volume or a network volume, not both")
        if self.allowed_cuda_versions and self.min_cuda_version:
            problems.append("allowed_cuda_versions and min_cuda_version are mutually exclusive")
        for version in (*self.allowed_cuda_versions, *filter(None, [self.min_cuda_version])):
            if not _CUDA_VERSION.match(version):
                problems.append(f"CUDA version {version!r} is not major.minor (e.g. 12.8)")
        return problems

    def __repr__(self) -> str:
        return _redacted_repr(self)

    def to_api(self) -> dict[str, Any]:
        """The CreatePodRequest body for POST /v2/pods; unset optional fields are omitted."""
        gpu: dict[str, Any] = {"id": self.gpu_type_id, "count": self.gpu_count}
        if self.allowed_cuda_versions:
            gpu["allowedCudaVersions"] = list(self.allowed_cuda_versions)
        elif self.min_cuda_version:
            gpu["minCudaVersion"] = self.min_cuda_version
        body: dict[str, Any] = {"name": self.name}
        if self.image:
            body["image"] = self.image
        if self.template_id:
            body["templateId"] = self.template_id
        body["gpu"] = gpu
        # Always explicit: the API default (SECURE) could change, and the price rpm checked is per cloud.
        body["cloud"] = self.cloud
        if self.container_disk_gb is not None:
            body["disk"] = self.container_disk_gb
        if self.network_volume_id:
            body["mounts"] = {
                "network": [{"volumeId": self.network_volume_id, "path": self.network_volume_mount_path}]
            }
        elif self.volume_gb:
            body["mounts"] = {"persistent": {"size": self.volume_gb, "path": self.volume_mount_path}}
        if self.ports:
            body["ports"] = list(self.ports)
        if self.env:
            body["env"] = dict(self.env)
        if self.args is not None:
            body["args"] = self.args
        if self.data_center_ids:
            body["dataCenterIds"] = list(self.data_center_ids)
        if self.start_ssh:
            body["startSsh"] = True
        return body
