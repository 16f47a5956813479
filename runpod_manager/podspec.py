"""A pod's create request, from the config: its name, which GPU types to try, the PodSpec, the container's
arguments; and the reading of a pod's name back (whose pod is it).

Pure: prices come in as a mapping (the catalog's cache or a fresh fetch, chosen by the caller), so the
lifecycle decides when to spend an API call on them.

Names: `rpm-<pod name>-<install id>-<6 hex>`. The `rpm-` prefix marks rpm's pods, the install id the state
directory that made it (state.py), the random part one create. A pod named so with this install's id and this
pod's name is this pod's, even when no record holds it (an orphan, swept). Any other `rpm-` pod is another rpm
install's, or an older rpm's (`rpm-<name>-<random>`, no install id): rpm cannot prove it made it, so no sweep
ever touches it; a record holding its id is the only claim on such a pod.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping

from runpod_manager.config import Config
from runpod_manager.runpod.models import PodSpec
from runpod_manager.state import INSTALL_ID_RE, Lease

RPM_PREFIX = "rpm-"
INSTALL_ID_ENV = "RPM_INSTALL_ID"  # the install id in the pod's environment too, for the console's reader
_RANDOM_RE = re.compile(r"^[0-9a-f]{6}$")


def new_pod_name(config: Config, install_id: str) -> str:
    """A new pod's name: rpm-<pod name>-<install id>-<random>."""
    return f"{own_prefix(config, install_id)}{secrets.token_hex(3)}"


def own_prefix(config: Config, install_id: str) -> str:
    return f"{config.pod_name_prefix}{install_id}-"


def is_own_pod(pod_name: str, config: Config, install_id: str) -> bool:
    """Whether a pod's name says this install made it for this pod: rpm-<name>-<install id>-<random>.
    Pod names may contain dashes, so the random part is matched whole: rpm-llm-big-<id>-… is not "llm"'s."""
    prefix = own_prefix(config, install_id)
    return bool(install_id) and pod_name.startswith(prefix) and bool(_RANDOM_RE.match(pod_name[len(prefix):]))


def install_of(pod_name: str) -> str | None:
    """The install id an rpm pod's name carries, or None (not rpm's naming, or an older rpm's without an id)."""
    if not pod_name.startswith(RPM_PREFIX):
        return None
    parts = pod_name[len(RPM_PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not INSTALL_ID_RE.match(parts[1]) or not _RANDOM_RE.match(parts[2]):
        return None
    return parts[1]


def made_by(pod_name: str, install_id: str) -> bool:
    """Whether an rpm pod's name carries this install's id (any of its pods, configured now or not)."""
    return bool(install_id) and install_of(pod_name) == install_id


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
        env=_env(pod.env, pod_name),
        args=container_args(config, upstream_key, lease) or None,  # None: the image's own command
        data_center_ids=pod.data_centers,
        allowed_cuda_versions=pod.allowed_cuda_versions,
    )


def _env(env: Mapping[str, str], pod_name: str) -> dict[str, str]:
    install_id = install_of(pod_name)
    return {**env, INSTALL_ID_ENV: install_id} if install_id else dict(env)
