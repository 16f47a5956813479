"""The watchdog and its policies, end to end against the emulator with short durations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from tests.support.clock import WallClockFile
from tests.support.rpm import Rpm, wait_until

pytestmark = pytest.mark.e2e


def _live(rpm: Rpm) -> list[dict[str, object]]:
    return [p for p in rpm.sandbox.pods() if p["status"] != "TERMINATED"]


def _start(rpm: Rpm) -> str:
    return str(rpm.json("start", "--no-proxy")["data"]["pod"]["id"])


def _pass_the_deadline(rpm: Rpm, wall_clock: WallClockFile) -> None:
    """Move the subprocesses' test clock a second past the lease's deadline (no sleep, no race with a slow start)."""
    deadline = datetime.fromisoformat(rpm.record()["lease"]["deadline"].replace("Z", "+00:00"))
    wall_clock.set(deadline + timedelta(seconds=1))


def test_nothing_to_do_is_silent_and_costs_one_call(rpm: Rpm) -> None:
    _start(rpm)
    rpm.run("watchdog")  # settle: the first pass after a start may read billing
    before = sum(rpm.sandbox.calls().values())
    result = rpm.run("watchdog")
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""  # cron mails nothing
    assert sum(rpm.sandbox.calls().values()) - before == 1
    verbose = rpm.run("watchdog", "-v")
    assert "state: pod" in verbose.stdout and "lease open" in verbose.stdout


def test_runtime_limit_fires(rpm: Rpm, wall_clock: WallClockFile) -> None:
    rpm.write_config(runtime_seconds=2)
    pod_id = _start(rpm)
    _pass_the_deadline(rpm, wall_clock)
    result = rpm.run("watchdog")
    assert result.returncode == 0, result.stderr
    assert f"terminate {pod_id}: runtime limit 2 s reached ✓" in result.stdout
    assert _live(rpm) == []
    events = [e for e in rpm.events() if e["event"] == "terminate"]
    assert events and events[-1]["reason"] == "runtime limit 2 s reached" and events[-1]["ok"] is True
    assert rpm.run("watchdog").stdout == ""
    refused_again = rpm.json("status")["data"]
    assert refused_again["lease"] is None and "runtime limit" in refused_again["last_lease_end_reason"]


def test_daily_cutoff_fires(rpm: Rpm, wall_clock: WallClockFile) -> None:
    # On the subprocesses' test clock (no sleep: a slow `rpm start` cannot let the cutoff pass before it).
    cutoff = (wall_clock.now + timedelta(minutes=10)).strftime("%H:%M:%S")
    rpm.write_config(daily_cutoff=cutoff, timezone="UTC")
    pod_id = _start(rpm)
    deadline = rpm.record()["lease"]["deadline"]
    assert deadline.endswith(f"{cutoff}Z")  # min(opened + runtime, next cutoff)
    wall_clock.advance(10 * 60 + 1)
    data = rpm.json("watchdog")["data"]
    kinds = [(a["kind"], a["pod_id"]) for a in data["applied"]]
    assert ("terminate", pod_id) in kinds and ("close_lease", None) in kinds
    assert any("daily cutoff" in a["reason"] for a in data["plan"])
    assert _live(rpm) == []


def test_idle_stop_then_wake_by_start(rpm: Rpm, wall_clock: WallClockFile) -> None:
    rpm.write_config(idle_timeout_seconds=1, idle_action="stop")
    pod_id = _start(rpm)
    wall_clock.advance(1.3)
    result = rpm.run("watchdog")
    assert f"stop {pod_id}: idle for" in result.stdout
    [pod] = _live(rpm)
    assert pod["status"] == "EXITED"
    assert rpm.run("watchdog").stdout == ""  # a stopped pod with a closed lease stays stopped
    resumed = rpm.json("start", "--no-proxy")["data"]
    assert resumed["resumed"] is True and resumed["pod"]["id"] == pod_id and resumed["ready"] is True


@pytest.mark.parametrize("sandbox_flags", [["--bill-speed", "100000"]])
def test_spend_cap_terminates_and_refuses(rpm: Rpm) -> None:
    rpm.write_config(max_daily_spend_usd=1.0, billing_check_seconds=0)
    pod_id = _start(rpm)
    time.sleep(0.5)  # the emulator bills $0.69/h × 100000: about $19 a second
    result = rpm.run("watchdog")
    assert f"terminate {pod_id}: spend cap reached" in result.stdout
    assert _live(rpm) == []
    refused = rpm.run("start", "--no-proxy")
    assert refused.returncode == 1
    assert "spend cap reached" in refused.stderr and "day rolls over" in refused.stderr
    assert _live(rpm) == []


def test_resume_refused_creates_replacement_and_removes_old(rpm: Rpm) -> None:
    old_id = _start(rpm)
    rpm.json("shutdown", "--stop")
    rpm.sandbox.control(f"pods/{old_id}/take-host", {})
    started = rpm.json("start", "--no-proxy")["data"]
    new_id = started["pod"]["id"]
    assert new_id != old_id and started["ready"] is True
    assert [p["id"] for p in _live(rpm)] == [new_id]
    assert rpm.sandbox.api("GET", f"/v2/pods/{old_id}").status_code == 404
    kinds = [e["event"] for e in rpm.events()]
    assert "replace" in kinds


def test_crash_between_create_and_save_is_adopted(rpm: Rpm) -> None:
    rpm.sandbox.control("faults", {"latency_seconds": 1.0, "latency_rate": 1.0})
    process = rpm.popen("start", "--no-proxy")
    try:
        assert wait_until(lambda: bool(rpm.record().get("intent")), 20), "rpm start never saved its intent"
        # The create is in flight (the emulator holds it for a second): kill rpm before it can save the id.
        time.sleep(0.4)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    rpm.sandbox.control("faults", {"latency_seconds": 0.0})
    assert wait_until(lambda: len(_live(rpm)) == 1, 10), "the emulator should have created the pod"
    record = rpm.record()
    assert record["intent"] is not None and record["pod_id"] is None
    result = rpm.run("watchdog")
    assert "adopt" in result.stdout, result.stdout + result.stderr
    [pod] = _live(rpm)
    assert rpm.record()["pod_id"] == pod["id"] and rpm.record()["intent"] is None
    rpm.run("watchdog")
    assert len(_live(rpm)) == 1
    assert rpm.sandbox.calls().get("createPod") == 1


def test_ten_watchdogs_at_once_exactly_one_acts(rpm: Rpm, wall_clock: WallClockFile) -> None:
    rpm.write_config(runtime_seconds=2)
    _start(rpm)
    _pass_the_deadline(rpm, wall_clock)
    before = rpm.sandbox.calls().get("deletePod", 0)
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: rpm.run("watchdog", "--json"), range(10)))
    documents = [json.loads(r.stdout) for r in results]
    acted = [d for d in documents if any(a["kind"] == "terminate" and a["ok"] for a in d["data"]["applied"])]
    assert len(acted) == 1
    assert all(r.returncode == 0 for r in results)
    assert rpm.sandbox.calls().get("deletePod", 0) - before == 1
    assert _live(rpm) == []


def test_limit_enforced_despite_flaky_api(rpm: Rpm, wall_clock: WallClockFile) -> None:
    rpm.write_config(runtime_seconds=2)
    _start(rpm)
    _pass_the_deadline(rpm, wall_clock)
    rpm.sandbox.control("faults", {"error_rate": 0.3, "rate_limit": 3, "retry_after_seconds": 1})
    passes = 0
    while _live(rpm) and passes < 6:
        rpm.run("watchdog")
        passes += 1
    rpm.sandbox.control("faults", {"error_rate": 0.0, "rate_limit": 0})
    assert _live(rpm) == [], f"still running after {passes} passes"
    assert passes <= 4
    assert rpm.sandbox.calls().get("createPod") == 1


def test_orphans_reported_then_swept_never_foreign(rpm: Rpm) -> None:
    assert rpm.run("watchdog").returncode == 0  # the state directory (and its install id) exists
    install = rpm.state()["install_id"]
    body = {"image": "vllm/vllm-openai:latest", "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}}
    orphan = rpm.sandbox.api("POST", "/v2/pods", json={"name": f"rpm-e2e-{install}-0a0a0a", **body}).json()
    other_config = rpm.sandbox.api("POST", "/v2/pods", json={"name": f"rpm-other-{install}-123456", **body}).json()
    other_install = rpm.sandbox.api("POST", "/v2/pods", json={"name": "rpm-e2e-zzzzzzzz-0a0a0a", **body}).json()
    foreign = rpm.sandbox.api("POST", "/v2/pods", json={"name": "notebook", **body}).json()
    report = rpm.run("watchdog", "--sweep", "--report-orphans-only")
    assert f"report_orphan {orphan['id']}" in report.stdout
    assert len(_live(rpm)) == 4
    dry = rpm.run("watchdog", "--sweep", "--dry-run")
    assert "terminate_orphan" in dry.stdout and len(_live(rpm)) == 4
    swept = rpm.run("watchdog", "--sweep")
    assert f"terminate_orphan {orphan['id']}" in swept.stdout
    assert {p["id"] for p in _live(rpm)} == {other_config["id"], other_install["id"], foreign["id"]}


def test_pod_guard_removes_the_pod_with_no_rpm_running(rpm: Rpm) -> None:
    rpm.write_config(runtime_seconds=3, pod_guard="true")
    pod_id = _start(rpm)
    [pod] = _live(rpm)
    assert str(pod["args"]).startswith("sh -c ") and "RUNPOD_POD_ID" in str(pod["args"])
    # No watchdog, no proxy: only the guard inside the pod can end it.
    assert wait_until(lambda: rpm.sandbox.api("GET", f"/v2/pods/{pod_id}").status_code == 404, 20, 0.2)
    assert _live(rpm) == []
    # The next watchdog notices the pod is gone and, the lease being past its deadline, creates nothing.
    rpm.run("watchdog")
    assert _live(rpm) == []


def test_dry_run_changes_nothing(rpm: Rpm, wall_clock: WallClockFile) -> None:
    rpm.write_config(runtime_seconds=2)
    pod_id = _start(rpm)
    _pass_the_deadline(rpm, wall_clock)
    before = {k: v for k, v in rpm.sandbox.calls().items() if k not in {"getPod", "listPods"}}
    dry = rpm.run("watchdog", "--dry-run")
    assert f"terminate {pod_id}: runtime limit" in dry.stdout
    after = {k: v for k, v in rpm.sandbox.calls().items() if k not in {"getPod", "listPods"}}
    assert before == after and len(_live(rpm)) == 1
    assert rpm.record()["lease"] is not None
    assert os.environ.get("RPM_HOME")
    subprocess.run(rpm.command("watchdog"), env=rpm.env(), check=True, capture_output=True)
    assert _live(rpm) == []


def test_a_limit_that_cannot_be_enforced_is_an_alarm(rpm: Rpm, wall_clock: WallClockFile) -> None:
    rpm.write_config(runtime_seconds=2, api_max_retries=0)
    pod_id = _start(rpm)
    _pass_the_deadline(rpm, wall_clock)
    rpm.sandbox.control("faults", {"error_rate": 1.0})
    failed = rpm.run("watchdog")
    # cron mails only on a non-zero exit: this is the one case that must reach the owner.
    assert failed.returncode != 0, failed.stdout + failed.stderr
    assert "runtime limit" in failed.stdout + failed.stderr and "Traceback" not in failed.stderr
    assert [p["id"] for p in _live(rpm)] == [pod_id]
    rpm.sandbox.control("faults", {"error_rate": 0.0})
    recovered = rpm.run("watchdog")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert _live(rpm) == []


def test_an_api_outage_with_nothing_due_stays_quiet(rpm: Rpm) -> None:
    rpm.write_config(api_max_retries=0)
    _start(rpm)
    rpm.run("watchdog")
    rpm.sandbox.control("faults", {"error_rate": 1.0})
    result = rpm.run("watchdog")
    rpm.sandbox.control("faults", {"error_rate": 0.0})
    # Nothing was due, so a RunPod blip must not mail the owner every five minutes; it is logged instead.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert any(e["event"] in ("observe_failed", "list_failed") for e in rpm.events()), rpm.events()
