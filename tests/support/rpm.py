"""Run the real `rpm` command as a subprocess against a sandbox subprocess (end-to-end tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

READY_DEADLINE_SECONDS = 20.0

BASE_CONFIG = """\
version = 1

[pod]
name = "{name}"
gpu_types = {gpu_types}

[limits]
runtime_seconds = {runtime_seconds}
daily_cutoff = "{daily_cutoff}"
timezone = "{timezone}"
idle_timeout_seconds = {idle_timeout_seconds}
idle_action = "{idle_action}"
max_daily_spend_usd = {max_daily_spend_usd}
billing_check_seconds = {billing_check_seconds}
pod_guard = {pod_guard}

[startup]
initial_wait_seconds = 0.05
poll_interval_seconds = 0.1
ready_timeout_seconds = 30

[api]
max_retries = {api_max_retries}
read_timeout_seconds = 10
"""


@dataclass
class Sandbox:
    """A `python -m runpod_manager sandbox` subprocess on a free port."""

    process: subprocess.Popen[str]
    url: str
    api_key: str
    pod_url_template: str

    def control(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """POST (with a body) or GET the emulator's /_sandbox/ control endpoints (they need the account key)."""
        url = f"{self.url}/_sandbox/{path.lstrip('/')}"
        headers = {"Authorization": f"Bearer {self.api_key}"}
        response = (requests.post(url, json=body, headers=headers, timeout=10) if body is not None
                    else requests.get(url, headers=headers, timeout=10))
        response.raise_for_status()
        return response.json() if response.content else None

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=10, **kwargs)

    def pods(self) -> list[dict[str, Any]]:
        """Every pod, from the control endpoint (not subject to the API faults a test injects)."""
        return list(self.control("state")["pods"])

    def calls(self) -> dict[str, int]:
        return dict(self.control("state").get("calls", {}))


@contextlib.contextmanager
def run_sandbox(*flags: str, api_key: str = "sk-e2e-sandbox-SECRET-4f1c") -> Iterator[Sandbox]:
    command = [sys.executable, "-m", "runpod_manager", "sandbox", "--port", "0", "--api-key", api_key,
               "--provision-seconds", "0.05", "--start-seconds", "0.05", "--model-load-seconds", "0.1",
               "--token-delay", "0.001", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        values: dict[str, str] = {}
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        assert process.stdout is not None
        while time.monotonic() < deadline and len(values) < 3:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("export "):
                key, _, value = line[len("export "):].strip().partition("=")
                values[key] = value.strip("'")
        if len(values) < 3:
            raise RuntimeError(f"sandbox did not start (exit {process.poll()})")
        # Keep reading its request log: a full pipe would block the emulator's event loop mid-test.
        threading.Thread(target=_drain, args=(process.stdout,), name="sandbox-output", daemon=True).start()
        yield Sandbox(process, values["RUNPOD_API_URL"], values["RUNPOD_API_KEY"], values["RPM_API_POD_URL_TEMPLATE"])
    finally:
        stop_process_group(process, timeout_seconds=10)


def stop_process_group(process: subprocess.Popen[Any], *, timeout_seconds: float) -> None:
    """SIGTERM the process's group (started with start_new_session), then SIGKILL it after `timeout_seconds`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _drain(stream: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        for _line in stream:
            pass


@dataclass
class Rpm:
    """The rpm CLI with an environment pointing at a sandbox and an isolated RPM_HOME."""

    home: Path
    sandbox: Sandbox
    config_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RPM_", "RUNPOD_"))}
        env.update({
            "RPM_HOME": str(self.home), "RUNPOD_API_URL": self.sandbox.url, "RUNPOD_API_KEY": self.sandbox.api_key,
            "RPM_API_POD_URL_TEMPLATE": self.sandbox.pod_url_template, "RPM_CONFIG": str(self.config_path),
            "COLUMNS": "120",
        })
        env.update(self.extra_env)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "runpod_manager", *args]

    def run(self, *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        merged = self.env() | dict(env or {})
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout, env=merged,
                              check=False, cwd=self.home)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env(), cwd=self.home)

    def json(self, *args: str, expect_exit: int | None = 0) -> dict[str, Any]:
        result = self.run(*args, "--json")
        if expect_exit is not None:
            assert result.returncode == expect_exit, (result.returncode, result.stdout, result.stderr)
        return dict(json.loads(result.stdout))

    def state(self) -> dict[str, Any]:
        path = self.home / "state" / "pod_state.json"
        return dict(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else {}

    def record(self, name: str = "e2e") -> dict[str, Any]:
        return dict(self.state().get("pods", {}).get(name, {}))

    def events(self) -> list[dict[str, Any]]:
        path = self.home / "state" / "logs" / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_config(self, *, tables: Mapping[str, Mapping[str, Any]] | None = None, **overrides: Any) -> None:
        """The base config with `overrides` of its keys; `tables` adds tables it lacks ([proxy], [cache])."""
        self.config_path.write_text(config_text(tables=tables, **overrides), encoding="utf-8")


def config_text(*, tables: Mapping[str, Mapping[str, Any]] | None = None, **overrides: Any) -> str:
    """BASE_CONFIG with test defaults, `overrides` of its keys and extra `tables` ([proxy], [cache])."""
    values: dict[str, Any] = {
        "name": "e2e", "gpu_types": '["NVIDIA GeForce RTX 4090", "NVIDIA L40S"]', "runtime_seconds": 3600,
        "daily_cutoff": "", "timezone": "UTC", "idle_timeout_seconds": 0, "idle_action": "stop",
        "max_daily_spend_usd": 0, "billing_check_seconds": 1800, "pod_guard": "false", "api_max_retries": 2,
    }
    values.update(overrides)
    text = BASE_CONFIG.format(**values)
    if tables:
        import tomli_w

        text += "\n" + tomli_w.dumps({name: dict(keys) for name, keys in tables.items()})
    return text


def fast_config(*, limits: Mapping[str, Any] | None = None, proxy_port: int | None = None, api: bool = True,
                **tables: Mapping[str, Any]) -> str:
    """A config for the many-pod e2e tests: fast startup polling, default [limits] with `limits` over them,
    [api] with few retries (unless `api` is false), a fast [proxy] on `proxy_port`, then `tables` ([pods])."""
    import tomli_w

    document: dict[str, Any] = {
        "version": 1,
        "limits": {"runtime_seconds": 3600, "daily_cutoff": "", "timezone": "UTC", "idle_timeout_seconds": 0,
                   "idle_action": "stop", "max_daily_spend_usd": 0, "billing_check_seconds": 1800, **(limits or {})},
        "startup": {"initial_wait_seconds": 0.05, "poll_interval_seconds": 0.1, "ready_timeout_seconds": 30},
    }
    if api:
        document["api"] = {"max_retries": 2, "read_timeout_seconds": 10}
    if proxy_port is not None:
        document["proxy"] = {"port": proxy_port, "reconcile_interval_seconds": 0.2, "retry_delay_seconds": 0.05}
    document.update({name: dict(keys) for name, keys in tables.items()})
    return tomli_w.dumps(document)


def health_answers(url: str) -> bool:
    """Whether a proxy at `url` answers GET /health with 200 (false while it is not yet listening)."""
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def wait_until(predicate: Any, timeout_seconds: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
