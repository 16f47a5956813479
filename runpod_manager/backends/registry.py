"""Backend name → factory. `Fleet` (control.py) makes each entry's backend here, from its config's
`backend` key; a name in `backends.NAMES` without a factory is one the config refuses as not available yet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runpod_manager import backends
from runpod_manager.config import Config
from runpod_manager.errors import ConfigError
from runpod_manager.lifecycle import Lifecycle

from .base import Backend
from .pod import pod_backend

# A factory takes the lead Lifecycle (the state store, RunPod client, clocks, event log and proxy port every
# entry of a config shares) and the entry's config (None: the lead's own entry).
Factory = Callable[[Lifecycle, Config | None], Backend[Any]]

FACTORIES: dict[str, Factory] = {backends.POD: pod_backend}


def backend_for(lead: Lifecycle, config: Config | None = None) -> Backend[Any]:
    """The backend of `config`'s entry (the lead's own when None), made by its registered factory."""
    name = (config or lead.config).pod.backend
    factory = FACTORIES.get(name)
    if factory is None:  # the config refuses it first (config._check_pod); a guard for configs built in code
        raise ConfigError(f"backend {name!r} of pod '{(config or lead.config).pod.name}' is not available yet")
    return factory(lead, config)
