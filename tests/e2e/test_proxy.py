"""The proxy over real HTTP: the real `run_proxy` on a thread (or a subprocess where signals matter) in
front of the scriptable FakeUpstream, with a FakeController standing in for the lifecycle.

Nothing here asserts timings. Where order matters (events arrive one by one, keep-alives before the pod
answers) the upstream or the wake is held until the test releases it, and a read that would only
complete if the proxy buffered fails by its read timeout instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.errors import ConfigError, LimitRefused, RpmError
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.proxy.app import build_app
from runpod_manager.proxy.controller import PodView
from runpod_manager.proxy.server import run_proxy
from runpod_manager.proxy.state import STATE
from tests.support.proxy_fakes import (
    MODEL,
    TOKENS,
    UPSTREAM_KEY,
    FakeController,
    FakeUpstream,
    free_port,
    make_config,
    running_proxy,
    start_proxy_subprocess,
    wait_until,
)

pytestmark = pytest.mark.e2e

CLIENT_KEY = "client-key-7d2e"
READ_TIMEOUT = 5  # seconds a single read may block before the test fails (never an assertion on speed)


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def request_lines(paths: Paths) -> list[dict[str, Any]]:
    """The request log's lines (the proxy writes what is left when it stops)."""
    return [json.loads(line) for line in paths.request_log.read_text(encoding="utf-8").splitlines()]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def error_of(response: requests.Response) -> dict[str, Any]:
    """The OpenAI-shaped error of a response; fails when the shape is wrong."""
    document = response.json()
    assert set(document) == {"error"}, document
    assert set(document["error"]) == {"message", "type", "param", "code"}, document
    return dict(document["error"])


def sse_chunks(response: requests.Response) -> Iterator[bytes]:
    """The HTTP chunks of a streamed response, as they arrive."""
    yield from response.iter_content(chunk_size=None)


def stream_then_hang_up(base_url: str, path: str, body: dict[str, Any]) -> None:
    """Start a streaming request on a raw socket, wait for the first event, then close the connection."""
    host, port = base_url.split("//", 1)[1].rsplit(":", 1)
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=READ_TIMEOUT) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        received = b""
        while b"data:" not in received:
            chunk = connection.recv(65536)
            assert chunk, "the proxy closed the stream before the first event"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")


class CacheProbe:
    """Repeats a request until it is a cache hit (stores are written behind the response), counting misses."""

    def __init__(self) -> None:
        self.misses = 0

    def hit(self, url: str, body: dict[str, Any]) -> bool:
        state = requests.post(url, json=body, timeout=READ_TIMEOUT).headers["X-RPM-Cache"]
        self.misses += state == "miss"
        return state == "hit"


def events_of(chunks: list[bytes]) -> list[bytes]:
    return [part + b"\n\n" for part in b"".join(chunks).split(b"\n\n") if part]


# ---------------------------------------------------------------------------------------- forwarding


def test_forwarding_keeps_method_path_query_and_body_and_swaps_the_key(upstream: FakeUpstream,
                                                                       paths: Paths) -> None:
    body = b'{"weird":   "spacing",\n "kept": [1,2]}'
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        response = requests.put(f"{proxy.url}/v1/echo?a=1&b=%20x", data=body, timeout=READ_TIMEOUT, headers={
            "Content-Type": "application/json", "Authorization": "Bearer whatever-the-client-sent",
            "X-Custom": "kept", "X-RPM-Cache": "force", "Connection": "keep-alive, X-Hop", "X-Hop": "dropped"})
        assert response.status_code == 200
        seen = response.json()
        assert seen["method"] == "PUT"
        assert seen["path_qs"] == "/v1/echo?a=1&b=%20x"
        assert seen["body"] == body.decode()
        headers = {name.lower(): value for name, value in seen["headers"].items()}
        assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert headers["x-custom"] == "kept"
        assert "x-rpm-cache" not in headers and "x-hop" not in headers
        assert headers["content-length"] == str(len(body))
        assert response.headers["X-RPM-Cache"] == "bypass"

        models = requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT)
        assert models.json()["data"][0]["id"] == MODEL


def test_no_upstream_key_means_no_authorization_upstream(upstream: FakeUpstream, paths: Paths) -> None:
    upstream.expected_key = None
    try:
        target = UpstreamTarget("pod-open", upstream.url, None)
        with running_proxy(make_config(), FakeController(target), paths) as proxy:
            seen = requests.get(f"{proxy.url}/v1/echo", headers={"Authorization": "Bearer c"},
                                timeout=READ_TIMEOUT).json()
        assert "authorization" not in {name.lower() for name in seen["headers"]}
    finally:
        upstream.expected_key = UPSTREAM_KEY


def test_sse_events_arrive_one_by_one(upstream: FakeUpstream, paths: Paths) -> None:
    upstream.hold_streams = True
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True), stream=True,
                                 timeout=READ_TIMEOUT, headers={"Accept": "application/json"})
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in response.headers
        chunks = sse_chunks(response)
        received = [next(chunks)]  # the upstream holds everything after its first event
        assert upstream.events_sent <= 1
        while not received[-1].startswith(b"data: [DONE]"):
            upstream.release()
            received.append(next(chunks))  # only arrives if the proxy passed it on by itself
        # One HTTP chunk per event: nothing coalesced, nothing split.
        assert all(chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1 for chunk in received)
        assert len(received) == len(TOKENS) + 1
        text = "".join(json.loads(chunk[6:])["choices"][0]["delta"]["content"] for chunk in received[:-1])
        assert text == "".join(TOKENS)


def test_client_disconnect_stops_the_upstream_at_once(upstream: FakeUpstream, paths: Paths) -> None:
    upstream.hold_streams = True
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        stream_then_hang_up(proxy.url, "/v1/chat/completions", chat(stream=True))
        # The upstream is still held (nothing released): only a closed upstream connection ends it.
        assert upstream.disconnected.wait(READ_TIMEOUT)
        assert wait_until(lambda: upstream.running == 0)
        # The proxy is unaffected.
        assert requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT).status_code == 200


# -------------------------------------------------------------------------------------------- retries


def test_retries_502_before_the_first_byte(upstream: FakeUpstream, paths: Paths) -> None:
    upstream.fail_next(2, 502)
    controller = FakeController(upstream.target())
    with running_proxy(make_config(max_retries=3), controller, paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert response.status_code == 200
        assert len(upstream.requests) == 3
        upstream.fail_next(1, 524, body=b"<html>A timeout occurred</html>")
        upstream.fail_next(1, 503)
        assert requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True),
                             timeout=READ_TIMEOUT).status_code == 200
        assert len(upstream.requests) == 6
    assert controller.unreachable == []


def test_4xx_is_never_retried(upstream: FakeUpstream, paths: Paths) -> None:
    upstream.fail_next(1, 400)
    with running_proxy(make_config(max_retries=3), FakeController(upstream.target()), paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
    assert response.status_code == 400
    assert error_of(response)["message"] == "scripted 400"
    assert len(upstream.requests) == 1


def test_exhausted_503_passes_status_and_retry_after_through(upstream: FakeUpstream, paths: Paths) -> None:
    upstream.fail_next(3, 503, headers={"Retry-After": "7"})
    with running_proxy(make_config(max_retries=2), FakeController(upstream.target()), paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    error_of(response)


def test_exhausted_502_marks_the_pod_unreachable_and_the_next_request_wakes(upstream: FakeUpstream,
                                                                             paths: Paths) -> None:
    upstream.fail_next(3, 502)
    controller = FakeController(upstream.target())
    with running_proxy(make_config(max_retries=2), controller, paths) as proxy:
        failed = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert failed.status_code == 502
        assert "not listening yet" in error_of(failed)["message"]
        assert controller.unreachable == ["pod-fake"]
        served = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert served.status_code == 200
        assert controller.wake_calls == 1
        assert "X-RPM-Cold-Start" in served.headers


def test_connection_refused_is_a_502_in_openai_shape(paths: Paths) -> None:
    dead = UpstreamTarget("pod-dead", f"http://127.0.0.1:{free_port()}", "k")
    controller = FakeController(dead, wake_error=RpmError("still down"))
    with running_proxy(make_config(max_retries=1), controller, paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/completions", json={"model": MODEL, "prompt": "x"},
                                 timeout=READ_TIMEOUT)
        assert response.status_code == 502
        error = error_of(response)
        assert error["code"] == "upstream_unreachable"
        assert "2 attempt" in error["message"]
        assert controller.unreachable == ["pod-dead"]


def test_a_pod_stopped_under_a_request_is_woken_and_the_request_served(upstream: FakeUpstream,
                                                                      paths: Paths) -> None:
    """Idle stop (or a limit) ends the pod between the proxy's choice of target and the upstream's answer:
    the request has sent nothing to the client yet, so it waits for a wake instead of failing with 502."""
    stopped = PodView(pod_id="pod-fake", status="EXITED", ready=False, lease_open=False)
    dead = UpstreamTarget("pod-fake", f"http://127.0.0.1:{free_port()}", "k")
    for stream in (False, True):
        upstream.fail_next(3, 502)  # what RunPod's proxy answers for a stopped pod
        controller = FakeController(upstream.target(), wake_target=upstream.target(), view=stopped)
        with running_proxy(make_config(max_retries=2), controller, paths) as proxy:
            response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=stream),
                                     timeout=READ_TIMEOUT)
            assert response.status_code == 200, response.text
            assert controller.unreachable == ["pod-fake"] and controller.wake_calls == 1
            if stream:
                assert response.text.rstrip().endswith("data: [DONE]")
            else:
                assert "X-RPM-Cold-Start" in response.headers
    # Connection refused (the pod's port gone) is the same case.
    controller = FakeController(dead, wake_target=upstream.target(), view=stopped)
    with running_proxy(make_config(max_retries=1), controller, paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/completions", json={"model": MODEL, "prompt": "x"},
                                 timeout=READ_TIMEOUT)
        assert response.status_code == 200 and controller.wake_calls == 1


def test_a_running_pod_whose_model_fails_is_not_woken_again(upstream: FakeUpstream, paths: Paths) -> None:
    """The lease is open and RunPod says RUNNING: a 502 is the model's failure and reaches the client."""
    upstream.fail_next(3, 502)
    controller = FakeController(upstream.target())  # view: RUNNING, lease open
    with running_proxy(make_config(max_retries=2), controller, paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
    assert response.status_code == 502 and controller.wake_calls == 0


def test_a_second_failure_after_the_wake_is_answered_not_looped(upstream: FakeUpstream, paths: Paths) -> None:
    stopped = PodView(pod_id="pod-fake", status="EXITED", ready=False, lease_open=False)
    upstream.fail_next(6, 502)
    controller = FakeController(upstream.target(), view=stopped)
    with running_proxy(make_config(max_retries=2), controller, paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
    assert response.status_code == 502 and controller.wake_calls == 1
    assert len(upstream.requests) == 6


def test_vllm_bare_401_reaches_the_client_in_openai_shape(upstream: FakeUpstream, paths: Paths) -> None:
    wrong = UpstreamTarget("pod-fake", upstream.url, "not-the-pods-key")
    with running_proxy(make_config(), FakeController(wrong), paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
    assert response.status_code == 401
    error = error_of(response)
    assert "rejected the upstream key" in error["message"]
    assert "not-the-pods-key" not in response.text


# ------------------------------------------------------------------------------------------------ wake


def _queue_depth(url: str) -> int:
    return int(requests.get(f"{url}/health", timeout=READ_TIMEOUT).json()["proxy"]["queue_depth"])


def test_twenty_concurrent_requests_share_one_wake(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    with running_proxy(make_config(), controller, paths) as proxy:
        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(requests.post, f"{proxy.url}/v1/chat/completions", json=chat(), timeout=30)
                       for _ in range(20)]
            assert wait_until(lambda: _queue_depth(proxy.url) == 20)
            assert requests.get(f"{proxy.url}/ready", timeout=READ_TIMEOUT).status_code == 503
            controller.release_wake.set()
            responses = [future.result() for future in futures]
        assert [response.status_code for response in responses] == [200] * 20
        assert all(float(response.headers["X-RPM-Cold-Start"]) >= 0 for response in responses)
        assert controller.wake_calls == 1
        assert requests.get(f"{proxy.url}/ready", timeout=READ_TIMEOUT).status_code == 200
        metrics = requests.get(f"{proxy.url}/metrics", timeout=READ_TIMEOUT).text
        assert 'rpm_proxy_wakes_total{outcome="ok",pod="default"} 1.0' in metrics


def test_full_queue_answers_503_with_retry_after(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    with running_proxy(make_config(max_queue_size=2), controller, paths,
                       queue_full_retry_after_seconds=3) as proxy, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(requests.post, f"{proxy.url}/v1/chat/completions", json=chat(), timeout=30)
                   for _ in range(2)]
        assert wait_until(lambda: _queue_depth(proxy.url) == 2)
        rejected = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert rejected.status_code == 503
        assert rejected.headers["Retry-After"] == "3"
        assert rejected.headers["x-should-retry"] == "true"
        assert error_of(rejected)["code"] == "queue_full"
        controller.release_wake.set()
        assert [future.result().status_code for future in waiting] == [200, 200]


def test_queue_timeout_answers_504(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    try:
        with running_proxy(make_config(queue_timeout_seconds=0.3), controller, paths) as proxy:
            response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
            assert response.status_code == 504
            assert error_of(response)["code"] == "queue_timeout"
            assert "[proxy] queue_timeout_seconds" in error_of(response)["message"]
    finally:
        controller.release_wake.set()


def test_a_long_wake_answers_a_plain_request_503_that_its_retry_turns_into_an_answer(upstream: FakeUpstream,
                                                                                     paths: Paths) -> None:
    """Node's fetch (openai-node, the ai SDK, Continue, Cline) drops a request whose headers take 300 s. A
    plain request is answered 503 + Retry-After before that ([proxy] wake_hold_seconds); the wake goes on,
    and the retry joins it."""
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    config = make_config(wake_hold_seconds=0.3)
    with running_proxy(config, controller, paths, wake_retry_after_seconds=0.05,
                       keepalive_interval_seconds=0.05) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        for _ in range(2):
            waiting = requests.post(url, json=chat(), timeout=READ_TIMEOUT)
            assert waiting.status_code == 503, waiting.text
            assert waiting.headers["x-should-retry"] == "true"
            assert waiting.headers["retry-after-ms"] == "50" and waiting.headers["Retry-After"] == "1"
            error = error_of(waiting)
            assert error["code"] == "pod_waking" and "wake_hold_seconds" in error["message"]
            health = requests.get(f"{proxy.url}/health", timeout=READ_TIMEOUT).json()
            assert health["proxy"]["waking"] is True  # the wake goes on without the request
        # A stream is held as long as the wake takes: its keep-alives already committed the headers.
        stream = requests.post(url, json=chat(stream=True), stream=True, timeout=READ_TIMEOUT)
        chunks = sse_chunks(stream)
        assert next(chunks).startswith(b": waking pod")
        controller.release_wake.set()
        assert b"data: [DONE]" in b"".join(chunks)
        served = requests.post(url, json=chat(), timeout=READ_TIMEOUT)
        assert served.status_code == 200
    assert controller.wake_calls == 1  # every retry joined the one wake


def test_the_retry_of_a_waking_503_is_told_the_wakes_whole_length_in_the_header_and_the_log(
        upstream: FakeUpstream, paths: Paths) -> None:
    """X-RPM-Cold-Start is the wake's length since it began, not only the retry's own wait: a caller held
    wake_hold_seconds twice, then served, waited all of it. The request log keeps both (wake_s, cold_start_s)."""
    hold_seconds = 0.5
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    try:
        with running_proxy(make_config(wake_hold_seconds=hold_seconds), controller, paths,
                           wake_retry_after_seconds=0.05) as proxy:
            url = f"{proxy.url}/v1/chat/completions"
            for _ in range(2):
                assert requests.post(url, json=chat(), timeout=READ_TIMEOUT).status_code == 503
            with ThreadPoolExecutor(max_workers=1) as pool:
                retry = pool.submit(requests.post, url, json=chat(), timeout=READ_TIMEOUT)
                assert wait_until(lambda: 'rpm_proxy_queue_depth{pod="default"} 1.0' in requests.get(
                    f"{proxy.url}/metrics", timeout=READ_TIMEOUT).text)
                controller.release_wake.set()
                served = retry.result()
    finally:
        controller.release_wake.set()
    assert served.status_code == 200, served.text
    told = float(served.headers["X-RPM-Cold-Start"])
    line = request_lines(paths)[-1]
    assert line["status"] == 200 and line["wake_s"] == pytest.approx(told, abs=0.001)
    # The wake ran through both holds before the retry waited its own part (a margin for the moments
    # between the holds and the wake's own start, never a bound on speed).
    assert told >= line["cold_start_s"] + hold_seconds


def test_a_queue_timeout_shorter_than_the_hold_still_ends_the_wait(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    try:
        config = make_config(wake_hold_seconds=30, queue_timeout_seconds=0.3)
        with running_proxy(config, controller, paths) as proxy:
            response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert response.status_code == 504 and error_of(response)["code"] == "queue_timeout"
    finally:
        controller.release_wake.set()


def test_limit_refused_wake_is_a_503_with_the_reason(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_error=LimitRefused("daily spend cap of $20.00 reached"))
    with running_proxy(make_config(), controller, paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert response.status_code == 503
        error = error_of(response)
        assert error["code"] == "limit_refused"
        assert "daily spend cap of $20.00 reached" in error["message"]
        assert response.headers["x-should-retry"] == "false"
        health = requests.get(f"{proxy.url}/health", timeout=READ_TIMEOUT).json()
        assert "daily spend cap" in health["proxy"]["last_wake_error"]


def test_wake_off_and_no_pod_says_run_rpm_start(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target())
    with running_proxy(make_config(wake_on_request=False), controller, paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert response.status_code == 503
        assert "rpm start" in error_of(response)["message"]
        assert controller.wake_calls == 0
        # Started by hand (`rpm start`): the next request finds it without a wake.
        controller.target = upstream.target()
        assert requests.post(f"{proxy.url}/v1/chat/completions", json=chat(),
                             timeout=READ_TIMEOUT).status_code == 200


def test_streaming_wake_sends_keepalives_then_data(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    with running_proxy(make_config(), controller, paths, keepalive_interval_seconds=0.05) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True), stream=True,
                                 timeout=READ_TIMEOUT)
        assert response.status_code == 200  # sent before the pod exists
        assert response.headers["Content-Type"].startswith("text/event-stream")
        chunks = sse_chunks(response)
        first = next(chunks)
        assert first.startswith(b": waking pod")
        assert controller.wake_calls == 1 and upstream.requests == []
        controller.release_wake.set()
        rest = list(chunks)
    events = events_of(rest)
    data = [event for event in events if event.startswith(b"data:")]
    assert data[-1] == b"data: [DONE]\n\n"
    assert len(data) == len(TOKENS) + 1
    assert any(event.startswith(b": pod ready after") for event in events)


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_says_what_a_stream_that_waited_carries(upstream: FakeUpstream, paths: Paths) -> None:
    """A stream's headers go out with its first keep-alive, before the wait is known: it can never carry
    X-RPM-Cold-Start. The README must say what it carries instead, in the words the stream uses."""
    lines = README.read_text(encoding="utf-8").splitlines()
    spans = [span for line in lines for span in re.findall(r"`([^`]*)`", line)]
    documented = [span for span in spans if span.startswith(": ")]  # the SSE comments shown; N is a number
    assert len(documented) >= 2, documented
    assert "streams never carry `x-rpm-cold-start`" in " ".join(" ".join(lines).split()).lower()
    shapes = {pattern: re.escape(pattern).replace("N", r"[0-9]+(?:\.[0-9]+)?") for pattern in documented}

    def comments_of(response: requests.Response, chunks: list[bytes]) -> list[str]:
        assert response.status_code == 200
        assert "X-RPM-Cold-Start" not in response.headers
        assert events_of(chunks)[-1] == b"data: [DONE]\n\n"
        return [event.decode().strip() for event in events_of(chunks) if event.startswith(b":")]

    # A wake longer than the first keep-alive: every documented comment, in the stream's own words.
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    with running_proxy(make_config(), controller, paths, keepalive_interval_seconds=0.05) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True), stream=True,
                                 timeout=READ_TIMEOUT)
        chunks = sse_chunks(response)
        first = next(chunks)
        controller.release_wake.set()
        comments = comments_of(response, [first, *chunks])
    for pattern, shape in shapes.items():
        assert any(re.fullmatch(shape, comment) for comment in comments), (pattern, comments)
    # A wake over before the first keep-alive: no header either, the ready comment all the same.
    controller = FakeController(None, wake_target=upstream.target())
    with running_proxy(make_config(), controller, paths, keepalive_interval_seconds=5) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True), stream=True,
                                 timeout=READ_TIMEOUT)
        comments = comments_of(response, list(sse_chunks(response)))
    assert controller.wake_calls == 1
    assert [comment for comment in comments if not comment.startswith(": waking pod")]
    assert all(any(re.fullmatch(shape, comment) for shape in shapes.values()) for comment in comments), comments


def test_streaming_wake_failure_ends_with_error_event_and_done(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, hold_wake=True, wake_error=RpmError("no GPU available in EU-RO-1"))
    with running_proxy(make_config(), controller, paths, keepalive_interval_seconds=0.05) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True), stream=True,
                                 timeout=READ_TIMEOUT)
        chunks = sse_chunks(response)
        assert next(chunks).startswith(b": waking pod")
        controller.release_wake.set()
        events = [event for event in events_of(list(chunks)) if event.startswith(b"data:")]
    assert response.status_code == 200
    assert events[-1] == b"data: [DONE]\n\n"
    error = json.loads(events[-2][len(b"data: "):])["error"]
    assert "no GPU available in EU-RO-1" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_streaming_wake_then_upstream_error_becomes_error_event(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    with running_proxy(make_config(), controller, paths, keepalive_interval_seconds=0.05) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True, max_tokens=0),
                                 stream=True, timeout=READ_TIMEOUT)
        chunks = sse_chunks(response)
        next(chunks)
        controller.release_wake.set()
        events = [event for event in events_of(list(chunks)) if event.startswith(b"data:")]
    assert events[-1] == b"data: [DONE]\n\n"
    assert "max_tokens must be at least 1" in json.loads(events[-2][len(b"data: "):])["error"]["message"]


def test_quick_wake_for_a_stream_answers_plain_http_errors(paths: Paths) -> None:
    controller = FakeController(None, wake_error=LimitRefused("daily cutoff 23:00 passed"))
    with running_proxy(make_config(), controller, paths, keepalive_interval_seconds=5) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(stream=True),
                                 timeout=READ_TIMEOUT)
    assert response.status_code == 503
    assert "daily cutoff" in error_of(response)["message"]


# ------------------------------------------------------------------------- answered without the pod


def _must_not_wake(target: UpstreamTarget | None = None, **view: Any) -> FakeController:
    """A controller whose wake fails the test's expectations loudly (and counts)."""
    pod_view = PodView(**view) if view else None
    return FakeController(target, wake_error=RpmError("this request must not wake the pod"), view=pod_view)


def test_model_list_with_a_stale_target_is_answered_locally_and_never_wakes(upstream: FakeUpstream,
                                                                            paths: Paths) -> None:
    """The pod was stopped outside rpm between two reconciles: the proxy still holds its target. Listing
    models must neither wake it nor fail: the proxy answers with the pod's last list."""
    stopped = {"pod_id": "pod-fake", "status": "EXITED", "ready": False, "lease_open": False}
    controller = _must_not_wake(upstream.target(), **stopped)
    with running_proxy(make_config(reconcile_interval_seconds=3600), controller, paths) as proxy:
        url = f"{proxy.url}/v1/models"
        awake = requests.get(url, timeout=READ_TIMEOUT)
        assert awake.status_code == 200 and "X-RPM-Models" not in awake.headers
        upstream.fail_next(10, 502)  # what RunPod's proxy answers for a stopped pod
        for _ in range(2):
            stale = requests.get(url, timeout=READ_TIMEOUT)
            assert stale.status_code == 200, stale.text
            assert stale.headers["X-RPM-Models"] == "remembered"
            assert stale.json() == awake.json()
        assert len(upstream.requests) <= 3  # one attempt each, no retries: the local answer is as good
    assert controller.wake_calls == 0

    # Connection refused (nothing listens any more), and a proxy that never saw the pod's own list.
    dead = UpstreamTarget("pod-dead", f"http://127.0.0.1:{free_port()}", "k")
    controller = _must_not_wake(dead, **stopped)
    with running_proxy(make_config(reconcile_interval_seconds=3600), controller, paths) as proxy:
        listed = requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT)
        assert listed.status_code == 200 and listed.headers["X-RPM-Models"] == "config"
        assert [entry["id"] for entry in listed.json()["data"]] == [MODEL]
        one = requests.get(f"{proxy.url}/v1/models/{MODEL}", timeout=READ_TIMEOUT)
        assert one.status_code == 200 and one.json()["id"] == MODEL
        missing = requests.get(f"{proxy.url}/v1/models/gpt-4o", timeout=READ_TIMEOUT)
        assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"
    assert controller.wake_calls == 0


def test_unknown_model_is_a_plain_404_naming_the_served_model_and_never_wakes(upstream: FakeUpstream,
                                                                             paths: Paths) -> None:
    controller = _must_not_wake(None)
    config = make_config(reconcile_interval_seconds=0.05)
    with running_proxy(config, controller, paths, keepalive_interval_seconds=0.01) as proxy:
        for path, body in (("/v1/chat/completions", chat(stream=True, model="gpt-4o")),
                           ("/v1/chat/completions", chat(model="gpt-4o")),
                           ("/v1/completions", {"model": "gpt-4o", "prompt": "x", "stream": True})):
            response = requests.post(f"{proxy.url}{path}", json=body, timeout=READ_TIMEOUT)
            assert response.status_code == 404, response.text  # plain HTTP, even for stream=true
            assert response.headers["Content-Type"].startswith("application/json")
            error = error_of(response)
            assert error["code"] == "model_not_found" and error["param"] == "model"
            assert error["type"] == "invalid_request_error"
            assert "gpt-4o" in error["message"] and MODEL in error["message"]
        wrong_type = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(model=42), timeout=READ_TIMEOUT)
        assert wrong_type.status_code == 400 and error_of(wrong_type)["param"] == "model"
        # Refused requests are not activity: an editor polling with a wrong name keeps no GPU up.
        seen = len(controller.reconcile_calls)
        assert wait_until(lambda: len(controller.reconcile_calls) >= seen + 2)
        assert controller.last_request_times()[-1] is None
    assert controller.wake_calls == 0 and upstream.requests == []


def test_served_model_name_in_extra_args_is_the_name_the_pod_answers_to(upstream: FakeUpstream,
                                                                         paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target())
    config = make_config(model="org/weights-on-disk", extra_args=f"--served-model-name {MODEL} alias")
    with running_proxy(config, controller, paths) as proxy:
        listed = requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT).json()
        assert [entry["id"] for entry in listed["data"]] == [MODEL, "alias"]
        refused = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(model="org/weights-on-disk"),
                                timeout=READ_TIMEOUT)
        assert refused.status_code == 404 and controller.wake_calls == 0  # vLLM answers only to served names
        served = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert served.status_code == 200 and controller.wake_calls == 1


def test_names_the_pod_lists_are_served_and_custom_servers_decide_for_themselves(upstream: FakeUpstream,
                                                                                 paths: Paths) -> None:
    config = make_config(model="name-in-the-config")  # the pod lists MODEL (a LoRA adapter, say)
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        before = requests.post(url, json=chat(stream=True), timeout=READ_TIMEOUT)
        assert before.status_code == 404 and error_of(before)["code"] == "model_not_found"
        assert upstream.requests == []  # answered here, the pod running or not
        assert requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT).status_code == 200
        assert requests.post(url, json=chat(stream=True), timeout=READ_TIMEOUT).status_code == 200
    # Full custom [pod] args that name no model: whatever server runs there decides.
    config = replace(make_config(), pod=replace(make_config().pod, args="python3 my_server.py --port {port}"))
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        custom = requests.post(f"{proxy.url}/v1/chat/completions", json=chat(model="gpt-4o"), timeout=READ_TIMEOUT)
    assert custom.status_code == 404 and "does not exist" in error_of(custom)["message"]


def test_wrong_methods_on_generation_routes_are_answered_locally(upstream: FakeUpstream, paths: Paths) -> None:
    controller = _must_not_wake(None)
    with running_proxy(make_config(), controller, paths) as proxy:
        for method in ("GET", "PUT", "DELETE"):
            response = requests.request(method, f"{proxy.url}/v1/chat/completions", timeout=READ_TIMEOUT)
            assert response.status_code == 405, (method, response.text)
            assert response.headers["Allow"] == "POST"
            assert error_of(response)["code"] == "method_not_allowed"
        assert requests.delete(f"{proxy.url}/health", timeout=READ_TIMEOUT).headers["Allow"] == "GET,HEAD"
    assert controller.wake_calls == 0 and upstream.requests == []


def test_preflights_are_answered_locally_and_pages_of_other_sites_are_refused(upstream: FakeUpstream,
                                                                             paths: Paths) -> None:
    """A CORS preflight never reaches (or wakes) the pod, and by default no web page may drive the proxy:
    not with CORS, nor with the `no-cors` requests (forms, images) a page can send without asking."""
    controller = _must_not_wake(None)
    page = {"Origin": "https://some-site.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}
    with running_proxy(make_config(), controller, paths) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        preflight = requests.options(url, headers=page, timeout=READ_TIMEOUT)
        assert preflight.status_code == 403
        assert "Access-Control-Allow-Origin" not in preflight.headers
        error = error_of(preflight)
        assert error["code"] == "origin_not_allowed" and "cors_allow_origins" in error["message"]
        plain = requests.options(url, timeout=READ_TIMEOUT)  # not a preflight (no Origin): say what is allowed
        assert plain.status_code == 204 and "POST" in plain.headers["Allow"]
        from_page = requests.post(url, data="{}", timeout=READ_TIMEOUT,
                                  headers={"Origin": "https://some-site.example", "Content-Type": "text/plain"})
        assert from_page.status_code == 403
        no_cors = requests.get(f"{proxy.url}/v1/anything", headers={"Sec-Fetch-Site": "cross-site"},
                               timeout=READ_TIMEOUT)  # an <img src> or a link: no Origin header at all
        assert no_cors.status_code == 403
        typed = requests.get(f"{proxy.url}/v1/models", headers={"Sec-Fetch-Site": "none"}, timeout=READ_TIMEOUT)
        assert typed.status_code == 200  # the user typed the address: not another site's doing
        assert requests.get(f"{proxy.url}/dashboard", headers={"Sec-Fetch-Site": "cross-site"},
                            timeout=READ_TIMEOUT).status_code == 200  # costs nothing; links may point at it
    assert controller.wake_calls == 0 and upstream.requests == []


def test_allowed_origins_get_cors_answers(upstream: FakeUpstream, paths: Paths) -> None:
    origin = "http://localhost:3000"
    config = make_config(cors_allow_origins=(origin,))
    controller = FakeController(upstream.target())
    with running_proxy(config, controller, paths) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        preflight = requests.options(url, timeout=READ_TIMEOUT, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
            "Access-Control-Request-Private-Network": "true"})
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type, x-stainless-os"
        assert preflight.headers["Access-Control-Allow-Private-Network"] == "true"
        assert "Origin" in preflight.headers["Vary"]
        for stream in (False, True):
            response = requests.post(url, json=chat(stream=stream), headers={"Origin": origin}, timeout=READ_TIMEOUT)
            assert response.status_code == 200
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert "retry-after-ms" in response.headers["Access-Control-Expose-Headers"]
        other = requests.post(url, json=chat(), headers={"Origin": "http://localhost:3001"}, timeout=READ_TIMEOUT)
        assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers
    assert controller.wake_calls == 0
    assert len(upstream.requests) == 2  # the preflight never reached the pod


# ----------------------------------------------------------------------------------------------- cache


def test_cache_miss_then_hit_and_bypass(upstream: FakeUpstream, paths: Paths) -> None:
    with running_proxy(make_config(cache=True), FakeController(upstream.target()), paths) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        first = requests.post(url, json=chat(temperature=0), timeout=READ_TIMEOUT)
        assert first.headers["X-RPM-Cache"] == "miss"
        probe = CacheProbe()
        assert wait_until(lambda: probe.hit(url, chat(temperature=0, user="someone-else")))  # user is not keyed
        hit = requests.post(url, json=chat(temperature=0), timeout=READ_TIMEOUT)
        assert hit.headers["X-RPM-Cache"] == "hit"
        assert hit.content == first.content
        assert hit.headers["Content-Type"] == first.headers["Content-Type"]
        assert len(upstream.requests) == 1 + probe.misses
        assert requests.post(url, json=chat(temperature=0.7), timeout=READ_TIMEOUT).headers["X-RPM-Cache"] \
            == "bypass"
        assert requests.post(url, json=chat(temperature=0), headers={"Cache-Control": "no-cache"},
                             timeout=READ_TIMEOUT).headers["X-RPM-Cache"] == "bypass"
        debug = requests.get(f"{proxy.url}/debug/cache", timeout=READ_TIMEOUT)
        assert debug.status_code == 404  # profiling is off
        metrics = requests.get(f"{proxy.url}/metrics", timeout=READ_TIMEOUT).text
        assert "rpm_proxy_cache_hits_total 2.0" in metrics
        assert "rpm_proxy_cache_entries 1.0" in metrics


def test_streamed_answers_replay_as_the_same_events(upstream: FakeUpstream, paths: Paths) -> None:
    body = chat(stream=True, temperature=0, stream_options={"include_usage": True})
    with running_proxy(make_config(cache=True), FakeController(upstream.target()), paths) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        live = requests.post(url, json=body, stream=True, timeout=READ_TIMEOUT)
        live_chunks = list(sse_chunks(live))
        probe = CacheProbe()
        assert wait_until(lambda: probe.hit(url, body))
        replay = requests.post(url, json=body, stream=True, timeout=READ_TIMEOUT)
        assert replay.headers["Content-Type"].startswith("text/event-stream")
        assert list(sse_chunks(replay)) == live_chunks
        assert len(upstream.requests) == 1 + probe.misses


def test_cache_hit_does_not_wake_the_pod(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(upstream.target(), wake_error=RpmError("must not wake"))
    with running_proxy(make_config(cache=True), controller, paths) as proxy:
        url = f"{proxy.url}/v1/completions"
        body = {"model": MODEL, "prompt": "def f():", "temperature": 0}
        assert requests.post(url, json=body, timeout=READ_TIMEOUT).status_code == 200
        assert wait_until(lambda: CacheProbe().hit(url, body))
        controller.target = None  # the pod went to sleep (idle stop); the reconcile loop notices
        assert wait_until(lambda: requests.get(f"{proxy.url}/ready", timeout=READ_TIMEOUT).status_code == 503)
        hit = requests.post(url, json=body, timeout=READ_TIMEOUT)
        assert hit.status_code == 200 and hit.headers["X-RPM-Cache"] == "hit"
        assert controller.wake_calls == 0


def test_model_list_while_the_pod_sleeps_is_answered_without_waking_it(upstream: FakeUpstream,
                                                                       paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target())
    with running_proxy(make_config(), controller, paths) as proxy:
        url = f"{proxy.url}/v1/models"
        before = requests.get(url, timeout=READ_TIMEOUT)  # a fresh proxy, never seen the pod: the config's model
        assert before.status_code == 200 and before.headers["X-RPM-Models"] == "config"
        [entry] = before.json()["data"]
        assert entry["id"] == make_config().pod.model and entry["object"] == "model"
        assert controller.wake_calls == 0 and upstream.paths_seen() == []

        assert requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT).ok  # wakes
        awake = requests.get(url, timeout=READ_TIMEOUT)  # the pod answers while it is up
        assert "X-RPM-Models" not in awake.headers and upstream.paths_seen()[-1] == "/v1/models"

        controller.target = None  # idle stop; the reconcile loop notices
        assert wait_until(lambda: requests.get(f"{proxy.url}/ready", timeout=READ_TIMEOUT).status_code == 503)
        asleep = requests.get(url, timeout=READ_TIMEOUT)
        assert asleep.status_code == 200 and asleep.headers["X-RPM-Models"] == "remembered"
        assert asleep.json() == awake.json()  # the pod's own answer, max_model_len and all
        assert controller.wake_calls == 1


def test_a_request_waiting_for_a_wake_counts_as_activity(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    with running_proxy(make_config(reconcile_interval_seconds=0.05), controller, paths) as proxy, \
            ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(requests.post, f"{proxy.url}/v1/chat/completions", json=chat(), timeout=30)
        assert controller.wake_started.wait(10)
        arrived = dt.datetime.now(dt.UTC)
        seen = len(controller.reconcile_calls)
        assert wait_until(lambda: len(controller.reconcile_calls) >= seen + 4)
        # While the request waits, every reconcile reports activity "now", not the arrival time: a pod
        # whose boot outlasts idle_timeout_seconds is not stopped for idleness under the request.
        latest = controller.last_request_times()[-1]
        assert latest is not None and (latest - arrived).total_seconds() > 0.1
        controller.release_wake.set()
        assert waiting.result(timeout=30).status_code == 200


def test_errors_and_aborted_streams_are_never_cached(upstream: FakeUpstream, paths: Paths) -> None:
    with running_proxy(make_config(cache=True), FakeController(upstream.target()), paths) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        for _ in range(2):
            failed = requests.post(url, json=chat(temperature=0, max_tokens=0), timeout=READ_TIMEOUT)
            assert failed.status_code == 400 and failed.headers["X-RPM-Cache"] == "miss"
        upstream.hold_streams = True
        body = chat(temperature=0, stream=True)
        stream_then_hang_up(proxy.url, "/v1/chat/completions", body)
        assert upstream.disconnected.wait(READ_TIMEOUT)
        upstream.hold_streams = False
        again = requests.post(url, json=body, timeout=READ_TIMEOUT)
        assert again.headers["X-RPM-Cache"] == "miss"
        assert b"data: [DONE]" in again.content
    assert len(upstream.requests) == 4


def test_cache_survives_a_restart(upstream: FakeUpstream, paths: Paths, tmp_path: Path) -> None:
    config = make_config(cache=True, cache_dir=tmp_path / "responses")
    body = chat(temperature=0)
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        assert requests.post(f"{proxy.url}/v1/chat/completions", json=body,
                             timeout=READ_TIMEOUT).headers["X-RPM-Cache"] == "miss"
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        assert requests.post(f"{proxy.url}/v1/chat/completions", json=body,
                             timeout=READ_TIMEOUT).headers["X-RPM-Cache"] == "hit"
    assert len(upstream.requests) == 1


# ------------------------------------------------------------------------------------------ FIM rewrite


def test_suffix_is_rewritten_with_the_fim_template(upstream: FakeUpstream, paths: Paths) -> None:
    template = "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    body = {"model": MODEL, "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))", "max_tokens": 8}
    with running_proxy(make_config(fim_template=template), FakeController(upstream.target()), paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/completions", json=body, timeout=READ_TIMEOUT)
    assert response.status_code == 200
    sent = upstream.requests[-1].json()
    assert "suffix" not in sent
    assert sent["prompt"] == "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))<|fim_middle|>"


def test_suffix_without_template_is_a_400_naming_the_setting(upstream: FakeUpstream, paths: Paths) -> None:
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        response = requests.post(f"{proxy.url}/v1/completions",
                                 json={"model": MODEL, "prompt": "a", "suffix": "b"}, timeout=READ_TIMEOUT)
    assert response.status_code == 400
    error = error_of(response)
    assert "[proxy] fim_template" in error["message"] and error["param"] == "suffix"
    assert upstream.requests == []


# ------------------------------------------------------------------------------------------------ auth


def test_local_keys_guard_v1_metrics_and_dashboard_but_not_health(upstream: FakeUpstream, paths: Paths) -> None:
    config = make_config(api_keys=("other-key", CLIENT_KEY))
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        for path in ("/v1/models", "/metrics", "/dashboard"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": CLIENT_KEY}):
                response = requests.get(f"{proxy.url}{path}", headers=headers, timeout=READ_TIMEOUT)
                assert response.status_code == 401, (path, headers)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert error_of(response)["type"] == "authentication_error"
        good = {"Authorization": f"Bearer {CLIENT_KEY}"}
        for path in ("/v1/models", "/metrics", "/dashboard"):
            assert requests.get(f"{proxy.url}{path}", headers=good, timeout=READ_TIMEOUT).status_code == 200
        for path in ("/health", "/ready"):
            assert requests.get(f"{proxy.url}{path}", timeout=READ_TIMEOUT).status_code == 200
        seen = requests.get(f"{proxy.url}/v1/echo", headers=good, timeout=READ_TIMEOUT).json()
        assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_tls_with_a_self_signed_certificate(upstream: FakeUpstream, paths: Paths, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    config = make_config(use_https=True, ssl_cert=str(cert), ssl_key=str(key))
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        assert proxy.url.startswith("https://")
        response = requests.get(f"{proxy.url}/v1/models", verify=str(cert), timeout=READ_TIMEOUT)
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(proxy.url.replace("https://", "http://") + "/health", timeout=READ_TIMEOUT)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cryptography = pytest.importorskip("cryptography", reason="needs the cryptography package")
    del cryptography
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private_key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return cert_path, key_path


def test_refusals_before_binding(paths: Paths, tmp_path: Path) -> None:
    controller = FakeController(None)
    with pytest.raises(ConfigError, match=r"\[proxy\] api_keys"):
        run_proxy(make_config(host="0.0.0.0"), controller, paths)  # noqa: S104 - must be refused
    with pytest.raises(ConfigError, match=r"\[proxy\] ssl_cert"):
        run_proxy(make_config(use_https=True, ssl_cert=str(tmp_path / "missing.pem"),
                              ssl_key=str(tmp_path / "missing.key")), controller, paths)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"\[proxy\] host / port"):
            run_proxy(make_config(port=taken.getsockname()[1]), controller, paths)


# ----------------------------------------------------------------------------------------- bad input


def test_bad_input_gets_4xx_in_openai_shape_and_the_proxy_keeps_serving(upstream: FakeUpstream,
                                                                       paths: Paths) -> None:
    config = make_config(max_body_bytes=2048)
    with running_proxy(config, FakeController(upstream.target()), paths, body_read_timeout_seconds=0.3) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        cases = [
            (requests.post(url, data=b'{"model": ', headers={"Content-Type": "application/json"},
                           timeout=READ_TIMEOUT), 400, "invalid_json"),
            (requests.post(url, data=b"[1]", headers={"Content-Type": "application/json"},
                           timeout=READ_TIMEOUT), 400, "invalid_json"),
            (requests.post(url, data=b"[" * 2000, headers={"Content-Type": "application/json"},
                           timeout=READ_TIMEOUT), 400, "invalid_json"),
            (requests.post(url, data=b'{"model": "m"}', headers={"Content-Type": "text/plain"},
                           timeout=READ_TIMEOUT), 415, "unsupported_media_type"),
            (requests.post(url, timeout=READ_TIMEOUT), 400, "missing_body"),
            (requests.post(url, json={"model": MODEL, "messages": [], "pad": "x" * 4096},
                           timeout=READ_TIMEOUT), 413, "body_too_large"),
            (requests.get(f"{proxy.url}/nope", timeout=READ_TIMEOUT), 404, "not_found"),
            (requests.post(f"{proxy.url}/chat/completions", json=chat(), timeout=READ_TIMEOUT), 404,
             "not_found"),
            (requests.delete(f"{proxy.url}/health", timeout=READ_TIMEOUT), 405, "method_not_allowed"),
        ]
        for response, status, code in cases:
            assert response.status_code == status, (response.status_code, response.text)
            assert error_of(response)["code"] == code
        assert "did you mean /v1/chat/completions" in cases[7][0].text

        # A client that announces a body and never sends it gets a 408, not a stuck connection.
        port = int(proxy.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as slow:
            slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"model\":")
            answer = slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408")
        assert b'"request_timeout"' in answer

        assert upstream.requests == []
        assert requests.post(url, json=chat(), timeout=READ_TIMEOUT).status_code == 200


# ----------------------------------------------------------------------------------- observability


def test_health_ready_metrics_dashboard_and_no_secrets(upstream: FakeUpstream, paths: Paths,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runpod_manager.proxy")
    controller = FakeController(upstream.target())
    config = make_config(api_keys=(CLIENT_KEY,), enable_profiling=True, cache=True)
    good = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with running_proxy(config, controller, paths) as proxy:
        requests.post(f"{proxy.url}/v1/chat/completions", json=chat(temperature=0), headers=good,
                      timeout=READ_TIMEOUT)
        requests.post(f"{proxy.url}/v1/chat/completions?api_key=leak", json=chat(stream=True), headers=good,
                      timeout=READ_TIMEOUT)
        requests.get(f"{proxy.url}/v1/models", headers={"Authorization": "Bearer wrong-key-abc"},
                     timeout=READ_TIMEOUT)
        health = requests.get(f"{proxy.url}/health", timeout=READ_TIMEOUT)
        assert health.status_code == 200
        pod = health.json()["pod"]
        assert {key: pod[key] for key in ("pod_id", "status", "ready", "lease_open")} == {
            "pod_id": "pod-fake", "status": "RUNNING", "ready": True, "lease_open": True}
        assert pod["spend_today_usd"] == 1.25 and pod["max_daily_spend_usd"] == 20.0  # the fake view's
        # Who this proxy is, so `rpm start` can tell its own proxy from a foreign program on the port.
        assert health.json()["instance"] == {"pid": os.getpid(), "state_dir": str(paths.state_dir),
                                             "config_name": config.pod.name}
        assert requests.get(f"{proxy.url}/ready", timeout=READ_TIMEOUT).json()["ready"] is True

        metrics = requests.get(f"{proxy.url}/metrics", headers=good, timeout=READ_TIMEOUT)
        assert metrics.headers["Content-Type"].startswith("text/plain")
        for family in ("rpm_proxy_requests_total", "rpm_proxy_request_duration_seconds_bucket",
                       "rpm_proxy_overhead_seconds_bucket", "rpm_proxy_upstream_ttfb_seconds_bucket",
                       "rpm_proxy_stream_events_total", "rpm_proxy_cache_hits_total",
                       "rpm_proxy_cache_misses_total", "rpm_proxy_cache_bytes", "rpm_proxy_queue_depth",
                       "rpm_proxy_wakes_total", "rpm_proxy_wake_duration_seconds", "rpm_pod_up",
                       "rpm_pod_cost_per_hour_usd", "rpm_spend_today_usd"):
            assert family in metrics.text, family
        assert 'le="0.0001"' in metrics.text  # sub-millisecond buckets
        assert 'rpm_pod_cost_per_hour_usd{pod="default"} 0.69' in metrics.text
        assert 'rpm_proxy_stream_events_total 7.0' in metrics.text

        page = requests.get(f"{proxy.url}/dashboard", headers={**good, "Accept": "text/html"},
                            timeout=READ_TIMEOUT)
        assert page.headers["Content-Type"].startswith("text/html")
        assert "<svg" in page.text and "pod-fake" in page.text
        # One inline script (the quiet refresh); nothing fetched from elsewhere.
        assert "<script src" not in page.text and "src=" not in page.text and "href=" not in page.text
        document = requests.get(f"{proxy.url}/dashboard", headers=good, timeout=READ_TIMEOUT).json()
        assert document["pod"]["pod_id"] == "pod-fake"
        assert document["spend"]["today_usd"] == 1.25
        assert {row["name"] for row in document["limits"]} == {"runtime", "idle"}
        assert [row["path"] for row in document["recent_requests"]][-1] == "/v1/chat/completions"
        debug = requests.get(f"{proxy.url}/debug/cache", headers=good, timeout=READ_TIMEOUT)
        assert debug.status_code == 200 and debug.json()["enabled"] is True

        shown = health.text + metrics.text + page.text + json.dumps(document) + debug.text
    logged = caplog.text + paths.request_log.read_text(encoding="utf-8")
    assert {(line["route"], line["status"], line["cache"]) for line in request_lines(paths)} >= {
        ("/v1/chat/completions", 200, "miss"), ("/v1/models", 401, "-")}
    for secret in (UPSTREAM_KEY, CLIENT_KEY, "wrong-key-abc", "leak"):
        assert secret not in shown, secret
        assert secret not in logged, secret


def _samples(metrics_text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(metrics_text) for sample in family.samples}


def _time_not_counted_as_overhead(url: str) -> float:
    """Seconds of /v1 request time the proxy did not count as its own (pod, wake or client waits)."""
    samples = _samples(requests.get(f"{url}/metrics", timeout=READ_TIMEOUT).text)
    duration = sum(value for (name, labels), value in samples.items()
                   if name == "rpm_proxy_request_duration_seconds_sum" and dict(labels)["route"].startswith("/v1/"))
    return duration - samples[("rpm_proxy_overhead_seconds_sum", frozenset())]


def _statuses(url: str) -> dict[str, float]:
    samples = _samples(requests.get(f"{url}/metrics", timeout=READ_TIMEOUT).text)
    return {dict(labels)["status"]: value for (name, labels), value in samples.items()
            if name == "rpm_proxy_requests_total" and dict(labels)["route"] == "/v1/chat/completions"}


def _hang_up_after(url: str, raw: bytes, ready: Any, held_seconds: float) -> float:
    """Send raw bytes, wait until `ready()`, keep the connection `held_seconds` longer, then close it.
    Returns how long the proxy had the request from `ready()` on (a lower bound of what it waited)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=READ_TIMEOUT) as connection:
        connection.sendall(raw)
        assert wait_until(ready)
        held_from = time.monotonic()
        time.sleep(held_seconds)  # the wait whose length the proxy must not call its own overhead
        return time.monotonic() - held_from


def _raw_post(path: str, body: dict[str, Any], *, send_bytes: int | None = None) -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    return head + payload[:send_bytes]


@pytest.mark.parametrize("leaves", ["mid-stream", "waiting-for-a-wake", "waiting-for-a-wake-streaming",
                                    "before-its-body"])
def test_a_client_that_leaves_is_499_client_gone_and_its_waits_are_not_proxy_overhead(
        leaves: str, upstream: FakeUpstream, paths: Paths, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runpod_manager.proxy")
    held_seconds = 0.4
    controller = FakeController(upstream.target())
    raw = _raw_post("/v1/chat/completions", chat(stream=True))
    ready: Any = lambda: True  # noqa: E731
    if leaves == "mid-stream":  # the pod holds its next event
        upstream.hold_streams = True
        ready = lambda: upstream.events_sent >= 1  # noqa: E731
    elif leaves.startswith("waiting-for-a-wake"):  # a streaming wait has already sent keep-alives
        controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
        raw = _raw_post("/v1/chat/completions", chat(stream=leaves.endswith("streaming")))
        ready = controller.wake_started.is_set
    else:
        raw = _raw_post("/v1/chat/completions", chat(), send_bytes=5)
    try:
        with running_proxy(make_config(), controller, paths, keepalive_interval_seconds=0.05) as proxy:
            held = _hang_up_after(proxy.url, raw, ready, held_seconds)
            assert wait_until(lambda: _statuses(proxy.url) == {"499": 1.0})  # never a 200 that was cut
            assert _time_not_counted_as_overhead(proxy.url) >= 0.8 * held
    finally:
        controller.release_wake.set()
    [line] = request_lines(paths)
    assert (line["status"], line["error"]) == (499, "client_gone")
    if leaves.startswith("waiting-for-a-wake"):  # it waited for a wake, and the wait is its cold start
        assert line["cold_start_s"] >= 0.8 * held and line["pod_id"] is None
    assert "Traceback" not in caplog.text


def test_a_stream_whose_client_left_is_499_when_a_write_notices_it_first(upstream: FakeUpstream,
                                                                          paths: Paths) -> None:
    """A write can find the connection closed before the handler is cancelled (always so without
    handler_cancellation): the relay ends quietly, and the request must still count as client_gone."""
    upstream.hold_streams = True

    async def scenario() -> str:
        app = build_app(make_config(), FakeController(upstream.target()), paths=paths)
        runner = web.AppRunner(app, handler_cancellation=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
            writer.write(_raw_post("/v1/chat/completions", chat(stream=True)))
            await reader.readuntil(b"data:")
            writer.close()
            await writer.wait_closed()
            upstream.release(len(TOKENS) + 1)  # the proxy writes on into the closed connection
            metrics = app[STATE].metrics
            for _ in range(500):  # until the proxy has finished (and counted) the request
                if metrics.recent:
                    break
                await asyncio.sleep(0.01)
            return metrics.render().decode()
        finally:
            await runner.cleanup()

    metrics = asyncio.run(scenario())
    assert 'rpm_proxy_requests_total{route="/v1/chat/completions",status="499"} 1.0' in metrics
    assert 'status="200"' not in metrics


def test_the_request_log_has_a_line_per_request_with_its_tokens_timings_and_cold_start(
        upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(None, wake_target=upstream.target(), wake_delay_seconds=0.3)
    with running_proxy(make_config(), controller, paths) as proxy:
        url = f"{proxy.url}/v1/chat/completions"
        woke = requests.post(url, json=chat(), timeout=READ_TIMEOUT)  # wakes the pod
        assert woke.status_code == 200
        requests.post(url, json=chat(stream=True), timeout=READ_TIMEOUT)
        requests.post(url, json=chat(stream=True, stream_options={"include_usage": True}), timeout=READ_TIMEOUT)
        requests.post(url, json=chat(model="gpt-4o"), timeout=READ_TIMEOUT)  # answered by the proxy: 404
        requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT)
        requests.get(f"{proxy.url}/health", timeout=READ_TIMEOUT)  # not a /v1 request: no line
    lines = request_lines(paths)
    assert [(line["route"], line["status"], line["stream"]) for line in lines] == [
        ("/v1/chat/completions", 200, False), ("/v1/chat/completions", 200, True),
        ("/v1/chat/completions", 200, True), ("/v1/chat/completions", 404, False), ("/v1/models", 200, False)]
    wake, plain_stream, usage_stream, unknown, models = lines
    assert wake["cold_start_s"] == pytest.approx(float(woke.headers["X-RPM-Cold-Start"]), abs=0.001)
    assert wake["cold_start_s"] >= 0.3 and wake["ttfb_ms"] >= 300  # the wait comes before the first byte
    assert (wake["tokens_in"], wake["tokens_out"]) == (5, len(TOKENS))  # from the answer's usage
    assert (plain_stream["tokens_in"], plain_stream["tokens_out"]) == (None, None)  # the client did not ask
    assert (usage_stream["tokens_in"], usage_stream["tokens_out"]) == (5, len(TOKENS))
    for line in (wake, plain_stream, usage_stream):
        assert line["pod"] == "default" and line["pod_id"] == "pod-fake" and line["model"] == MODEL
        assert 0 < line["ttfb_ms"] <= line["duration_ms"]
    assert plain_stream["cold_start_s"] is None and plain_stream["cache"] == "bypass"
    assert (unknown["model"], unknown["pod_id"], unknown["error"], unknown["cache"]) == (
        "gpt-4o", None, "model_not_found", "-")
    assert models["cache"] == "bypass" and models["model"] is None
    assert all(line["key"] is None for line in lines)
    assert all(set(line) == set(wake) for line in lines)
    assert stat.S_IMODE(paths.request_log.stat().st_mode) == 0o600


def test_the_request_log_is_written_when_the_proxy_stops(upstream: FakeUpstream, paths: Paths,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from runpod_manager import requestlog

    monkeypatch.setattr(requestlog, "FLUSH_INTERVAL_SECONDS", 3600.0)  # only stopping writes it
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        assert requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT).ok
        assert not paths.request_log.exists()  # queued in memory, not written on the request's path
    assert [line["status"] for line in request_lines(paths)] == [200]


def test_reconcile_runs_with_the_last_request_time_and_survives_errors(upstream: FakeUpstream,
                                                                        paths: Paths) -> None:
    controller = FakeController(upstream.target())
    with running_proxy(make_config(reconcile_interval_seconds=0.05), controller, paths) as proxy:
        assert wait_until(lambda: len(controller.reconcile_calls) >= 1)
        assert controller.last_request_times()[0] is None  # no request yet
        assert requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT).status_code == 200
        seen = len(controller.reconcile_calls)
        assert wait_until(lambda: len(controller.reconcile_calls) >= seen + 3)
        assert controller.last_request_times()[-1] is None  # listing models is not activity: idle stop still comes
        requests.post(f"{proxy.url}/v1/chat/completions", json=chat(), timeout=READ_TIMEOUT)
        assert wait_until(lambda: controller.last_request_times()[-1] is not None)
        last = controller.last_request_times()[-1]
        assert last is not None and last.tzinfo is not None
        controller.reconcile_error = RuntimeError("boom")
        calls = len(controller.reconcile_calls)
        assert wait_until(lambda: len(controller.reconcile_calls) >= calls + 3)
        controller.reconcile_error = None
        assert requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT).status_code == 200


# ------------------------------------------------------------------------------ shutdown (subprocess)


def _start_subprocess(upstream: FakeUpstream, home: Path) -> tuple[subprocess.Popen[str], str]:
    return start_proxy_subprocess(upstream.url, home)


def _refuses_connections(url: str) -> bool:
    try:
        requests.get(f"{url}/health", timeout=READ_TIMEOUT)
    except requests.exceptions.ConnectionError:
        return True
    return False


def test_sigterm_lets_an_inflight_stream_finish(upstream: FakeUpstream, isolated_home: Path) -> None:
    upstream.hold_streams = True
    process, url = _start_subprocess(upstream, isolated_home)
    try:
        response = requests.post(f"{url}/v1/chat/completions", json=chat(stream=True), stream=True,
                                 timeout=READ_TIMEOUT)
        chunks = sse_chunks(response)
        received = [next(chunks)]
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: _refuses_connections(url))  # closed to new connections...
        upstream.release(len(TOKENS))  # ...while the stream in flight carries on to its end
        received.extend(chunks)
        assert received[-1] == b"data: [DONE]\n\n"
        assert len(received) == len(TOKENS) + 1
        assert process.wait(timeout=15) == 0
        output = process.stdout.read() if process.stdout else ""
        assert "STOPPED" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = (isolated_home / "state" / "logs" / "proxy.log").read_text()
    requests_text = (isolated_home / "state" / "logs" / "requests.jsonl").read_text()
    assert '"route":"/v1/chat/completions","status":200' in requests_text  # written on the way out
    assert UPSTREAM_KEY not in log_text and UPSTREAM_KEY not in requests_text
