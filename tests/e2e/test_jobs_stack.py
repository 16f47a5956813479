"""Queued jobs through the whole stack: the emulator (a subprocess), `rpm proxy` (a subprocess, stopped with
SIGTERM and started again), a pod that does not exist yet, and a key. The proxy's job logic is pinned
state by state with fakes in test_proxy_jobs.py; this checks the pieces fit: a job wakes (creates) the pod
through the real lifecycle, a restart (graceful, or the proxy killed) queues the job that waited for its pod
again (its request never left the proxy) and runs it and the queued one, a finished job's result outlives a
restart, and no key is written anywhere. (A job whose request was sent fails on restart, never sent twice:
tests/e2e/test_proxy_jobs.py.)
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support import proxy_fakes
from tests.support.rpm import Rpm, wait_until

pytestmark = pytest.mark.e2e

MODEL = "Qwen/Qwen2.5-Coder-1.5B-Instruct"  # what the emulated vLLM serves by default
LOCAL_KEY = "sk-local-jobs-key-SECRET-5e0d"
AUTH = {"Authorization": f"Bearer {LOCAL_KEY}"}
TIMEOUT = 10


@contextlib.contextmanager
def foreground_proxy(rpm: Rpm, url: str, output: list[str]) -> Iterator[subprocess.Popen[str]]:
    """`rpm proxy` in the foreground; stopped with SIGTERM (its graceful stop) when the block ends. What it
    printed is added to `output`."""
    process = rpm.popen("proxy")
    try:
        assert wait_until(lambda: _up(url), 20), "the proxy did not come up"
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            printed = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            printed = process.communicate(timeout=10)
        output.extend(printed)


def _up(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    return False


def job(url: str, job_id: str) -> dict[str, Any]:
    reply = requests.get(f"{url}/rpm/v1/jobs/{job_id}", headers=AUTH, timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def submit(url: str, prompt: str) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": prompt}]}
    reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT,
                          headers={**AUTH, "Prefer": "respond-async"})
    assert reply.status_code == 202, reply.text
    return dict(reply.json())


@pytest.mark.parametrize("sandbox_flags", [["--start-seconds", "1", "--model-load-seconds", "0.5"]])
@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_jobs_wake_the_pod_and_a_proxy_restart_runs_the_one_that_was_waking_and_the_queued_one(
        rpm: Rpm, free_port: int, stop: str) -> None:
    url = f"http://127.0.0.1:{free_port}"
    rpm.write_config(tables={"proxy": {"port": free_port, "reconcile_interval_seconds": 0.2,
                                       "api_keys": [LOCAL_KEY]}})
    rpm.config_path.chmod(0o600)  # a config holding a key must be private
    output: list[str] = []
    with foreground_proxy(rpm, url, output) as proxy:
        assert requests.post(f"{url}/v1/chat/completions", json={}, headers={"Prefer": "respond-async"},
                             timeout=TIMEOUT).status_code == 401
        in_flight = submit(url, "in flight")
        queued = submit(url, "queued")
        assert (in_flight["state"], in_flight["position"]) == ("queued", 1)
        assert (queued["state"], queued["position"]) == ("queued", 1)  # behind the first, which started
        # No pod yet: the first job's request creates one and waits for it (1.5 s in the emulator).
        assert wait_until(lambda: job(url, in_flight["id"])["state"] == "waking", TIMEOUT)
        assert job(url, queued["id"])["state"] == "queued"
        if stop == "kill":  # no graceful stop: the store's recovery at the next open decides
            proxy.kill()
            proxy.wait(timeout=20)
    with foreground_proxy(rpm, url, output):
        assert wait_until(lambda: job(url, queued["id"])["state"] == "done", 30)
        # Its request never left the proxy (the pod was still waking): queued again, run once, first.
        woken = job(url, in_flight["id"])
        assert woken["state"] == "done" and woken["response"]["status"] == 200, woken
        assert woken["finished_at"] <= job(url, queued["id"])["finished_at"]
        done = job(url, queued["id"])
        assert done["response"]["status"] == 200 and done["response"]["body"]["choices"][0]["message"]["content"]
        pods = requests.get(f"{url}/rpm/v1/pods/e2e", headers=AUTH, timeout=TIMEOUT).json()
        assert (pods["jobs_queued"], pods["jobs_running"], pods["ready"]) == (0, 0, True)
    with foreground_proxy(rpm, url, output):  # a finished job's result outlives a restart
        result = requests.get(f"{url}/rpm/v1/jobs/{queued['id']}/result", headers=AUTH, timeout=TIMEOUT)
        assert result.status_code == 200 and result.json() == done["response"]["body"]
    logged = [line for line in (rpm.home / "state" / "logs" / "requests.jsonl").read_text().splitlines()
              if '"/v1/chat/completions"' in line]
    # The replays that ran (200), and the two submits (202) unless the proxy was killed before writing them.
    assert len(logged) >= (4 if stop == "terminate" else 2)  # the request log sees jobs
    proxy_log = "".join(output)
    assert "job job_" in proxy_log and "Traceback" not in proxy_log
    assert in_flight["id"] not in proxy_log and queued["id"] not in proxy_log  # an id reads its job: never logged
    for path in rpm.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert LOCAL_KEY.encode() not in data or path == rpm.config_path, path
            assert rpm.sandbox.api_key.encode() not in data, path


@pytest.fixture
def free_port() -> int:
    return proxy_fakes.free_port()
