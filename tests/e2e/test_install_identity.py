"""Two rpm installs on one RunPod account (issue #20, item 16): each state directory has its own install id,
carried in its pods' names, and every sweep, `shutdown` and `shutdown --all` touches only its own install's
pods. Two installs with the same pod name (`chat`) on one emulator account never end each other's pods, and
a state file of the previous version keeps its live, older-named pod through the upgrade and a sweep."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.rpm import Rpm

pytestmark = pytest.mark.e2e

GPU_BODY = {"image": "vllm/vllm-openai:latest", "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}}


def second_install(rpm: Rpm, tmp_path: Path) -> Rpm:
    """Another RPM_HOME on the same emulator account, with the same pod name as `rpm`."""
    home = tmp_path / "other-home"
    home.mkdir()
    other = Rpm(home=home, sandbox=rpm.sandbox, config_path=tmp_path / "other_config.toml")
    other.write_config(name="chat")
    rpm.write_config(name="chat")
    return other


def running(rpm: Rpm) -> dict[str, str]:
    """id → name of every RUNNING pod of the account."""
    return {str(p["id"]): str(p["name"]) for p in rpm.sandbox.pods() if p["status"] == "RUNNING"}


def started(rpm: Rpm) -> str:
    result = rpm.json("start", "--no-proxy")["data"]
    assert result["ready"] is True, result
    return str(result["pod"]["id"])


def install_id(rpm: Rpm) -> str:
    return str(rpm.state()["install_id"])


def test_two_installs_with_the_same_pod_name_never_sweep_each_other(rpm: Rpm, tmp_path: Path) -> None:
    other = second_install(rpm, tmp_path)
    mine, theirs = started(rpm), started(other)
    assert install_id(rpm) != install_id(other)
    assert install_id(rpm) in running(rpm)[mine] and install_id(other) in running(rpm)[theirs]
    for _ in range(3):  # each pass lists the account and plans the orphan rule
        for install in (rpm, other):
            result = install.run("watchdog", "--sweep")
            assert result.returncode == 0, (result.stdout, result.stderr)
            assert "terminate" not in result.stdout, result.stdout
    assert set(running(rpm)) == {mine, theirs}
    calls = rpm.sandbox.calls()
    assert calls.get("createPod") == 2 and calls.get("deletePod", 0) == 0, calls


def test_shutdown_and_shutdown_all_leave_the_other_installs_pod_running(rpm: Rpm, tmp_path: Path) -> None:
    other = second_install(rpm, tmp_path)
    theirs = started(other)
    # `rpm status` of the idle install shows what bills on the account: the other install's pod, as such.
    status = rpm.run("status")
    assert status.returncode == 0 and theirs in status.stdout and "another rpm install" in status.stdout
    assert [pod["id"] for pod in rpm.json("status")["data"]["other_installs"]] == [theirs]
    assert other.json("status")["data"]["other_installs"] == []  # its own pod is not another install's
    # An idle install (nothing of its own) shuts down: the other's pod is listed, never touched.
    idle = rpm.run("shutdown")
    assert idle.returncode == 0, idle.stderr
    assert theirs in running(rpm) and "another rpm install" in idle.stdout, idle.stdout
    mine = started(rpm)
    plain = rpm.json("shutdown")["data"]
    assert [a for a in plain["ended"] if mine in a] and theirs in running(rpm) and mine not in running(rpm)
    assert any(theirs in pod for pod in plain["other_installs"]), plain
    mine = started(rpm)
    everything = rpm.run("shutdown", "--all")
    assert everything.returncode == 0, everything.stderr
    assert set(running(rpm)) == {theirs}, everything.stdout
    assert "another rpm install" in everything.stdout
    assert rpm.sandbox.calls().get("deletePod") == 2  # this install's two pods, nothing else


def test_a_previous_version_state_keeps_its_live_pod_through_the_upgrade_and_a_sweep(rpm: Rpm) -> None:
    # A pod made by an older rpm (no install id in its name), held by a state file of version 2; and a
    # pod of the same older naming that this state does not hold (another install's, or a lost create).
    rpm.write_config(name="chat")
    held = rpm.sandbox.api("POST", "/v2/pods", json={"name": "rpm-chat-abc123", **GPU_BODY}).json()
    stray = rpm.sandbox.api("POST", "/v2/pods", json={"name": "rpm-chat-def456", **GPU_BODY}).json()
    now = datetime.now(UTC)
    record: dict[str, Any] = {
        "pod_id": held["id"], "pod_name": "rpm-chat-abc123", "upstream_key": "k" * 32,
        "lease": {"opened_at": (now - timedelta(minutes=1)).isoformat(),
                  "deadline": (now + timedelta(hours=1)).isoformat(), "opened_by": "start"},
        "last_activity_at": now.isoformat(), "api_base_url": rpm.sandbox.url}
    state_file = rpm.home / "state" / "pod_state.json"
    state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"version": 2, "pods": {"chat": record}}), encoding="utf-8")
    state_file.chmod(0o600)
    for _ in range(2):
        result = rpm.run("watchdog", "--sweep")
        assert result.returncode == 0, (result.stdout, result.stderr)
    upgraded = rpm.state()
    assert upgraded["version"] == 4 and len(upgraded["install_id"]) == 8
    assert upgraded["pods"]["chat"]["pod_id"] == held["id"]
    assert set(running(rpm)) == {held["id"], stray["id"]}
    assert install_id(rpm) == upgraded["install_id"]  # made once: the second pass kept it
    ended = rpm.run("shutdown", "--all")
    assert ended.returncode == 0, ended.stderr
    # Its own (older-named) pod ends by its record; the stray one cannot be proved this install's: kept.
    assert set(running(rpm)) == {stray["id"]} and "another rpm install" in ended.stdout, ended.stdout
