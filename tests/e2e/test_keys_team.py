"""The team of issue #14 end to end, in real processes: the emulator, `rpm keys`, the foreground `rpm proxy`
and plain HTTP. An admin, a developer limited to the coder pod at 60 rpm, and a script with a daily
budget: each key reaches only its pods (a refused request starts nothing in the emulator), the script's
spent budget stops it and no one else, a revoke reaches the running proxy within a second, the counters
and the spent budget survive a proxy restart, and no secret is in any output, log or file."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.proxy_fakes import free_port
from tests.support.rpm import Rpm, fast_config, health_answers, wait_until

pytestmark = pytest.mark.e2e

CHAT, CODER = "org/chat-7b", "org/coder-1.5b"
PODS = {"chat": {"model": CHAT, "gpu_types": ["NVIDIA GeForce RTX 4090"]},
        "coder": {"model": CODER, "gpu_types": ["NVIDIA GeForce RTX 4090"]}}


@contextlib.contextmanager
def foreground_proxy(rpm: Rpm, port: int, outputs: list[str]) -> Iterator[subprocess.Popen[str]]:
    """`rpm proxy` until the block ends, then SIGTERM (a graceful stop: its counters are written)."""
    process = rpm.popen("proxy")
    try:
        assert wait_until(lambda: health_answers(f"http://127.0.0.1:{port}"), 20), "the proxy did not come up"
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        out, err = process.communicate(timeout=30)
        outputs += [out, err]


def ask(port: int, token: str, model: str, **extra: Any) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                         headers={"Authorization": f"Bearer {token}"},
                         json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
                               **extra})


def pods_of(rpm: Rpm) -> set[str]:
    """The config pods the emulator has (or had) a pod for."""
    return {str(pod["name"]).split("-")[1] for pod in rpm.sandbox.pods()}


def test_a_team_of_three_keys_against_the_emulator(rpm: Rpm) -> None:
    port = free_port()
    rpm.config_path.write_text(fast_config(proxy_port=port, pods=PODS), encoding="utf-8")
    outputs: list[str] = []

    def created(*args: str) -> str:
        result = rpm.run("keys", "create", *args, "--json")
        assert result.returncode == 0, result.stderr
        import json

        return str(json.loads(result.stdout)["data"]["secret"])

    admin = created("admin", "--role", "admin")
    dev = created("dev", "--pods", "coder", "--rpm", "60")
    script = created("script", "--daily-budget-usd", "0.000001")  # any work spends more than this
    secrets = (admin, dev, script)

    with foreground_proxy(rpm, port, outputs):
        # The developer reaches the coder pod (waking it) and not the chat pod, which never starts.
        assert ask(port, dev, CODER).status_code == 200
        refused = ask(port, dev, CHAT, stream=True)
        assert refused.status_code == 403
        assert "may not use pod 'chat'; it may use pods coder" in refused.json()["error"]["message"]
        assert pods_of(rpm) == {"coder"}
        # The admin reaches both.
        assert ask(port, admin, CHAT).status_code == 200
        assert pods_of(rpm) == {"chat", "coder"}

        # The script works until its budget is spent; then 429 saying when it resets, and others go on.
        answers = []
        assert wait_until(lambda: answers.append(ask(port, script, CODER)) or answers[-1].status_code == 429, 20)
        spent = answers[-1]
        assert spent.json()["error"]["code"] == "daily_budget_exceeded" and "resets at" in spent.json()["error"][
            "message"]
        assert ask(port, dev, CODER).status_code == 200 and ask(port, admin, CODER).status_code == 200

        # A revoke reaches the running proxy within a second.
        revoked = rpm.run("keys", "revoke", "dev")
        assert revoked.returncode == 0
        outputs += [revoked.stdout, revoked.stderr]
        assert wait_until(lambda: ask(port, dev, CODER).status_code == 401, 1.0, interval=0.05)

    usage = rpm.json("keys", "usage")["data"]["keys"]
    before = {entry["name"]: entry for entry in usage}
    # dev: its two requests, and any the proxy served in the moment before the revoke reached it.
    assert before["dev"]["requests"] >= 2 and before["dev"]["refused"] == 1 and before["dev"]["status"] == "revoked"
    assert before["script"]["spend_usd"] > 0.000001 and before["admin"]["requests"] == 2

    with foreground_proxy(rpm, port, outputs):
        assert ask(port, script, CODER).status_code == 429  # the restart did not reset the budget
        assert ask(port, admin, CODER).status_code == 200
    after = {entry["name"]: entry for entry in rpm.json("keys", "usage")["data"]["keys"]}
    assert after["admin"]["requests"] == 3 and after["script"]["spend_usd"] == before["script"]["spend_usd"]
    assert after["dev"]["requests"] == before["dev"]["requests"]  # a revoked key's usage stays its own

    for command in (("keys", "list"), ("keys", "list", "--json"), ("keys", "usage"), ("status",)):
        result = rpm.run(*command)
        outputs += [result.stdout, result.stderr]
    for secret in secrets:
        assert all(secret not in text for text in outputs)
        for path in rpm.home.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    requests_logged = (rpm.home / "state" / "logs" / "requests.jsonl").read_text()
    assert '"key":"script"' in requests_logged and '"key":"dev"' in requests_logged
