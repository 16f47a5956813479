"""catalog.py's price cache: what it writes, and that a damaged or impossible cache is only a cache.

The cache decides which configured GPU types `rpm start` skips for `[pod] max_price_per_hour`; a price that is
not a finite, non-negative number, or a fetch time that keeps it fresh forever, must make the cache unusable
(rpm fetches the catalog again), never a limit that is silently off or a crash.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from runpod_manager import catalog
from runpod_manager.config import Config, build_config
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.runpod.models import GpuType

GPU = "NVIDIA L40S"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return resolve_paths({"RPM_HOME": str(tmp_path / "home")})


@pytest.fixture
def config() -> Config:
    return build_config({"version": 1, "pod": {"gpu_types": [GPU], "max_price_per_hour": 2.0}}, source=None,
                        env={})


def cache_document(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"fetched_at": time.time(), "cloud": "SECURE", "gpu_count": 1,
                                "prices": {GPU: 0.86}, "gpus": []}
    document.update(overrides)
    return document


def put_cache(paths: Paths, text: str) -> None:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.catalog_cache.write_text(text, encoding="utf-8")


def test_a_fresh_cache_gives_the_prices(paths: Paths, config: Config) -> None:
    put_cache(paths, json.dumps(cache_document()))
    assert catalog.cached_prices(paths, config) == {GPU: pytest.approx(0.86)}


@pytest.mark.parametrize("text", [
    json.dumps(cache_document(prices={GPU: float("nan")})),
    json.dumps(cache_document(prices={GPU: float("inf")})),
    json.dumps(cache_document(prices={GPU: -0.5})),
    json.dumps(cache_document(prices={GPU: "0.5"})),
    json.dumps(cache_document(prices={GPU: True})),
    json.dumps(cache_document(prices={GPU: 10**400})),
    json.dumps(cache_document(fetched_at=float("inf"))),
    json.dumps(cache_document(fetched_at=float("nan"))),
    json.dumps(cache_document(fetched_at=time.time() + 86400)),
    json.dumps(cache_document(fetched_at="now")),
    json.dumps(cache_document(prices=[0.5])),
], ids=["nan", "inf", "negative", "string", "bool", "400-digits", "fresh-forever", "fetched-nan", "fetched-tomorrow",
        "fetched-a-word", "prices-a-list"])
def test_an_impossible_cache_is_not_used(paths: Paths, config: Config, text: str) -> None:
    put_cache(paths, text)
    assert catalog.cached_prices(paths, config) is None


def test_a_cache_that_is_not_a_regular_file_or_too_large_is_not_read(paths: Paths, config: Config) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.catalog_cache.symlink_to("/dev/zero")  # reading it whole would never end
    assert catalog.cached_prices(paths, config) is None
    paths.catalog_cache.unlink()
    put_cache(paths, json.dumps(cache_document(padding="x" * (catalog.MAX_CACHE_BYTES + 1))))
    assert catalog.cached_prices(paths, config) is None


def test_the_cache_is_written_0600_even_with_a_permissive_umask(paths: Paths, config: Config) -> None:
    gpu = GpuType.from_api({"id": GPU, "secure": True, "price": {"secure": 0.86}})
    previous = os.umask(0)
    try:
        catalog._save_cache(paths, config, [gpu])
    finally:
        os.umask(previous)
    assert stat.S_IMODE(paths.catalog_cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.state_dir.stat().st_mode) == 0o700
    assert catalog.cached_prices(paths, config) == {GPU: pytest.approx(0.86)}
