"""The emulator's fake generic service at the pod URL of a non-vLLM pod, over real HTTP and WebSocket.

One `rpm sandbox` subprocess serves the module (fast timeline, progress frames every 0.05 s). Pods are
created through the REST v2 API; every route of the contract is checked at the pod URL: 502 until ready,
/health, the page at /, the /prompt echo, a 50 MB streamed upload (hash, and the emulator's peak memory),
multipart, /slow, the /ws echo, progress and close, and a stop cutting sockets and requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests

from runpod_manager.sandbox.server import EmbeddedSandbox
from tests.support.rpm import Sandbox, run_sandbox, wait_until

pytestmark = pytest.mark.e2e

GPU = "NVIDIA GeForce RTX 4090"
PROGRESS_SECONDS = 0.05
UPLOAD_BYTES = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with run_sandbox("--service-progress-seconds", str(PROGRESS_SECONDS), "--quiet") as running:
        yield running


def create(sandbox: Sandbox, *, image: str = "comfyanonymous/comfyui:latest",
           ports: tuple[str, ...] = ("8188/http", "22/tcp"), env: dict[str, str] | None = None) -> str:
    body: dict[str, Any] = {"name": "rpm-comfy-s3rv1c", "image": image, "gpu": {"id": GPU}, "ports": list(ports)}
    if env:
        body["env"] = env
    response = sandbox.api("POST", "/v2/pods", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def pod_url(sandbox: Sandbox, pod_id: str, port: int = 8188) -> str:
    return sandbox.pod_url_template.format(pod_id=pod_id, port=port)


def wait_ready(url: str) -> None:
    assert wait_until(lambda: requests.get(url + "/health", timeout=5).status_code == 200, interval=0.02), url


def stop(sandbox: Sandbox, pod_id: str) -> None:
    response = sandbox.api("POST", f"/v2/pods/{pod_id}/action", json={"action": "stop"})
    assert response.status_code == 200, response.text


def state_of(sandbox: Sandbox, pod_id: str) -> dict[str, Any]:
    return next(pod for pod in sandbox.pods() if pod["id"] == pod_id)


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM), which only grows: a buffered body would show in it."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def service(sandbox: Sandbox) -> str:
    url = pod_url(sandbox, create(sandbox))
    wait_ready(url)
    return url


# --- start-up and routing ------------------------------------------------------------------------


def test_the_service_is_502_until_its_start_up_delay_passes_then_answers(sandbox: Sandbox) -> None:
    sandbox.control("faults", {"model_load_seconds": 3600})
    try:
        pod_id = create(sandbox)
    finally:
        sandbox.control("faults", {"model_load_seconds": None})
    url = pod_url(sandbox, pod_id)
    assert wait_until(lambda: state_of(sandbox, pod_id)["status"] == "RUNNING", interval=0.02)
    for path in ("/health", "/", "/ws"):
        early = requests.get(url + path, timeout=5)
        assert early.status_code == 502 and "502 Bad Gateway" in early.text, path
    assert state_of(sandbox, pod_id)["service"]["requests"] == 0  # RunPod's proxy answered, not the service
    sandbox.api("POST", f"/v2/pods/{pod_id}/action", json={"action": "restart"})  # loads without the fault
    wait_ready(url)
    health = requests.get(url + "/health", timeout=5)
    assert health.json() == {"status": "ok", "pod": pod_id, "port": 8188}
    assert state_of(sandbox, pod_id)["serves"] == "service"


def test_every_http_port_of_the_pod_answers_and_others_are_404(sandbox: Sandbox) -> None:
    pod_id = create(sandbox, ports=("8188/http", "8000/http", "22/tcp"))
    for port in (8188, 8000):
        wait_ready(pod_url(sandbox, pod_id, port))
        assert requests.get(pod_url(sandbox, pod_id, port) + "/health", timeout=5).json()["port"] == port
    for port in (22, 9000):
        assert requests.get(pod_url(sandbox, pod_id, port) + "/health", timeout=5).status_code == 404


def test_a_vllm_image_still_gets_the_fake_vllm_and_a_service_has_no_openai_api(sandbox: Sandbox,
                                                                             service: str) -> None:
    vllm = pod_url(sandbox, create(sandbox, image="vllm/vllm-openai:latest", ports=("8000/http",)), 8000)
    wait_ready(vllm)
    assert requests.get(vllm + "/v1/models", timeout=5).json()["object"] == "list"
    assert requests.get(vllm + "/prompt", timeout=5).status_code == 404
    assert requests.get(service + "/v1/models", timeout=5).status_code == 404


def test_unknown_paths_are_404_and_wrong_methods_405(service: str) -> None:
    assert requests.get(service + "/nope", timeout=5).status_code == 404
    wrong = requests.get(service + "/prompt", timeout=5)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"


# --- the routes ------------------------------------------------------------------------------------


def test_the_page_at_the_root_calls_prompt_and_ws_by_absolute_path(sandbox: Sandbox) -> None:
    pod_id = create(sandbox)
    url = pod_url(sandbox, pod_id)
    wait_ready(url)
    for root in (url, url + "/"):
        page = requests.get(root, timeout=5)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert 'fetch("/prompt"' in page.text and 'location.host + "/ws"' in page.text


def test_prompt_echoes_the_json_it_got_and_refuses_invalid_json(service: str) -> None:
    body = {"prompt": {"3": {"class_type": "KSampler", "inputs": {"seed": 7}}}, "client_id": "abc"}
    answer = requests.post(service + "/prompt", json=body, timeout=5)
    assert answer.status_code == 200 and answer.json() == {"received": body}
    for bad in (b"{not json", b"\xff\xfe", b""):
        refused = requests.post(service + "/prompt", data=bad, timeout=5)
        assert refused.status_code == 400 and refused.json()["error"].startswith("invalid JSON body"), bad


def test_a_50_mb_upload_is_hashed_as_it_streams_without_the_emulator_holding_it(sandbox: Sandbox,
                                                                                service: str) -> None:
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB, not one repeated byte
    expected = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for _ in range(UPLOAD_BYTES // len(block)):
            expected.update(block)
            yield block

    before = peak_rss_bytes(sandbox.process.pid)
    answer = requests.post(service + "/upload", data=body(), timeout=60,
                           headers={"Content-Type": "application/octet-stream"})
    grown = peak_rss_bytes(sandbox.process.pid) - before
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"sha256": expected.hexdigest(), "bytes": UPLOAD_BYTES,
                             "contentType": "application/octet-stream"}
    assert grown < 20 * 1024 * 1024, f"the emulator's peak RSS grew by {grown} bytes for a {UPLOAD_BYTES} upload"


def test_a_multipart_upload_is_hashed_as_the_raw_body_the_client_sent(service: str) -> None:
    files = {"audio": ("talk.wav", b"RIFF" + bytes(range(256)) * 4000, "audio/wav")}
    prepared = requests.Request("POST", service + "/upload", files=files, data={"language": "en"}).prepare()
    assert isinstance(prepared.body, bytes)
    answer = requests.Session().send(prepared, timeout=10).json()
    assert answer["sha256"] == hashlib.sha256(prepared.body).hexdigest()
    assert answer["bytes"] == len(prepared.body)
    assert answer["contentType"].startswith("multipart/form-data; boundary=")


def test_an_upload_the_client_abandons_is_dropped_without_an_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    body = {"name": "rpm-abort-abc123", "image": "my/uploader", "gpu": {"id": GPU}, "ports": ["8080/http"]}
    with EmbeddedSandbox(provision_seconds=0, start_seconds=0, model_load_seconds=0) as embedded, \
            caplog.at_level(logging.INFO):
        pod_id = embedded.call(lambda world: world.create_pod(body).id)
        url = embedded.pod_url_template.format(pod_id=pod_id, port=8080)
        wait_ready(url)
        host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as client:
            head = f"POST /pods/{pod_id}-8080/upload HTTP/1.1\r\nHost: pod\r\nContent-Length: 1000000\r\n\r\n"
            client.sendall(head.encode() + b"x" * 100_000)
            assert wait_until(lambda: embedded.call(lambda w: w.service_stats[pod_id].received_bytes) == 100_000,
                              interval=0.01)
        assert wait_until(lambda: embedded.call(lambda w: w.service_stats[pod_id].active) == 0, interval=0.01)
        assert requests.get(url + "/health", timeout=5).status_code == 200
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_slow_answers_after_the_seconds_asked_and_refuses_bad_values(service: str) -> None:
    assert requests.post(service + "/slow?seconds=0.1", timeout=10).json() == {"slept": 0.1}
    for bad in ("-1", "601", "abc", "nan", "inf", ""):
        refused = requests.post(service + f"/slow?seconds={bad}", timeout=5)
        assert refused.status_code == 400 and "seconds" in refused.json()["error"], bad


def test_stream_sends_n_sse_events_and_download_n_bytes(service: str) -> None:
    streamed = requests.get(service + "/stream?chunks=5", timeout=5)
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    assert streamed.text == "".join(f'data: {{"chunk": {n}}}\n\n' for n in range(1, 6))
    downloaded = requests.get(service + "/download?bytes=200001", timeout=5)
    assert downloaded.headers["Content-Length"] == "200001"
    assert downloaded.content == bytes(i % 256 for i in range(200001))
    assert requests.get(service + "/stream?chunks=-1", timeout=5).status_code == 400


def test_headers_shows_what_reached_the_service(service: str) -> None:
    echoed = requests.put(service + "/headers?x=1", headers={"X-Added-Upstream": "yes"}, timeout=5).json()
    assert echoed["method"] == "PUT" and echoed["query"] == "x=1"
    assert echoed["headers"]["x-added-upstream"] == ["yes"]


def test_a_service_api_key_in_the_env_guards_every_route_but_health(sandbox: Sandbox) -> None:
    url = pod_url(sandbox, create(sandbox, env={"SERVICE_API_KEY": "svc-SECRET-1"}))
    wait_ready(url)
    assert requests.post(url + "/prompt", json={}, timeout=5).status_code == 401
    wrong = requests.post(url + "/prompt", json={}, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401 and "SECRET" not in wrong.text
    good = requests.post(url + "/prompt", json={}, headers={"Authorization": "Bearer svc-SECRET-1"}, timeout=5)
    assert good.status_code == 200


def test_requests_are_counted_in_the_sandbox_state_without_header_values(sandbox: Sandbox) -> None:
    pod_id = create(sandbox)
    url = pod_url(sandbox, pod_id)
    wait_ready(url)
    requests.post(url + "/prompt?client=7", json={"a": 1}, headers={"Authorization": "Bearer hdr-SECRET"},
                  timeout=5)
    seen = state_of(sandbox, pod_id)["service"]
    assert {"method": "POST", "path": "/prompt", "query": "client=7", "port": 8188, "status": 200} in seen["recent"]
    assert seen["requests"] >= 2 and seen["receivedBytes"] == len(b'{"a": 1}')
    assert "hdr-SECRET" not in json.dumps(sandbox.control("state"))


# --- WebSocket -------------------------------------------------------------------------------------


def ws_url(url: str, query: str = "") -> str:
    return url.replace("http://", "ws://", 1) + "/ws" + query


def test_ws_echoes_text_and_binary_pushes_progress_answers_pings_and_closes_cleanly(service: str) -> None:
    async def scenario() -> tuple[list[Any], list[int], int | None]:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(service), autoping=False) as ws:
            await ws.send_str("hello")
            await ws.send_bytes(b"\x00\x01\xff")
            await ws.ping(b"are you there")
            echoes: list[Any] = []
            progress: list[int] = []
            pong = False
            while len(echoes) < 2 or len(progress) < 3 or not pong:
                message = await ws.receive(timeout=10)
                if message.type == aiohttp.WSMsgType.PONG:
                    pong = message.data == b"are you there"
                elif message.type == aiohttp.WSMsgType.TEXT and message.data.startswith('{"progress"'):
                    progress.append(json.loads(message.data)["progress"])
                else:
                    echoes.append((message.type, message.data))
            await ws.close()
            return echoes, progress, ws.close_code

    echoes, progress, close_code = asyncio.run(scenario())
    assert echoes == [(aiohttp.WSMsgType.TEXT, "hello"), (aiohttp.WSMsgType.BINARY, b"\x00\x01\xff")]
    assert progress == list(range(1, len(progress) + 1))
    assert close_code == 1000


def test_ws_progress_can_be_turned_off_per_socket_and_a_bad_interval_is_400(service: str) -> None:
    async def scenario() -> list[str]:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(ws_url(service, "?progress_seconds=0")) as ws:
            received = []
            for text in ("one", "two", "three"):
                await ws.send_str(text)
                received.append((await ws.receive(timeout=10)).data)
            return received

    assert asyncio.run(scenario()) == ["one", "two", "three"]
    assert requests.get(service + "/ws?progress_seconds=-1", timeout=5).status_code == 400


def test_a_plain_get_of_ws_is_a_clear_400(service: str) -> None:
    refused = requests.get(service + "/ws", timeout=5)
    assert refused.status_code == 400 and "WebSocket upgrade" in refused.json()["error"]


def test_stopping_the_pod_closes_its_sockets_cuts_requests_refuses_new_ones_and_ends_billing(
        sandbox: Sandbox) -> None:
    pod_id = create(sandbox)
    url = pod_url(sandbox, pod_id)
    wait_ready(url)
    slow_outcome: list[BaseException | int] = []

    def slow_request() -> None:
        try:
            slow_outcome.append(requests.post(url + "/slow?seconds=300", timeout=30).status_code)
        except requests.RequestException as exc:
            slow_outcome.append(exc)

    slow = threading.Thread(target=slow_request)
    slow.start()

    async def scenario() -> tuple[int | None, str, int]:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(url)) as ws:
            first = await ws.receive(timeout=10)
            assert first.type == aiohttp.WSMsgType.TEXT
            # active: the /slow request only; an open socket is not GPU work
            assert wait_until(lambda: state_of(sandbox, pod_id)["service"]["active"] == 1, interval=0.02)
            assert state_of(sandbox, pod_id)["service"]["openWebsockets"] == 1
            await asyncio.to_thread(stop, sandbox, pod_id)
            while (message := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                pass  # progress frames sent before the stop
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            code, reason = ws.close_code, str(message.extra or "")
            try:
                async with session.ws_connect(ws_url(url)):
                    pass
            except aiohttp.WSServerHandshakeError as exc:
                return code, reason, exc.status
            return code, reason, 101

    code, reason, reconnect_status = asyncio.run(scenario())
    slow.join(timeout=30)
    assert (code, reason, reconnect_status) == (1001, "pod stopped", 502)
    assert len(slow_outcome) == 1 and isinstance(slow_outcome[0], requests.ConnectionError), slow_outcome
    assert requests.get(url + "/health", timeout=5).status_code == 502
    after = state_of(sandbox, pod_id)
    assert after["status"] == "EXITED" and after["service"]["openWebsockets"] == 0
    assert after["cost"] == 0
