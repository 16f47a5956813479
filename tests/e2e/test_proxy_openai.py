"""The official openai SDK against the proxy, in front of a pod of the rpm emulator (a real subprocess).

The pod is created through the emulator's REST v2 API and reached through its pod URL, like RunPod's
HTTP proxy; a FakeController hands that target to the proxy (the real controller is the lifecycle's).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.errors import RpmError
from runpod_manager.paths import Paths
from tests.support.proxy_fakes import FakeController, ProxyThread, make_config, running_proxy, wait_until
from tests.support.rpm import Sandbox, run_sandbox

pytestmark = pytest.mark.e2e

MODEL = "m"
POD_KEY = "pod-upstream-key-93be"
CLIENT_KEY = "sdk-client-key-51aa"
MESSAGES: list[Any] = [{"role": "user", "content": "Say something about pods."}]


@dataclass
class EmulatedPod:
    sandbox: Sandbox
    pod_id: str
    url: str

    @property
    def target(self) -> UpstreamTarget:
        return UpstreamTarget(self.pod_id, self.url, POD_KEY)

    def _metric(self, name: str) -> float:
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        match = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.MULTILINE)
        assert match, text
        return float(match.group(1))

    def running_requests(self) -> float:
        return self._metric("vllm:num_requests_running")

    def generated_tokens(self) -> float:
        return self._metric("vllm:generation_tokens_total")


@pytest.fixture(scope="module")
def pod() -> Iterator[EmulatedPod]:
    with run_sandbox("--token-delay", "0.01") as sandbox:
        created = sandbox.api("POST", "/v2/pods", json={
            "name": "rpm-t-proxy", "image": "vllm/vllm-openai:latest",
            "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "ports": ["8000/http"],
            "args": f"--model {MODEL} --api-key {POD_KEY}"})
        assert created.status_code == 201, created.text
        pod_id = created.json()["id"]
        url = sandbox.pod_url_template.format(pod_id=pod_id, port=8000)

        def ready() -> bool:
            if sandbox.api("GET", f"/v2/pods/{pod_id}").json().get("status") != "RUNNING":
                return False
            return requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {POD_KEY}"},
                                timeout=5).status_code == 200

        assert wait_until(ready, timeout=20, interval=0.05)
        yield EmulatedPod(sandbox, pod_id, url)


@pytest.fixture(scope="module")
def proxy(pod: EmulatedPod, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    root = tmp_path_factory.mktemp("proxy-home")
    paths = Paths(config_dir=root, state_dir=root / "state", cache_dir=root / "cache")
    running = ProxyThread(make_config(model=MODEL), FakeController(pod.target), paths)
    yield running
    running.stop()


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return Paths(config_dir=isolated_home, state_dir=isolated_home / "state", cache_dir=isolated_home / "cache")


def client(url: str, *, key: str = "unused", max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=max_retries, timeout=20)


# ------------------------------------------------------------------------------------------ happy paths


def test_chat_plain_and_streamed_agree(proxy: ProxyThread) -> None:
    sdk = client(proxy.url)
    plain = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    text = plain.choices[0].message.content
    assert text
    assert plain.usage is not None and plain.usage.completion_tokens > 0

    chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_completions_plain_and_streamed(proxy: ProxyThread) -> None:
    sdk = client(proxy.url)
    plain = sdk.completions.create(model=MODEL, prompt="def fibonacci(n):", max_tokens=10, temperature=0)
    assert plain.choices[0].text
    streamed = "".join(chunk.choices[0].text for chunk in sdk.completions.create(
        model=MODEL, prompt="def fibonacci(n):", max_tokens=10, temperature=0, stream=True) if chunk.choices)
    assert streamed == plain.choices[0].text


def test_models_and_embeddings(proxy: ProxyThread) -> None:
    sdk = client(proxy.url)
    assert MODEL in [model.id for model in sdk.models.list()]
    embedding = sdk.embeddings.create(model=MODEL, input="hello")
    assert len(embedding.data[0].embedding) > 0


def test_raw_response_carries_proxy_headers(proxy: ProxyThread) -> None:
    raw = client(proxy.url).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES,
                                                                        max_tokens=4, temperature=0.5)
    assert raw.headers["x-rpm-cache"] == "bypass"  # the cache is off in this proxy
    assert raw.parse().choices[0].message.content


# ---------------------------------------------------------------------------------------------- errors


def test_errors_raise_the_matching_sdk_exceptions(proxy: ProxyThread) -> None:
    sdk = client(proxy.url)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=0)
    assert "max_tokens" in bad.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "not served here" in missing.value.message and MODEL in missing.value.message
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as fim:  # the proxy's own 400
        sdk.completions.create(model=MODEL, prompt="def f(", suffix=")\n")
    assert "fim_template" in fim.value.message


def test_local_key_is_required_and_checked(pod: EmulatedPod, paths: Paths) -> None:
    config = make_config(model=MODEL, api_keys=(CLIENT_KEY,))
    with running_proxy(config, FakeController(pod.target), paths) as running:
        with pytest.raises(openai.AuthenticationError) as denied:
            client(running.url, key="wrong").models.list()
        assert "api_keys" in denied.value.message
        assert denied.value.response.headers["www-authenticate"] == "Bearer"
        assert MODEL in [model.id for model in client(running.url, key=CLIENT_KEY).models.list()]


def test_pod_rejecting_the_upstream_key_is_an_authentication_error(pod: EmulatedPod, paths: Paths) -> None:
    wrong = UpstreamTarget(pod.pod_id, pod.url, "not-the-pod-key")
    with (running_proxy(make_config(model=MODEL), FakeController(wrong), paths) as running,
          pytest.raises(openai.AuthenticationError) as denied):
        client(running.url).models.list()
    assert "rejected the upstream key" in denied.value.message


def test_sdk_retries_a_full_queue_as_told_by_retry_after(pod: EmulatedPod, paths: Paths) -> None:
    controller = FakeController(None, wake_target=pod.target, hold_wake=True)
    config = make_config(model=MODEL, max_queue_size=1)
    with running_proxy(config, controller, paths, queue_full_retry_after_seconds=0.2) as running:
        waiting = threading.Thread(target=requests.post, args=(f"{running.url}/v1/chat/completions",),
                                   kwargs={"json": {"model": MODEL, "messages": MESSAGES, "max_tokens": 2},
                                           "timeout": 30})
        waiting.start()
        assert wait_until(lambda: requests.get(f"{running.url}/health", timeout=5)
                          .json()["proxy"]["queue_depth"] == 1)
        with pytest.raises(openai.InternalServerError) as full:
            client(running.url, max_retries=2).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        assert full.value.status_code == 503
        assert full.value.response.headers["retry-after-ms"] == "200"
        recent = requests.get(f"{running.url}/dashboard", timeout=5).json()["recent_requests"]
        assert [row["status"] for row in recent].count(503) == 3  # the first try and two retries
        controller.release_wake.set()
        waiting.join(10)
    assert controller.wake_calls == 1


# ------------------------------------------------------------------------------------- wake and stream


def test_wake_on_request_serves_the_sdk_after_the_pod_wakes(pod: EmulatedPod, paths: Paths) -> None:
    controller = FakeController(None, wake_target=pod.target, wake_delay_seconds=0.3)
    with running_proxy(make_config(model=MODEL), controller, paths, keepalive_interval_seconds=0.05) as running:
        sdk = client(running.url)
        # A stream that has to wait gets keep-alive comments, which the SDK's SSE parser skips.
        streamed = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True))
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert controller.wake_calls == 1
        controller.target = None  # the pod went to sleep; the reconcile loop notices
        assert wait_until(lambda: requests.get(f"{running.url}/ready", timeout=5).status_code == 503)
        raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        assert float(raw.headers["x-rpm-cold-start"]) > 0
        assert raw.parse().choices[0].message.content
    assert controller.wake_calls == 2


def test_an_sdk_with_default_retries_is_served_after_a_wake_longer_than_the_hold(pod: EmulatedPod,
                                                                                 paths: Paths) -> None:
    """The SDK's defaults (2 retries, honouring retry-after-ms) carry a request across a wake longer than
    [proxy] wake_hold_seconds: each answer is a 503 it retries, and the wake it joins is the same one."""
    controller = FakeController(None, wake_target=pod.target, hold_wake=True)
    config = make_config(model=MODEL, wake_hold_seconds=0.3)
    with running_proxy(config, controller, paths, wake_retry_after_seconds=0.05) as running:

        def statuses() -> list[int]:
            return [row["status"] for row in requests.get(f"{running.url}/dashboard", timeout=5)
                    .json()["recent_requests"] if row["path"] == "/v1/chat/completions"]

        def release_after_two_holds() -> None:
            wait_until(lambda: statuses().count(503) >= 2, timeout=20)
            controller.release_wake.set()

        releaser = threading.Thread(target=release_after_two_holds)
        releaser.start()
        sdk = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", timeout=20)  # default retries
        try:
            reply = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        finally:
            controller.release_wake.set()
            releaser.join(10)
        assert reply.status_code == 200 and reply.parse().choices[0].message.content
        assert statuses() == [200, 503, 503]  # newest first: two holds, then the answer
    assert controller.wake_calls == 1


def test_wake_failure_mid_stream_raises_in_the_sdk(paths: Paths) -> None:
    controller = FakeController(None, hold_wake=True, wake_error=RpmError("no capacity for RTX 4090"))
    with running_proxy(make_config(model=MODEL), controller, paths, keepalive_interval_seconds=0.05) as running:
        stream = client(running.url).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        controller.release_wake.set()
        with pytest.raises(openai.APIError, match="no capacity for RTX 4090"):
            list(stream)


def test_closing_an_sdk_stream_stops_generation_on_the_pod(proxy: ProxyThread, pod: EmulatedPod) -> None:
    stream = client(proxy.url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2000,
                                                       stream=True)
    iterator = iter(stream)
    next(iterator)
    next(iterator)
    assert pod.running_requests() == 1
    stream.close()
    assert wait_until(lambda: pod.running_requests() == 0, timeout=5)
    # Generation really stopped: the pod's token counter no longer moves.
    before = pod.generated_tokens()
    time.sleep(0.1)
    assert pod.generated_tokens() == before
