"""The README's editor snippets work as pasted: the openai-SDK example runs against a real stack, the
Continue config.yaml names the proxy's base URL and the configured model, and the FIM template it
recommends for CodeGPT turns a `suffix` completion into one vLLM accepts.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.e2e.test_proxy_stack import configure, free_port
from tests.support.rpm import Rpm

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
DEFAULTS = tomllib.loads((REPO_ROOT / "pod_config.toml").read_text(encoding="utf-8"))
BASE_URL = f"http://{DEFAULTS['proxy']['host']}:{DEFAULTS['proxy']['port']}/v1"
MODEL = DEFAULTS["pod"]["model"]


def editor_section() -> str:
    start = README.index("## Use it from your editor")
    return README[start:README.index("\n## ", start + 1)]


def fenced(language: str, after: str) -> str:
    """The first ```language block after the text `after` in the editor section."""
    section = editor_section()
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(section, section.index(after))
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def test_the_documented_values_are_the_defaults() -> None:
    section = editor_section()
    assert f"`{BASE_URL}`" in section
    assert f"`{MODEL}`" in section


def test_the_continue_config_points_at_the_proxy() -> None:
    config: dict[str, Any] = yaml.safe_load(fenced("yaml", "**Continue**"))
    assert {"name", "version", "schema"} <= set(config) and config["schema"] == "v1"
    roles = set()
    for model in config["models"]:
        assert model["provider"] == "openai"
        assert model["apiBase"] == BASE_URL
        assert model["model"] == MODEL
        assert model["apiKey"]
        roles |= set(model["roles"])
    assert {"chat", "autocomplete"} <= roles


def test_the_sdk_snippet_streams_an_answer_through_rpm(rpm: Rpm) -> None:
    port = free_port()
    configure(rpm, port)
    assert rpm.json("start")["data"]["proxy_url"] == f"http://127.0.0.1:{port}/v1"
    snippet = fenced("python", "**The `openai` SDK**")
    assert BASE_URL in snippet
    ran = subprocess.run([sys.executable, "-c", snippet.replace(BASE_URL, f"http://127.0.0.1:{port}/v1")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stdout.strip()) > 5, ran.stdout


def test_the_recommended_fim_template_makes_suffix_completions_work(rpm: Rpm) -> None:
    template = re.search(r'`"(<\|fim_prefix\|>.*?)"`', editor_section(), re.DOTALL)
    assert template, "the README names no FIM template"
    port = free_port()
    body = {"model": MODEL, "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))", "max_tokens": 8}

    configure(rpm, port)
    rpm.json("start")
    refused = requests.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30)
    assert refused.status_code == 400 and "fim_template" in refused.json()["error"]["message"]
    rpm.run("shutdown")

    configure(rpm, port, proxy={"fim_template": template.group(1)})
    rpm.json("start")
    answered = requests.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30)
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["text"]
