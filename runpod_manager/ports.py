"""The control plane's seams to the outside world: RunPod and the proxy process.

`Lifecycle` talks to RunPod only through `RunPodPort` (the client methods it uses; `RunPodClient` is the
real one, `tests/support/fake_runpod.FakeRunPod` the in-memory one) and to the background proxy only through
`ProxyPort` (`ProcessProxy` is the real one). Clocks and sleep are injected beside them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import requests

from runpod_manager.config import Config, PodConfig
from runpod_manager.errors import ApiError
from runpod_manager.paths import Paths
from runpod_manager.runpod.models import GpuType, Pod, PodSpec


def probe_model_server(pod_url: str, upstream_key: str | None, timeout_seconds: float = 5.0) -> bool:
    """Readiness is never inferred from status alone: GET /v1/models through the pod URL must answer 200."""
    headers = {"Authorization": f"Bearer {upstream_key}"} if upstream_key else {}
    try:
        response = requests.get(f"{pod_url}/v1/models", headers=headers, timeout=timeout_seconds)
    except requests.RequestException:
        return False
    return response.status_code == 200


def probe_http_service(url: str, headers: Mapping[str, str], timeout_seconds: float = 5.0) -> bool:
    """A kind = "http" pod's readiness: its health_path answers below 500 through the pod URL (a 502 or 404
    from RunPod's own HTTP proxy means nothing listens yet; a 401 from the service means it is up)."""
    try:
        response = requests.get(url, headers=dict(headers), timeout=timeout_seconds, allow_redirects=False)
    except requests.RequestException:
        return False
    return response.status_code < 500


def answers_without_key(pod_url: str, timeout_seconds: float = 3.0) -> bool:
    """Whether a pod's public URL serves its root to a request with no credential at all (below 400)."""
    try:
        response = requests.get(pod_url + "/", timeout=timeout_seconds, allow_redirects=False)
    except requests.RequestException:
        return False
    return response.status_code < 400


def probe_pod(pod: PodConfig, pod_url: str, upstream_key: str | None) -> bool:
    """Whether the pod's server answers, by its kind: the one readiness probe (`Lifecycle.probe` by default),
    used by the lifecycle's passes and by `rpm start`'s wait alike."""
    if pod.is_http:
        return probe_http_service(pod_url + pod.health_path, pod.headers)
    return probe_model_server(pod_url, upstream_key)


def utc_now() -> datetime:
    return datetime.now(UTC)


TEST_CLOCK_VARIABLE = "RPM_TEST_CLOCK_FILE"


def wall_clock(config: Config, environ: Mapping[str, str] | None = None) -> Callable[[], datetime]:
    """The control plane's clock for a process: `utc_now`, or, for the test suite only, the instant (ISO 8601
    with an offset) written in the file RPM_TEST_CLOCK_FILE names, read at every call, so an e2e test moves
    the time of its `rpm` and proxy subprocesses by rewriting the file instead of sleeping past a limit.
    Honoured only while the RunPod API is on this machine (the emulator): a stray variable can never hold a
    real pod's limits back."""
    path = (os.environ if environ is None else environ).get(TEST_CLOCK_VARIABLE)
    if not path or not _is_loopback(config.api.base_url):
        return utc_now
    return lambda: _instant_in(Path(path))


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _instant_in(path: Path) -> datetime:
    moment = datetime.fromisoformat(path.read_text(encoding="utf-8").strip())
    if moment.tzinfo is None:
        raise ValueError(f"{TEST_CLOCK_VARIABLE}: {path} must hold an instant with its UTC offset")
    return moment.astimezone(UTC)


def runpod_client(config: Config) -> RunPodPort:
    """The real RunPod client for a config (a ConfigError without a key)."""
    from runpod_manager.runpod.client import RunPodClient

    api = config.api
    return RunPodClient(config.require_api_key(), api.base_url, connect_timeout_seconds=api.connect_timeout_seconds,
                        read_timeout_seconds=api.read_timeout_seconds, max_retries=api.max_retries)


@dataclass(frozen=True)
class Listing:
    """Every pod of the account as one `GET /v2/pods` returned it for a pass over many pods, or its error.
    Not `complete`: nothing was asked because nothing was live (no pod, no intent, no sweep due)."""

    pods: tuple[Pod, ...] = ()
    error: ApiError | None = None
    complete: bool = True


class RunPodPort(Protocol):
    """The RunPod calls the lifecycle makes. `calls` counts requests made (for the one-call-per-pass test)."""

    calls: int

    def get_pod(self, pod_id: str) -> Pod: ...
    def list_pods(self) -> list[Pod]: ...
    def list_pods_with_prefix(self, prefix: str) -> list[Pod]: ...
    def create_pod(self, spec: PodSpec) -> Pod: ...
    def start_pod(self, pod_id: str) -> Pod: ...
    def stop_pod(self, pod_id: str) -> Pod: ...
    def terminate_pod(self, pod_id: str) -> bool: ...
    def update_pod(self, pod_id: str, *, args: str | None = None) -> Pod: ...
    def pod_spend_usd(self, pod_id: str, *, since: datetime) -> float: ...
    def list_gpu_types(self, *, gpu_count: int = 1, cloud: str = "SECURE",
                       include_availability: bool = True) -> list[GpuType]: ...
    def close(self) -> None: ...


class ProxyPort(Protocol):
    """The background proxy of this config, as the lifecycle sees it."""

    def running_pid(self) -> int | None:
        """The pid of a live proxy of this config (background or foreground), or None."""

    def spawn(self) -> int:
        """Start the background proxy without waiting for it to answer (safe under the state lock)."""

    def start(self) -> int:
        """Start the background proxy unless one runs; return once its /health answers as it."""

    def stop_all(self) -> list[int]:
        """Stop every proxy of this config; the pids that were running."""


class ProcessProxy:
    """The real ProxyPort: `proxy/process.py`'s subprocess, registry and process-table search."""

    def __init__(self, config: Config, paths: Paths) -> None:
        self.config = config
        self.paths = paths

    def running_pid(self) -> int | None:
        from runpod_manager.proxy import process

        return process.running_pid(self.paths)

    def spawn(self) -> int:
        from runpod_manager.proxy import process

        return process.start_proxy_process(self.config, self.paths, wait=False)

    def start(self) -> int:
        from runpod_manager.proxy import process

        return process.start_proxy_process(self.config, self.paths)

    def stop_all(self) -> list[int]:
        from runpod_manager.proxy import process

        return [proxy.pid for proxy in process.stop_proxies(self.paths)]


class WatchedProxy(ProcessProxy):
    """A ProcessProxy whose liveness check is a given function (callers that already know how to look)."""

    def __init__(self, config: Config, paths: Paths, alive: Callable[[], int | None]) -> None:
        super().__init__(config, paths)
        self._alive = alive

    def running_pid(self) -> int | None:
        return self._alive()
