"""Issue #20, money and truth: what rpm says about a pod's billing is what RunPod bills, end to end on the emulator.

Each test pins one finding: the command, its exit code, what it says, and what is left billing at the emulator
and counted in state afterwards.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from tests.support.clock import WallClockFile
from tests.support.rpm import Rpm

pytestmark = pytest.mark.e2e


def _start(rpm: Rpm) -> str:
    return str(rpm.json("start", "--no-proxy")["data"]["pod"]["id"])


def _status_of(rpm: Rpm, pod_id: str) -> str:
    return next((str(p["status"]) for p in rpm.sandbox.pods() if p["id"] == pod_id), "gone")


def _lock(rpm: Rpm, pod_id: str) -> None:
    """Lock the pod as a user would in the RunPod console (PATCH locked: "prevents stopping or resetting")."""
    answer = rpm.sandbox.api("PATCH", f"/v2/pods/{pod_id}", json={"locked": True})
    assert answer.status_code == 200 and answer.json()["locked"] is True, answer.text
    assert "stop" not in answer.json()["actions"]


def _pass_the_deadline(rpm: Rpm, wall_clock: WallClockFile) -> None:
    """Move the subprocesses' test clock a second past the lease's deadline (no sleep, no race with a slow start)."""
    deadline = datetime.fromisoformat(rpm.record()["lease"]["deadline"].replace("Z", "+00:00"))
    wall_clock.set(deadline + timedelta(seconds=1))


# --- 1. a locked pod is never reported stopped while it bills ---------------------------------------------


def test_a_locked_pod_is_reported_locked_not_stopped_and_its_spend_keeps_counting(rpm: Rpm) -> None:
    rpm.write_config(idle_timeout_seconds=1, idle_action="stop")
    pod_id = _start(rpm)
    _lock(rpm, pod_id)
    time.sleep(1.3)

    watchdog = rpm.run("watchdog")

    assert watchdog.returncode == 1, (watchdog.stdout, watchdog.stderr)
    assert f"stop {pod_id}: idle for" in watchdog.stdout and "locked" in watchdog.stdout
    assert f"stop {pod_id}" in watchdog.stdout and not any(
        line.startswith(f"stop {pod_id}") and line.endswith("✓") for line in watchdog.stdout.splitlines())
    assert _status_of(rpm, pod_id) == "RUNNING"
    record = rpm.record()
    assert record["pod_id"] == pod_id and record["last_status"] == "RUNNING" and record["cost_per_hour"] > 0
    spent = record["spend_usd"]

    shutdown = rpm.run("shutdown", "--stop")

    assert shutdown.returncode == 1, (shutdown.stdout, shutdown.stderr)
    assert "locked" in shutdown.stderr and "✓" not in shutdown.stdout
    assert _status_of(rpm, pod_id) == "RUNNING"
    record = rpm.record()
    assert record["last_status"] == "RUNNING" and record["cost_per_hour"] > 0
    assert record["spend_usd"] > spent  # still counted
    status = rpm.json("status")["data"]
    assert status["pod"]["status"] == "RUNNING"

    ended = rpm.run("shutdown")  # terminate: RunPod allows it on a locked pod

    assert ended.returncode == 0, ended.stderr
    assert f"terminate pod {pod_id} ✓" in ended.stdout
    assert _status_of(rpm, pod_id) == "gone"


def test_a_runtime_limit_terminates_a_locked_owned_pod_instead_of_stopping_it_and_says_so(
        rpm: Rpm, wall_clock: WallClockFile) -> None:
    rpm.extra_env["RPM_LIMITS_CUTOFF_ACTION"] = "stop"
    rpm.write_config(runtime_seconds=2)
    pod_id = _start(rpm)
    _lock(rpm, pod_id)
    _pass_the_deadline(rpm, wall_clock)

    watchdog = rpm.run("watchdog")

    assert watchdog.returncode == 0, (watchdog.stdout, watchdog.stderr)
    assert f"terminate {pod_id}: runtime limit 2 s reached" in watchdog.stdout
    assert "locked and cannot be stopped" in watchdog.stdout and "✓" in watchdog.stdout
    assert _status_of(rpm, pod_id) == "gone"


# --- 2. raising the spend cap lifts its refusal at once; amounts keep their digits ------------------------


def test_raising_the_spend_cap_by_env_lifts_the_refusal_and_small_amounts_keep_their_digits(rpm: Rpm) -> None:
    rpm.write_config(max_daily_spend_usd=0.0001)  # $0.69/h spends it in about half a second
    pod_id = _start(rpm)
    time.sleep(0.8)

    capped = rpm.run("watchdog")

    assert capped.returncode == 0, capped.stderr
    assert f"terminate {pod_id}: spend cap reached" in capped.stdout and "of $0.0001 today" in capped.stdout
    assert "$0.00 " not in capped.stdout
    refused = rpm.run("start", "--no-proxy")
    assert refused.returncode == 1
    assert "of $0.0001 today" in refused.stderr and "raise max_daily_spend_usd" in refused.stderr
    assert "of $0.00 " not in rpm.run("status").stdout

    raised = rpm.run("start", "--no-proxy", env={"RPM_LIMITS_MAX_DAILY_SPEND_USD": "5"})

    assert raised.returncode == 0, raised.stderr
    assert rpm.record()["lease"] is not None
    rpm.run("shutdown")


# --- 10. a key inside RUNPOD_API_URL is never shown ---------------------------------------------------------


URL_SECRET = "sk-url-SECRET-9d2e"


def test_a_key_inside_runpod_api_url_appears_in_no_output_log_or_state(rpm: Rpm) -> None:
    host = rpm.sandbox.url.split("://", 1)[1]
    with_userinfo = f"http://user:{URL_SECRET}@{host}"
    rpm.extra_env["RUNPOD_API_URL"] = with_userinfo
    outputs = []

    def run(*args: str, env: dict[str, str] | None = None) -> None:
        result = rpm.run(*args, env=env)
        outputs.append((args, result.returncode, result.stdout + result.stderr))

    run("start", "--no-proxy")
    assert outputs[-1][1] == 0, outputs[-1]
    for args in (("status", "-v"), ("status", "--json", "-v"), ("watchdog", "-v"), ("watchdog", "--json")):
        run(*args)
    # Another API than the state's: the "this run talks to …" refusal names both URLs.
    for other in (f"http://user:{URL_SECRET}@127.0.0.1:9/", f"http://127.0.0.1:9/?api_key={URL_SECRET}",
                  f"ftp://user:{URL_SECRET}@127.0.0.1:9/"):
        run("status", "-v", env={"RUNPOD_API_URL": other})
        assert outputs[-1][1] != 0 and "127.0.0.1:9" in outputs[-1][2], outputs[-1]
        run("status", "--json", env={"RUNPOD_API_URL": other})
    run("shutdown")
    assert outputs[-1][1] == 0, outputs[-1]
    # Nothing held any more: the other API is taken, and cannot be reached (the client's own errors).
    run("watchdog", "-v", env={"RUNPOD_API_URL": f"http://user:{URL_SECRET}@127.0.0.1:9/"})
    run("status", "-v", "--json", env={"RUNPOD_API_URL": f"http://user:{URL_SECRET}@127.0.0.1:9/"})

    assert any("this run talks to http://127.0.0.1:9" in text for _args, _code, text in outputs), outputs
    for args, _code, text in outputs:
        assert URL_SECRET not in text, (args, text)
    logs = rpm.home / "state"
    for path in logs.rglob("*"):
        if path.is_file():
            assert URL_SECRET not in path.read_text(encoding="utf-8", errors="replace"), path
