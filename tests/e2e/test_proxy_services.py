"""http pods behind the real proxy (issue #13), over real HTTP and WebSockets: /pods/<name>/… and a listen
port, pass-through of methods, queries, headers, bodies and streamed answers, wakes, 404/413/400 answers,
cross-origin rules, keys, and sockets closed when the pod goes. The service is tests/support/service_fake.py
on its own thread; a FakeController holds each pod's target and wake (the emulator's end-to-end runs are in
test_http_pods.py). Nothing here asserts timings: wakes are held until the test releases them.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from runpod_manager.config import PodConfig
from runpod_manager.keys import KeyStore
from runpod_manager.paths import Paths, resolve_paths
from tests.support.proxy_fakes import (
    FakeController,
    FakePod,
    FakeUpstream,
    free_port,
    make_config,
    running_proxy,
    start_proxy_subprocess,
    wait_until,
)
from tests.support.service_fake import ServiceFake, upload_digest

pytestmark = pytest.mark.e2e

CHAT = "org/chat-7b"
TIMEOUT = 5  # a single read may block this long before the test fails (never an assertion on speed)
SERVICE_SECRET = "svc-secret-9d2f1"
CLIENT_KEY = "client-key-http-77"


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceFake]:
    running = ServiceFake().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def chat_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(model=CHAT).start()
    yield server
    server.stop()


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def comfy_pod(**extra: Any) -> PodConfig:
    return PodConfig(name="comfy", kind="http", image="comfy/ui", port=8188, health_path="/health",
                     headers={"X-Service-Key": SERVICE_SECRET}, **extra)


def proxy_config(service_pod: PodConfig, **proxy: Any) -> Any:
    return make_config(pods=(service_pod, PodConfig(name="chat", model=CHAT)), **proxy)


def controller_for(service: ServiceFake, chat: FakeUpstream, *, asleep: bool = False, hold: bool = False
                   ) -> FakeController:
    target = service.target()
    return FakeController(pods={
        "comfy": FakePod(None if asleep else target, wake_target=target, hold_wake=hold),
        "chat": FakePod(chat.target("pod-chat")),
    })


def error_of(response: requests.Response) -> dict[str, Any]:
    document = response.json()
    assert set(document) == {"error"} and set(document["error"]) == {"message", "type", "param", "code"}, document
    return dict(document["error"])


def test_any_method_path_query_headers_and_body_pass_through(service: ServiceFake, chat_upstream: FakeUpstream,
                                                            paths: Paths) -> None:
    service.reset()
    with running_proxy(proxy_config(comfy_pod()), controller_for(service, chat_upstream), paths) as proxy:
        response = requests.patch(
            f"{proxy.url}/pods/comfy/echo?name=a%20b&x=1", data=b"raw body", timeout=TIMEOUT,
            headers={"X-Custom": "kept", "Connection": "X-Hop, close", "X-Hop": "dropped",
                     "Authorization": "Bearer mine", "Content-Type": "application/octet-stream"})
        assert response.status_code == 200, response.text
        seen = response.json()
        assert seen["method"] == "PATCH"
        assert seen["path_qs"] == "/echo?name=a%20b&x=1"  # the client's encoding, exactly
        assert seen["body"] == "raw body"
        headers = {name.lower(): value for name, value in seen["headers"].items()}
        assert headers["x-custom"] == "kept" and "x-hop" not in headers
        assert headers["host"] == f"127.0.0.1:{service.port}"  # the pod's, not the proxy's
        assert headers["x-service-key"] == SERVICE_SECRET  # the pod's configured header
        assert headers["authorization"] == "Bearer mine"  # no api_keys: the client's own goes on to its service
        assert "upstream-key-not-for-services" not in json.dumps(seen)  # rpm's vLLM key never goes to a service
        assert response.headers["X-Service"] == "yes" and response.headers["Set-Cookie"] == "session=abc"
        # The root, and a redirect to the pod's own URL pointed back at the route.
        assert requests.get(f"{proxy.url}/pods/comfy/", timeout=TIMEOUT).text.startswith("<!doctype html>")
        bare = requests.get(f"{proxy.url}/pods/comfy?q=1", timeout=TIMEOUT, allow_redirects=False)
        assert bare.status_code == 308 and bare.headers["Location"] == "/pods/comfy/?q=1"
        moved = requests.get(f"{proxy.url}/pods/comfy/redirect", timeout=TIMEOUT, allow_redirects=False)
        assert moved.status_code == 302 and moved.headers["Location"] == "/pods/comfy/health"
        # Encoded answers pass as they are (not inflated and re-sent): the client decodes them.
        raw = requests.get(f"{proxy.url}/pods/comfy/gzip", timeout=TIMEOUT, stream=True,
                           headers={"Accept-Encoding": "gzip"})
        assert raw.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(raw.raw.read()) == b"compressed " * 100
        # The service's own errors are its own (not rewritten into the OpenAI shape).
        head = requests.head(f"{proxy.url}/pods/comfy/health", timeout=TIMEOUT)
        assert head.status_code == 200 and not head.content
        options = requests.options(f"{proxy.url}/pods/comfy/echo", timeout=TIMEOUT)  # not a preflight: the service's
        assert options.status_code == 200 and options.json()["method"] == "OPTIONS"
        teapot = requests.get(f"{proxy.url}/pods/comfy/status/418", timeout=TIMEOUT)
        assert teapot.status_code == 418 and teapot.text == "as asked"
    # The pod's configured header went to the service only: nothing rpm wrote holds it.
    written = [path for path in paths.state_dir.rglob("*") if path.is_file()]
    assert any(path.name.startswith("requests") for path in written)
    assert all(SERVICE_SECRET.encode() not in path.read_bytes() for path in written)


def test_a_streamed_answer_reaches_the_client_before_it_ends(service: ServiceFake, chat_upstream: FakeUpstream,
                                                             paths: Paths) -> None:
    with running_proxy(proxy_config(comfy_pod()), controller_for(service, chat_upstream), paths) as proxy:
        response = requests.get(f"{proxy.url}/pods/comfy/chunks", stream=True, timeout=TIMEOUT)
        lines = response.iter_lines()
        assert next(lines) == b"data: first"  # while the service still holds the rest
        service.release_chunks()
        assert [line for line in lines if line] == [b"data: second"]


def test_a_sleeping_pod_wakes_for_a_routed_request_and_its_upload_arrives_whole(
        service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths) -> None:
    controller = controller_for(service, chat_upstream, asleep=True, hold=True)
    with running_proxy(proxy_config(comfy_pod()), controller, paths) as proxy:
        body, digest = upload_digest(3 * 1024 * 1024 + 17)
        with requests.Session() as session:
            answers: list[requests.Response] = []
            sender = threading.Thread(target=lambda: answers.append(session.post(
                f"{proxy.url}/pods/comfy/upload", data=body, timeout=30)))
            sender.start()
            assert controller.pods["comfy"].wake_started.wait(TIMEOUT)
            assert not answers  # held while the pod wakes: its body waits in the client's socket
            controller.pods["comfy"].release_wake.set()
            sender.join(30)
        [answer] = answers
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"sha256": digest, "bytes": 3 * 1024 * 1024 + 17}
        assert float(answer.headers["X-RPM-Cold-Start"]) >= 0
        assert controller.pods["chat"].wake_calls == 0  # the other pod was never woken


def test_an_upload_with_a_length_is_received_while_the_pod_wakes_then_sent_and_its_file_removed(
        service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths) -> None:
    # A client with a write timeout must be able to finish sending during a cold start: a body larger than
    # the sockets' buffers is taken into a 0600 file while the pod wakes (with backpressure, sendall blocks).
    size = 48 * 1024 * 1024
    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256(block * (size // len(block))).hexdigest()
    controller = controller_for(service, chat_upstream, asleep=True, hold=True)
    service.reset()
    with running_proxy(proxy_config(comfy_pod()), controller, paths) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        sent = threading.Event()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            def send() -> None:
                client.sendall(f"POST /pods/comfy/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n"
                               "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode())
                for _ in range(size // len(block)):
                    client.sendall(block)
                sent.set()

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            assert controller.pods["comfy"].wake_started.wait(TIMEOUT)
            assert sent.wait(TIMEOUT), "the body stayed in the client's socket while the pod woke"
            [spooled] = list(paths.spool_dir.iterdir())
            assert stat.S_IMODE(spooled.stat().st_mode) == 0o600 and not service.requests
            controller.pods["comfy"].release_wake.set()
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        head, _, document = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(document) == {"sha256": digest, "bytes": size}
        assert list(paths.spool_dir.iterdir()) == []  # removed once sent


def test_bad_routes_and_bodies_are_answered_without_a_wake(service: ServiceFake, chat_upstream: FakeUpstream,
                                                           paths: Paths) -> None:
    controller = controller_for(service, chat_upstream, asleep=True)
    config = proxy_config(comfy_pod(max_body_bytes=1024 * 1024))
    with running_proxy(config, controller, paths) as proxy:
        unknown = requests.get(f"{proxy.url}/pods/nope/x", timeout=TIMEOUT)
        assert unknown.status_code == 404
        error = error_of(unknown)
        assert error["code"] == "pod_not_found" and "comfy" in error["message"] and "chat" in error["message"]
        port = requests.get(f"{proxy.url}/pods/comfy:9999/x", timeout=TIMEOUT)
        assert port.status_code == 404 and error_of(port)["code"] == "pod_port_not_found"
        big = requests.post(f"{proxy.url}/pods/comfy/upload", data=b"x" * (1024 * 1024 + 1), timeout=TIMEOUT)
        assert big.status_code == 413
        assert "[pods.comfy] max_body_bytes" in error_of(big)["message"]
        malformed = requests.get(f"{proxy.url}/pods/comfy/ws", timeout=TIMEOUT,
                                 headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        assert malformed.status_code == 400
        assert error_of(malformed)["code"] == "bad_websocket_upgrade"
        assert controller.pods["comfy"].wake_calls == 0


def test_a_chunked_body_over_the_limit_gets_413(service: ServiceFake, chat_upstream: FakeUpstream,
                                                paths: Paths) -> None:
    config = proxy_config(comfy_pod(max_body_bytes=1024 * 1024))
    with running_proxy(config, controller_for(service, chat_upstream), paths) as proxy:
        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b"y" * 65536

        response = requests.post(f"{proxy.url}/pods/comfy/upload", data=chunks(), timeout=TIMEOUT)
        assert response.status_code == 413, response.text


def test_v1_never_reaches_an_http_pod_and_lists_only_the_model_pods(service: ServiceFake,
                                                                   chat_upstream: FakeUpstream, paths: Paths) -> None:
    service.reset()
    chat_upstream.reset()
    with running_proxy(proxy_config(comfy_pod()), controller_for(service, chat_upstream), paths) as proxy:
        models = requests.get(f"{proxy.url}/v1/models", timeout=TIMEOUT).json()
        assert [entry["id"] for entry in models["data"]] == [CHAT]
        answer = requests.post(f"{proxy.url}/v1/chat/completions", timeout=TIMEOUT,
                               json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
        # No model named: the one model pod gets it (the http pod is not a candidate; the fake vLLM wants a name).
        before = len(chat_upstream.requests)
        requests.post(f"{proxy.url}/v1/chat/completions", timeout=TIMEOUT,
                      json={"messages": [{"role": "user", "content": "hi"}]})
        assert len(chat_upstream.requests) == before + 1
        wrong = requests.post(f"{proxy.url}/v1/chat/completions", timeout=TIMEOUT,
                              json={"model": "comfy", "messages": [{"role": "user", "content": "hi"}]})
        assert wrong.status_code == 404
        # A model pod is reachable by path too (a multipart body cannot name its model).
        by_path = requests.get(f"{proxy.url}/pods/chat/v1/models", timeout=TIMEOUT)
        assert by_path.status_code == 200 and by_path.json()["data"][0]["id"] == CHAT
        health = requests.get(f"{proxy.url}/health", timeout=TIMEOUT).json()
        assert {pod["name"]: pod["models"] for pod in health["pods"]} == {"comfy": [], "chat": [CHAT]}
        # Metrics: one series per pod, whatever the paths asked for (and unknown names in one "other").
        for path in ("/pods/comfy/a", "/pods/comfy/b?x=1", "/pods/unknown-1/x", "/pods/unknown-2/y"):
            requests.get(f"{proxy.url}{path}", timeout=TIMEOUT)
        metrics = requests.get(f"{proxy.url}/metrics", timeout=TIMEOUT).text
        assert 'route="/pods/comfy",status="404"' in metrics and 'route="/pods/chat"' in metrics
        assert "/pods/comfy/a" not in metrics and "unknown-1" not in metrics
    assert not [seen for seen in service.requests if seen.path_qs.startswith("/v1")]


def test_listen_port_serves_the_service_at_its_root(service: ServiceFake, chat_upstream: FakeUpstream,
                                                    paths: Paths) -> None:
    listen_port = free_port()
    config = proxy_config(comfy_pod(listen_port=listen_port))
    with running_proxy(config, controller_for(service, chat_upstream), paths) as proxy:
        root = f"http://127.0.0.1:{listen_port}"
        health = requests.get(f"{proxy.url}/health", timeout=TIMEOUT).json()
        assert health["listen_ports"] == {"comfy": listen_port}
        page = requests.get(f"{root}/", timeout=TIMEOUT)
        assert page.status_code == 200 and "fetch('/prompt'" in page.text
        # What the page does: an absolute /prompt from its own origin.
        own = {"Origin": root, "Sec-Fetch-Site": "same-origin"}
        prompt = requests.post(f"{root}/prompt", json={"n": 1}, headers=own, timeout=TIMEOUT)
        assert prompt.status_code == 200 and prompt.json() == {"echo": {"n": 1}}
        localhost = requests.post(f"{root}/prompt", json={}, timeout=TIMEOUT,
                                  headers={"Origin": f"http://localhost:{listen_port}"})
        assert localhost.status_code == 200
        # Another site's page may not drive it (nor the proxy's own /pods/ route).
        for url in (f"{root}/prompt",):
            refused = requests.post(url, json={}, headers={"Origin": "https://evil.example"}, timeout=TIMEOUT)
            assert refused.status_code == 403 and error_of(refused)["code"] == "origin_not_allowed"
        blind = requests.get(f"{root}/health", headers={"Sec-Fetch-Site": "cross-site"}, timeout=TIMEOUT)
        assert blind.status_code == 403
        # Not an alias of the main port: /v1 here is the service's path.
        assert requests.get(f"{root}/v1/models", timeout=TIMEOUT).status_code == 404
        assert service.requests[-1].path_qs == "/v1/models"


def test_keys_protect_routed_paths_and_listen_ports(service: ServiceFake, chat_upstream: FakeUpstream,
                                                    paths: Paths) -> None:
    listen_port = free_port()
    config = proxy_config(comfy_pod(listen_port=listen_port), api_keys=(CLIENT_KEY,))
    service.reset()
    with running_proxy(config, controller_for(service, chat_upstream), paths) as proxy:
        for url in (f"{proxy.url}/pods/comfy/health", f"http://127.0.0.1:{listen_port}/health"):
            assert requests.get(url, timeout=TIMEOUT).status_code == 401
            allowed = requests.get(url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=TIMEOUT)
            assert allowed.status_code == 200
        # The proxy's key is the proxy's: it never reaches the service.
        assert all(CLIENT_KEY not in json.dumps(seen.headers) for seen in service.requests)


def test_a_job_to_an_http_pod_takes_the_pods_body_limit_not_the_v1_one(
        service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths) -> None:
    # [proxy] max_body_bytes (4 KiB) bounds /v1 bodies; the http pod takes 1 MiB uploads, as jobs too.
    config = proxy_config(comfy_pod(max_body_bytes=1024 * 1024), max_body_bytes=4096)
    service.reset()
    with running_proxy(config, controller_for(service, chat_upstream), paths) as proxy:
        body, digest = upload_digest(256 * 1024)
        accepted = requests.post(f"{proxy.url}/pods/comfy/upload", data=body, timeout=TIMEOUT,
                                 headers={"Prefer": "respond-async"})
        assert accepted.status_code == 202, accepted.text
        job_url = f"{proxy.url}/rpm/v1/jobs/{accepted.json()['id']}"
        assert wait_until(lambda: requests.get(job_url, timeout=TIMEOUT).json()["state"] == "done", TIMEOUT)
        result = requests.get(job_url + "/result", timeout=TIMEOUT).json()
        assert (result["sha256"], result["bytes"]) == (digest, 256 * 1024)
        too_big = requests.post(f"{proxy.url}/pods/comfy/upload", data=b"x" * (1024 * 1024 + 1), timeout=TIMEOUT,
                                headers={"Prefer": "respond-async"})
        assert too_big.status_code == 413 and error_of(too_big)["code"] == "body_too_large"
        on_v1 = requests.post(f"{proxy.url}/v1/chat/completions", data=b"{" + b" " * 8192 + b"}", timeout=TIMEOUT,
                              headers={"Prefer": "respond-async", "Content-Type": "application/json"})
        assert on_v1.status_code == 413


def test_team_keys_scope_routed_paths_sockets_and_jobs_which_run_as_the_key_that_sent_them(
        service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths) -> None:
    store = KeyStore(paths.keys_file)
    artist = store.create("artist", pods=("comfy",), now=0).token
    coder = store.create("coder", pods=("chat",), now=0).token
    admin = store.create("boss", role="admin", now=0).token

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    controller = controller_for(service, chat_upstream, asleep=True, hold=True)
    service.reset()
    with running_proxy(proxy_config(comfy_pod()), controller, paths) as proxy:
        # A key scoped elsewhere is refused by path, by socket and as a job, and nothing wakes for it.
        denied = requests.get(f"{proxy.url}/pods/comfy/health", headers=auth(coder), timeout=TIMEOUT)
        assert denied.status_code == 403 and error_of(denied)["code"] == "pod_not_allowed"
        assert "'coder' may not use pod 'comfy'" in error_of(denied)["message"]

        async def socket_refused() -> int:
            async with aiohttp.ClientSession() as session:
                try:
                    async with session.ws_connect(f"{proxy.url.replace('http', 'ws')}/pods/comfy/ws",
                                                  headers=auth(coder)):
                        return 101
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

        assert asyncio.run(socket_refused()) == 403
        refused_job = requests.post(f"{proxy.url}/pods/comfy/prompt", json={}, timeout=TIMEOUT,
                                    headers={"Prefer": "respond-async", **auth(coder)})
        assert refused_job.status_code == 403 and error_of(refused_job)["code"] == "pod_not_allowed"
        assert controller.pods["comfy"].wake_calls == 0 and not service.requests

        # The artist's jobs: theirs and the admin's to read, nobody else's (404, as if there were none).
        first = requests.post(f"{proxy.url}/pods/comfy/prompt", json={"n": 1}, timeout=TIMEOUT,
                              headers={"Prefer": "respond-async", **auth(artist)}).json()
        second = requests.post(f"{proxy.url}/pods/comfy/prompt", json={"n": 2}, timeout=TIMEOUT,
                               headers={"Prefer": "respond-async", **auth(artist)}).json()
        assert first["owner"] == "artist"
        job_url = f"{proxy.url}/rpm/v1/jobs/{second['id']}"
        assert requests.get(job_url, headers=auth(coder), timeout=TIMEOUT).status_code == 404
        assert requests.delete(job_url, headers=auth(coder), timeout=TIMEOUT).status_code == 404
        assert requests.get(job_url, headers=auth(admin), timeout=TIMEOUT).json()["state"] == "queued"
        assert controller.pods["comfy"].wake_started.wait(TIMEOUT)  # the first job's replay woke the pod

        # Revoked while its second job waits: that job runs as the key is now, so it fails, unsent.
        store.revoke("artist", now=1)
        assert wait_until(lambda: requests.get(f"{proxy.url}/rpm/v1/usage", headers=auth(artist),
                                               timeout=TIMEOUT).status_code == 401, timeout=TIMEOUT)
        controller.pods["comfy"].release_wake.set()

        def finished(job_id: str) -> dict[str, Any]:
            return dict(requests.get(f"{proxy.url}/rpm/v1/jobs/{job_id}", headers=auth(admin),
                                     timeout=TIMEOUT).json())

        assert wait_until(lambda: finished(second["id"])["state"] == "failed", TIMEOUT)
        assert "'artist' that submitted this job has been revoked" in finished(second["id"])["error"]["message"]
        assert finished(first["id"])["state"] == "done"  # its replay had passed before the revocation
        prompts = [seen for seen in service.requests if seen.path_qs == "/prompt"]
        assert len(prompts) == 1 and prompts[0].headers["Content-Length"] == str(len(b'{"n": 1}'))
        assert not {name.lower() for name in prompts[0].headers} & {"x-rpm-job-token", "x-rpm-job-owner",
                                                                   "authorization"}


# --------------------------------------------------------------------------------------------- WebSockets


async def _ws_session(url: str, steps: Any, **kwargs: Any) -> Any:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, autoping=False, **kwargs) as ws:
        return await steps(ws)


def test_websocket_frames_pass_both_ways_and_a_client_close_reaches_the_service(
        service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths) -> None:
    service.reset()
    with running_proxy(proxy_config(comfy_pod()), controller_for(service, chat_upstream), paths) as proxy:
        async def steps(ws: aiohttp.ClientWebSocketResponse) -> Any:
            assert ws.protocol == "svc.v1"  # the subprotocol the service chose
            await ws.send_str("hello")
            text = await ws.receive(timeout=TIMEOUT)
            await ws.send_bytes(b"\x00\x01binary")
            binary = await ws.receive(timeout=TIMEOUT)
            await ws.ping(b"are you there")
            pong = await ws.receive(timeout=TIMEOUT)  # the service's library answers, through the proxy
            await ws.close(code=4002, message=b"client done")
            return text.data, binary.data, pong.type, pong.data

        text, binary, pong_type, pong_data = asyncio.run(
            _ws_session(f"{proxy.url.replace('http', 'ws')}/pods/comfy/ws", steps, protocols=("svc.v1",)))
        assert (text, binary) == ("hello", b"\x00\x01binary")
        assert (pong_type, pong_data) == (aiohttp.WSMsgType.PONG, b"are you there")
        assert wait_until(lambda: service.ws_closed_with == [4002], timeout=TIMEOUT), service.ws_closed_with


def test_a_service_close_reaches_the_client_with_its_code(service: ServiceFake, chat_upstream: FakeUpstream,
                                                          paths: Paths) -> None:
    with running_proxy(proxy_config(comfy_pod()), controller_for(service, chat_upstream), paths) as proxy:
        async def steps(ws: aiohttp.ClientWebSocketResponse) -> Any:
            await ws.send_str("close-me")
            message = await ws.receive(timeout=TIMEOUT)
            return message.type, message.data, message.extra

        kind, code, reason = asyncio.run(_ws_session(f"{proxy.url}/pods/comfy/ws", steps))
        assert (kind, code, reason) == (aiohttp.WSMsgType.CLOSE, 4001, "asked to close")


def test_a_socket_waits_for_the_wake_and_is_closed_1001_when_the_pod_stops(
        service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths) -> None:
    controller = controller_for(service, chat_upstream, asleep=True)
    comfy = controller.pods["comfy"]
    with running_proxy(proxy_config(comfy_pod()), controller, paths) as proxy:
        async def steps(ws: aiohttp.ClientWebSocketResponse) -> Any:
            await ws.send_str("woken")
            echoed = await ws.receive(timeout=TIMEOUT)
            # A limit stops the pod: the control plane forgets its target; the next reconcile sees it.
            comfy.target = None
            comfy.view = replace(comfy.view, ready=False, status="EXITED", last_reason="runtime limit reached")
            closed = await ws.receive(timeout=TIMEOUT)
            return echoed.data, closed.type, closed.data, closed.extra

        echoed, kind, code, reason = asyncio.run(_ws_session(f"{proxy.url}/pods/comfy/ws/push", steps))
        assert echoed == "woken" and comfy.wake_calls == 1
        assert (kind, code) == (aiohttp.WSMsgType.CLOSE, 1001)
        assert "runtime limit reached" in reason
        assert wait_until(lambda: service.sockets_open == 0, timeout=TIMEOUT)


@pytest.mark.parametrize("websocket_activity", ["client", "both"])
def test_an_open_socket_without_frames_is_not_activity_and_a_services_push_only_with_both(
        websocket_activity: str, service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths) -> None:
    """A client's frame is activity; a frame the service pushes is not (a forgotten tab on a service that pushes
    status would hold the GPU forever), unless the pod sets websocket_activity = "both"."""
    controller = controller_for(service, chat_upstream)
    pod = comfy_pod() if websocket_activity == "client" else comfy_pod(websocket_activity=websocket_activity)
    with running_proxy(proxy_config(pod), controller, paths) as proxy:
        async def passes(count: int) -> list[Any]:
            seen = len(controller.reconcile_calls)
            await asyncio.to_thread(wait_until, lambda: len(controller.reconcile_calls) >= seen + count, TIMEOUT)
            return controller.last_request_times("comfy")[seen:]

        async def steps(ws: aiohttp.ClientWebSocketResponse) -> Any:
            await passes(1)
            before = controller.last_request_times("comfy")[-1]
            await ws.send_str("one frame")
            await ws.receive(timeout=TIMEOUT)
            frames_at = (await passes(1))[-1]
            # Passes go by with the socket open and silent: the pod's last use stays the last frame.
            silent = await passes(3)
            service.push("from the service")
            await ws.receive(timeout=TIMEOUT)
            after_push = (await passes(2))[-1]
            return before, frames_at, silent, after_push

        before, frames_at, silent, after_push = asyncio.run(_ws_session(f"{proxy.url}/pods/comfy/ws/push", steps))
        assert frames_at is not None and (before is None or frames_at > before)  # a client's frame is activity
        assert set(silent) == {frames_at}  # unchanged while silent
        if websocket_activity == "both":
            assert after_push is not None and after_push > frames_at
        else:
            assert after_push == frames_at  # the service's push is not


def test_a_job_to_a_routed_path_wakes_the_http_pod_and_keeps_the_services_answer(
        service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths) -> None:
    controller = controller_for(service, chat_upstream, asleep=True, hold=True)
    service.reset()
    listen_port = free_port()
    with running_proxy(proxy_config(comfy_pod(listen_port=listen_port)), controller, paths) as proxy:
        accepted = requests.post(f"{proxy.url}/pods/comfy/prompt", json={"workflow": 7}, timeout=TIMEOUT,
                                 headers={"Prefer": "respond-async"})
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert (job["pod"], job["path"]) == ("comfy", "/pods/comfy/prompt")
        bad_port = requests.post(f"{proxy.url}/pods/comfy:9999/prompt", json={}, timeout=TIMEOUT,
                                 headers={"Prefer": "respond-async"})
        assert bad_port.status_code == 404 and error_of(bad_port)["code"] == "pod_port_not_found"
        controller.pods["comfy"].release_wake.set()

        def done() -> bool:
            return requests.get(f"{proxy.url}{job['status_url']}", timeout=TIMEOUT).json()["state"] == "done"

        assert wait_until(done, TIMEOUT)
        result = requests.get(f"{proxy.url}/rpm/v1/jobs/{job['id']}/result", timeout=TIMEOUT)
        assert result.status_code == 200 and result.json() == {"echo": {"workflow": 7}}
        # The replay's token is the proxy's own credential: the service never sees it.
        [replayed] = [seen for seen in service.requests if seen.path_qs == "/prompt"]
        assert not {name.lower() for name in replayed.headers} & {"x-rpm-job-token", "x-rpm-job-id"}
        assert controller.pods["comfy"].wake_calls == 1
        # A listen port's paths are the service's own: Prefer goes through to it, never a job of rpm's.
        own = requests.post(f"http://127.0.0.1:{listen_port}/prompt", json={"n": 2}, timeout=TIMEOUT,
                            headers={"Prefer": "respond-async"})
        assert own.status_code == 200 and own.json() == {"echo": {"n": 2}}


@pytest.mark.slow
def test_600_sockets_to_one_pod_get_503_past_its_budget_and_never_delay_another_pods_requests(
        service: ServiceFake, chat_upstream: FakeUpstream, paths: Paths, caplog: pytest.LogCaptureFixture) -> None:
    """One shared pool of 512 upstream connections once let 512 sockets to an http pod starve every other pod:
    `/v1` requests timed out, the 513th socket hung and the log filled with tracebacks. Each pod now has its
    own budget (`max_connections`, 256 by default): the sockets past it get a 503 at once, the other pod
    answers while they are open, and nothing is logged as a failure (issue #20, 12)."""
    import base64
    import logging
    import os
    import resource

    sockets_wanted = 600
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * sockets_wanted + 256  # the client's, the proxy's both sides, the service's
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    service.reset()
    caplog.set_level(logging.INFO)
    try:
        with running_proxy(proxy_config(comfy_pod()), controller_for(service, chat_upstream), paths) as proxy:
            async def scenario() -> tuple[list[Any], int, dict[str, Any], list[str]]:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                    async def open_one() -> Any:
                        try:
                            return await session.ws_connect(f"{proxy.url}/pods/comfy/ws", autoping=False)
                        except aiohttp.WSServerHandshakeError as exc:
                            return exc.status

                    # Bounded, never a timing assertion: a socket that hangs fails the test after a minute.
                    outcomes = await asyncio.gather(*(asyncio.wait_for(open_one(), 60)
                                                      for _ in range(sockets_wanted)), return_exceptions=True)
                    handshake = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                 "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
                    async with session.get(f"{proxy.url}/pods/comfy/ws", headers=handshake) as over:
                        refusal = {"status": over.status, **(await over.json())["error"],
                                   "retry": over.headers.get("x-should-retry")}
                    async with session.post(f"{proxy.url}/v1/chat/completions",
                                            json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}]},
                                            timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as answer:
                        chat_status = answer.status
                    opened = [ws for ws in outcomes if isinstance(ws, aiohttp.ClientWebSocketResponse)]
                    echoes = []
                    for ws in opened[:3]:  # the sockets that were let in work
                        await ws.send_str("still here")
                        echoes.append((await ws.receive(timeout=TIMEOUT)).data)
                    await asyncio.gather(*(ws.close() for ws in opened))
                    others = [outcome for outcome in outcomes
                              if not isinstance(outcome, aiohttp.ClientWebSocketResponse)]
                    return others, chat_status, refusal, echoes

            others, chat_status, refusal, echoes = asyncio.run(scenario())
            assert chat_status == 200
            assert others == [503] * (sockets_wanted - 256), {repr(outcome) for outcome in others}
            assert echoes == ["still here"] * 3
            assert refusal["status"] == 503 and refusal["code"] == "pod_connections_full"
            assert "max_connections" in refusal["message"] and refusal["retry"] == "true"
            assert wait_until(lambda: service.sockets_open == 0, timeout=TIMEOUT), service.sockets_open
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    failures = [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    assert failures == [], [record.getMessage() for record in failures[:3]]


def test_an_upload_the_spool_has_no_room_for_is_held_in_the_clients_connection_and_arrives_whole(
        service: ServiceFake, chat_upstream: FakeUpstream, isolated_home: Path) -> None:
    """A full disk under the wake spool once failed the upload with a 500 and lost it. The proxy in its own
    process under RLIMIT_FSIZE (1 MiB): writing a 3 MiB upload for a sleeping pod into the spool fails with
    EFBIG after 1 MiB, as a full disk's would; the rest then waits in the client's connection and the whole
    body reaches the service, with no file left behind (issue #20, 14)."""
    size = 3 * 1024 * 1024 + 17
    block = bytes(range(256)) * 4096
    payload = (block * 4)[:size]
    service.reset()
    process, url = start_proxy_subprocess(chat_upstream.url, isolated_home, "--service", service.target().base_url,
                                          "--max-file-bytes", str(1024 * 1024))
    try:
        answer = requests.post(f"{url}/pods/svc/upload", data=payload, timeout=30,
                               headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": size}
        assert list(resolve_paths().spool_dir.iterdir()) == []
    finally:
        process.terminate()
        process.wait(timeout=15)
    log_text = (isolated_home / "state" / "logs" / "proxy.log").read_text()
    assert "Traceback" not in log_text and "waits in the client's connection" in log_text
