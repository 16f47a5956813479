"""Issue #20, items 17-19: what a cancelled or failed `rpm start` and a refused `rpm shutdown` leave running.

Each test runs the real commands against the emulator and asserts what bills afterwards (the emulator's pods),
what the lease in state says, which proxies run, and what the message told the user.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from runpod_manager.paths import resolve_paths
from runpod_manager.proxy.process import find_proxies
from tests.e2e.test_trust import _edit_record, _foreground_proxy, _free_port, _health, _running, _with_proxy
from tests.support.rpm import Rpm, fast_config, wait_until

pytestmark = pytest.mark.e2e


# ------------------------------------------------------------- 18. shutdown refuses before it changes anything


def test_shutdown_with_the_wrong_api_url_refuses_before_stopping_the_proxy(rpm: Rpm) -> None:
    port = _free_port()
    _with_proxy(rpm, port)
    started = rpm.json("start")["data"]
    proxy_pid = _health(port)["instance"]["pid"]  # type: ignore[index]
    result = rpm.run("shutdown", env={"RUNPOD_API_URL": "http://127.0.0.1:9/v2"})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "nothing was changed" in result.stderr
    assert _health(port)["instance"]["pid"] == proxy_pid  # type: ignore[index]
    assert [p["id"] for p in _running(rpm)] == [started["pod"]["id"]]
    assert rpm.record().get("lease") is not None


def test_shutdown_with_a_revoked_key_refuses_before_stopping_the_proxy(rpm: Rpm) -> None:
    port = _free_port()
    _with_proxy(rpm, port)
    started = rpm.json("start")["data"]
    proxy_pid = _health(port)["instance"]["pid"]  # type: ignore[index]
    result = rpm.run("shutdown", env={"RUNPOD_API_KEY": "sk-revoked-SECRET-0042"})
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "nothing was changed" in result.stderr and "sk-revoked-SECRET-0042" not in result.stderr
    assert _health(port)["instance"]["pid"] == proxy_pid  # type: ignore[index]
    assert [p["id"] for p in _running(rpm)] == [started["pod"]["id"]]
    assert rpm.record().get("lease") is not None


# --------------------------------------------------------- 19. a failed start leaves no lease and no proxy of its own


def _creates(rpm: Rpm) -> int:
    return rpm.sandbox.calls().get("createPod", 0)


def _assert_nothing_left(rpm: Rpm, names: tuple[str, ...], port: int) -> None:
    """No pod billing, no lease open, and no create after a few of a running proxy's reconcile periods."""
    assert _running(rpm) == [], rpm.sandbox.pods()
    assert all(rpm.record(name).get("lease") is None for name in names), rpm.state()
    creates = _creates(rpm)
    time.sleep(1.5)  # five reconcile periods of a proxy (0.3 s), were one running
    assert _creates(rpm) == creates and _running(rpm) == []


def test_a_start_whose_pod_keeps_failing_at_boot_closes_its_lease_and_starts_no_proxy(rpm: Rpm) -> None:
    port = _free_port()
    _with_proxy(rpm, port)
    rpm.sandbox.control("faults", {"fail_boots": 100})
    result = rpm.run("start")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "times while starting" in result.stderr and "lease is closed" in result.stderr
    assert _health(port) is None and find_proxies(resolve_paths(rpm.env()), scan=True) == []
    _assert_nothing_left(rpm, ("e2e",), port)
    assert [p for p in rpm.sandbox.pods() if p["status"] != "TERMINATED"] == []  # the ERROR pod too


def test_a_failed_start_leaves_a_proxy_that_ran_before_it_but_closes_its_lease(rpm: Rpm) -> None:
    port = _free_port()
    _with_proxy(rpm, port)
    with _foreground_proxy(rpm, port) as foreground:
        rpm.sandbox.control("faults", {"fail_boots": 100})
        result = rpm.run("start")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert _health(port)["instance"]["pid"] == foreground.pid  # type: ignore[index]
        _assert_nothing_left(rpm, ("e2e",), port)


def test_a_start_of_several_pods_that_all_fail_starts_no_proxy_and_closes_every_lease(rpm: Rpm) -> None:
    port = _free_port()
    pods = {name: {"model": f"org/{name}-model", "gpu_types": ["NVIDIA GeForce RTX 4090"]} for name in ("a", "b")}
    rpm.config_path.write_text(fast_config(proxy_port=port, pods=pods), encoding="utf-8")
    rpm.sandbox.control("faults", {"fail_boots": 100})
    result = rpm.run("start")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert _health(port) is None and find_proxies(resolve_paths(rpm.env()), scan=True) == []
    _assert_nothing_left(rpm, ("a", "b"), port)


# ------------------------------------------------------------------- 17. Ctrl-C during `rpm start` means cancel


def _interrupt_start(rpm: Rpm, until: str, *args: str) -> tuple[int, str]:
    """Run `rpm start ARGS`, SIGINT it once the record has `until` (its pod id, or a pending create's intent),
    and return its exit code and stderr."""
    process = rpm.popen("start", *args)
    return _interrupt(process, lambda: rpm.record().get(until) is not None)


def _interrupt(process: subprocess.Popen[str], when: Callable[[], bool]) -> tuple[int, str]:
    """SIGINT `process` once `when` holds; its exit code and stderr (it is killed if anything fails)."""
    try:
        assert wait_until(when, 30), "the start never reached the point to interrupt"
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, err


@pytest.mark.parametrize(("idle_action", "ended", "left"), [("stop", "stopped", ["EXITED"]),
                                                          ("terminate", "terminated", [])])
def test_ctrl_c_while_waiting_with_nothing_enforcing_ends_the_pod_and_says_so(
    rpm: Rpm, idle_action: str, ended: str, left: list[str],
) -> None:
    rpm.write_config(idle_action=idle_action)
    rpm.sandbox.control("faults", {"model_load_seconds": 600})  # RUNNING, but the model never answers in time
    seen: list[str] = []  # the record forgets a terminated pod: its id as the start saved it

    def has_pod() -> bool:
        seen.append(rpm.record().get("pod_id") or "")
        return bool(seen[-1])

    code, err = _interrupt(rpm.popen("start", "--no-proxy"), has_pod)
    assert code == 130, err
    pod_id = seen[-1]
    assert f"pod {pod_id} was {ended}" in err and "nothing would enforce its limits" in err, err
    assert "idle stop applies" not in err and "Traceback" not in err
    assert [p["status"] for p in rpm.sandbox.pods()] == left
    assert rpm.record().get("lease") is None


def test_ctrl_c_while_waiting_leaves_the_pod_to_a_running_proxy_and_says_so(rpm: Rpm) -> None:
    port = _free_port()
    _with_proxy(rpm, port, idle_timeout_seconds=600)
    with _foreground_proxy(rpm, port) as foreground:
        rpm.sandbox.control("faults", {"model_load_seconds": 600})
        code, err = _interrupt_start(rpm, "pod_id", "--no-proxy")
        assert code == 130, err
        pod_id = rpm.record()["pod_id"]
        assert f"pod {pod_id} keeps coming up" in err and f"the proxy (pid {foreground.pid}) enforces" in err, err
        assert [p["id"] for p in _running(rpm)] == [pod_id]
        assert rpm.record().get("lease") is not None


def test_ctrl_c_while_waiting_leaves_the_pod_to_a_watchdog_that_cron_runs(rpm: Rpm) -> None:
    assert rpm.run("watchdog").returncode == 0  # cron's last pass: a minute ago at most
    rpm.sandbox.control("faults", {"model_load_seconds": 600})
    code, err = _interrupt_start(rpm, "pod_id", "--no-proxy")
    assert code == 130, err
    assert "the watchdog (cron) enforces its limits" in err, err
    assert [p["id"] for p in _running(rpm)] == [rpm.record()["pod_id"]]


@pytest.mark.parametrize("sandbox_flags", [["--latency", "1.0"]])
def test_ctrl_c_during_the_create_ends_the_pod_it_made_without_a_watchdog(rpm: Rpm) -> None:
    code, err = _interrupt_start(rpm, "intent", "--no-proxy")
    assert code == 130, err
    assert "lease is closed" in err and "Traceback" not in err, err
    rpm.sandbox.control("faults", {"latency_seconds": 0.0})
    assert rpm.record().get("lease") is None
    # No watchdog runs here: what the create made (if it reached RunPod) was ended by the command itself.
    assert _running(rpm) == [], (err, rpm.sandbox.pods())
    if rpm.sandbox.pods():
        assert "that its create made was terminated" in err, err


def test_status_flags_a_pod_past_its_idle_time_that_nothing_enforces(rpm: Rpm) -> None:
    rpm.write_config(idle_timeout_seconds=600)
    rpm.json("start", "--no-proxy")
    status = rpm.json("status")["data"]
    assert status["unenforced"] is None  # within its idle time
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1200))
    lease = rpm.record()["lease"]
    _edit_record(rpm, lease={**lease, "opened_at": past}, last_activity_at=past)
    status = rpm.json("status")["data"]
    assert "past its idle time" in status["unenforced"] and status["watchdog_last_pass_at"] is None
    assert "nothing enforces it" in rpm.run("status").stdout
    # A watchdog that cron runs will enforce it: its pass a minute ago (recorded as `rpm watchdog` does).
    from datetime import UTC, datetime, timedelta

    from runpod_manager.control import note_watchdog_pass

    note_watchdog_pass(resolve_paths(rpm.env()), datetime.now(UTC) - timedelta(minutes=1))
    status = rpm.json("status")["data"]
    assert status["unenforced"] is None and status["watchdog_last_pass_at"] is not None
    assert status["lease"] is not None
