"""The emulator's fake vLLM at the pod URL, over real HTTP: what clients notice about vLLM.

502 until the model loads, /v1/models with max_model_len, deterministic chat and completions, SSE framing
(role chunk first, usage chunk with include_usage, `data: [DONE]`), vLLM's 400 for `suffix`, its 401 for a
missing key, OpenAI-shaped errors, and a client that disconnects mid-stream stopping generation.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from runpod_manager.sandbox.server import EmbeddedSandbox

MODEL = "Qwen/Qwen2.5-Coder-7B-Instruct"
POD_KEY = "sk-pod-secret"
AUTH = {"Authorization": f"Bearer {POD_KEY}"}


@pytest.fixture(scope="module")
def module_sandbox() -> Iterator[EmbeddedSandbox]:
    with EmbeddedSandbox(provision_seconds=0.02, start_seconds=0.02, model_load_seconds=0.02,
                         token_delay_seconds=0.0) as running:
        yield running


@pytest.fixture
def sandbox(module_sandbox: EmbeddedSandbox) -> EmbeddedSandbox:
    """The module's emulator, reset to its starting world (no pods, default faults) for each test."""
    module_sandbox.call(lambda world: world.reset())
    return module_sandbox


def create(sandbox: EmbeddedSandbox, args: str = f"--model {MODEL} --max-model-len 2048 --api-key {POD_KEY}",
           ports: tuple[str, ...] = ("8000/http", "22/tcp")) -> str:
    body = {"name": "rpm-main-m0d3l1", "image": "vllm/vllm-openai:latest", "args": args,
            "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "ports": list(ports)}
    return sandbox.call(lambda world: world.create_pod(body).id)


def pod_url(sandbox: EmbeddedSandbox, pod_id: str, port: int = 8000) -> str:
    return sandbox.pod_url_template.format(pod_id=pod_id, port=port)


def pod_id_of(url: str) -> str:
    """The pod id in a sandbox pod URL (`…/pods/<id>-<port>`)."""
    return urlsplit(url).path.split("/")[-1].rsplit("-", 1)[0]


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 10
    while requests.get(url + "/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the model never loaded"
        time.sleep(0.02)


@pytest.fixture
def pod(sandbox: EmbeddedSandbox) -> str:
    url = pod_url(sandbox, create(sandbox))
    wait_ready(url)
    return url


def events(response: requests.Response) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing: every event is one data line + blank."""
    text = response.text
    assert text.endswith("\n\n")
    blocks = text[:-2].split("\n\n")
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks), blocks
    return [block.removeprefix("data: ") for block in blocks]


def metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    match = re.search(rf"^vllm:{name}\{{[^}}]*\}} ([0-9.]+)$", text, re.MULTILINE)
    assert match, text
    return float(match[1])


# --- before the model is up ------------------------------------------------------------------------


def test_the_pod_url_is_502_until_the_model_loads_then_200(sandbox: EmbeddedSandbox) -> None:
    # A load long enough to be seen: the module's emulator loads models at once so other tests need not wait.
    assert sandbox.call(lambda world: world.faults.update({"model_load_seconds": 0.3})) == []
    url = pod_url(sandbox, create(sandbox))
    first = requests.get(url + "/v1/models", headers=AUTH, timeout=5)
    assert first.status_code == 502 and "text/html" in first.headers["Content-Type"]
    wait_ready(url)
    assert requests.get(url + "/v1/models", headers=AUTH, timeout=5).status_code == 200


def test_unknown_pods_and_ports_not_exposed_over_http_are_404(sandbox: EmbeddedSandbox, pod: str) -> None:
    pod_id = pod_id_of(pod)
    assert requests.get(pod_url(sandbox, "nosuchpod") + "/health", timeout=5).status_code == 404
    assert requests.get(pod_url(sandbox, pod_id, 22) + "/health", timeout=5).status_code == 404
    assert requests.get(pod_url(sandbox, pod_id, 9000) + "/health", timeout=5).status_code == 404


def test_a_crashed_model_answers_502_while_runpod_still_says_running(sandbox: EmbeddedSandbox, pod: str) -> None:
    pod_id = pod_id_of(pod)
    sandbox.call(lambda world: world.crash_model(pod_id))
    assert requests.get(pod + "/health", timeout=5).status_code == 502
    assert sandbox.call(lambda world: str(world.get_pod(pod_id).status)) == "RUNNING"


# --- answers -------------------------------------------------------------------------------------


def test_models_lists_the_served_model_with_its_context_length(pod: str) -> None:
    body = requests.get(pod + "/v1/models", headers=AUTH, timeout=5).json()
    assert body["object"] == "list"
    assert [(m["id"], m["max_model_len"], m["owned_by"]) for m in body["data"]] == [(MODEL, 2048, "vllm")]


def test_chat_is_deterministic_per_prompt_and_counts_usage(pod: str) -> None:
    def ask(text: str, **extra: Any) -> dict[str, Any]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}
        response = requests.post(pod + "/v1/chat/completions", json=body, headers=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    first, again, other = ask("write a sort"), ask("write a sort"), ask("write a parser")
    text = first["choices"][0]["message"]["content"]
    assert text and text == again["choices"][0]["message"]["content"]
    assert text != other["choices"][0]["message"]["content"]
    assert first["object"] == "chat.completion" and first["choices"][0]["finish_reason"] == "stop"
    usage = first["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == len(re.findall(r"\S+", text))
    short = ask("write a sort", max_tokens=3)
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3


def test_a_streamed_chat_starts_with_the_role_and_ends_with_done(pod: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = requests.post(pod + "/v1/chat/completions", json=body, headers=AUTH, timeout=10)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    plain = requests.post(pod + "/v1/chat/completions", json={**body, "stream": False}, headers=AUTH,
                          timeout=10).json()
    assert streamed == plain["choices"][0]["message"]["content"]  # same text either way


def test_include_usage_adds_a_final_usage_chunk_with_no_choices(pod: str) -> None:
    body = {"model": MODEL, "prompt": "def add(a, b):", "stream": True, "max_tokens": 5,
            "stream_options": {"include_usage": True}}
    payloads = events(requests.post(pod + "/v1/completions", json=body, headers=AUTH, timeout=10))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/completions", {"prompt": "def f(", "suffix": "return x"}, 400, "suffix"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}, 404, "model"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream_options": {}}, 400,
     "stream_options"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400,
     "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 8000}], "max_tokens": 100}, 400,
     None),
])
def test_bad_requests_get_vllms_status_in_the_openai_error_shape(pod: str, path: str, body: dict[str, Any],
                                                                 status: int, param: str | None) -> None:
    response = requests.post(pod + path, json=body, headers=AUTH, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["code"] == status


@pytest.mark.parametrize("raw", [b"{", b"[" * 50_000 + b"]" * 50_000, b"[1]"])
def test_malformed_bodies_are_400_not_500(pod: str, raw: bytes) -> None:
    response = requests.post(pod + "/v1/chat/completions", data=raw, headers={**AUTH,
                             "Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400 and "error" in response.json()
    assert "Traceback" not in response.text


# --- the pod's own API key ----------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": POD_KEY}])
def test_v1_needs_the_key_given_in_the_pods_args(pod: str, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/nothing")):
        response = requests.request(method, pod + path, headers=headers, json={}, timeout=5)
        assert (response.status_code, response.json()) == (401, {"error": "Unauthorized"})
    assert requests.get(pod + "/health", timeout=5).status_code == 200  # health is open, as in vLLM
    assert requests.get(pod + "/metrics", timeout=5).status_code == 200


def test_without_a_key_in_the_args_v1_is_open(sandbox: EmbeddedSandbox) -> None:
    url = pod_url(sandbox, create(sandbox, args=f"--model {MODEL}"))
    wait_ready(url)
    assert requests.get(url + "/v1/models", timeout=5).json()["data"][0]["max_model_len"] == 8192


# --- disconnects and load ------------------------------------------------------------------------------


def test_a_client_that_disconnects_mid_stream_stops_generation() -> None:
    with EmbeddedSandbox(provision_seconds=0.02, start_seconds=0.02, model_load_seconds=0.05,
                         token_delay_seconds=0.2) as sandbox:
        url = pod_url(sandbox, create(sandbox))
        wait_ready(url)
        target = urlsplit(url)
        body = json.dumps({"model": MODEL, "prompt": "count to a hundred", "stream": True,
                           "max_tokens": 40}).encode()
        with socket.create_connection((target.hostname, target.port), timeout=5) as raw:
            raw.sendall(f"POST {target.path}/v1/completions HTTP/1.1\r\nHost: {target.netloc}\r\n"
                        f"Authorization: Bearer {POD_KEY}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            received = b""
            while b"data: " not in received:
                received += raw.recv(4096)
            assert metric(url, "num_requests_running") == 1.0
        deadline = time.monotonic() + 5
        while metric(url, "num_requests_running") != 0.0:
            assert time.monotonic() < deadline, "generation went on after the client left"
            time.sleep(0.05)
        pod_id = pod_id_of(url)
        stats = sandbox.call(lambda world: world.model_stats[pod_id])
        assert stats.finished == {"abort": 1}
        assert stats.generation_tokens < 8  # far from the 8..40 a full answer would have produced
        time.sleep(0.5)
        assert sandbox.call(lambda world: world.model_stats[pod_id].generation_tokens) == stats.generation_tokens


def test_max_num_seqs_queues_requests_and_shows_them_waiting() -> None:
    with EmbeddedSandbox(provision_seconds=0.02, start_seconds=0.02, model_load_seconds=0.05,
                         token_delay_seconds=0.3) as slow:
        url = pod_url(slow, create(slow, args=f"--model {MODEL} --max-num-seqs 1"))
        wait_ready(url)
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
        with requests.Session() as first, requests.Session() as second:
            results: list[int] = []
            threads = [threading.Thread(target=lambda s=s: results.append(
                s.post(url + "/v1/completions", json=body, timeout=10).status_code)) for s in (first, second)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 5
            while metric(url, "num_requests_waiting") != 1.0:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.02)
            assert metric(url, "num_requests_running") == 1.0
            for thread in threads:
                thread.join()
        assert results == [200, 200]
        assert metric(url, "num_requests_waiting") == 0.0
