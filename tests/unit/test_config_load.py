"""Config: lookup order, environment overrides, every error naming file/table/key, secrets, init and the
older JSON format. Pure functions on real files in tmp_path; no network."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from runpod_manager.config import (
    CONFIG_FILENAME,
    Config,
    build_config,
    convert_legacy_json,
    load_config,
    render_template,
    write_config,
)
from runpod_manager.errors import ConfigError
from runpod_manager.paths import resolve_paths

REPO = Path(__file__).resolve().parents[2]
KEY = "rp_SECRET_4e1f9a"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load(path: Path | None, env: dict[str, str] | None = None, home: Path | None = None) -> Config:
    environment = {"RPM_HOME": str(home or (path.parent if path else Path("/nonexistent"))), **(env or {})}
    return load_config(path, env=environment, paths=resolve_paths(environment))


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path / "pod_config.toml", "version = 1\n" + text)
    with pytest.raises(ConfigError) as caught:
        load(path, env)
    message = caught.value.message + (f" ({caught.value.hint})" if caught.value.hint else "")
    assert "\n" not in message
    return message


# --- what ships loads ---------------------------------------------------------------------------------


def test_the_shipped_example_and_the_init_template_load_cleanly(tmp_path: Path) -> None:
    shipped = load(REPO / "pod_config.toml", home=tmp_path)
    assert shipped.pod.gpu_types and shipped.limits.runtime_seconds > 0
    template = load(write(tmp_path / "t.toml", render_template()))
    assert template == Config(source=template.source)  # the template spells out the defaults


def test_defaults_are_safe() -> None:
    config = Config()
    assert config.pod.cloud == "SECURE" and config.limits.daily_cutoff == "00:00"
    assert config.api.pod_url_template == "https://{pod_id}-{port}.proxy.runpod.net"
    assert config.proxy.host == "127.0.0.1"


# --- errors name file, table and key ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("[limits]\nruntime_secnds = 5\n", r"\[limits\] unknown key 'runtime_secnds' \(did you mean 'runtime_seconds'\?\)"),
    ("[limit]\nruntime_seconds = 5\n", r"unknown table or key 'limit' \(did you mean 'limits'\?\)"),
    ("[limits]\nruntime_seconds = \"4h\"\n",
     r"\[limits\] runtime_seconds must be a whole number, got a string \('4h'\)"),
    ("[limits]\nruntime_seconds = true\n", r"\[limits\] runtime_seconds must be a whole number, got a boolean"),
    ("[limits]\nidle_timeout_seconds = -5\n",
     r"\[limits\] idle_timeout_seconds must be at least 0, got -5 \(negative\)"),
    ("[startup]\npoll_interval_seconds = -1.0\n", r"\[startup\] poll_interval_seconds must be at least 0.01"),
    ("[limits]\ndaily_cutoff = \"25:00\"\n", r"\[limits\] daily_cutoff '25:00' is not a time of day"),
    ("[limits]\ndaily_cutoff = \"midnight\"\n", r"daily_cutoff 'midnight' is not a time of day \(expected HH:MM"),
    ("[limits]\ntimezone = \"Mars/Olympus\"\n", r"\[limits\] timezone 'Mars/Olympus' is not an IANA time zone"),
    ("[limits]\nidle_action = \"sleep\"\n", r"\[limits\] idle_action must be one of stop, terminate, got 'sleep'"),
    ("[limits]\nmax_daily_spend_usd = nan\n", r"\[limits\] max_daily_spend_usd must be a finite number"),
    ("[limits]\nmax_daily_spend_usd = inf\n", r"\[limits\] max_daily_spend_usd must be a finite number"),
    ("[pod]\ncloud = \"PRIVATE\"\n", r"\[pod\] cloud must be one of SECURE, COMMUNITY, got 'PRIVATE'"),
    ("[pod]\ngpu_types = []\n", r"\[pod\] gpu_types must list at least one entry"),
    ("[pod]\ngpu_types = \"NVIDIA L40S\"\n", r"\[pod\] gpu_types must be a list of strings"),
    ("[pod]\ngpu_count = 0\n", r"\[pod\] gpu_count must be at least 1"),
    ("[pod]\nname = \"My Pod\"\n", r"\[pod\] name must be 1-40 lowercase letters"),
    ("[pod]\nimage = \"\"\n", r"\[pod\] needs image or template_id"),
    ("[pod]\nvolume_gb = 5\n", r"volume_gb must be 0 or at least 10"),
    ("[pod]\nallowed_cuda_versions = [\"twelve\"]\n", r"'twelve' is not of the form"),
    ("[pod]\nenv = { HF_TOKEN = 1 }\n", r"\[pod\] env must be a table of string values"),
    ("[proxy]\nport = 70000\n", r"\[proxy\] port must be at most 65535"),
    ("[proxy]\nuse_https = true\n", r"\[proxy\] use_https needs ssl_cert and ssl_key"),
    ("[proxy]\nfim_template = \"<fim>{suffix}\"\n", r"fim_template must contain \{prefix\}"),
    ("[api]\npod_url_template = \"https://{id}.example\"\n",
     r"pod_url_template must be an http\(s\) URL containing \{pod_id\}"),
    ("[api]\nbase_url = \"ftp://x\"\n", r"base_url must be an http\(s\) URL"),
    ("pod = 3\n", r"\[pod\] must be a table, got an integer"),
])
def test_every_mistake_names_the_file_table_and_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert str(tmp_path / "pod_config.toml") in message
    assert re.search(expected, message), message


def test_version_missing_is_1_and_other_versions_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "pod_config.toml", "[pod]\nname = \"a\"\n")
    assert load(path).version == 1
    write(path, "version = 2\n")
    with pytest.raises(ConfigError, match="config version 2 is not supported"):
        load(path)
    write(path, "version = \"1\"\n")
    with pytest.raises(ConfigError, match="'version' must be an integer"):
        load(path)


def test_invalid_toml_and_bad_bytes_name_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "pod_config.toml", "version = 1\n[pod\n")
    with pytest.raises(ConfigError, match=r"pod_config.toml: invalid TOML: .*line 2"):
        load(path)
    path.write_bytes(b"version = 1\n# \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(path)


# --- lookup order ------------------------------------------------------------------------------------


def test_lookup_order_explicit_then_env_then_cwd_then_user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    home = tmp_path / "home"
    paths = resolve_paths({"RPM_HOME": str(home)})
    user = write(paths.user_config_file, "version = 1\n[pod]\nname = \"user\"\n")
    cwd = tmp_path / "project"
    write(cwd / CONFIG_FILENAME, "version = 1\n[pod]\nname = \"cwd\"\n")
    named = write(tmp_path / "named.toml", "version = 1\n[pod]\nname = \"env\"\n")
    explicit = write(tmp_path / "explicit.toml", "version = 1\n[pod]\nname = \"explicit\"\n")
    monkeypatch.chdir(cwd)
    env = {"RPM_HOME": str(home), "RPM_CONFIG": str(named)}

    def name(explicit_path: Path | None, environment: dict[str, str]) -> str:
        return load_config(explicit_path, env=environment, paths=paths).pod.name

    assert name(explicit, env) == "explicit"
    assert name(None, env) == "env"
    assert name(None, {"RPM_HOME": str(home)}) == "cwd"
    monkeypatch.chdir(tmp_path)
    assert name(None, {"RPM_HOME": str(home)}) == "user"
    user.unlink()
    with pytest.raises(ConfigError, match=r"no pod_config\.toml found") as caught:
        name(None, {"RPM_HOME": str(home)})
    assert "rpm init" in (caught.value.hint or "")
    with pytest.raises(ConfigError, match="no such config file \\(named by RPM_CONFIG\\)"):
        name(None, {"RPM_HOME": str(home), "RPM_CONFIG": str(tmp_path / "gone.toml")})
    with pytest.raises(ConfigError, match="no such config file \\(given with --config\\)"):
        name(tmp_path / "gone.toml", env)


# --- environment overrides --------------------------------------------------------------------------


def test_env_overrides_single_keys_with_their_types(tmp_path: Path) -> None:
    path = write(tmp_path / "pod_config.toml", "version = 1\n[limits]\nruntime_seconds = 100\n")
    config = load(path, {
        "RPM_LIMITS_RUNTIME_SECONDS": "7200", "RPM_PROXY_USE_HTTPS": "no", "RPM_LIMITS_MAX_DAILY_SPEND_USD": "7.5",
        "RPM_POD_GPU_TYPES": "NVIDIA L40S, NVIDIA RTX A5000", "RPM_POD_ENV": '{"A": "b"}',
        "RUNPOD_API_URL": "http://127.0.0.1:9/", "RUNPOD_API_KEY": KEY,
    })
    assert config.limits.runtime_seconds == 7200 and config.proxy.use_https is False
    assert config.limits.max_daily_spend_usd == 7.5
    assert config.pod.gpu_types == ("NVIDIA L40S", "NVIDIA RTX A5000")
    assert dict(config.pod.env) == {"A": "b"}
    assert config.api.base_url == "http://127.0.0.1:9" and config.api.api_key == KEY


@pytest.mark.parametrize(("env", "expected"), [
    ({"RPM_LIMITS_RUNTIME_SECONDS": "4h"}, "RPM_LIMITS_RUNTIME_SECONDS must be a whole number, got '4h'"),
    ({"RPM_LIMITS_RUNTIME_SECONDS": "-1"}, "RPM_LIMITS_RUNTIME_SECONDS must be at least 1"),
    ({"RPM_LIMITS_MAX_DAILY_SPEND_USD": "nan"}, "RPM_LIMITS_MAX_DAILY_SPEND_USD must be a finite number"),
    ({"RPM_LIMITS_RUNTIME_SECONDS": "99999999999999"}, "RPM_LIMITS_RUNTIME_SECONDS must be at most 31622400"),
    ({"RPM_PROXY_QUEUE_TIMEOUT_SECONDS": "1e300"}, "RPM_PROXY_QUEUE_TIMEOUT_SECONDS must be at most 31622400"),
    ({"RPM_LIMITS_DAILY_CUTOFF": "24:00"}, "RPM_LIMITS_DAILY_CUTOFF '24:00' is not a time of day"),
    ({"RPM_LIMITS_RUNTIME": "5"}, "environment variable RPM_LIMITS_RUNTIME: [limits] has no key 'runtime'"),
    ({"RPM_PROXY_USE_HTTPS": "maybe"}, "RPM_PROXY_USE_HTTPS must be true or false"),
    ({"RUNPOD_API_URL": "localhost:8787"}, "RUNPOD_API_URL must be an http(s) URL"),
])
def test_a_bad_environment_value_blames_the_variable(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    path = write(tmp_path / "pod_config.toml", "version = 1\n")
    with pytest.raises(ConfigError) as caught:
        load(path, env)
    assert expected in caught.value.message


# --- secrets -----------------------------------------------------------------------------------------


def test_a_key_in_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "pod_config.toml", f"version = 1\n[api]\napi_key = \"{KEY}\"\n", mode=0o644)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "readable by others (mode 0644)" in caught.value.message and "chmod 600" in (caught.value.hint or "")
    assert KEY not in str(caught.value) + (caught.value.hint or "")
    path.chmod(0o600)
    assert load(path).api.api_key == KEY
    write(path, "version = 1\n[proxy]\napi_keys = [\"client-key\"]\n", mode=0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        load(path)


def test_a_key_without_secrets_in_the_file_may_be_world_readable(tmp_path: Path) -> None:
    path = write(tmp_path / "pod_config.toml", "version = 1\n", mode=0o644)
    assert load(path, {"RUNPOD_API_KEY": KEY}).api.api_key == KEY


def test_secrets_stay_out_of_repr_errors_and_documents(tmp_path: Path) -> None:
    path = write(tmp_path / "pod_config.toml",
                 f"version = 1\n[api]\napi_key = \"{KEY}\"\n[proxy]\napi_keys = [\"client-SECRET\"]\n"
                 "[pod]\nenv = { HF_TOKEN = \"hf_SECRET\" }\n")
    config = load(path)
    text = repr(config) + str(config)
    assert KEY not in text and "client-SECRET" not in text and "hf_SECRET" not in text
    from runpod_manager.config import to_document

    assert KEY not in json.dumps(to_document(config))
    # A secret given with the wrong type is not echoed in the error.
    message = error_of(tmp_path / "x", "[api]\napi_key = 12345678\n")
    assert "12345678" not in message and "must be a string, got an integer" in message
    message = error_of(tmp_path / "y", "[proxy]\napi_keys = \"single-SECRET\"\n")
    assert "single-SECRET" not in message


def test_missing_key_only_matters_for_commands_that_call_runpod(tmp_path: Path) -> None:
    config = load(write(tmp_path / "pod_config.toml", "version = 1\n"))
    with pytest.raises(ConfigError, match="no RunPod API key: set RUNPOD_API_KEY") as caught:
        config.require_api_key()
    assert "rpm sandbox" in (caught.value.hint or "")


# --- init and the older JSON format -------------------------------------------------------------------


def test_write_config_never_overwrites_without_force_and_writes_0600(tmp_path: Path) -> None:
    target = tmp_path / "conf" / "pod_config.toml"
    write_config(target)
    assert target.stat().st_mode & 0o777 == 0o600
    target.write_text("mine")
    with pytest.raises(ConfigError, match="already exists") as caught:
        write_config(target)
    assert "--force" in (caught.value.hint or "") and target.read_text() == "mine"
    write_config(target, force=True)
    assert target.read_text() == render_template()
    assert [p.name for p in target.parent.iterdir()] == ["pod_config.toml"]  # no temp file left


OLD: dict[str, Any] = {
    "model": "Qwen/Qwen2.5-Coder-7B-Instruct", "gpu_type_id": "NVIDIA L40S", "runtime_seconds": 5400,
    "template_id": "tpl-abc", "proxy_port": 8123, "cache_dir": "/tmp/rpm-cache", "use_https": False,
    "ssl_cert": "", "ssl_key": "", "max_cache_size": 500, "max_cache_bytes": 10_000_000,
    "enable_profiling": True, "initial_wait_seconds": 2, "max_startup_attempts": 5, "poll_interval_seconds": 3,
}


def test_the_older_json_converts_to_toml_that_loads_back_to_the_same_values(tmp_path: Path) -> None:
    old = tmp_path / "pod_config.json"
    old.write_text(json.dumps({**OLD, "api_key": KEY}))
    target = tmp_path / "pod_config.toml"
    _, notes = write_config(target, from_json=old)
    assert any("api_key" in note and "RUNPOD_API_KEY" in note for note in notes)
    assert KEY not in target.read_text()
    config = load(target)
    assert (config.pod.model, config.pod.gpu_types, config.pod.template_id) == (
        OLD["model"], ("NVIDIA L40S",), "tpl-abc")
    assert (config.limits.runtime_seconds, config.proxy.port, config.proxy.use_https) == (5400, 8123, False)
    assert (config.cache.dir, config.cache.max_entries, config.cache.max_bytes) == ("/tmp/rpm-cache", 500, 10_000_000)
    assert config.proxy.enable_profiling is True
    assert (config.startup.initial_wait_seconds, config.startup.max_startup_attempts,
            config.startup.poll_interval_seconds) == (2.0, 5, 3.0)


@pytest.mark.parametrize(("content", "expected"), [
    ("{nope", "not valid JSON"),
    ("[1, 2]", "expected a JSON object at the top level"),
    ('{"gpu_typeid": "x"}', "unknown key 'gpu_typeid' (did you mean 'gpu_type_id'?)"),
    ('{"runtime_seconds": "long"}', "[limits] runtime_seconds must be a whole number"),
    ("[" * 100_000, "not valid JSON (nested too deeply)"),
], ids=["syntax", "array", "unknown", "type", "deep"])
def test_bad_old_json_is_one_line_naming_the_file_and_writes_nothing(tmp_path: Path, content: str,
                                                                   expected: str) -> None:
    old = tmp_path / "pod_config.json"
    old.write_text(content)
    target = tmp_path / "pod_config.toml"
    with pytest.raises(ConfigError) as caught:
        write_config(target, from_json=old)
    assert str(old) in caught.value.message and expected in caught.value.message
    assert "\n" not in caught.value.message and not target.exists()


def test_convert_legacy_keeps_cloud_all_as_secure_with_a_note(tmp_path: Path) -> None:
    old = tmp_path / "pod_config.json"
    old.write_text(json.dumps({"cloud_type": "ALL", "env": ["A=1", "B=2"]}))
    document, notes = convert_legacy_json(old)
    assert document["pod"]["cloud"] == "SECURE" and document["pod"]["env"] == {"A": "1", "B": "2"}
    assert any("ALL" in note for note in notes)
    assert build_config(document, source=old, env={}).pod.cloud == "SECURE"
