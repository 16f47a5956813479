"""GPU catalog: fetch it, cache it in the state dir, and check the config against it.

The cache lets `rpm start` skip GPU types priced above `[pod] max_price_per_hour` without an extra API
call on every create; `rpm refresh-catalog` renews it and says what in the config to change.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runpod_manager.config import Config
from runpod_manager.errors import ExitCode
from runpod_manager.paths import Paths, ensure_private_dir, read_regular_file
from runpod_manager.runpod.models import GpuType

if TYPE_CHECKING:
    from runpod_manager.ports import RunPodPort

CACHE_MAX_AGE_SECONDS = 3600.0
MAX_CACHE_BYTES = 4 * 1024 * 1024  # RunPod's whole catalog is tens of kilobytes


@dataclass(frozen=True)
class CatalogRow:
    id: str
    name: str
    memory_gb: int
    price_secure: float | None
    price_community: float | None
    pod_price_per_hour: float | None  # price × gpu_count in the configured cloud
    availability: str | None
    data_centers: tuple[str, ...]
    configured: bool
    rank: int | None  # position in [pod] gpu_types, 1-based


@dataclass
class CatalogResult:
    rows: list[CatalogRow]
    problems: list[str] = field(default_factory=list)
    cloud: str = "SECURE"
    gpu_count: int = 1
    cache_path: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.ok else ExitCode.FAILED


def refresh(client: RunPodPort, paths: Paths, config: Config) -> CatalogResult:
    gpus = client.list_gpu_types(gpu_count=config.pod.gpu_count, cloud=config.pod.cloud,
                                 include_availability=True)
    _save_cache(paths, config, gpus)
    return evaluate(gpus, config, cache_path=str(paths.catalog_cache))


def evaluate(gpus: list[GpuType], config: Config, *, cache_path: str = "") -> CatalogResult:
    pod = config.pod
    by_id = {gpu.id: gpu for gpu in gpus}
    rank = {gpu_id: index + 1 for index, gpu_id in enumerate(pod.gpu_types)}
    rows = []
    for gpu in sorted(gpus, key=lambda g: (rank.get(g.id, 10_000), g.price_for(pod.cloud) or 1e9, g.id)):
        unit = gpu.price_for(pod.cloud)
        rows.append(CatalogRow(
            id=gpu.id, name=gpu.name, memory_gb=gpu.memory_gb, price_secure=gpu.price_secure,
            price_community=gpu.price_community,
            pod_price_per_hour=None if unit is None else round(unit * pod.gpu_count, 4),
            availability=gpu.availability,
            data_centers=tuple(dc.id for dc in gpu.data_centers if dc.availability not in (None, "NONE")),
            configured=gpu.id in rank, rank=rank.get(gpu.id),
        ))
    problems = []
    usable = 0
    for gpu_id in pod.gpu_types:
        configured = by_id.get(gpu_id)
        if configured is None:
            from difflib import get_close_matches

            close = get_close_matches(gpu_id, list(by_id), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"[pod] gpu_types: unknown GPU id '{gpu_id}'{hint}")
            continue
        offered = configured.secure if pod.cloud == "SECURE" else configured.community
        unit = configured.price_for(pod.cloud)
        if not offered or unit is None:
            problems.append(f"[pod] gpu_types: '{gpu_id}' is not offered in the {pod.cloud} cloud; "
                            f"set [pod] cloud or pick another type")
            continue
        if pod.max_price_per_hour and unit * pod.gpu_count > pod.max_price_per_hour:
            problems.append(f"[pod] gpu_types: '{gpu_id}' costs ${unit * pod.gpu_count:.2f}/h, above "
                            f"[pod] max_price_per_hour ${pod.max_price_per_hour:.2f}")
            continue
        if configured.availability == "NONE":
            problems.append(f"[pod] gpu_types: '{gpu_id}' has no availability for {pod.gpu_count} GPU(s) in "
                            f"{pod.cloud} right now; add a fallback type")
            continue
        if pod.data_centers and configured.data_centers:
            stocked = {dc.id for dc in configured.data_centers if dc.availability not in (None, "NONE")}
            if not stocked & set(pod.data_centers):
                problems.append(f"[pod] data_centers: none of {', '.join(pod.data_centers)} has '{gpu_id}' "
                                f"in stock; it is available in {', '.join(sorted(stocked)) or 'none'}")
                continue
        usable += 1
    if pod.gpu_types and not usable:
        problems.append("no configured GPU type can be started now; `rpm start` would fail")
    return CatalogResult(rows=rows, problems=problems, cloud=pod.cloud, gpu_count=pod.gpu_count,
                         cache_path=cache_path)


def _save_cache(paths: Paths, config: Config, gpus: list[GpuType]) -> None:
    directory = ensure_private_dir(paths.state_dir)
    document = {
        "fetched_at": time.time(),
        "cloud": config.pod.cloud,
        "gpu_count": config.pod.gpu_count,
        "prices": {gpu.id: gpu.price_for(config.pod.cloud) for gpu in gpus},
        "gpus": [_gpu_json(gpu) for gpu in gpus],
    }
    fd, tmp = tempfile.mkstemp(prefix=".gpu_catalog.", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    os.replace(tmp, paths.catalog_cache)


def _gpu_json(gpu: GpuType) -> dict[str, Any]:
    return {"id": gpu.id, "name": gpu.name, "memory": gpu.memory_gb, "secure": gpu.secure,
            "community": gpu.community,
            "price": {"secure": gpu.price_secure, "community": gpu.price_community},
            "maxCount": {"secure": gpu.max_count_secure, "community": gpu.max_count_community},
            "availability": gpu.availability,
            "dataCenters": [{"id": dc.id, "name": dc.name, "availability": dc.availability}
                            for dc in gpu.data_centers]}


def cached_prices(paths: Paths, config: Config, *, max_age_seconds: float = CACHE_MAX_AGE_SECONDS
                  ) -> dict[str, float | None] | None:
    """Per-pod prices from a fresh cache for the configured cloud and count, or None.

    None too for a cache holding what rpm never writes: a price that is not a finite, non-negative number
    (NaN compares false with the max price) or a fetch time that is not a number of the past hour."""
    try:
        document = json.loads(read_regular_file(paths.catalog_cache, max_bytes=MAX_CACHE_BYTES).decode("utf-8"))
        fetched_at = document["fetched_at"]
        if not _is_amount(fetched_at) or not 0 <= time.time() - fetched_at <= max_age_seconds:
            return None
        same = document.get("cloud") == config.pod.cloud and document.get("gpu_count") == config.pod.gpu_count
        prices = document["prices"]
        if not same or not isinstance(prices, dict):
            return None
        if not all(price is None or _is_amount(price) for price in prices.values()):
            return None
        return {gpu_id: (None if price is None else float(price) * config.pod.gpu_count)
                for gpu_id, price in prices.items()}
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None  # a missing or damaged cache is only a cache


def _is_amount(value: object) -> bool:
    """A finite, non-negative JSON number (json.loads gives NaN, Infinity, and 1e400 as inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value)) and value >= 0
    except OverflowError:  # an integer of hundreds of digits
        return False


def fetch_prices(client: RunPodPort, paths: Paths, config: Config) -> dict[str, float | None]:
    gpus = client.list_gpu_types(gpu_count=config.pod.gpu_count, cloud=config.pod.cloud,
                                 include_availability=False)
    _save_cache(paths, config, gpus)
    return {gpu.id: (None if gpu.price_for(config.pod.cloud) is None
                     else (gpu.price_for(config.pod.cloud) or 0.0) * config.pod.gpu_count) for gpu in gpus}


def prices_for_max_price(client: RunPodPort, paths: Paths, config: Config) -> dict[str, float | None] | None:
    """Per-pod prices for [pod] max_price_per_hour's filter: the cache, else one fetch; None when there is no
    max price or the prices cannot be had (the create itself will tell: a start is not blocked on them)."""
    if not config.pod.max_price_per_hour:
        return None
    prices = cached_prices(paths, config)
    if prices is None:
        from runpod_manager.errors import ApiError

        try:
            prices = fetch_prices(client, paths, config)
        except ApiError:
            return None
    return prices
