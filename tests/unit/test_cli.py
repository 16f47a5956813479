"""The `rpm` command through Typer's CliRunner (in process), against an embedded emulator over real HTTP.

What the subprocess tests in tests/e2e/test_cli_core.py cannot reach cheaply: every error class mapped to
its documented exit code (README "Exit codes"), the JSON envelope of every command, usage errors, and
that neither a key nor a traceback reaches the output on any of those paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from runpod_manager import __version__, errors
from runpod_manager.cli import app
from runpod_manager.sandbox.server import EmbeddedSandbox
from tests.support.rpm import config_text

KEY = "sk-cli-SECRET-6b2e"
GPU = "NVIDIA GeForce RTX 4090"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[EmbeddedSandbox]:
    with EmbeddedSandbox(api_key=KEY, provision_seconds=0.02, start_seconds=0.02, model_load_seconds=0.05,
                         token_delay_seconds=0.0) as running:
        yield running


@pytest.fixture
def world_reset(sandbox: EmbeddedSandbox) -> EmbeddedSandbox:
    sandbox.call(lambda world: world.reset())
    return sandbox


class Cli:
    def __init__(self, sandbox: EmbeddedSandbox, home: Path) -> None:
        self.sandbox = sandbox
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.config = home / "pod_config.toml"
        self.env: dict[str, str | None] = {
            "RPM_HOME": str(home), "RPM_CONFIG": str(self.config), "RUNPOD_API_URL": sandbox.url,
            "RUNPOD_API_KEY": KEY, "RPM_API_POD_URL_TEMPLATE": sandbox.pod_url_template, "RPM_DEBUG": None,
            "COLUMNS": "120",
        }
        self.write_config()

    def write_config(self, extra: str = "", **overrides: Any) -> None:
        text = config_text(**{"name": "cli", "gpu_types": f'["{GPU}"]', "api_max_retries": 0, **overrides})
        self.config.write_text(text + extra, encoding="utf-8")

    def run(self, *args: str, **env: str | None) -> Result:
        result = CliRunner().invoke(app, list(args), env={**self.env, **env})
        output = result.stdout + result.stderr
        assert KEY not in output, output
        assert "Traceback" not in output, output
        return result

    def json(self, *args: str, code: int = 0, **env: str | None) -> dict[str, Any]:
        result = self.run(*args, "--json", **env)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        envelope = json.loads(result.stdout)  # exactly one document on stdout
        assert envelope["rpm"] == 1 and envelope["ok"] is (code == 0)
        return dict(envelope)


@pytest.fixture
def cli(world_reset: EmbeddedSandbox, tmp_path: Path) -> Cli:
    return Cli(world_reset, tmp_path / "home")


# --- the happy path, JSON envelopes ---------------------------------------------------------------------


def test_start_status_shutdown_in_process(cli: Cli) -> None:
    assert cli.json("status")["data"]["pod"] is None  # no pod: says so, exit 0
    started = cli.json("start", "--no-proxy")
    assert started["command"] == "start"
    assert (started["data"]["created"], started["data"]["ready"]) == (True, True)
    pod_id = started["data"]["pod"]["id"]
    assert cli.sandbox.call(lambda world: str(world.get_pod(pod_id).status)) == "RUNNING"
    status = cli.json("status")["data"]
    assert status["pod"]["id"] == pod_id and status["lease"] is not None
    again = cli.json("start", "--no-proxy")["data"]
    assert again["pod"]["id"] == pod_id and again["created"] is False  # idempotent: nothing created
    assert len(cli.sandbox.call(lambda world: list(world.pods))) == 1
    ended = cli.json("shutdown")
    assert ended["command"] == "shutdown"
    assert cli.sandbox.call(lambda world: list(world.pods)) == []
    assert cli.json("shutdown")["ok"] is True  # idempotent


def test_human_output_names_the_pod_and_the_base_url(cli: Cli) -> None:
    result = cli.run("start", "--no-proxy")
    assert result.exit_code == 0, result.stderr
    pod_id = cli.sandbox.call(lambda world: next(iter(world.pods)))
    assert pod_id in result.stdout and "/v1" in result.stdout
    table = cli.run("status")
    assert table.exit_code == 0 and pod_id in table.stdout and "RUNNING" in table.stdout
    assert cli.run("shutdown").exit_code == 0


def test_refresh_catalog_lists_gpus_and_fails_for_a_gpu_that_does_not_exist(cli: Cli) -> None:
    data = cli.json("refresh-catalog")["data"]
    assert GPU in json.dumps(data)
    cli.write_config(gpu_types='["NVIDIA GeForce GTX 285"]')
    result = cli.run("refresh-catalog")
    assert result.exit_code == 1 and "NVIDIA GeForce GTX 285" in result.stdout + result.stderr


def test_watchdog_dry_run_plans_without_acting(cli: Cli) -> None:
    cli.json("start", "--no-proxy")
    cli.write_config(runtime_seconds=1)
    import time

    time.sleep(1.2)
    result = cli.run("watchdog", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "runtime" in result.stdout
    assert len(cli.sandbox.call(lambda world: list(world.pods))) == 1  # a dry run ended nothing
    cli.run("watchdog")
    assert cli.sandbox.call(lambda world: list(world.pods)) == []


# --- exit codes -----------------------------------------------------------------------------------


def test_help_and_version(cli: Cli) -> None:
    result = cli.run("--help")
    assert result.exit_code == 0
    for command in ("init", "start", "status", "shutdown", "refresh-catalog", "watchdog", "proxy", "demo",
                    "sandbox"):
        assert command in result.stdout
    assert cli.run("--version").stdout.strip() == f"rpm {__version__}"


@pytest.mark.parametrize("args", [["start", "--bogus"], ["stat"], ["shutdown", "--stop", "extra"]])
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    assert cli.run(*args).exit_code == 2


def test_a_config_error_exits_2_naming_file_table_and_key(cli: Cli) -> None:
    cli.write_config(extra="\n[proxy]\nprot = 8080\n")
    body = cli.json("status", code=2)["error"]
    assert body["type"] == "ConfigError" and body["exit_code"] == 2
    assert str(cli.config) in body["message"] and "[proxy]" in body["message"] and "prot" in body["message"]
    assert "port" in (body["message"] + (body["hint"] or ""))  # did you mean


def test_missing_key_for_a_command_that_calls_runpod_exits_2(cli: Cli) -> None:
    body = cli.json("start", "--no-proxy", code=2, RUNPOD_API_KEY=None)["error"]
    assert "RUNPOD_API_KEY" in body["message"] + (body["hint"] or "")


def test_a_wrong_key_exits_3_and_never_echoes_it(cli: Cli) -> None:
    wrong = "sk-wrong-SECRET-0000"
    result = cli.run("start", "--no-proxy", "--json", RUNPOD_API_KEY=wrong)
    assert result.exit_code == 3 and wrong not in result.stdout + result.stderr
    assert json.loads(result.stdout)["error"]["type"] == "AuthError"


def test_a_dead_api_exits_4(cli: Cli) -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    body = cli.json("start", "--no-proxy", code=4, RUNPOD_API_URL=f"http://127.0.0.1:{port}")["error"]
    assert "127.0.0.1" in body["message"] + (body["hint"] or "")


def test_no_capacity_exits_5_with_runpods_words(cli: Cli) -> None:
    def empty(world: Any) -> None:
        for key in list(world.stock):
            world.stock[key] = 0

    cli.sandbox.call(empty)
    body = cli.json("start", "--no-proxy", code=5)["error"]
    assert body["type"] == "NoCapacity"
    assert cli.sandbox.call(lambda world: list(world.pods)) == []


@pytest.mark.parametrize(("error", "code"), [
    (errors.LockBusy("state is locked by pid 4242 (lock)", holder_pid=4242), 6),
    (errors.InsufficientBalance("balance too low"), 5),
    (errors.ApiUnavailable("RunPod answered 503"), 4),
    (errors.NotReady("the model did not answer within 30 s"), 1),
    (errors.StateError("state file is corrupt"), 1),
    (KeyboardInterrupt(), 130),
    (RuntimeError(f"boom with {KEY} inside"), 1),
])
def test_every_error_maps_to_its_documented_exit_code_in_one_line(cli: Cli, monkeypatch: pytest.MonkeyPatch,
                                                                  error: BaseException, code: int) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr("runpod_manager.status.build_status", fail)
    result = cli.run("status")  # asserts: no key, no traceback
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    envelope = cli.json("status", code=code)
    assert envelope["error"]["exit_code"] == code


def test_rpm_debug_shows_the_traceback_of_an_unexpected_error(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("runpod_manager.status.build_status", fail)
    result = CliRunner().invoke(app, ["status"], env={**cli.env, "RPM_DEBUG": "1"})
    assert isinstance(result.exception, RuntimeError)


# --- init ----------------------------------------------------------------------------------------------


def test_init_writes_the_template_once_and_force_overwrites(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "fresh" / "pod_config.toml"
    target.parent.mkdir()
    assert cli.run("init", "--path", str(target)).exit_code == 0
    text = target.read_text()
    assert "[pod]" in text and "[limits]" in text
    target.write_text(text + "\n# mine\n")
    refused = cli.run("init", "--path", str(target))
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert target.read_text().endswith("# mine\n")  # nothing lost
    assert cli.run("init", "--path", str(target), "--force").exit_code == 0
    assert not target.read_text().endswith("# mine\n")
    assert cli.json("status", RPM_CONFIG=str(target))["ok"]


def test_init_from_the_old_json_format(cli: Cli, tmp_path: Path) -> None:
    old = tmp_path / "pod_config.json"
    old.write_text(json.dumps({"model": "Qwen/Qwen2.5-Coder-7B-Instruct", "gpu_type_id": GPU,
                               "runtime_seconds": 5400, "proxy_port": 8123}))
    target = tmp_path / "converted.toml"
    assert cli.run("init", "--from", str(old), "--path", str(target)).exit_code == 0
    text = target.read_text()
    assert "5400" in text and "8123" in text and GPU in text
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    result = cli.run("init", "--from", str(broken), "--path", str(tmp_path / "x.toml"))
    assert result.exit_code == 2 and str(broken) in result.stderr.replace("\n", "")
    assert not (tmp_path / "x.toml").exists()
