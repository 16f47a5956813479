"""The GPU catalog and stock: GPU types with their prices and largest machines, data centers with their
CUDA version, the free GPUs per (type, data center, cloud), where a pod is placed, and the availability
the v2 `gpuTypes` listing reports. Functions over the stock mapping, so pods (and later serverless
workers) take and return GPUs from the one stock the world holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runpod_manager.sandbox.errors import WorldError

CLOUDS = ("SECURE", "COMMUNITY")


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


def place(stock: Mapping[StockKey, int], gpu_id: str, count: int, cloud: str, *, wanted: list[str],
          allowed_cuda: list[str], min_cuda: str | None) -> DataCenter | None:
    """The data center a `count`-GPU pod goes to: the first of `wanted` that fits, else the one with the most
    free GPUs of the type; None when none fits."""
    def fits(dc: DataCenter) -> bool:
        if allowed_cuda and dc.cuda_version not in allowed_cuda:
            return False
        if min_cuda and cuda_key(dc.cuda_version) < cuda_key(min_cuda):
            return False
        return stock.get((gpu_id, dc.id, cloud), 0) >= count

    if wanted:
        # In the caller's order; ids the sandbox does not model simply have no stock.
        candidates = [DC_BY_ID[dc_id] for dc_id in wanted if dc_id in DC_BY_ID]
        return next((dc for dc in candidates if fits(dc)), None)
    # The scheduler's choice: the data center with the most free GPUs of the type.
    fitting = [dc for dc in DATA_CENTERS if fits(dc)]
    return max(fitting, key=lambda dc: stock[(gpu_id, dc.id, cloud)], default=None)


def check_stock_key(gpu_id: str, data_center_id: str, cloud: str) -> StockKey:
    if gpu_id not in GPU_BY_ID or data_center_id not in DC_BY_ID or cloud not in CLOUDS:
        raise WorldError(422, "unknown GPU type, data center or cloud")
    return (gpu_id, data_center_id, cloud)


def gpu_types(stock: Mapping[StockKey, int], *, availability: bool, count: int = 1, cloud: str = "SECURE",
              countries: list[str] | None = None, cuda_versions: list[str] | None = None,
              min_cuda: str | None = None) -> list[dict[str, Any]]:
    """The v2 `gpuTypes` listing; with `availability`, each type's stock level for `count`-GPU pods."""
    result = []
    for gpu in GPU_MODELS:
        offered = {cloud_name: any(g == gpu.id and c == cloud_name for g, _, c in stock)
                   for cloud_name in CLOUDS}
        entry: dict[str, Any] = {
            "id": gpu.id, "name": gpu.name, "pool": gpu.pool, "manufacturer": gpu.manufacturer,
            "memory": gpu.memory_gb, "secure": offered["SECURE"], "community": offered["COMMUNITY"],
            "price": {"secure": gpu.secure_usd_per_hour, "community": gpu.community_usd_per_hour},
            "maxCount": {"secure": gpu.max_count_secure, "community": gpu.max_count_community},
        }
        if availability:
            centers = [dc for dc in DATA_CENTERS if (gpu.id, dc.id, cloud) in stock
                       and (not countries or dc.country in countries)]
            if countries and not any((gpu.id, dc.id, c) in stock for dc in DATA_CENTERS
                                     for c in CLOUDS if dc.country in countries):
                continue  # no data center in those countries offers this type at all
            if cuda_versions:
                centers = [dc for dc in centers if dc.cuda_version in cuda_versions]
            if min_cuda:
                centers = [dc for dc in centers if cuda_key(dc.cuda_version) >= cuda_key(min_cuda)]
            fits_machine = count <= gpu.max_count(cloud)
            levels = {dc.id: availability_level(stock[(gpu.id, dc.id, cloud)], count) if fits_machine
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
