"""proxy/routing.py: which configured pod (and which replicas) each model name goes to, from the config alone."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from runpod_manager.config import Config, build_config
from runpod_manager.errors import ConfigError
from runpod_manager.paths import resolve_paths
from runpod_manager.proxy.app import build_app
from runpod_manager.proxy.ops import pod_entry as _pod_entry
from runpod_manager.proxy.routing import build_routes
from runpod_manager.proxy.state import STATE
from tests.support.proxy_fakes import FakeController, FakePod


def config_of(pods: dict[str, dict[str, Any]]) -> Config:
    return build_config({"version": 1, "pods": pods}, source=None, env={})


def test_each_model_and_alias_goes_to_its_pod_and_its_replicas() -> None:
    routes = build_routes(config_of({
        "chat": {"model": "Qwen/Qwen2.5-7B-Instruct", "replicas": 2},
        "coder": {"model": "Qwen/Qwen2.5-Coder-1.5B-Instruct", "aliases": ["autocomplete", "fim"]},
    }))
    chat, coder = routes.routes
    assert routes.route_for("Qwen/Qwen2.5-7B-Instruct") is chat
    assert chat.replicas == ("chat", "chat-r2") and coder.replicas == ("coder",)
    assert routes.route_for("autocomplete") is coder and routes.route_for("fim") is coder
    # vLLM on the coder pod answers only to its own name: an alias is rewritten to it on the way.
    assert dict(coder.rewrite) == {"autocomplete": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
                                   "fim": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}
    assert routes.route_for("gpt-4o") is None  # unknown: a 404, no pod
    assert routes.default is None  # several pods: a request must name its model
    assert routes.pod_names == ("chat", "chat-r2", "coder")
    assert routes.model_names == ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct", "autocomplete",
                                  "fim")
    assert routes.route_of_pod("chat-r2") is chat and routes.route_of_pod("nope") is None


def test_one_pod_is_the_default_for_requests_without_a_model() -> None:
    config = build_config({"version": 1, "pod": {"name": "solo", "replicas": 3}}, source=None, env={})
    routes = build_routes(config)
    [solo] = routes.routes
    assert routes.default is solo and solo.replicas == ("solo", "solo-r2", "solo-r3")
    assert routes.fallback is None  # its names are known: another name is a 404, as before


def test_served_model_names_replace_the_model_and_aliases_go_to_the_first() -> None:
    routes = build_routes(config_of({
        "chat": {"model": "org/weights-on-disk", "extra_args": "--served-model-name chat-model chat-2",
                 "aliases": ["chat-2", "assistant"]},
    }))
    [chat] = routes.routes
    assert chat.served == ("chat-model", "chat-2") and chat.names == ("chat-model", "chat-2", "assistant")
    assert routes.route_for("org/weights-on-disk") is None  # vLLM answers only to its served names
    assert dict(chat.rewrite) == {"assistant": "chat-model"}  # chat-2 is served as it is: no rewrite


def test_lora_adapters_in_extra_args_route_to_their_pod() -> None:
    routes = build_routes(config_of({
        "base": {"model": "m/base", "extra_args": "--enable-lora --lora-modules sql=/a/sql tone=/a/tone"},
        "other": {"model": "m/other"},
    }))
    assert routes.route_for("sql") is routes.routes[0] and routes.route_for("tone") is routes.routes[0]


def test_a_pod_that_cannot_say_its_names_gets_the_unknown_ones_only_when_it_is_the_only_such_pod() -> None:
    custom = {"model": "m/custom", "args": "python3 server.py --port {port}", "aliases": ["mine"]}
    lora = {"model": "m/lora", "env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}}
    routes = build_routes(config_of({"chat": {"model": "m/chat"}, "custom": custom}))
    chat, open_pod = routes.routes
    assert open_pod.open and not chat.open
    assert routes.route_for("m/custom") is open_pod and routes.route_for("mine") is open_pod
    assert routes.route_for("anything-else") is open_pod  # the custom server decides for itself
    assert routes.route_for("m/chat") is chat
    # A runtime-LoRA pod: its configured name is known, adapters loaded later are not.
    routes = build_routes(config_of({"chat": {"model": "m/chat"}, "lora": lora}))
    assert routes.route_for("m/lora") is routes.routes[1] and routes.route_for("adapter-7") is routes.routes[1]
    # Two such pods: which one serves an unknown name cannot be told, so it is nobody's (a 404, no wake).
    routes = build_routes(config_of({"custom": custom, "lora": lora}))
    assert routes.fallback is None and routes.route_for("adapter-7") is None
    assert routes.route_for("m/lora") is routes.routes[1] and routes.route_for("mine") is routes.routes[0]


def test_two_pods_answering_to_one_name_cannot_be_routed() -> None:
    # The config's own check sees model and aliases; a served name in extra_args only the routes see.
    config = config_of({"a": {"model": "m/a", "extra_args": "--served-model-name shared"},
                        "b": {"model": "shared"}})
    with pytest.raises(ConfigError, match=r"pods 'a' and 'b' both answer to the model name 'shared'"):
        build_routes(config)


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Several models behind one proxy")
    return text[start:text.index("\n## ", start + 1)]


def _fenced(section: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block in the README's multi-pod section"
    return match.group(1)


def test_the_readme_example_routes_as_the_readme_says(tmp_path: Path) -> None:
    section = _readme_section()
    config = build_config(tomllib.loads(_fenced(section, "toml")), source=None, env={})
    routes = build_routes(config)
    chat, coder, mine = routes.routes
    assert chat.replicas == ("chat", "chat-r2") and '"chat-r2"' in section
    assert routes.route_for("Qwen/Qwen2.5-7B-Instruct") is chat
    assert routes.route_for("Qwen/Qwen2.5-Coder-1.5B-Instruct") is coder and routes.route_for("autocomplete") is coder
    assert dict(coder.rewrite) == {"autocomplete": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}
    assert routes.route_for("my-org/my-model") is mine and routes.default is None
    # The sample /rpm/v1/pods/<name> answer has exactly the fields the proxy sends.
    documented = json.loads(_fenced(section, "json"))
    state = build_app(config, FakeController(pods={name: FakePod() for name in routes.pod_names}),
                      paths=resolve_paths({"RPM_HOME": str(tmp_path)}), keepalive_interval_seconds=5,
                      body_read_timeout_seconds=5, queue_full_retry_after_seconds=5, wake_retry_after_seconds=1,
                      cache_clock=lambda: 0.0)[STATE]
    entry = _pod_entry(state, "coder")
    assert set(documented) == set(entry)
    assert documented["models"] == entry["models"] == ["Qwen/Qwen2.5-Coder-1.5B-Instruct", "autocomplete"]
