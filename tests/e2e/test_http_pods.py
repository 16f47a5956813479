"""http pods end to end (issue #13): the emulator's fake generic service (sandbox/service.py) as a ComfyUI-
shaped pod next to a vLLM pod, `rpm start`'s real proxy subprocess, real uploads and WebSockets.

What is checked: a 200 MB upload to a stopped pod wakes it and arrives intact while the proxy's RSS stays
flat; WebSocket echo and server-pushed progress through /pods/<name>/ws; the listen port serving the
service's root (its page, then the page's absolute /prompt); a limit and an idle stop closing open sockets
with 1001; the LLM pod next to it routed by model; `rpm status` naming the routes and the open public URL.
Short limits and fast clocks (idle 1-2 s, reconcile 0.2 s, progress every 0.1 s) instead of sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests

from tests.support.clock import WallClockFile
from tests.support.proxy_fakes import free_port
from tests.support.rpm import Rpm, fast_config, wait_until

pytestmark = pytest.mark.e2e

CHAT_MODEL = "org/chat-model"
TIMEOUT = 30  # a single read may block this long before the test fails (never an assertion on speed)
UPLOAD_BYTES = 200 * 1024 * 1024
RSS_GROWTH_LIMIT_BYTES = 20 * 1024 * 1024


@pytest.fixture
def sandbox_flags() -> list[str]:
    return ["--service-progress-seconds", "0.1"]


@pytest.fixture
def ports(rpm: Rpm) -> Iterator[tuple[int, int]]:
    """(proxy port, comfy's listen port); afterwards no proxy of this test is left running."""
    yield free_port(), free_port()
    pid = _proxy_pid(rpm)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def write(rpm: Rpm, proxy_port: int, listen_port: int, *, idle: int = 0, runtime: int = 3600,
          comfy: dict[str, Any] | None = None) -> None:
    comfy_keys = {"kind": "http", "image": "comfyanonymous/comfyui:latest", "port": 8188, "health_path": "/health",
                  "listen_port": listen_port, "gpu_types": ["NVIDIA GeForce RTX 4090"], **(comfy or {})}
    text = fast_config(limits={"runtime_seconds": runtime, "idle_timeout_seconds": idle, "cutoff_action": "stop"},
                       proxy_port=proxy_port,
                       pods={"comfy": comfy_keys, "chat": {"model": CHAT_MODEL, "gpu_types": ["NVIDIA L40S"]}})
    rpm.config_path.write_text(text, encoding="utf-8")


def _proxy_pid(rpm: Rpm) -> int | None:
    try:
        return int(json.loads((rpm.home / "state" / "proxy.pid").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _status_of(rpm: Rpm, name: str) -> str | None:
    for pod in rpm.sandbox.pods():
        if pod["name"].startswith(f"rpm-{name}-") and pod["status"] != "TERMINATED":
            return str(pod["status"])
    return None


def _start(rpm: Rpm, *pods: str) -> dict[str, Any]:
    result = rpm.run("start", *pods, "--json", timeout=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return dict(json.loads(result.stdout))


def _chunks(size: int) -> tuple[Iterator[bytes], str]:
    block = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    return body(), digest.hexdigest()


def test_a_200_mb_upload_wakes_a_stopped_pod_and_arrives_whole_with_the_proxys_memory_flat(
        rpm: Rpm, ports: tuple[int, int]) -> None:
    proxy_port, listen_port = ports
    write(rpm, proxy_port, listen_port, idle=1)
    _start(rpm, "comfy")
    assert wait_until(lambda: _status_of(rpm, "comfy") == "EXITED", 20)  # idle-stopped by the proxy
    pid = _proxy_pid(rpm)
    assert pid is not None
    baseline = _rss_bytes(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], _rss_bytes(pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    body, digest = _chunks(UPLOAD_BYTES)
    try:
        answer = requests.post(f"http://127.0.0.1:{proxy_port}/pods/comfy/upload", data=body, timeout=120,
                               headers={"Content-Type": "application/octet-stream"})  # sent chunked
    finally:
        done.set()
        sampler.join(5)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["sha256"], answer.json()["bytes"]) == (digest, UPLOAD_BYTES)
    assert "X-RPM-Cold-Start" in answer.headers  # it waited for the wake
    assert peak[0] - baseline < RSS_GROWTH_LIMIT_BYTES, (baseline, peak[0])
    # The request log names the pod (not the path), and the upload was the pod's activity.
    log = rpm.home / "state" / "logs" / "requests.jsonl"

    def logged() -> list[dict[str, Any]]:
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return [entry for entry in map(json.loads, lines) if entry["route"] == "/pods/comfy"]

    assert wait_until(lambda: bool(logged()), 10)  # written in batches, off the request path
    [line] = logged()
    assert (line["pod"], line["status"]) == ("comfy", 200)


def test_websocket_echo_progress_and_the_listen_port_next_to_an_llm_pod(rpm: Rpm, ports: tuple[int, int]) -> None:
    proxy_port, listen_port = ports
    write(rpm, proxy_port, listen_port)
    _start(rpm)
    root = f"http://127.0.0.1:{listen_port}"
    page = requests.get(f"{root}/", timeout=TIMEOUT)
    assert page.status_code == 200 and "/prompt" in page.text
    prompt = requests.post(f"{root}/prompt", json={"workflow": 1}, headers={"Origin": root}, timeout=TIMEOUT)
    assert prompt.status_code == 200 and prompt.json()["received"] == {"workflow": 1}
    chat = requests.post(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", timeout=TIMEOUT,
                         json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert chat.status_code == 200, chat.text
    refused = requests.post(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", timeout=TIMEOUT,
                            json={"model": "comfy", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 404  # /v1 never reaches the http pod

    async def talk() -> tuple[Any, ...]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{proxy_port}/pods/comfy/ws") as ws:
                await ws.send_str("text frame")
                await ws.send_bytes(b"\x00binary")
                seen: list[Any] = []
                progress: list[int] = []
                while len(seen) < 2 or len(progress) < 2:
                    message = await ws.receive(timeout=TIMEOUT)
                    if message.type == aiohttp.WSMsgType.TEXT and message.data.startswith('{"progress"'):
                        progress.append(json.loads(message.data)["progress"])
                    else:
                        seen.append(message.data)
                await ws.close()
            # The same socket at the listen port's root path, closed by the client there.
            async with session.ws_connect(f"ws://127.0.0.1:{listen_port}/ws?progress_seconds=0",
                                          headers={"Origin": root}) as ws:
                await ws.send_str("via listen port")
                echoed = await ws.receive(timeout=TIMEOUT)
        return seen, progress, echoed.data

    seen, progress, echoed = asyncio.run(talk())
    assert seen == ["text frame", b"\x00binary"]  # in order, each as its own type
    assert progress[:2] == sorted(progress[:2]) and progress[0] >= 1
    assert echoed == "via listen port"
    status = rpm.json("status")["data"]
    [comfy] = [pod for pod in status["pods"] if pod["name"] == "comfy"]
    assert comfy["kind"] == "http" and comfy["public_url_open"] is True
    assert f"http://127.0.0.1:{proxy_port}/pods/comfy/" in comfy["routes"]
    human = rpm.run("status").stdout
    assert "answers without any key" in human and "([pods.<name>] headers sends one)" in human


def test_a_limit_closes_open_sockets_with_1001(rpm: Rpm, ports: tuple[int, int], wall_clock: WallClockFile) -> None:
    proxy_port, listen_port = ports
    # A runtime limit: the lease ends while progress frames flow (activity never extends a limit). The proxy
    # runs on the test clock, moved past the limit once the socket is open: no race with the handshake.
    write(rpm, proxy_port, listen_port, runtime=600)
    _start(rpm, "comfy")

    async def busy_socket() -> tuple[Any, ...]:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{proxy_port}/pods/comfy/ws") as ws:
            first = await ws.receive(timeout=TIMEOUT)
            assert first.type == aiohttp.WSMsgType.TEXT, (first.type, first.data, first.extra)
            wall_clock.advance(601)
            while True:
                message = await ws.receive(timeout=TIMEOUT)
                if message.type != aiohttp.WSMsgType.TEXT:
                    return message.type, message.data, message.extra

    kind, code, reason = asyncio.run(busy_socket())
    assert (kind, code) == (aiohttp.WSMsgType.CLOSE, 1001), reason
    assert wait_until(lambda: _status_of(rpm, "comfy") in ("EXITED", None), 10)
    assert any("runtime" in event.get("reason", "") for event in rpm.events() if event["event"] == "stop")


def test_an_idle_stop_closes_an_idle_open_socket_with_1001(rpm: Rpm, ports: tuple[int, int]) -> None:
    proxy_port, listen_port = ports
    write(rpm, proxy_port, listen_port, idle=2)
    _start(rpm, "comfy")

    async def idle_socket() -> tuple[Any, ...]:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{proxy_port}/pods/comfy/ws?progress_seconds=0") as ws:
            await ws.send_str("one frame, then silence")
            await ws.receive(timeout=TIMEOUT)
            closed = await ws.receive(timeout=6)  # idle_timeout_seconds is 2: the forgotten tab does not hold it
            return closed.type, closed.data, closed.extra

    kind, code, reason = asyncio.run(idle_socket())
    assert (kind, code) == (aiohttp.WSMsgType.CLOSE, 1001), reason
    assert wait_until(lambda: _status_of(rpm, "comfy") == "EXITED", 10)


def test_a_forgotten_tab_on_a_service_that_pushes_progress_does_not_hold_the_pod(
        rpm: Rpm, ports: tuple[int, int]) -> None:
    """The emulator's /ws pushes a progress frame every 0.1 s; the client never sends one. Frames from the
    service are not activity (websocket_activity = "client", the default), so idle stop ends the pod after
    idle_timeout_seconds (2) and closes the socket with 1001. Before, every pushed frame kept it up."""
    proxy_port, listen_port = ports
    write(rpm, proxy_port, listen_port, idle=2)
    _start(rpm, "comfy")

    async def forgotten_tab() -> tuple[Any, ...]:
        pushed = 0
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{proxy_port}/pods/comfy/ws") as ws:
            give_up = asyncio.get_running_loop().time() + TIMEOUT  # a bound on the bug, not on speed
            while asyncio.get_running_loop().time() < give_up:
                message = await ws.receive(timeout=TIMEOUT)
                if message.type != aiohttp.WSMsgType.TEXT:
                    return pushed, message.type, message.data, message.extra
                pushed += 1
            return pushed, None, None, "the pushed frames kept the pod up"

    pushed, kind, code, reason = asyncio.run(forgotten_tab())
    assert pushed > 0  # the service did push while the tab sat there
    assert (kind, code) == (aiohttp.WSMsgType.CLOSE, 1001), reason
    # Whichever close arrives first: the proxy's own ("idle") or the service's, passed on ("pod stopped").
    assert "idle" in reason or "pod stopped" in reason, reason
    assert wait_until(lambda: _status_of(rpm, "comfy") == "EXITED", 10)
    assert "idle" in (rpm.record("comfy").get("last_lease_end_reason") or "")  # it was idle stop that ended it


def test_a_comfyui_pod_and_an_upload_service_with_jobs_wake_next_to_an_llm_pod_and_all_stop_idle(
        rpm: Rpm, ports: tuple[int, int]) -> None:
    """Issue #13's "done when": two http pods (ComfyUI-shaped with its listen port; a file-processing service
    fed 202 jobs) beside an LLM pod, each woken by its first request, then all stopped when idle."""
    proxy_port, listen_port = ports
    write(rpm, proxy_port, listen_port, idle=1)
    with rpm.config_path.open("a", encoding="utf-8") as config:
        config.write('\n[pods.audio]\nkind = "http"\nimage = "acme/transcriber:1"\nport = 9000\n'
                     'health_path = "/health"\ngpu_types = ["NVIDIA GeForce RTX 4090"]\n')
    _start(rpm)
    names = ("comfy", "audio", "chat")
    assert wait_until(lambda: all(_status_of(rpm, name) == "EXITED" for name in names), 30)  # idle, unasked
    base = f"http://127.0.0.1:{proxy_port}"

    # A 20 MB file for the sleeping audio pod, as a job: 202 at once, then the pod wakes and the result stays.
    body, digest = _chunks(20 * 1024 * 1024)
    accepted = requests.post(f"{base}/pods/audio/upload", data=body, timeout=TIMEOUT,
                             headers={"Prefer": "respond-async", "Content-Type": "application/octet-stream"})
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert (job["pod"], job["position"]) == ("audio", 1) and accepted.headers["Location"] == job["status_url"]

    def job_state() -> str:
        return str(requests.get(base + job["status_url"], timeout=TIMEOUT).json()["state"])

    assert wait_until(lambda: job_state() == "done", 60)
    result = requests.get(base + job["result_url"], timeout=TIMEOUT).json()
    assert (result["sha256"], result["bytes"]) == (digest, 20 * 1024 * 1024)

    # ComfyUI's page at its own port wakes its pod; the LLM wakes for a chat; neither woke the other.
    page = requests.get(f"http://127.0.0.1:{listen_port}/", timeout=TIMEOUT)
    assert page.status_code == 200 and "/prompt" in page.text and "X-RPM-Cold-Start" in page.headers
    chat = requests.post(f"{base}/v1/chat/completions", timeout=TIMEOUT, json={
        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert chat.status_code == 200 and "X-RPM-Cold-Start" in chat.headers
    # Then, nobody asking, each stops on its own idle clock.
    assert wait_until(lambda: all(_status_of(rpm, name) == "EXITED" for name in names), 30)


def test_report_and_simulate_count_the_requests_of_an_http_pod(rpm: Rpm, ports: tuple[int, int]) -> None:
    # Issue #20: the proxy logs pass-through requests with cache "-"; `rpm report` counted none of them.
    proxy_port, listen_port = ports
    write(rpm, proxy_port, listen_port)
    _start(rpm, "comfy")
    for _ in range(3):
        assert requests.get(f"http://127.0.0.1:{proxy_port}/pods/comfy/", timeout=TIMEOUT).status_code == 200
    assert requests.post(f"http://127.0.0.1:{listen_port}/prompt", json={"workflow": 1}, timeout=TIMEOUT,
                         headers={"Origin": f"http://127.0.0.1:{listen_port}"}).status_code == 200
    log = rpm.home / "state" / "logs" / "requests.jsonl"
    assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 4)
    assert {json.loads(line)["cache"] for line in log.read_text().splitlines()} == {"-"}

    report = rpm.json("report", "--since", "1h", "--pod", "comfy")["data"]

    assert report["pods"][0]["totals"]["requests"] == 4
    replayed = rpm.run("simulate", "--from-log", "--pod", "comfy", "--since", "1h")
    assert replayed.returncode == 0, replayed.stderr
    assert "4 requests from the request log" in replayed.stdout
