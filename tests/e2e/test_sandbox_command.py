"""`rpm sandbox` as a user runs it: a real subprocess, its printed variables, bad flags, a bad or good
`--state` file, a busy port, a bind beyond loopback, the key its control endpoints need, and a clean stop.
Bad input is one line on stderr, `error: <message> (<hint>)` like every other rpm command, and never a
traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from runpod_manager.sandbox import command, server
from tests.support.rpm import run_sandbox, wait_until

GPU = "NVIDIA GeForce RTX 4090"


def rpm_sandbox(*flags: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runpod_manager", "sandbox", "--quiet", *flags],
                          capture_output=True, text=True, timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_it_prints_the_variables_that_point_rpm_at_it_and_they_work() -> None:
    with run_sandbox(api_key="sk-test-key") as sandbox:
        assert sandbox.api_key == "sk-test-key"
        assert sandbox.pod_url_template == sandbox.url + "/pods/{pod_id}-{port}"
        listed = requests.get(sandbox.url + "/v2/pods", headers={"Authorization": "Bearer sk-test-key"}, timeout=5)
        assert listed.status_code == 200 and listed.json() == {"pods": []}


@pytest.mark.parametrize(("flags", "needle"), [
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--error-rate", "1.5"], "--error-rate must be between 0 and 1"),
    (["--provision-seconds", "-1"], "--provision-seconds must be a non-negative number"),
    (["--token-delay", "nan"], "--token-delay must be a non-negative number"),
    (["--api-key", "two words"], "--api-key must be a non-empty string without spaces"),
    (["--quota-per-minute", "0"], "--quota-per-minute must be at least 1"),
])
def test_an_impossible_flag_value_exits_2_naming_the_flag(flags: list[str], needle: str) -> None:
    port = [] if "--port" in flags else ["--port", "0"]  # never bind the default port by accident
    assert_one_line_error(rpm_sandbox(*port, *flags), 2, needle)


def test_an_api_key_is_never_echoed_in_an_error() -> None:
    result = rpm_sandbox("--port", "0", "--api-key", "sk-SECRET-with spaces")
    assert_one_line_error(result, 2, "--api-key")
    assert "SECRET" not in result.stderr + result.stdout


def test_python_dash_m_sandbox_reports_bad_flags_the_same_way() -> None:
    result = subprocess.run([sys.executable, "-m", "runpod_manager.sandbox", "--port", "not-a-port"],
                            capture_output=True, text=True, timeout=20, check=False)
    assert_one_line_error(result, 2, "--port", "--help")
    assert_one_line_error(subprocess.run([sys.executable, "-m", "runpod_manager.sandbox", "--port", "0",
                                          "--error-rate", "2"], capture_output=True, text=True, timeout=20,
                                         check=False), 2, "--error-rate must be between 0 and 1")


def test_a_busy_port_exits_1_and_says_how_to_pick_another() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_one_line_error(rpm_sandbox("--port", str(port)), 1, f"port {port}", "--port", "0 picks a free one")


@pytest.mark.parametrize(("content", "needle"), [
    (b"{not json", "Expecting property name"),
    (b"\xff\xfe\x00", "codec can't decode"),
    (b"[]", "expected a JSON object, got array"),
    (b'{"version": 7}', "unsupported sandbox state version 7"),
    (b'{"version": 1, "pods": [], "billing": []}', "missing 'stock'"),
    (b"[" * 100_000, "nested too deeply"),
], ids=["syntax", "utf8", "array", "version", "missing", "deep"])
def test_a_damaged_state_file_exits_1_in_one_line_and_is_left_as_it_was(tmp_path: Path, content: bytes,
                                                                       needle: str) -> None:
    path = tmp_path / "world.json"
    path.write_bytes(content)
    result = rpm_sandbox("--port", "0", "--state", str(path))
    assert_one_line_error(result, 1, str(path), "fix the file or move it aside")
    assert needle in result.stderr
    assert path.read_bytes() == content


def test_an_unreadable_state_file_exits_1(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        path = tmp_path  # a directory: unreadable as a file even for root
    else:
        path = tmp_path / "world.json"
        path.write_text("{}")
        path.chmod(0)
    assert_one_line_error(rpm_sandbox("--port", "0", "--state", str(path)), 1, "cannot load sandbox state")


def test_the_world_survives_a_restart_with_state(tmp_path: Path) -> None:
    path = tmp_path / "world.json"
    body = {"name": "rpm-keep-abc123", "image": "img", "gpu": {"id": GPU}, "ports": ["8000/http"]}
    with run_sandbox("--state", str(path)) as sandbox:
        created = sandbox.api("POST", "/v2/pods", json=body).json()
        sandbox.api("POST", f"/v2/pods/{created['id']}/action", json={"action": "stop"})
        spent = sandbox.control("state")["spendUsd"]
    assert path.stat().st_mode & 0o777 == 0o600
    saved = json.loads(path.read_text())
    assert [pod["id"] for pod in saved["pods"]] == [created["id"]]
    with run_sandbox("--state", str(path)) as again:
        pod = again.api("GET", f"/v2/pods/{created['id']}").json()
        assert (pod["name"], pod["status"]) == ("rpm-keep-abc123", "EXITED")
        assert again.control("state")["spendUsd"] == pytest.approx(spent)
        assert again.api("POST", f"/v2/pods/{created['id']}/action", json={"action": "start"}).status_code == 200


def test_sigterm_stops_it_cleanly_with_exit_0(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "runpod_manager", "sandbox", "--port", "0", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("rpm sandbox: RunPod v2 emulator listening on http://127.0.0.1:")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0 and "Traceback" not in stderr


def test_the_control_endpoints_need_the_account_key() -> None:
    """/_sandbox/state returns every pod's key: it answered anyone while /v2 asked for the key."""
    body = {"name": "rpm-keys-abc123", "image": "vllm/vllm-openai:latest", "gpu": {"id": GPU}, "ports": ["8000/http"]}
    with run_sandbox(api_key="sk-account-SECRET-9d") as sandbox:
        pod = sandbox.api("POST", "/v2/pods", json=body).json()
        state = sandbox.control("state")  # the test helper sends the account key
        pod_key = next(item["podKey"] for item in state["pods"] if item["id"] == pod["id"])
        for method, path, payload in [("GET", "state", None), ("POST", "faults", {"error_rate": 1.0}),
                                      ("POST", "reset", {}), ("POST", "account", {"balance_usd": 0}),
                                      ("POST", f"pods/{pod['id']}/take-host", {})]:
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Bearer {pod_key}"},
                            {"Authorization": "sk-account-SECRET-9d"}):
                response = requests.request(method, f"{sandbox.url}/_sandbox/{path}", json=payload,
                                            headers=headers, timeout=10)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["Content-Type"].startswith("application/problem+json")
                problem = response.json()
                assert problem["status"] == 401 and problem["title"] == "Unauthorized"
                assert "SECRET" not in response.text and pod_key not in response.text
        after = sandbox.control("state")
        assert [item["id"] for item in after["pods"]] == [pod["id"]]  # nothing was reset or changed
        assert sandbox.control("faults")["error_rate"] == 0.0
        assert after["balanceUsd"] == state["balanceUsd"]
        # The fake pod URL (the vLLM endpoint) is served as before: this pod's model server has no key.
        models_url = sandbox.pod_url_template.format(pod_id=pod["id"], port=8000) + "/v1/models"
        assert wait_until(lambda: requests.get(models_url, timeout=5).status_code == 200), models_url


WILDCARD_IPV4 = "0.0.0.0"  # noqa: S104 - the point of the test: a bind beyond loopback


@pytest.mark.parametrize("host", [WILDCARD_IPV4, "::"])
def test_binding_beyond_loopback_warns_and_prints_a_url_that_reaches_it(host: str) -> None:
    if host == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    process = subprocess.Popen([sys.executable, "-m", "runpod_manager", "sandbox", "--host", host, "--port", "0",
                                "--quiet", "--api-key", "sk-open-SECRET-1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(4)]
        if not lines[0] and host == "::":
            pytest.skip("cannot bind :: here")
        url = lines[1].removeprefix("export RUNPOD_API_URL=")
        assert lines[0] == f"rpm sandbox: RunPod v2 emulator listening on {url}"
        assert url.startswith("http://127.0.0.1:" if host == WILDCARD_IPV4 else "http://[::1]:"), url
        listed = requests.get(url + "/v2/pods", headers={"Authorization": "Bearer sk-open-SECRET-1"}, timeout=5)
        assert listed.status_code == 200
        assert lines[3] == f"export RPM_API_POD_URL_TEMPLATE='{url}/pods/{{pod_id}}-{{port}}'"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    warning = stderr.strip().splitlines()[0]
    shown = "[::]" if host == "::" else host
    assert warning.startswith(f"warning: listening on {shown}:") and "other machines" in warning, stderr
    assert "SECRET" not in stderr


def test_the_default_loopback_bind_prints_no_warning() -> None:
    process = subprocess.Popen([sys.executable, "-m", "runpod_manager", "sandbox", "--port", "0", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert "warning" not in stderr


def test_an_unexpected_failure_is_one_line_without_the_key_or_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    key = "sk-unexpected-SECRET-77"

    def explode(*_args: object) -> None:
        raise RuntimeError(f"boom while using {key}\nsecond line")

    monkeypatch.delenv("RPM_DEBUG", raising=False)
    monkeypatch.setattr(server, "serve_forever", explode)
    code = server.run_command(server.SandboxOptions(port=0, quiet=True, api_key=key))
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.strip() == ("error: unexpected RuntimeError: boom while using *** "
                                    "(set RPM_DEBUG=1 for the traceback)")
    assert key not in captured.err + captured.out


def test_the_commands_defaults_match_the_servers() -> None:
    # command.py repeats them so that `rpm` does not import aiohttp for every command.
    assert (command.DEFAULT_PORT, command.DEFAULT_API_KEY) == (server.DEFAULT_PORT, server.DEFAULT_API_KEY)
