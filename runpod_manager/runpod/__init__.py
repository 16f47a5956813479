"""RunPod REST v2: the HTTP client and the objects it returns."""

from runpod_manager.runpod.client import DEFAULT_BASE_URL, RunPodClient, normalise_base_url
from runpod_manager.runpod.models import (
    BillingRecord,
    DataCenterStock,
    GpuType,
    GpuUtilization,
    Pod,
    PodRuntime,
    PodSpec,
    PodStatus,
    RuntimePort,
    parse_timestamp,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "BillingRecord",
    "DataCenterStock",
    "GpuType",
    "GpuUtilization",
    "Pod",
    "PodRuntime",
    "PodSpec",
    "PodStatus",
    "RunPodClient",
    "RuntimePort",
    "normalise_base_url",
    "parse_timestamp",
]
