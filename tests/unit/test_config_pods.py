"""`[pods.<name>]`: several pods in one config, per-pod limits, replicas and adopted pods (issue #12)."""

from __future__ import annotations

from typing import Any

import pytest

from runpod_manager.config import Config, build_config
from runpod_manager.errors import ConfigError

TWO_PODS: dict[str, Any] = {
    "version": 1,
    "limits": {"max_daily_spend_usd": 30.0, "idle_timeout_seconds": 600, "timezone": "UTC"},
    "pods": {
        "chat": {"model": "Qwen/Qwen2.5-7B-Instruct", "gpu_types": ["NVIDIA L40S"], "replicas": 2,
                 "limits": {"max_daily_spend_usd": 20.0, "idle_timeout_seconds": 1200}},
        "coder": {"model": "Qwen/Qwen2.5-Coder-1.5B-Instruct", "aliases": ["autocomplete"]},
        "mine": {"pod_id": "abc123xyz9", "model": "my/model"},
    },
}


def build(document: dict[str, Any], **env: str) -> Config:
    return build_config(document, source=None, env=env)


def test_each_pod_is_its_own_config_with_its_limits_merged_over_the_accounts() -> None:
    config = build(TWO_PODS)
    assert [pod.name for pod in config.all_pods] == ["chat", "coder", "mine"]
    chat = config.for_pod("chat")
    assert chat.pod.model == "Qwen/Qwen2.5-7B-Instruct" and chat.pod_name_prefix == "rpm-chat-"
    assert chat.limits.max_daily_spend_usd == 20.0 and chat.limits.idle_timeout_seconds == 1200
    assert chat.limits.timezone == "UTC"  # not overridden: the account's
    coder = config.for_pod("coder")
    assert coder.limits.idle_timeout_seconds == 600 and coder.limits.max_daily_spend_usd == 30.0
    assert chat.account.max_daily_spend_usd == coder.account.max_daily_spend_usd == 30.0


def test_replicas_are_pods_of_their_own_named_r2_r3() -> None:
    config = build(TWO_PODS)
    names = [replica.pod.name for replica in config.every_pod()]
    assert names == ["chat", "chat-r2", "coder", "mine"]
    second = config.for_pod("chat", 2)
    assert second.pod_name_prefix == "rpm-chat-r2-" and second.limits.max_daily_spend_usd == 20.0


def test_a_single_pod_table_works_as_before() -> None:
    config = build({"version": 1, "pod": {"name": "solo"}, "limits": {"max_daily_spend_usd": 5.0}})
    assert [pod.name for pod in config.all_pods] == ["solo"]
    assert config.for_pod("solo").limits == config.limits and config.account.max_daily_spend_usd == 5.0
    assert [c.pod.name for c in config.every_pod()] == ["solo"]


@pytest.mark.parametrize(("change", "words"), [
    ({"pod": {"name": "x"}, "pods": {"a": {}}}, "[pod] and [pods.<name>] tables cannot both be used"),
    ({"pods": {}}, "at least one [pods.<name>] table"),
    ({"pods": {"chat": "no"}}, "[pods.chat] must be a table"),
    ({"pods": {"Chat": {}}}, "[pods.Chat] name must be 1-40 lowercase"),
    ({"pods": {"chat-r2": {}}}, "must not end in -r<number>"),
    ({"pods": {"chat": {"name": "other"}}}, "[pods.chat] name must be 'chat'"),
    ({"pods": {"a": {"model": "m"}, "b": {"model": "m"}}}, "model or alias 'm' is also served by pod 'a'"),
    ({"pods": {"a": {"model": "m"}, "b": {"aliases": ["m"]}}}, "also served by pod 'a'"),
    ({"pods": {"a": {"pod_id": "NOT-AN-ID"}}}, "is not a RunPod pod id"),
    ({"pods": {"a": {"pod_id": "abc123xyz9", "replicas": 2}}}, "must be 1 for an adopted pod"),
    ({"pods": {"a": {"limits": {"timezone": "UTC"}}}}, "timezone cannot differ per pod"),
    ({"pods": {"a": {"limits": {"idle_timeout_seconds": -1}}}}, "[pods.a.limits] idle_timeout_seconds"),
    ({"pods": {"a": {"limits": {"idle_timeout": 5}}}}, "[pods.a.limits] unknown key 'idle_timeout'"),
    ({"pods": {"a": {"replicas": 0}}}, "[pods.a] replicas"),
])
def test_bad_pods_tables_name_the_table_and_key(change: dict[str, Any], words: str) -> None:
    document = {"version": 1, **change}
    with pytest.raises(ConfigError) as caught:
        build(document)
    assert words in str(caught.value)


def test_rpm_pod_variables_are_refused_with_pods_tables() -> None:
    with pytest.raises(ConfigError, match=r"RPM_POD_MODEL: RPM_POD_\* overrides a single \[pod\] table"):
        build(TWO_PODS, RPM_POD_MODEL="x")


def test_an_unknown_pod_name_is_a_config_error_listing_the_pods() -> None:
    with pytest.raises(ConfigError) as caught:
        build(TWO_PODS).for_pod("nope")
    assert caught.value.hint is not None and "chat, coder, mine" in caught.value.hint


def test_an_adopted_pod_needs_no_image() -> None:
    config = build({"version": 1, "pods": {"mine": {"pod_id": "abc123xyz9", "image": ""}}})
    assert config.for_pod("mine").pod.pod_id == "abc123xyz9"


def test_the_pods_example_rpm_init_writes_is_a_valid_config(tmp_path: Any) -> None:
    from runpod_manager.config import load_config, write_config

    path, _notes = write_config(tmp_path / "pods.toml", pods=True)
    config = load_config(path, env={})
    assert [pod.name for pod in config.all_pods] == ["chat", "coder"]
    assert config.for_pod("chat").limits.max_daily_spend_usd == 12.0 and config.account.max_daily_spend_usd == 20.0
    assert config.for_pod("coder").pod.aliases == ("autocomplete",)


def test_a_per_pod_cutoff_is_checked_like_the_accounts() -> None:
    with pytest.raises(ConfigError, match=r"\[pods.a.limits\] daily_cutoff '25:00' is not a time of day"):
        build({"version": 1, "pods": {"a": {"limits": {"daily_cutoff": "25:00"}}}})


# --- backend: how an entry runs on RunPod (issue #21), separate from kind (its protocol) --------------------


def test_every_entry_runs_as_a_pod_unless_it_says_otherwise() -> None:
    config = build({**TWO_PODS, "pods": {**TWO_PODS["pods"], "coder": {"backend": "POD"}}})
    assert [pod.backend for pod in config.all_pods] == ["pod", "pod", "pod"]
    assert build({"pod": {"backend": "pod", "kind": "openai"}}).pod.backend == "pod"


@pytest.mark.parametrize(("document", "env", "where"), [
    ({"pods": {"coder": {"backend": "serverless"}}}, {}, "built-in defaults: [pods.coder] backend"),
    ({"pod": {"backend": "serverless"}}, {}, "built-in defaults: [pod] backend"),
    ({}, {"RPM_POD_BACKEND": "serverless"}, "RPM_POD_BACKEND"),
], ids=["pods-table", "pod-table", "variable"])
def test_the_serverless_backend_is_refused_until_it_exists(document: dict[str, Any], env: dict[str, str],
                                                          where: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build({"version": 1, **document}, **env)
    assert raised.value.message.startswith(f"{where} 'serverless' is not available yet"), raised.value.message
    assert raised.value.hint is not None and 'backend = "pod"' in raised.value.hint


def test_an_unknown_backend_names_the_table_key_and_choices(tmp_path: Any) -> None:
    source = tmp_path / "pod_config.toml"
    with pytest.raises(ConfigError) as raised:
        build_config({"version": 1, "pods": {"chat": {"backend": "lambda"}}}, source=source, env={})
    assert raised.value.message == f"{source}: [pods.chat] backend must be one of pod, serverless, got 'lambda'"
