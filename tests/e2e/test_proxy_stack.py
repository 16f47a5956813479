"""The whole stack through real processes: sandbox subprocess, `rpm start` (which spawns the proxy
subprocess), the official openai SDK against the proxy, and `rpm shutdown`.

The in-process proxy tests (test_proxy.py, test_proxy_openai.py) pin the proxy's behaviour with fakes;
these check that the pieces fit: the proxy reads the same config and state as the CLI, its own reconcile
loop enforces idle and the spend cap, a wake resumes the pod once, and no key reaches a log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.support.rpm import Rpm, fast_config, wait_until

pytestmark = pytest.mark.e2e

MODEL = "Qwen/Qwen2.5-Coder-1.5B-Instruct"  # [pod] model's default: the emulated vLLM serves that name
LOCAL_KEY = "sk-local-proxy-key-SECRET-7d21"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def proxy_port(rpm: Rpm) -> Iterator[int]:
    """A free port for this test's proxy; afterwards no proxy of this test is left running."""
    yield free_port()
    # The rpm fixture's `rpm shutdown` ends the pod afterwards; make sure no proxy outlives a failed test.
    pid = _pid_from_file(rpm)
    if pid is not None and not _gone(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: _gone(pid), 15):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def configure(rpm: Rpm, port: int, *, proxy: dict[str, Any] | None = None, **limits: Any) -> None:
    """The e2e config plus a [proxy] table on `port` that reconciles five times a second."""
    rpm.write_config(tables={"proxy": {"port": port, "reconcile_interval_seconds": 0.2, "retry_delay_seconds": 0.05,
                                       **(proxy or {})}}, **limits)


def sdk(port: int, *, key: str = "any-string", max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=max_retries, timeout=30)


def chat(prompt: str = "Say something about pods.") -> list[Any]:
    return [{"role": "user", "content": prompt}]


def _pid_from_file(rpm: Rpm) -> int | None:
    try:
        return int(json.loads((rpm.home / "state" / "proxy.pid").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _live(rpm: Rpm) -> list[dict[str, Any]]:
    return [p for p in rpm.sandbox.pods() if p["status"] != "TERMINATED"]


def _proxy_log(rpm: Rpm) -> str:
    path = rpm.home / "state" / "logs" / "proxy.log"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _request_log(rpm: Rpm) -> list[dict[str, Any]]:
    path = rpm.home / "state" / "logs" / "requests.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _start(rpm: Rpm, port: int) -> dict[str, Any]:
    data = rpm.json("start")["data"]
    assert data["proxy_url"] == f"http://127.0.0.1:{port}/v1", data
    assert data["ready"] is True
    return dict(data)


# ---------------------------------------------------------------------------------------------- tests


def test_start_serves_the_sdk_and_shutdown_stops_proxy_and_pod(rpm: Rpm, proxy_port: int) -> None:
    configure(rpm, proxy_port)
    pod_id = _start(rpm, proxy_port)["pod"]["id"]
    pid = _pid_from_file(rpm)
    assert pid is not None and not _gone(pid)
    health = requests.get(f"http://127.0.0.1:{proxy_port}/health", timeout=5)
    assert health.status_code == 200
    pod = health.json()["pod"]
    assert {key: pod[key] for key in ("pod_id", "status", "ready", "lease_open")} == {
        "pod_id": pod_id, "status": "RUNNING", "ready": True, "lease_open": True}
    assert health.json()["instance"] == {"pid": pid, "state_dir": str(rpm.home / "state"), "config_name": "e2e"}

    chunks = list(sdk(proxy_port).chat.completions.create(
        model=MODEL, messages=chat(), max_tokens=12, stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert 0 < usage.completion_tokens <= 12 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    status = rpm.json("status")["data"]
    assert status["proxy"] == {"pid": pid, "url": f"http://127.0.0.1:{proxy_port}/v1"}
    human = rpm.run("status")
    assert f"pid {pid}" in human.stdout and f":{proxy_port}/v1" in human.stdout

    shut = rpm.json("shutdown")["data"]
    assert shut["proxy_stopped"] is True
    assert [line.split(":")[0] for line in shut["ended"]] == [f"terminate {pod_id}"]
    assert _gone(pid)
    assert not _port_open(proxy_port)
    assert not (rpm.home / "state" / "proxy.pid").exists()
    assert _live(rpm) == []
    assert rpm.json("status")["data"]["proxy"]["pid"] is None
    log_text = _proxy_log(rpm)
    assert "proxy stopped" in log_text and "Traceback" not in log_text
    [line] = [line for line in _request_log(rpm) if line["route"] == "/v1/chat/completions"]
    assert (line["status"], line["pod"], line["pod_id"], line["stream"]) == (200, "e2e", pod_id, True)
    assert (line["tokens_in"], line["tokens_out"]) == (usage.prompt_tokens, usage.completion_tokens)


def test_idle_stop_by_the_proxy_then_twenty_requests_share_one_resume(rpm: Rpm, proxy_port: int) -> None:
    configure(rpm, proxy_port, idle_timeout_seconds=1, idle_action="stop")
    pod_id = _start(rpm, proxy_port)["pod"]["id"]
    # No watchdog runs: only the proxy's own reconcile loop can stop the pod.
    assert wait_until(lambda: [p["status"] for p in _live(rpm)] == ["EXITED"], 15), _live(rpm)
    assert any(e["event"] == "stop" and e["pod_id"] == pod_id and "idle" in e["reason"] for e in rpm.events())
    assert wait_until(lambda: requests.get(f"http://127.0.0.1:{proxy_port}/ready", timeout=5).status_code == 503)
    before = rpm.sandbox.calls()

    client = sdk(proxy_port)
    barrier = threading.Barrier(20)

    def ask(index: int) -> Any:
        barrier.wait(timeout=10)
        return client.chat.completions.with_raw_response.create(
            model=MODEL, messages=chat(f"request {index}"), max_tokens=4)

    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(ask, range(20)))

    after = rpm.sandbox.calls()
    assert after.get("podAction", 0) - before.get("podAction", 0) == 1  # one resume for all twenty
    assert after.get("createPod", 0) == before.get("createPod", 0) == 1
    assert all(reply.status_code == 200 and reply.parse().choices[0].message.content for reply in replies)
    cold_starts = [float(reply.headers["x-rpm-cold-start"]) for reply in replies]
    assert all(seconds > 0 for seconds in cold_starts)
    [pod] = _live(rpm)
    assert pod["id"] == pod_id and pod["status"] == "RUNNING"
    assert rpm.record()["lease"]["opened_by"] == "wake"
    # Requests to the awake pod are served without waiting.
    warm = client.chat.completions.with_raw_response.create(model=MODEL, messages=chat("warm"), max_tokens=4)
    assert "x-rpm-cold-start" not in warm.headers


def test_a_pod_stopped_outside_rpm_is_not_woken_to_list_models_or_to_refuse_a_model(rpm: Rpm,
                                                                                    proxy_port: int) -> None:
    # A reconcile interval longer than the test: the proxy keeps the target of a pod stopped behind its back.
    configure(rpm, proxy_port, proxy={"reconcile_interval_seconds": 3600})
    pod_id = _start(rpm, proxy_port)["pod"]["id"]
    client = sdk(proxy_port)
    assert [model.id for model in client.models.list()] == [MODEL]  # the pod's own answer, remembered
    rpm.sandbox.control(f"pods/{pod_id}/status", {"status": "EXITED"})  # stopped outside rpm
    assert wait_until(lambda: [p["status"] for p in _live(rpm)] == ["EXITED"])
    calls = rpm.sandbox.calls()

    listed = requests.get(f"http://127.0.0.1:{proxy_port}/v1/models", timeout=10)
    assert listed.status_code == 200 and listed.headers["X-RPM-Models"] == "remembered"
    assert [entry["id"] for entry in listed.json()["data"]] == [MODEL]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=chat(), stream=True)
    assert unknown.value.code == "model_not_found" and MODEL in unknown.value.message
    assert rpm.sandbox.calls() == calls  # nothing was started, not even looked up
    assert [p["status"] for p in _live(rpm)] == ["EXITED"]


@pytest.mark.parametrize("sandbox_flags", [["--start-seconds", "1.5", "--model-load-seconds", "1"]])
def test_a_wake_longer_than_the_idle_timeout_is_not_stopped_for_idleness(rpm: Rpm, proxy_port: int) -> None:
    configure(rpm, proxy_port, idle_timeout_seconds=1, idle_action="stop")
    pod_id = _start(rpm, proxy_port)["pod"]["id"]
    assert wait_until(lambda: [p["status"] for p in _live(rpm)] == ["EXITED"], 15), _live(rpm)
    # The resume takes 2.5 s, the idle timeout is 1 s: the waiting request is activity all along.
    reply = sdk(proxy_port).chat.completions.with_raw_response.create(model=MODEL, messages=chat(), max_tokens=4)
    assert reply.status_code == 200 and float(reply.headers["x-rpm-cold-start"]) >= 2.5
    assert [(p["id"], p["status"]) for p in _live(rpm)] == [(pod_id, "RUNNING")]


@pytest.mark.parametrize("sandbox_flags", [["--bill-speed", "100000"]])
def test_spend_cap_refuses_the_wake_with_its_reason(rpm: Rpm, proxy_port: int) -> None:
    configure(rpm, proxy_port, max_daily_spend_usd=1.0, billing_check_seconds=0)
    pod_id = _start(rpm, proxy_port)["pod"]["id"]
    # The emulator bills about $19 a second: the proxy's reconcile loop ends the pod for the cap.
    assert wait_until(lambda: _live(rpm) == [], 15)
    assert any(e["event"] == "terminate" and e["pod_id"] == pod_id and "spend cap" in e["reason"]
               for e in rpm.events())
    creates = rpm.sandbox.calls().get("createPod", 0)

    with pytest.raises(openai.APIStatusError) as refused:
        sdk(proxy_port, max_retries=2).chat.completions.create(model=MODEL, messages=chat(), max_tokens=4)
    assert refused.value.status_code == 503
    assert "spend cap reached" in refused.value.message and "day rolls over" in refused.value.message
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert rpm.sandbox.calls().get("createPod", 0) == creates  # nothing was started
    assert _live(rpm) == []
    recent = requests.get(f"http://127.0.0.1:{proxy_port}/dashboard", timeout=5).json()["recent_requests"]
    assert [row["status"] for row in recent] == [503]  # x-should-retry: false, so the SDK did not retry


@pytest.mark.parametrize("sandbox_flags", [["--token-delay", "0.2"]])
def test_shutdown_lets_a_stream_in_flight_finish_before_the_pod_ends(rpm: Rpm, proxy_port: int) -> None:
    configure(rpm, proxy_port)
    pod_id = _start(rpm, proxy_port)["pod"]["id"]
    pid = _pid_from_file(rpm)
    assert pid is not None
    stream = sdk(proxy_port).chat.completions.create(model=MODEL, messages=chat(), max_tokens=12, stream=True)
    iterator = iter(stream)
    received = [next(iterator), next(iterator)]  # the role chunk and the first token: generation is under way
    outcome: dict[str, Any] = {}

    def read_rest() -> None:
        try:
            for chunk in iterator:
                received.append(chunk)
                if chunk.choices and chunk.choices[0].finish_reason:
                    # The last token is out and the proxy still relays: the pod must still be serving.
                    outcome["pod_at_finish"] = [p["status"] for p in rpm.sandbox.pods() if p["id"] == pod_id]
        except Exception as exc:
            outcome["error"] = exc

    reader = threading.Thread(target=read_rest)
    reader.start()
    shut = rpm.run("shutdown", "--json", timeout=60)
    reader.join(15)
    assert not reader.is_alive(), "the stream did not end"
    assert shut.returncode == 0, shut.stderr
    assert json.loads(shut.stdout)["data"]["proxy_stopped"] is True
    assert "error" not in outcome, outcome
    finish = [c.choices[0].finish_reason for c in received if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])  # the whole answer arrived, to its last chunk
    assert outcome["pod_at_finish"] == ["RUNNING"]  # the proxy drained before the pod was terminated
    assert _gone(pid) and not _port_open(proxy_port)
    assert _live(rpm) == []
    log_text = _proxy_log(rpm)
    assert [line["status"] for line in _request_log(rpm)] == [200]  # written as the proxy stopped
    assert "Traceback" not in log_text and "ERROR" not in log_text


def test_no_key_reaches_the_logs_and_the_upstream_key_only_the_private_state(rpm: Rpm, proxy_port: int) -> None:
    configure(rpm, proxy_port, proxy={"api_keys": [LOCAL_KEY]}, idle_timeout_seconds=1)
    rpm.config_path.chmod(0o600)  # a config holding a key must be private
    _start(rpm, proxy_port)
    client = sdk(proxy_port, key=LOCAL_KEY)
    with pytest.raises(openai.AuthenticationError):
        sdk(proxy_port, key="sk-wrong-local-key-0000").models.list()
    assert MODEL in [model.id for model in client.models.list()]
    assert client.chat.completions.create(model=MODEL, messages=chat(), max_tokens=4).choices
    list(client.chat.completions.create(model=MODEL, messages=chat("stream"), max_tokens=4, stream=True))
    # Idle stop, then a wake: the key travels through the whole cycle once more.
    assert wait_until(lambda: [p["status"] for p in _live(rpm)] == ["EXITED"], 15)
    assert client.chat.completions.create(model=MODEL, messages=chat("again"), max_tokens=4).choices
    upstream_key = rpm.record()["upstream_key"]
    assert upstream_key and len(upstream_key) >= 32
    state_file = rpm.home / "state" / "pod_state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    rpm.run("shutdown")

    state_text = state_file.read_text()
    logs = {path.name: path.read_text() for path in (rpm.home / "state" / "logs").iterdir()}
    assert {"proxy.log", "events.jsonl", "requests.jsonl"} <= set(logs)
    assert {200, 401} <= {line["status"] for line in _request_log(rpm)}
    for name, text in [("pod_state.json", state_text), *logs.items()]:
        assert rpm.sandbox.api_key not in text, name
        assert LOCAL_KEY not in text, name
        assert "sk-wrong-local-key-0000" not in text, name
    for name, text in logs.items():
        assert upstream_key not in text, name
    # Anywhere else under RPM_HOME (cache, catalog, pid file) the upstream key never appears either.
    for path in Path(rpm.home).rglob("*"):
        if path.is_file() and path != state_file:
            assert upstream_key.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("sandbox_flags", [["--start-seconds", "3"]])
def test_a_stop_during_a_wake_answers_its_waiter_retryable_and_a_request_after_it_wakes_the_pod_again(
        rpm: Rpm, proxy_port: int) -> None:
    """Stopped (here by the management API) while a request waits for its wake: that request gets a retryable
    503 (before: `x-should-retry: false`, so the SDKs gave up), and a request sent just after the stop opens a
    new lease and is served (before: it joined the dead wake and got the same final 503). The lifecycle's
    readiness poll is slow (2 s), so the wake notices the closed lease well after the second request came."""
    text = fast_config(proxy_port=proxy_port, startup={"initial_wait_seconds": 0.05, "poll_interval_seconds": 2,
                                                       "ready_timeout_seconds": 60},
                       pod={"name": "e2e", "gpu_types": ["NVIDIA GeForce RTX 4090"]})
    rpm.config_path.write_text(text, encoding="utf-8")
    url = f"http://127.0.0.1:{proxy_port}"
    proxy = rpm.popen("proxy")
    try:
        assert wait_until(lambda: _port_open(proxy_port), 20)
        body = {"model": MODEL, "messages": chat(), "max_tokens": 4}
        with ThreadPoolExecutor(max_workers=2) as pool:
            waiting = pool.submit(requests.post, f"{url}/v1/chat/completions", json=body, timeout=60)
            assert wait_until(lambda: rpm.record().get("lease") is not None and rpm.record().get("pod_id"), 20)
            stopped = requests.post(f"{url}/rpm/v1/pods/e2e/stop", timeout=30)
            assert stopped.status_code == 200, stopped.text
            after = pool.submit(requests.post, f"{url}/v1/chat/completions", json=body, timeout=60)
            first, second = waiting.result(), after.result()
        assert first.status_code == 503, first.text
        assert first.headers["x-should-retry"] == "true" and "Retry-After" in first.headers
        assert first.json()["error"]["code"] == "pod_stopped"
        assert second.status_code == 200, second.text
        opened = [e["opened_by"] for e in rpm.events() if e["event"] == "lease_opened"]
        assert opened == ["wake", "wake"]  # the request after the stop opened a lease of its own
    finally:
        proxy.terminate()
        proxy.communicate(timeout=20)
