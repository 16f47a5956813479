"""The model names a configured pod answers to, from the config alone (pure): what its model server serves,
read from `model`/`args`/`extra_args` the way vLLM reads them, and its `aliases`.

The proxy's routes (proxy/routing.py) and `rpm keys` (the names --models may use) both read them here, so
neither reaches into the other's layer."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from typing import TYPE_CHECKING

from runpod_manager.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from runpod_manager.config import Config


def served_model_names(model: str, args: str, extra_args: str) -> tuple[str, ...] | None:
    """The model names the pod's vLLM answers to, in vLLM's order; None when the config cannot say.

    vLLM's rule: the names given to `--served-model-name` (the last use wins), else `--model`; LoRA
    adapters named by `--lora-modules` too. Full custom `[pod] args` that name no model (another
    server, a script) give None: the proxy then cannot tell an unknown name from a known one.
    """
    custom = bool(args)
    try:
        words = shlex.split(args.replace("{model}", model)) if custom else ["--model", model, *shlex.split(extra_args)]
    except ValueError:  # unbalanced quotes: the pod would not start either; do not guess
        return None if custom else (model,)
    served: list[str] = []
    adapters: list[str] = []
    named: str | None = None
    index = 0
    while index < len(words):
        flag, has_value, value = words[index].partition("=")
        if flag in ("--served-model-name", "--lora-modules"):
            values = [value] if has_value else []
            while not has_value and index + 1 < len(words) and not words[index + 1].startswith("-"):
                index += 1
                values.append(words[index])
            if flag == "--served-model-name":
                served = values
            else:
                adapters = [_lora_name(item) for item in values]
        elif flag == "--model":
            if has_value:
                named = value
            elif index + 1 < len(words):
                index += 1
                named = words[index]
        elif flag == "serve" and index + 1 < len(words) and not words[index + 1].startswith("-"):
            index += 1
            named = words[index]  # `vllm serve <model>`
        index += 1
    names = served or ([named] if named is not None else [])
    if not names:
        return None
    return tuple(dict.fromkeys(names + [name for name in adapters if name]))


def _lora_name(item: str) -> str:
    # `name=path`, or the JSON form `{"name": "...", "path": "..."}`
    if item.startswith("{"):
        try:
            document = json.loads(item)
        except ValueError:
            return ""
        name = document.get("name") if isinstance(document, dict) else None
        return name if isinstance(name, str) else ""
    return item.partition("=")[0]


def known_names(served: tuple[str, ...] | None, model: str, aliases: Iterable[str]) -> tuple[str, ...]:
    """Every name the config knows a pod by, served names first (the order /v1/models lists)."""
    return tuple(dict.fromkeys([*(served or (model,)), *aliases]))


def check_unique_names(named: Iterable[tuple[str, Iterable[str]]], source: Path | None) -> None:
    """ConfigError when two model pods (`named`: each pod's name and its names) answer to one model name."""
    owners: dict[str, str] = {}
    for pod, names in named:
        for name in names:
            other = owners.setdefault(name, pod)
            if other != pod:
                raise ConfigError(
                    f"{source or 'the config'}: pods {other!r} and {pod!r} both answer to the "
                    f"model name {name!r} (model, --served-model-name in args/extra_args, or aliases): a request "
                    "for it could not be routed",
                    hint="give one of them another name; copies of one pod are `replicas`")


def config_model_names(config: Config) -> tuple[str, ...]:
    """Every model name the config's pods answer to, pod by pod (what a key's --models may name); ConfigError
    when two model pods answer to one name, as the proxy's routes would refuse it."""
    named = [(pod, known_names(served_model_names(pod.model, pod.args, pod.extra_args), pod.model, pod.aliases))
             for pod in config.all_pods]
    check_unique_names(((pod.name, names) for pod, names in named if pod.kind != "http"), config.source)
    return tuple(name for _, names in named for name in names)
