"""Where config, state, cache and logs live: the one override point.

`RPM_HOME` puts everything under one directory (tests point it at tmp_path). Otherwise the XDG base
directories are used (`XDG_CONFIG_HOME`, `XDG_STATE_HOME`, `XDG_CACHE_HOME`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

APP = "rpm"
CONFIG_FILENAME = "pod_config.toml"
STATE_FILENAME = "pod_state.json"


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    cache_dir: Path

    @property
    def user_config_file(self) -> Path:
        return self.config_dir / CONFIG_FILENAME

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILENAME

    @property
    def lock_file(self) -> Path:
        return self.state_dir / (STATE_FILENAME + ".lock")

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def event_log(self) -> Path:
        return self.log_dir / "events.jsonl"

    @property
    def catalog_cache(self) -> Path:
        return self.state_dir / "gpu_catalog.json"

    @property
    def proxy_pid_file(self) -> Path:
        return self.state_dir / "proxy.pid"

    @property
    def proxy_registry_dir(self) -> Path:
        """One file per running proxy (background or foreground), written by the proxy itself."""
        return self.state_dir / "proxies"

    @property
    def proxy_log(self) -> Path:
        return self.log_dir / "proxy.log"

    @property
    def response_cache_dir(self) -> Path:
        return self.cache_dir / "responses"


def resolve_paths(env: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if env is None else env
    home = env.get("RPM_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(config_dir=root, state_dir=root / "state", cache_dir=root / "cache")
    user_home = Path(env.get("HOME") or Path.home())
    config = Path(env.get("XDG_CONFIG_HOME") or user_home / ".config") / APP
    state = Path(env.get("XDG_STATE_HOME") or user_home / ".local" / "state") / APP
    cache = Path(env.get("XDG_CACHE_HOME") or user_home / ".cache") / APP
    return Paths(config_dir=config, state_dir=state, cache_dir=cache)


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 for the leaf; tighten it if it already exists."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path
