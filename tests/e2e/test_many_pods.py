"""Many pods in one config (issue #12), end to end against the emulator: each pod on its own lease and
limits, one RunPod call per watchdog pass, an account-wide spend cap, an adopted pod that rpm never creates
or terminates, and one pod's failure never blocking the others' enforcement."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.clock import WallClockFile
from tests.support.rpm import Rpm, fast_config, wait_until

pytestmark = pytest.mark.e2e


def write(rpm: Rpm, pods: dict[str, dict[str, Any]], *, idle: int = 0, cap: float = 0) -> None:
    tables = {name: {"model": f"org/{name}-model", "gpu_types": ["NVIDIA GeForce RTX 4090", "NVIDIA L40S"],
                     **{key: value for key, value in keys.items() if key != "limits" or value}}
              for name, keys in pods.items()}
    text = fast_config(limits={"idle_timeout_seconds": idle, "max_daily_spend_usd": cap}, pods=tables)
    rpm.config_path.write_text(text, encoding="utf-8")


def live(rpm: Rpm) -> dict[str, str]:
    return {str(p["name"]): str(p["status"]) for p in rpm.sandbox.pods() if p["status"] != "TERMINATED"}


def records(rpm: Rpm) -> dict[str, dict[str, Any]]:
    return dict(rpm.state().get("pods", {}))


def test_two_pods_start_alone_or_together_and_status_has_a_row_each(rpm: Rpm) -> None:
    write(rpm, {"chat": {}, "coder": {}})
    one = rpm.json("start", "coder", "--no-proxy")["data"]
    assert one["created"] is True and one["pod"]["name"].startswith("rpm-coder-")
    assert set(records(rpm)) == {"coder"}
    both = rpm.json("start", "--no-proxy")["data"]
    assert {pod["name"] for pod in both["pods"]} == {"chat", "coder"} and both["errors"] == []
    assert sorted(name.split("-")[1] for name in live(rpm)) == ["chat", "coder"]
    status = rpm.json("status")["data"]
    assert [pod["name"] for pod in status["pods"]] == ["chat", "coder"]
    assert all(pod["ready"] for pod in status["pods"]) and status["account"]["spend_today_usd"] >= 0
    human = rpm.run("status")
    assert "chat" in human.stdout and "coder" in human.stdout and "all pods" in human.stdout
    shut = rpm.json("shutdown", "chat")["data"]
    assert len(shut["ended"]) == 1 and records(rpm)["coder"]["lease"] is not None
    assert [name.split("-")[1] for name in live(rpm)] == ["coder"]
    assert rpm.json("shutdown")["ok"] is True and live(rpm) == {}


def test_a_watchdog_pass_over_many_pods_costs_one_call_and_each_idles_on_its_own_clock(rpm: Rpm) -> None:
    write(rpm, {"a": {}, "b": {}, "c": {}}, idle=600)
    rpm.json("start", "--no-proxy")
    rpm.run("watchdog")  # settle
    before = sum(rpm.sandbox.calls().values())
    quiet = rpm.run("watchdog")
    assert quiet.returncode == 0 and quiet.stdout == "", quiet.stdout
    assert sum(rpm.sandbox.calls().values()) - before == 1  # one GET /v2/pods for three pods
    # Twenty minutes pass (the leases were opened then); only b saw a request since: a and c stop, b runs on.
    from runpod_manager.paths import resolve_paths
    from runpod_manager.state import StateStore

    store = StateStore(resolve_paths({"RPM_HOME": str(rpm.home)}))
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1200))
    with store.lock(wait_seconds=5):
        state = json.loads(store.path.read_text())
        for name in ("a", "b", "c"):
            state["pods"][name]["lease"]["opened_at"] = past
            state["pods"][name]["last_activity_at"] = past
        state["pods"]["b"]["last_activity_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        store.path.write_text(json.dumps(state))
    acted = rpm.run("watchdog")
    assert acted.returncode == 0, acted.stderr
    assert "a: stop" in acted.stdout and "c: stop" in acted.stdout and "b:" not in acted.stdout
    statuses = {name.split("-")[1]: status for name, status in live(rpm).items()}
    assert statuses == {"a": "EXITED", "b": "RUNNING", "c": "EXITED"}
    assert rpm.run("shutdown").returncode == 0


def test_the_account_cap_ends_every_pod_and_refuses_starts(rpm: Rpm) -> None:
    write(rpm, {"a": {"limits": {"max_daily_spend_usd": 100.0}}, "b": {}}, cap=1.0)
    rpm.json("start", "--no-proxy")
    from runpod_manager.paths import resolve_paths
    from runpod_manager.state import StateStore

    store = StateStore(resolve_paths({"RPM_HOME": str(rpm.home)}))
    with store.lock(wait_seconds=5):  # a spent 0.6 and b 0.5 today: each under its own cap, 1.1 together
        state = json.loads(store.path.read_text())
        state["pods"]["a"].update(spend_usd=0.6, billed_usd=0.6)
        state["pods"]["b"].update(spend_usd=0.5, billed_usd=0.5)
        store.path.write_text(json.dumps(state))
    result = rpm.run("watchdog")
    assert result.returncode == 0, result.stderr
    assert "account spend cap reached" in result.stdout
    assert live(rpm) == {}
    refused = rpm.run("start", "a", "--no-proxy")
    assert refused.returncode == 1 and "account spend cap" in refused.stderr
    assert live(rpm) == {}


def _own_pod(rpm: Rpm, name: str = "my-console-pod") -> str:
    body = {"name": name, "image": "vllm/vllm-openai:latest", "args": "--model org/mine --port 8000",
            "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "ports": ["8000/http"]}
    created = rpm.sandbox.api("POST", "/v2/pods", json=body)
    assert created.status_code == 201, created.text
    pod_id = str(created.json()["id"])
    assert rpm.sandbox.api("POST", f"/v2/pods/{pod_id}/action", json={"action": "stop"}).status_code == 200
    return pod_id


def test_an_adopted_pod_is_resumed_stopped_idle_and_never_terminated(rpm: Rpm, wall_clock: WallClockFile) -> None:
    pod_id = _own_pod(rpm)
    write(rpm, {"mine": {"model": "org/mine", "pod_id": pod_id}}, idle=1)
    started = rpm.json("start", "--no-proxy")["data"]
    assert started["resumed"] is True and started["pod"]["id"] == pod_id and started["ready"] is True
    assert len(rpm.sandbox.pods()) == 1  # nothing was created
    wall_clock.advance(1.2)  # past idle_timeout_seconds on the subprocesses' test clock
    assert rpm.run("watchdog").returncode == 0
    assert live(rpm) == {"my-console-pod": "EXITED"}
    rpm.json("start", "--no-proxy")
    shut = rpm.json("shutdown", "--all")["data"]
    assert [line.split(":")[0] for line in shut["ended"]] == [f"stop {pod_id}"]
    assert live(rpm) == {"my-console-pod": "EXITED"}  # stopped, never terminated
    assert rpm.json("shutdown", "--all")["ok"] is True and live(rpm) == {"my-console-pod": "EXITED"}


def test_an_adopted_id_that_does_not_exist_is_a_clear_error_not_a_create(rpm: Rpm) -> None:
    write(rpm, {"mine": {"pod_id": "doesnotexist42"}})
    result = rpm.run("start", "--no-proxy")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "doesnotexist42" in result.stderr and "does not exist" in result.stderr
    assert rpm.sandbox.pods() == [] and records(rpm).get("mine", {}).get("lease") is None


def test_one_pods_failure_never_blocks_the_others_enforcement(rpm: Rpm, wall_clock: WallClockFile) -> None:
    pod_id = _own_pod(rpm)
    write(rpm, {"mine": {"model": "org/mine", "pod_id": pod_id, "limits": {"idle_timeout_seconds": 3600}},
                "other": {}}, idle=1)
    rpm.json("start", "--no-proxy")
    rpm.sandbox.api("DELETE", f"/v2/pods/{pod_id}")  # the adopted pod disappears behind rpm's back
    wall_clock.advance(1.2)  # past idle_timeout_seconds on the subprocesses' test clock
    result = rpm.run("watchdog")
    assert result.returncode == 1, (result.stdout, result.stderr)  # the alarm for the adopted pod
    assert "no longer exists" in result.stdout
    assert [status for name, status in live(rpm).items() if name.startswith("rpm-other-")] == ["EXITED"]


def test_a_pod_removed_from_the_config_is_reported_and_ended_by_shutdown_all(rpm: Rpm) -> None:
    write(rpm, {"keep": {}, "gone": {}})
    rpm.json("start", "--no-proxy")
    write(rpm, {"keep": {}, "other": {}})
    status = rpm.json("status")["data"]
    assert status["unconfigured"] == ["gone"]
    assert any(name.startswith("rpm-gone-") for name in live(rpm))
    shut = rpm.json("shutdown", "--all")["data"]
    assert any("rpm-gone-" in line for line in shut["orphans_terminated"])
    assert not any(name.startswith("rpm-gone-") for name in live(rpm))
    assert wait_until(lambda: live(rpm) == {}, 5)


def test_refresh_catalog_checks_every_pod(rpm: Rpm) -> None:
    write(rpm, {"good": {}, "bad": {"gpu_types": ["NVIDIA GeForce RTX 4099"]}})
    result = rpm.run("refresh-catalog")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "pod good: ✓" in result.stdout and "pod bad:" in result.stdout and "4099" in result.stdout
    data = rpm.json("refresh-catalog", expect_exit=1)["data"]
    assert {pod["name"]: bool(pod["problems"]) for pod in data["pods"]} == {"good": False, "bad": True}


def test_init_pods_writes_a_two_pod_example_that_loads(rpm: Rpm) -> None:
    target = rpm.home / "pods.toml"
    assert rpm.run("init", "--pods", "--path", str(target)).returncode == 0
    status = rpm.run("status", env={"RPM_CONFIG": str(target)})
    assert status.returncode == 0 and "chat" in status.stdout and "coder" in status.stdout
