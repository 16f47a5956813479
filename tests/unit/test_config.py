"""config.py as a library: strict validation naming file/table/key, lookup order, environment overrides,
secrets, the shipped example, the `rpm init` template and the older JSON format.

Real files in tmp_path, explicit `env` mappings (or monkeypatched os.environ where the lookup itself is
under test); no network, no subprocesses.
"""

from __future__ import annotations

import dataclasses
import json
import stat
import tomllib
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runpod_manager.config import (
    CONFIG_VERSION,
    TABLES,
    Config,
    build_config,
    convert_legacy_json,
    find_config_file,
    load_config,
    parse_cutoff,
    render_template,
    to_document,
    write_config,
)
from runpod_manager.errors import ConfigError, ExitCode
from runpod_manager.paths import CONFIG_FILENAME, Paths, resolve_paths

REPO = Path(__file__).resolve().parents[2]
API_KEY = "rpa_UNIT_SECRET_5b7c1d"  # distinctive, so a leak anywhere is found by a substring check


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return resolve_paths({"RPM_HOME": str(tmp_path / "home")})


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "project" / CONFIG_FILENAME


def write_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load(path: Path, paths: Paths, env: dict[str, str] | None = None) -> Config:
    return load_config(path, env={"RPM_HOME": str(paths.config_dir), **(env or {})}, paths=paths)


def error_of(path: Path, paths: Paths, body: str, env: dict[str, str] | None = None,
             mode: int = 0o600) -> ConfigError:
    write_file(path, f"version = {CONFIG_VERSION}\n{body}", mode)
    with pytest.raises(ConfigError) as caught:
        load(path, paths, env)
    error = caught.value
    assert "\n" not in str(error), "errors are one line"
    assert error.exit_code is ExitCode.USAGE
    return error


# --- every error names the file, the table and the key, and says what is allowed -------------------------


@pytest.mark.parametrize(("body", "table", "key", "allowed"), [
    ("[limits]\nruntime_secnds = 5\n", "limits", "'runtime_secnds'", "(did you mean 'runtime_seconds'?)"),
    ("[proxy]\nprot = 1\n", "proxy", "'prot'", "(did you mean 'port'?)"),
    ("[limits]\nruntime_seconds = \"4h\"\n", "limits", "runtime_seconds",
     "must be a whole number, got a string ('4h')"),
    ("[pod]\ngpu_count = true\n", "pod", "gpu_count", "must be a whole number, got a boolean (True)"),
    ("[limits]\nruntime_seconds = 5.5\n", "limits", "runtime_seconds", "must be a whole number, got a number (5.5)"),
    ("[proxy]\nwake_on_request = 1\n", "proxy", "wake_on_request", "must be true or false, got an integer (1)"),
    ("[proxy]\nenable_profiling = \"yes\"\n", "proxy", "enable_profiling", "must be true or false, got a string"),
    ("[limits]\nmax_daily_spend_usd = \"20\"\n", "limits", "max_daily_spend_usd",
     "must be a number, got a string ('20')"),
    ("[startup]\ninitial_wait_seconds = false\n", "startup", "initial_wait_seconds",
     "must be a number, got a boolean (False)"),
    ("[pod]\nmodel = [\"a\"]\n", "pod", "model", "must be a string, got a list"),
    ("[pod]\ngpu_types = { a = \"b\" }\n", "pod", "gpu_types", "must be a list of strings, got a table"),
    ("[pod]\ngpu_types = [\"NVIDIA L40S\", 4090]\n", "pod", "gpu_types", "must be a list of strings"),
    ("[pod]\ngpu_types = []\n", "pod", "gpu_types", "must list at least one entry"),
    ("[pod]\ngpu_types = [\"  \"]\n", "pod", "gpu_types", "must not contain empty strings"),
    ("[pod]\ncloud = \"PRIVATE\"\n", "pod", "cloud", "must be one of SECURE, COMMUNITY, got 'PRIVATE'"),
    ("[pod]\ncloud = \"ALL\"\n", "pod", "cloud", "must be one of SECURE, COMMUNITY, got 'ALL'"),
    ("[limits]\nidle_action = \"sleep\"\n", "limits", "idle_action", "must be one of stop, terminate, got 'sleep'"),
    ("[limits]\ncutoff_action = \"pause\"\n", "limits", "cutoff_action",
     "must be one of terminate, stop, got 'pause'"),
    ("[limits]\non_resume_failure = \"retry\"\n", "limits", "on_resume_failure",
     "must be one of replace, fail, got 'retry'"),
    ("[limits]\ntimezone = \"Mars/Olympus\"\n", "limits", "timezone", "is not an IANA time zone"),
    ("[limits]\ntimezone = \"\"\n", "limits", "timezone", "use e.g. \"Europe/Berlin\", \"UTC\" or \"local\""),
    ("[pod]\nenv = [\"HF_TOKEN=x\"]\n", "pod", "env", "must be a table of string values"),
    ("[pod]\ngpu_count = 17\n", "pod", "gpu_count", "must be at most 16, got 17"),
    ("[proxy]\nport = 0\n", "proxy", "port", "must be at least 1, got 0 (below 1)"),
    ("[cache]\nmax_bytes = 1000\n", "cache", "max_bytes", "must be at least 1024, got 1000"),
    ("[pod]\nallowed_cuda_versions = [\"12\"]\n", "pod", "allowed_cuda_versions", "'12' is not of the form"),
    ("[pod]\nname = \"Rpm_Dev\"\n", "pod", "name", "must be 1-40 lowercase letters, digits or dashes, got 'Rpm_Dev'"),
    ("[api]\nbase_url = \"api.runpod.io\"\n", "api", "base_url", "must be an http(s) URL, got 'api.runpod.io'"),
    ("[api]\npod_url_template = \"https://{pod}.x\"\n", "api", "pod_url_template", "containing {pod_id}"),
    ("[api]\npod_url_template = \"https://{pod_id}-{zone}.x\"\n", "api", "pod_url_template",
     "may only use {pod_id} and {port}"),
    ("[proxy]\nfim_template = \"{suffix}\"\n", "proxy", "fim_template", "must contain {prefix}"),
    ("[pod]\nvolume_gb = 9\n", "pod", "volume_gb", "must be 0 or at least 10 (RunPod's floor), got 9"),
], ids=lambda value: value if isinstance(value, str) and "\n" not in value and len(value) < 30 else None)
def test_every_bad_value_names_the_file_table_and_key_and_what_is_allowed(
        config_file: Path, paths: Paths, body: str, table: str, key: str, allowed: str) -> None:
    message = str(error_of(config_file, paths, body))
    assert message.startswith(f"{config_file}: [{table}] "), message
    assert key in message and allowed in message, message


def test_an_unknown_key_lists_the_allowed_keys_of_its_table(config_file: Path, paths: Paths) -> None:
    error = error_of(config_file, paths, "[cache]\nmax_entrys = 5\n")
    assert error.message == f"{config_file}: [cache] unknown key 'max_entrys' (did you mean 'max_entries'?)"
    assert error.hint == "allowed keys: enabled, dir, max_entries, max_bytes, ttl_seconds"


def test_an_unknown_key_without_a_close_match_offers_no_guess(config_file: Path, paths: Paths) -> None:
    error = error_of(config_file, paths, "[pod]\nzzzz = 1\n")
    assert error.message == f"{config_file}: [pod] unknown key 'zzzz'"


@pytest.mark.parametrize(("body", "name", "guess"), [
    ("[limts]\nruntime_seconds = 5\n", "limts", "limits"),
    ("[proxi]\n", "proxi", "proxy"),
    ("versoin = 1\n", "versoin", "version"),
    ("[gpu]\n", "gpu", None),
])
def test_an_unknown_table_names_it_and_lists_the_tables(config_file: Path, paths: Paths, body: str, name: str,
                                                        guess: str | None) -> None:
    error = error_of(config_file, paths, body)
    expected = f"{config_file}: unknown table or key '{name}'"
    assert error.message == expected + (f" (did you mean '{guess}'?)" if guess else "")
    assert error.hint == "allowed tables: pod, limits, startup, proxy, keys, cache, api, pods.<name>"


def test_a_table_given_as_a_value_is_refused(config_file: Path, paths: Paths) -> None:
    error = error_of(config_file, paths, "limits = \"strict\"\n")
    assert error.message == f"{config_file}: [limits] must be a table, got a string"


DURATIONS = [(table, spec.name, spec.metadata.get("minimum"))
             for table, cls in TABLES.items() for spec in dataclasses.fields(cls) if spec.name.endswith("_seconds")]


def test_the_duration_list_is_the_one_the_tables_declare() -> None:
    # Guards the parametrisation below against silently testing nothing.
    assert ("limits", "runtime_seconds", 1) in DURATIONS and ("limits", "idle_timeout_seconds", 0) in DURATIONS
    assert len(DURATIONS) >= 12


@pytest.mark.parametrize(("table", "key", "minimum"), DURATIONS, ids=[f"{t}.{k}" for t, k, _ in DURATIONS])
def test_every_negative_duration_is_refused(config_file: Path, paths: Paths, table: str, key: str,
                                            minimum: float) -> None:
    message = str(error_of(config_file, paths, f"[{table}]\n{key} = -1\n"))
    assert message == f"{config_file}: [{table}] {key} must be at least {minimum}, got -1 (negative)"


@pytest.mark.parametrize(("table", "key", "minimum"), DURATIONS, ids=[f"{t}.{k}" for t, k, _ in DURATIONS])
def test_every_duration_is_capped_at_a_year(config_file: Path, paths: Paths, table: str, key: str,
                                            minimum: float) -> None:
    a_year = 366 * 86400
    assert load(write_file(config_file, f"version = 1\n[{table}]\n{key} = {a_year}\n"), paths) is not None
    message = str(error_of(config_file, paths, f"[{table}]\n{key} = {a_year + 1}\n"))
    assert message == f"{config_file}: [{table}] {key} must be at most {a_year}, got {a_year + 1}"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(config_file: Path, paths: Paths, value: str) -> None:
    message = str(error_of(config_file, paths, f"[limits]\nmax_daily_spend_usd = {value}\n"))
    assert message.startswith(f"{config_file}: [limits] max_daily_spend_usd must be a finite number, got")


# --- times of day and time zones ------------------------------------------------------------------------


@pytest.mark.parametrize("cutoff", ["25:00", "24:00", "23:60", "12:00:60", "7", "07:30pm", "-1:00", "noon",
                                    "7h30", "12:5", "123:00", "12:00:00:00"])
def test_a_bad_daily_cutoff_is_not_a_time_of_day(config_file: Path, paths: Paths, cutoff: str) -> None:
    error = error_of(config_file, paths, f"[limits]\ndaily_cutoff = \"{cutoff}\"\n")
    assert error.message.startswith(f"{config_file}: [limits] daily_cutoff '{cutoff}' is not a time of day (")
    assert error.hint == 'use e.g. "00:00" or "" to disable'


def test_a_cutoff_given_as_a_toml_time_must_be_quoted(config_file: Path, paths: Paths) -> None:
    # TOML has a local-time type; the loader wants the documented string form and says so.
    message = str(error_of(config_file, paths, "[limits]\ndaily_cutoff = 07:30:00\n"))
    assert message == f"{config_file}: [limits] daily_cutoff must be a string, got time"


@pytest.mark.parametrize(("cutoff", "expected"), [
    ("00:00", dt_time(0, 0)), ("7:05", dt_time(7, 5)), ("23:59:59", dt_time(23, 59, 59)),
    (" 06:30 ", dt_time(6, 30)), ("", None),
])
def test_good_daily_cutoffs_parse_and_empty_disables(config_file: Path, paths: Paths, cutoff: str,
                                                     expected: dt_time | None) -> None:
    config = load(write_file(config_file, f"version = 1\n[limits]\ndaily_cutoff = \"{cutoff}\"\n"), paths)
    assert config.cutoff_time == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("24:00", "hour must be 0-23"), ("00:60", "minutes and seconds 0-59"), ("x", "expected HH:MM or HH:MM:SS"),
])
def test_parse_cutoff_says_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cutoff(text)


@pytest.mark.parametrize(("name", "expected"), [("UTC", ZoneInfo("UTC")), ("Europe/Berlin", ZoneInfo("Europe/Berlin")),
                                               ("local", None)])
def test_a_known_time_zone_is_used_and_local_means_the_machines(config_file: Path, paths: Paths, name: str,
                                                                expected: ZoneInfo | None) -> None:
    config = load(write_file(config_file, f"version = 1\n[limits]\ntimezone = \"{name}\"\n"), paths)
    assert config.zone == expected


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "Local", "UTC+2"])
def test_an_unknown_time_zone_is_refused(config_file: Path, paths: Paths, name: str) -> None:
    message = str(error_of(config_file, paths, f"[limits]\ntimezone = \"{name}\"\n"))
    assert message.startswith(f"{config_file}: [limits] timezone '{name}' is not an IANA time zone")


def test_a_time_zone_area_without_a_city_is_refused_not_a_crash(config_file: Path, paths: Paths) -> None:
    message = str(error_of(config_file, paths, "[limits]\ntimezone = \"America\"\n"))
    assert "timezone 'America' is not an IANA time zone" in message


@pytest.mark.parametrize(("table", "key", "given", "normalised"), [
    ("pod", "cloud", "community", "COMMUNITY"),
    ("limits", "idle_action", "TERMINATE", "terminate"),
    ("limits", "on_resume_failure", "Fail", "fail"),
])
def test_choices_are_accepted_in_any_case_and_stored_in_the_declared_case(
        config_file: Path, paths: Paths, table: str, key: str, given: str, normalised: str) -> None:
    config = load(write_file(config_file, f"version = 1\n[{table}]\n{key} = \"{given}\"\n"), paths)
    assert getattr(getattr(config, table), key) == normalised


# --- version and syntax ---------------------------------------------------------------------------------


def test_a_missing_version_means_version_1(config_file: Path, paths: Paths) -> None:
    config = load(write_file(config_file, "[limits]\nruntime_seconds = 60\n"), paths)
    assert (config.version, config.limits.runtime_seconds) == (1, 60)


@pytest.mark.parametrize(("line", "expected"), [
    ("version = 2", "config version 2 is not supported (this rpm reads version 1)"),
    ("version = 99", "config version 99 is not supported (this rpm reads version 1)"),
    ("version = 0", "config version 0 is not supported (this rpm reads version 1)"),
    ("version = \"1\"", "'version' must be an integer, got a string ('1')"),
    ("version = true", "'version' must be an integer, got a boolean (True)"),
    ("version = 1.0", "'version' must be an integer, got a number (1.0)"),
])
def test_a_newer_or_malformed_version_is_refused(config_file: Path, paths: Paths, line: str, expected: str) -> None:
    write_file(config_file, line + "\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file, paths)
    assert caught.value.message == f"{config_file}: {expected}"


@pytest.mark.parametrize(("text", "line"), [
    ("version = 1\n[pod]\nname = \"a\"\n[limits\n", 4),
    ("version = 1\n[pod]\nname = \"a\"\nname = \"b\"\n", 4),
    ("version = 1\nruntime_seconds = \n", 2),
    ("[pod]\nmodel = \"unterminated\n", 2),
])
def test_invalid_toml_names_the_file_and_the_line(config_file: Path, paths: Paths, text: str, line: int) -> None:
    write_file(config_file, text)
    with pytest.raises(ConfigError) as caught:
        load(config_file, paths)
    message = caught.value.message
    assert message.startswith(f"{config_file}: invalid TOML: ") and f"line {line}" in message, message
    assert "\n" not in message and caught.value.__cause__ is None


@pytest.mark.parametrize("body", [
    "x = " + "[" * 5000 + "]" * 5000,
    "[pod]\ngpu_types = " + "[" * 1000 + "]" * 1000,
    "[pod]\nenv = " + "{a = " * 400 + "1" + "}" * 400,
], ids=["top-level-array", "gpu-types-array", "env-inline-tables"])
def test_deeply_nested_toml_is_a_config_error_naming_the_file(config_file: Path, paths: Paths, body: str) -> None:
    """It was "unexpected RecursionError" with exit 1."""
    error = error_of(config_file, paths, body)
    assert error.message == f"{config_file}: invalid TOML: nested too deeply", error.message


def test_deeply_nested_toml_exits_2_through_the_cli(config_file: Path) -> None:
    from typer.testing import CliRunner

    from runpod_manager.cli import app

    write_file(config_file, "version = 1\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    result = CliRunner().invoke(app, ["status", "--config", str(config_file)], env={"RPM_DEBUG": None})
    assert result.exit_code == 2, result.output
    assert "nested too deeply" in result.stderr and str(config_file) in result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.output


def test_a_config_path_that_is_not_a_small_regular_file_is_refused(config_file: Path, paths: Paths) -> None:
    from runpod_manager.config import MAX_CONFIG_BYTES

    write_file(config_file, "version = 1\n# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file, paths)
    assert caught.value.message == f"{config_file}: cannot read config file (larger than {MAX_CONFIG_BYTES} bytes)"
    legacy = config_file.with_name("pod_config.json")
    legacy.symlink_to("/dev/zero")  # is_file() is false for it, but `rpm init --from` reads what it is given
    with pytest.raises(ConfigError) as caught:
        convert_legacy_json(legacy)
    assert caught.value.message == f"{legacy}: cannot read (not a regular file)"


def test_bytes_that_are_not_utf8_name_the_file(config_file: Path, paths: Paths) -> None:
    config_file.parent.mkdir(parents=True)
    config_file.write_bytes(b"version = 1\n[pod]\nmodel = \"caf\xe9\"\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file, paths)
    assert caught.value.message == f"{config_file}: not UTF-8 text"


def test_an_unreadable_config_path_is_one_line_naming_it(config_file: Path, paths: Paths) -> None:
    config_file.mkdir(parents=True)  # a directory: unreadable as a file, for root too
    with pytest.raises(ConfigError) as caught:
        find_config_file(config_file, {}, paths)
    assert caught.value.message == f"{config_file}: no such config file (given with --config)"


# --- the API key ----------------------------------------------------------------------------------------


def test_loading_needs_no_key_but_a_runpod_command_does(config_file: Path, paths: Paths) -> None:
    config = load(write_file(config_file, "version = 1\n"), paths)
    assert config.api.api_key == ""
    with pytest.raises(ConfigError) as caught:
        config.require_api_key()
    assert caught.value.message == ("no RunPod API key: set RUNPOD_API_KEY (or [api] api_key in a 0600 config "
                                    "file)")
    assert caught.value.hint is not None and "rpm sandbox" in caught.value.hint
    assert caught.value.exit_code is ExitCode.USAGE


def test_an_empty_runpod_api_key_variable_counts_as_missing(config_file: Path, paths: Paths) -> None:
    config = load(write_file(config_file, "version = 1\n"), paths, {"RUNPOD_API_KEY": ""})
    with pytest.raises(ConfigError, match="no RunPod API key"):
        config.require_api_key()


def test_the_key_comes_from_runpod_api_key_and_beats_the_file(config_file: Path, paths: Paths) -> None:
    write_file(config_file, "version = 1\n[api]\napi_key = \"from-the-file\"\n")
    assert load(config_file, paths).require_api_key() == "from-the-file"
    assert load(config_file, paths, {"RUNPOD_API_KEY": API_KEY}).require_api_key() == API_KEY


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666])
def test_a_file_holding_a_key_that_others_can_read_or_write_is_refused(config_file: Path, paths: Paths,
                                                                       mode: int) -> None:
    error = error_of(config_file, paths, f"[api]\napi_key = \"{API_KEY}\"\n", mode=mode)
    assert error.message == f"{config_file}: holds an API key or token but is readable by others (mode {mode:04o})"
    assert error.hint == (f"run `chmod 600 {config_file}`, or move the key to RUNPOD_API_KEY "
                          "(tokens in [pod] env: RPM_POD_ENV)")
    assert API_KEY not in repr(error) + str(error)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_file_may_hold_the_key(config_file: Path, paths: Paths, mode: int) -> None:
    write_file(config_file, f"version = 1\n[api]\napi_key = \"{API_KEY}\"\n", mode)
    assert load(config_file, paths).api.api_key == API_KEY


def test_client_keys_of_the_proxy_count_as_secrets_too(config_file: Path, paths: Paths) -> None:
    error = error_of(config_file, paths, "[proxy]\napi_keys = [\"client-SECRET\"]\n", mode=0o644)
    assert "holds an API key or token but is readable by others (mode 0644)" in error.message
    assert "client-SECRET" not in str(error)


@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "aws_secret_access_key", "DB_PASSWORD"])
def test_a_token_in_the_pods_env_counts_as_a_secret(config_file: Path, paths: Paths, name: str) -> None:
    error = error_of(config_file, paths, f"[pod]\nenv = {{ {name} = \"hf_SECRET_x\" }}\n", mode=0o644)
    assert "holds an API key or token but is readable by others" in error.message
    assert "hf_SECRET_x" not in str(error) + (error.hint or "")
    write_file(config_file, f"version = 1\n[pod]\nenv = {{ {name} = \"hf_SECRET_x\" }}\n", 0o600)
    assert dict(load(config_file, paths).pod.env) == {name: "hf_SECRET_x"}


def test_plain_env_settings_in_a_readable_file_are_fine(config_file: Path, paths: Paths) -> None:
    write_file(config_file, "version = 1\n[pod]\nenv = { VLLM_LOGGING_LEVEL = \"INFO\", HF_TOKEN = \"\" }\n", 0o644)
    assert load(config_file, paths).pod.env["VLLM_LOGGING_LEVEL"] == "INFO"


def test_a_readable_file_without_secrets_is_fine(config_file: Path, paths: Paths) -> None:
    write_file(config_file, "version = 1\n[api]\napi_key = \"\"\n[proxy]\napi_keys = []\n", 0o644)
    config = load(config_file, paths, {"RUNPOD_API_KEY": API_KEY})
    assert config.api.api_key == API_KEY and stat.S_IMODE(config_file.stat().st_mode) == 0o644


# --- where the config is found --------------------------------------------------------------------------


@pytest.fixture
def four_configs(tmp_path: Path, paths: Paths, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """One config at each place the lookup visits, each naming where it is; cwd is the project."""
    found = {
        "explicit": write_file(tmp_path / "explicit.toml", "[pod]\nname = \"explicit\"\n"),
        "env": write_file(tmp_path / "named-by-env.toml", "[pod]\nname = \"env\"\n"),
        "cwd": write_file(tmp_path / "project" / CONFIG_FILENAME, "[pod]\nname = \"cwd\"\n"),
        "user": write_file(paths.user_config_file, "[pod]\nname = \"user\"\n"),
    }
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.setenv("RPM_HOME", str(paths.config_dir))
    return found


def test_lookup_an_explicit_path_comes_first(four_configs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setenv("RPM_CONFIG", str(four_configs["env"]))
    config = load_config(four_configs["explicit"])
    assert (config.pod.name, config.source) == ("explicit", four_configs["explicit"])


def test_lookup_rpm_config_comes_second(four_configs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPM_CONFIG", str(four_configs["env"]))
    config = load_config()
    assert (config.pod.name, config.source) == ("env", four_configs["env"])


def test_lookup_the_working_directory_comes_third(four_configs: dict[str, Path]) -> None:
    config = load_config()
    assert config.pod.name == "cwd" and config.source is not None
    assert config.source.resolve() == four_configs["cwd"].resolve()


def test_lookup_the_user_config_dir_comes_last(four_configs: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no pod_config.toml here
    config = load_config()
    assert (config.pod.name, config.source) == ("user", four_configs["user"])


def test_lookup_uses_xdg_config_home_without_rpm_home(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "nobody")}
    user_file = write_file(tmp_path / "xdg" / "rpm" / CONFIG_FILENAME, "[pod]\nname = \"xdg\"\n")
    config = load_config(env=env)  # cwd (tmp_path) holds no pod_config.toml
    assert (config.pod.name, config.source) == ("xdg", user_file)


def test_rpm_config_expands_the_home_directory(tmp_path: Path, paths: Paths, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    named = write_file(tmp_path / "me" / "rpm.toml", "[pod]\nname = \"tilde\"\n")
    assert find_config_file(None, {"RPM_CONFIG": "~/rpm.toml"}, paths) == named


def test_an_empty_rpm_config_is_ignored(four_configs: dict[str, Path], paths: Paths) -> None:
    assert find_config_file(None, {"RPM_CONFIG": ""}, paths) == Path.cwd() / CONFIG_FILENAME


@pytest.mark.parametrize(("explicit", "env", "expected"), [
    ("gone.toml", {}, "no such config file (given with --config)"),
    (None, {"RPM_CONFIG": "gone.toml"}, "no such config file (named by RPM_CONFIG)"),
])
def test_a_named_config_that_does_not_exist_is_an_error_not_a_fallback(
        four_configs: dict[str, Path], tmp_path: Path, paths: Paths, explicit: str | None, env: dict[str, str],
        expected: str) -> None:
    env = {key: str(tmp_path / value) for key, value in env.items()}
    with pytest.raises(ConfigError) as caught:
        find_config_file(tmp_path / explicit if explicit else None, env, paths)
    assert caught.value.message == f"{tmp_path / 'gone.toml'}: {expected}"


def test_no_config_anywhere_says_where_it_looked_unless_optional(tmp_path: Path, paths: Paths) -> None:
    env = {"RPM_HOME": str(paths.config_dir)}
    with pytest.raises(ConfigError) as caught:
        load_config(env=env, paths=paths)
    assert caught.value.message == (f"no pod_config.toml found (looked in --config, RPM_CONFIG, ./pod_config.toml "
                                    f"and {paths.user_config_file})")
    assert caught.value.hint == "run `rpm init` to write a commented one"
    defaults = load_config(env=env, paths=paths, required=False)
    assert defaults == Config() and defaults.source is None


# --- environment overrides ------------------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "text", "table", "key", "expected"), [
    ("RPM_LIMITS_RUNTIME_SECONDS", "7200", "limits", "runtime_seconds", 7200),
    ("RPM_LIMITS_RUNTIME_SECONDS", " 90 ", "limits", "runtime_seconds", 90),
    ("RPM_PROXY_WAKE_ON_REQUEST", "false", "proxy", "wake_on_request", False),
    ("RPM_PROXY_WAKE_ON_REQUEST", "0", "proxy", "wake_on_request", False),
    ("RPM_PROXY_WAKE_ON_REQUEST", "Off", "proxy", "wake_on_request", False),
    ("RPM_PROXY_ENABLE_PROFILING", "TRUE", "proxy", "enable_profiling", True),
    ("RPM_PROXY_ENABLE_PROFILING", "yes", "proxy", "enable_profiling", True),
    ("RPM_PROXY_ENABLE_PROFILING", "1", "proxy", "enable_profiling", True),
    ("RPM_PROXY_ENABLE_PROFILING", "on", "proxy", "enable_profiling", True),
    ("RPM_LIMITS_MAX_DAILY_SPEND_USD", "7.5", "limits", "max_daily_spend_usd", 7.5),
    ("RPM_LIMITS_MAX_DAILY_SPEND_USD", "3", "limits", "max_daily_spend_usd", 3.0),
    ("RPM_POD_GPU_TYPES", "NVIDIA L40S, NVIDIA A40", "pod", "gpu_types", ("NVIDIA L40S", "NVIDIA A40")),
    ("RPM_POD_GPU_TYPES", '["NVIDIA L40S"]', "pod", "gpu_types", ("NVIDIA L40S",)),
    ("RPM_POD_DATA_CENTERS", "", "pod", "data_centers", ()),
    ("RPM_POD_CLOUD", "community", "pod", "cloud", "COMMUNITY"),
    ("RPM_LIMITS_DAILY_CUTOFF", "", "limits", "daily_cutoff", ""),
    ("RPM_LIMITS_TIMEZONE", "UTC", "limits", "timezone", "UTC"),
    ("RPM_CACHE_DIR", "/var/cache/rpm", "cache", "dir", "/var/cache/rpm"),
    ("RPM_STARTUP_POLL_INTERVAL_SECONDS", "0.25", "startup", "poll_interval_seconds", 0.25),
    ("RPM_API_BASE_URL", "http://127.0.0.1:9999", "api", "base_url", "http://127.0.0.1:9999"),
])
def test_an_environment_variable_overrides_one_key_with_its_type(
        config_file: Path, paths: Paths, variable: str, text: str, table: str, key: str, expected: Any) -> None:
    write_file(config_file, "version = 1\n[limits]\nruntime_seconds = 100\n[pod]\nmodel = \"kept\"\n")
    config = load(config_file, paths, {variable: text})
    value = getattr(getattr(config, table), key)
    assert value == expected and type(value) is type(expected)
    if variable != "RPM_LIMITS_RUNTIME_SECONDS":
        assert config.limits.runtime_seconds == 100  # the file's other keys still apply
    assert config.pod.model == "kept"


def test_an_environment_mapping_override_replaces_the_files(config_file: Path, paths: Paths) -> None:
    write_file(config_file, "version = 1\n[pod]\nenv = { A = \"file\", B = \"file\" }\n")
    config = load(config_file, paths, {"RPM_POD_ENV": '{"A": "env"}'})
    assert dict(config.pod.env) == {"A": "env"}


def test_overrides_are_read_from_the_process_environment_by_default(
        config_file: Path, paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    write_file(config_file, "version = 1\n")
    monkeypatch.setenv("RPM_LIMITS_IDLE_TIMEOUT_SECONDS", "42")
    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    config = load_config(config_file)
    assert (config.limits.idle_timeout_seconds, config.api.api_key) == (42, API_KEY)


def test_overrides_apply_without_a_config_file(paths: Paths) -> None:
    config = load_config(env={"RPM_HOME": str(paths.config_dir), "RPM_POD_NAME": "ci"}, paths=paths, required=False)
    assert config.pod.name == "ci" and config.source is None


@pytest.mark.parametrize(("variable", "text", "expected"), [
    ("RPM_LIMITS_RUNTIME_SECONDS", "4h", "RPM_LIMITS_RUNTIME_SECONDS must be a whole number, got '4h'"),
    ("RPM_LIMITS_RUNTIME_SECONDS", "7200.0", "RPM_LIMITS_RUNTIME_SECONDS must be a whole number, got '7200.0'"),
    ("RPM_LIMITS_RUNTIME_SECONDS", "0", "RPM_LIMITS_RUNTIME_SECONDS must be at least 1, got 0 (below 1)"),
    ("RPM_LIMITS_IDLE_TIMEOUT_SECONDS", "-5", "RPM_LIMITS_IDLE_TIMEOUT_SECONDS must be at least 0, got -5 (negative)"),
    ("RPM_PROXY_WAKE_ON_REQUEST", "maybe", "RPM_PROXY_WAKE_ON_REQUEST must be true or false, got 'maybe'"),
    ("RPM_LIMITS_MAX_DAILY_SPEND_USD", "cheap", "RPM_LIMITS_MAX_DAILY_SPEND_USD must be a number, got 'cheap'"),
    ("RPM_LIMITS_MAX_DAILY_SPEND_USD", "inf", "RPM_LIMITS_MAX_DAILY_SPEND_USD must be a finite number"),
    ("RPM_POD_GPU_TYPES", "", "RPM_POD_GPU_TYPES must list at least one entry"),
    ("RPM_POD_GPU_TYPES", "[4090]", "RPM_POD_GPU_TYPES must be a list of strings"),
    ("RPM_POD_GPU_TYPES", "[\"a\"", "RPM_POD_GPU_TYPES must be valid JSON, got '[\"a\"'"),
    ("RPM_POD_ENV", "A=1", "RPM_POD_ENV must be valid JSON"),
    ("RPM_POD_CLOUD", "cheap", "RPM_POD_CLOUD must be one of SECURE, COMMUNITY, got 'cheap'"),
    ("RPM_POD_NAME", "Big Pod", "RPM_POD_NAME must be 1-40 lowercase letters, digits or dashes"),
    ("RPM_LIMITS_DAILY_CUTOFF", "25:00", "RPM_LIMITS_DAILY_CUTOFF '25:00' is not a time of day"),
    ("RPM_LIMITS_TIMEZONE", "Mars/Olympus", "RPM_LIMITS_TIMEZONE 'Mars/Olympus' is not an IANA time zone"),
    ("RPM_API_BASE_URL", "localhost", "RPM_API_BASE_URL must be an http(s) URL, got 'localhost'"),
    ("RPM_API_POD_URL_TEMPLATE", "https://x", "RPM_API_POD_URL_TEMPLATE must be an http(s) URL containing {pod_id}"),
    ("RPM_PROXY_FIM_TEMPLATE", "{suffix}", "RPM_PROXY_FIM_TEMPLATE must contain {prefix}"),
    ("RPM_LIMITS_RUNTIME", "5",
     "environment variable RPM_LIMITS_RUNTIME: [limits] has no key 'runtime' (did you mean 'runtime_seconds'?)"),
    ("RPM_PROXY_PROT", "5", "environment variable RPM_PROXY_PROT: [proxy] has no key 'prot' (did you mean 'port'?)"),
])
def test_a_bad_override_blames_the_variable_not_the_file(config_file: Path, paths: Paths, variable: str,
                                                         text: str, expected: str) -> None:
    write_file(config_file, "version = 1\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file, paths, {variable: text})
    assert caught.value.message.startswith(expected), caught.value.message
    assert str(config_file) not in str(caught.value)


def test_a_bad_volume_size_from_the_environment_blames_the_variable(config_file: Path, paths: Paths) -> None:
    write_file(config_file, "version = 1\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file, paths, {"RPM_POD_VOLUME_GB": "5"})
    assert caught.value.message.startswith("RPM_POD_VOLUME_GB ")
    assert str(config_file) not in caught.value.message


def test_variables_of_no_table_are_left_alone(config_file: Path, paths: Paths) -> None:
    write_file(config_file, "version = 1\n")
    config = load(config_file, paths, {"RPM_DEBUG": "1", "RPM_CONFIG": str(config_file), "RPM_PODS_X": "y"})
    assert config == Config(source=config_file)


def test_runpod_api_url_beats_the_file_and_rpm_api_base_url(config_file: Path, paths: Paths) -> None:
    write_file(config_file, "version = 1\n[api]\nbase_url = \"https://file.example\"\n")
    assert load(config_file, paths).api.base_url == "https://file.example"
    env = {"RPM_API_BASE_URL": "https://variable.example", "RUNPOD_API_URL": "http://127.0.0.1:8787/"}
    assert load(config_file, paths, env).api.base_url == "http://127.0.0.1:8787"  # trailing slash dropped


def test_a_bad_runpod_api_url_names_the_variable(config_file: Path, paths: Paths) -> None:
    write_file(config_file, "version = 1\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file, paths, {"RUNPOD_API_URL": "127.0.0.1:8787", "RUNPOD_API_KEY": API_KEY})
    assert caught.value.message == "RUNPOD_API_URL must be an http(s) URL, got '127.0.0.1:8787'"
    assert API_KEY not in str(caught.value)


# --- secrets stay out of output -------------------------------------------------------------------------


def test_the_key_is_not_in_the_repr_or_str_of_the_config(config_file: Path, paths: Paths) -> None:
    write_file(config_file, f"version = 1\n[api]\napi_key = \"{API_KEY}\"\n[proxy]\napi_keys = [\"client-SECRET\"]\n"
                            "[pod]\nenv = { HF_TOKEN = \"hf_SECRET\" }\n")
    config = load(config_file, paths)
    assert config.api.api_key == API_KEY and config.proxy.api_keys == ("client-SECRET",)
    shown = repr(config) + str(config) + repr(config.api) + str(config.api) + repr(config.proxy) + repr(config.pod)
    for secret in (API_KEY, "client-SECRET", "hf_SECRET"):
        assert secret not in shown
    assert "base_url='https://api.runpod.io'" in shown  # the repr is there, just without the secrets
    assert API_KEY not in json.dumps(to_document(config)) and "api_key" not in to_document(config)["api"]


def test_a_key_from_the_environment_is_not_in_the_repr_either(config_file: Path, paths: Paths) -> None:
    config = load(write_file(config_file, "version = 1\n"), paths, {"RUNPOD_API_KEY": API_KEY})
    assert config.api.api_key == API_KEY and API_KEY not in repr(config) + str(config)


@pytest.mark.parametrize(("body", "env"), [
    (f"[api]\napi_key = \"{API_KEY}\"\n[limits]\nruntime_seconds = -1\n", {}),
    (f"[api]\napi_key = \"{API_KEY}\"\napi_kye = \"{API_KEY}\"\n", {}),
    (f"[pod]\napi_key = \"{API_KEY}\"\n", {}),
    (f"api_key = \"{API_KEY}\"\n", {}),
    (f"[api]\napi_key = [\"{API_KEY}\"]\n", {}),
    ("[api]\napi_key = 1234567890\n", {}),
    (f"[proxy]\napi_keys = \"{API_KEY}\"\n", {}),
    (f"[proxy]\napi_keys = [\"{API_KEY}\", 5]\n", {}),
    (f"[api]\napi_key = \"{API_KEY}\n", {}),  # unterminated string: the TOML error must not quote it
    ("[limits]\ntimezone = \"Nowhere\"\n", {"RUNPOD_API_KEY": API_KEY}),
    ("", {"RUNPOD_API_KEY": API_KEY, "RUNPOD_API_URL": "nope"}),
    ("", {"RPM_PROXY_API_KEYS": f"[\"{API_KEY}\""}),
    ("", {"RPM_PROXY_API_KEYS": f"[\"{API_KEY}\", 1]"}),
    ("", {"RPM_API_API_KEYS": API_KEY}),
], ids=["other-error", "typo-key", "wrong-table", "top-level", "list", "number", "keys-string", "keys-mixed",
        "toml-syntax", "env-key-other-error", "env-key-bad-url", "env-keys-bad-json", "env-keys-mixed",
        "env-typo"])
def test_the_key_never_appears_in_any_error(config_file: Path, paths: Paths, body: str, env: dict[str, str]) -> None:
    error = error_of(config_file, paths, body, env)
    shown = str(error) + repr(error) + (error.hint or "") + repr(error.args)
    assert API_KEY not in shown and "1234567890" not in shown, shown
    assert error.__cause__ is None


def test_a_malformed_pod_env_variable_is_not_echoed(config_file: Path, paths: Paths) -> None:
    error = error_of(config_file, paths, "", {"RPM_POD_ENV": '{"HF_TOKEN": "hf_SECRET_9"'})
    assert error.message.startswith("RPM_POD_ENV must be valid JSON")
    assert "hf_SECRET_9" not in str(error)


# --- what ships, and `rpm init` -------------------------------------------------------------------------


def test_the_shipped_pod_config_loads_cleanly_with_every_value_it_shows(paths: Paths) -> None:
    shipped = REPO / "pod_config.toml"
    config = load(shipped, paths)
    assert config.source == shipped and config.api.api_key == ""
    document = to_document(config)
    written = tomllib.loads(shipped.read_text(encoding="utf-8"))
    assert written["version"] == CONFIG_VERSION
    for table in TABLES:
        for key, value in written[table].items():
            assert document[table][key] == value, f"[{table}] {key}"


def test_the_init_template_loads_back_to_the_defaults_and_is_private(tmp_path: Path, paths: Paths) -> None:
    target = tmp_path / "fresh" / CONFIG_FILENAME
    written, notes = write_config(target)
    assert (written, notes) == (target, [])
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text(encoding="utf-8") == render_template()
    assert load(target, paths) == Config(source=target)
    assert sorted(p.name for p in target.parent.iterdir()) == [CONFIG_FILENAME]  # no temp file left


def test_init_makes_missing_directories_0700_and_the_file_0600_under_umask_000(tmp_path: Path) -> None:
    import os

    existing = tmp_path / "existing"
    existing.mkdir()
    existing.chmod(0o755)
    fresh = tmp_path / "new" / "deeper" / CONFIG_FILENAME
    previous = os.umask(0)
    try:
        write_config(existing / CONFIG_FILENAME)
        write_config(fresh)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((existing / CONFIG_FILENAME).stat().st_mode) == 0o600
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # not created by rpm: not rpm's to change
    assert [stat.S_IMODE(path.stat().st_mode) for path in (fresh, fresh.parent, fresh.parent.parent)] == [
        0o600, 0o700, 0o700]


def test_the_template_documents_every_key_and_leaves_the_api_key_commented() -> None:
    text = render_template()
    document = tomllib.loads(text)
    for table, cls in TABLES.items():
        for spec in dataclasses.fields(cls):
            if spec.name == "api_key":
                assert spec.name not in document[table] and "# api_key = \"\"" in text
            else:
                assert spec.name in document[table], f"[{table}] {spec.name}"
            assert f"# {spec.metadata['doc']}" in text


def test_a_template_rendered_from_a_custom_config_loads_back_to_it(tmp_path: Path, paths: Paths) -> None:
    base = Config()
    custom = dataclasses.replace(
        base,
        pod=dataclasses.replace(base.pod, name="dev-2", gpu_types=("NVIDIA L40S", 'odd "quoted" gpu'),
                                env={"HF_TOKEN": 'h\u00e9"x'}, data_centers=("EU-RO-1",), cloud="COMMUNITY"),
        limits=dataclasses.replace(base.limits, daily_cutoff="", timezone="UTC", max_daily_spend_usd=0.5),
        proxy=dataclasses.replace(base.proxy, port=9999, enable_profiling=True),
    )
    target = write_file(tmp_path / "custom.toml", render_template(custom))
    assert load(target, paths) == dataclasses.replace(custom, source=target)


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    target = write_file(tmp_path / CONFIG_FILENAME, "# mine\n", 0o644)
    with pytest.raises(ConfigError) as caught:
        write_config(target)
    assert caught.value.message == f"{target} already exists" and caught.value.hint == "pass --force to overwrite it"
    assert target.read_text() == "# mine\n"
    write_config(target, force=True)
    assert target.read_text() == render_template() and stat.S_IMODE(target.stat().st_mode) == 0o600


# --- the older flat JSON format -------------------------------------------------------------------------

# Each older key, the value an old file might hold, and where that value lands in the new config.
LEGACY: dict[str, tuple[Any, str, str, Any]] = {
    "model": ("Qwen/Qwen2.5-Coder-7B-Instruct", "pod", "model", "Qwen/Qwen2.5-Coder-7B-Instruct"),
    "gpu_type_id": ("NVIDIA L40S", "pod", "gpu_types", ("NVIDIA L40S",)),
    "runtime_seconds": (5400, "limits", "runtime_seconds", 5400),
    "template_id": ("tpl-abc123", "pod", "template_id", "tpl-abc123"),
    "proxy_port": (8123, "proxy", "port", 8123),
    "cache_dir": ("/tmp/rpm-old-cache", "cache", "dir", "/tmp/rpm-old-cache"),
    "use_https": (True, "proxy", "use_https", True),
    "ssl_cert": ("/etc/rpm/cert.pem", "proxy", "ssl_cert", "/etc/rpm/cert.pem"),
    "ssl_key": ("/etc/rpm/key.pem", "proxy", "ssl_key", "/etc/rpm/key.pem"),
    "max_cache_size": (500, "cache", "max_entries", 500),
    "max_cache_bytes": (10_000_000, "cache", "max_bytes", 10_000_000),
    "enable_profiling": (True, "proxy", "enable_profiling", True),
    "initial_wait_seconds": (2, "startup", "initial_wait_seconds", 2.0),
    "max_startup_attempts": (5, "startup", "max_startup_attempts", 5),
    "poll_interval_seconds": (3.5, "startup", "poll_interval_seconds", 3.5),
}


def test_init_from_converts_every_older_key_to_toml_that_loads_back_to_the_same_values(
        tmp_path: Path, paths: Paths) -> None:
    old = tmp_path / "pod_config.json"
    old.write_text(json.dumps({key: value for key, (value, *_) in LEGACY.items()}), encoding="utf-8")
    target = tmp_path / "converted" / CONFIG_FILENAME
    written, notes = write_config(target, from_json=old)
    assert (written, notes) == (target, [])
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# Converted from pod_config.json by `rpm init --from`.")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    config = load(target, paths)
    for old_key, (_, table, key, expected) in LEGACY.items():
        value = getattr(getattr(config, table), key)
        assert value == expected and type(value) is type(expected), f"{old_key} -> [{table}] {key} = {value!r}"
    # Keys the old file did not have take their defaults.
    assert config.limits == dataclasses.replace(Config().limits, runtime_seconds=5400)


def test_the_converted_document_is_what_gets_written(tmp_path: Path) -> None:
    old = tmp_path / "pod_config.json"
    old.write_text(json.dumps({"model_name": "m", "gpu_type_ids": ["A", "B"], "cloud_type": "COMMUNITY",
                               "retry_delay": 2, "env": ["HF_TOKEN=abc", "junk"]}), encoding="utf-8")
    document, notes = convert_legacy_json(old)
    assert document == {"version": 1, "pod": {"model": "m", "gpu_types": ["A", "B"], "cloud": "COMMUNITY",
                                               "env": {"HF_TOKEN": "abc"}},
                        "proxy": {"retry_delay_seconds": 2.0}}
    # The old file is world-readable and holds a token: converting still works, and a note says so.
    assert notes == ["pod_config.json holds tokens in env and others can read it: delete it or chmod 600 it"]
    target = tmp_path / CONFIG_FILENAME
    write_config(target, from_json=old)
    assert tomllib.loads(target.read_text()) == document
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    old.chmod(0o600)
    assert convert_legacy_json(old)[1] == []


def test_an_old_api_key_is_reported_and_not_copied(tmp_path: Path, paths: Paths) -> None:
    old = tmp_path / "pod_config.json"
    old.write_text(json.dumps({"model": "m", "api_key": API_KEY, "runpod_api_key": API_KEY}), encoding="utf-8")
    target = tmp_path / CONFIG_FILENAME
    _, notes = write_config(target, from_json=old)
    assert notes == ["'api_key' was not copied: set RUNPOD_API_KEY instead",
                     "'runpod_api_key' was not copied: set RUNPOD_API_KEY instead"]
    assert API_KEY not in target.read_text() and load(target, paths).api.api_key == ""


def test_cloud_all_becomes_secure_with_a_note(tmp_path: Path) -> None:
    old = tmp_path / "pod_config.json"
    old.write_text(json.dumps({"cloud_type": "ALL"}), encoding="utf-8")
    document, notes = convert_legacy_json(old)
    assert document["pod"]["cloud"] == "SECURE"
    assert notes == ["cloud_type ALL has no REST v2 equivalent; using SECURE"]


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"model": "m",}', "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 15"),
    (b'{"model": "m"', "not valid JSON ("),
    (b"", "not valid JSON ("),
    (b'"just a string"', "expected a JSON object at the top level"),
    (b"[{}]", "expected a JSON object at the top level"),
    (b'{"gpu_typeid": "x"}', "unknown key 'gpu_typeid' (did you mean 'gpu_type_id'?)"),
    (b'{"flavour": "x"}', "unknown key 'flavour'"),
    (b'{"runtime_seconds": -5}', "[limits] runtime_seconds must be at least 1, got -5 (negative)"),
    (b'{"proxy_port": "8080"}', "[proxy] port must be a whole number, got a string ('8080')"),
    (b'{"model": "caf\xe9"}', "not valid JSON ("),
    (b"[" * 100_000, "not valid JSON (nested too deeply)"),
    (b'{"runtime_seconds": null}', "[limits] runtime_seconds must be a whole number, got null"),
], ids=["trailing-comma", "truncated", "empty", "string", "array", "typo", "unknown", "negative", "type", "latin1",
        "deep", "null"])
def test_bad_old_json_is_a_one_line_error_naming_the_file(tmp_path: Path, content: bytes, expected: str) -> None:
    old = tmp_path / "pod_config.json"
    old.write_bytes(content)
    target = tmp_path / CONFIG_FILENAME
    with pytest.raises(ConfigError) as caught:
        write_config(target, from_json=old)
    message = caught.value.message
    assert message.startswith(f"{old}: ") and expected in message, message
    assert "\n" not in str(caught.value) and caught.value.__cause__ is None
    assert not target.exists()


def test_a_missing_old_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        convert_legacy_json(tmp_path / "gone.json")
    assert caught.value.message == f"{tmp_path / 'gone.json'}: cannot read (No such file or directory)"


def test_build_config_of_an_empty_document_is_the_defaults() -> None:
    assert build_config({}, source=None, env={}) == Config()
