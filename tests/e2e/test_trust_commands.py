"""Issue #20, items 17-19: what a cancelled or failed `rpm start` and a refused `rpm shutdown` leave running.

Each test runs the real commands against the emulator and asserts what bills afterwards (the emulator's pods),
what the lease in state says, which proxies run, and what the message told the user.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_trust import _free_port, _health, _running, _with_proxy
from tests.support.rpm import Rpm

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
