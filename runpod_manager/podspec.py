"""A pod's create request, from the config: which GPU types to try, the PodSpec, the container's arguments.

Pure: prices come in as a mapping (the catalog's cache or a fresh fetch, chosen by the caller), so the
lifecycle decides when to spend an API call on them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from runpod_manager.config import Config
from runpod_manager.runpod.models import PodSpec
from runpod_manager.state import Lease


def gpu_candidates(config: Config, prices: Mapping[str, float | None] | None) -> list[str]:
    """Configured GPU types in order, without the ones priced above [pod] max_price_per_hour (a type the
    prices do not know is kept: the create will tell)."""
    types = list(config.pod.gpu_types)
    max_price = config.pod.max_price_per_hour
    if not max_price or prices is None:
        return types
    return [t for t in types if prices.get(t) is None or (prices[t] or 0.0) <= max_price]


def container_args(config: Config, upstream_key: str, lease: Lease | None) -> str:
    """vLLM's arguments (or the configured `args` template), wrapped in the in-pod guard when it is on."""
    pod = config.pod
    custom = bool(pod.args)
    if pod.is_http:
        # Any service: the image's own command, or `args` as given ({port} the only field: a service's
        # arguments may hold braces of their own, JSON say). No vLLM arguments, no key of rpm's.
        args = pod.args.replace("{port}", str(pod.port))
        if config.limits.pod_guard and lease is not None and args:
            from runpod_manager import guard

            args = guard.wrap(args, deadline=lease.deadline, api_base_url=config.api.base_url, is_vllm_args=False)
        return args
    if custom:
        args = pod.args.format(upstream_key=upstream_key, model=pod.model, port=pod.port)
    else:
        parts = ["--model", pod.model, "--port", str(pod.port), "--api-key", upstream_key]
        if pod.max_model_len:
            parts += ["--max-model-len", str(pod.max_model_len)]
        args = shlex.join(parts) + (f" {pod.extra_args}" if pod.extra_args else "")
    if config.limits.pod_guard and lease is not None:
        from runpod_manager import guard

        args = guard.wrap(args, deadline=lease.deadline, api_base_url=config.api.base_url, is_vllm_args=not custom)
    return args


def build_spec(config: Config, pod_name: str, gpu_type_id: str, upstream_key: str, lease: Lease | None) -> PodSpec:
    pod = config.pod
    return PodSpec(
        name=pod_name,
        gpu_type_id=gpu_type_id,
        image=pod.image or None,
        template_id=pod.template_id or None,
        gpu_count=pod.gpu_count,
        cloud=pod.cloud,
        container_disk_gb=pod.container_disk_gb,
        volume_gb=pod.volume_gb or None,
        volume_mount_path=pod.volume_mount_path,
        network_volume_id=pod.network_volume_id or None,
        ports=tuple(f"{port}/http" for port in pod.ports),
        env=dict(pod.env),
        args=container_args(config, upstream_key, lease) or None,  # None: the image's own command
        data_center_ids=pod.data_centers,
        allowed_cuda_versions=pod.allowed_cuda_versions,
    )
