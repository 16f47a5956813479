"""One derivation per fact: `rpm status --json`, the proxy's `/health` and the planner agree on ready, the
deadline, the idle end, spend today and the proxy URL (issue #11; the drift bugs of #10 item 12)."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime

import pytest
import requests

from runpod_manager import policy, spend
from runpod_manager.config import load_config
from runpod_manager.paths import resolve_paths
from runpod_manager.state import StateStore
from tests.support.rpm import Rpm

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _instant(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_status_health_and_the_planner_agree_on_every_derived_fact(rpm: Rpm) -> None:
    port = _free_port()
    rpm.write_config(idle_timeout_seconds=900, max_daily_spend_usd=50, runtime_seconds=7200,
                     tables={"proxy": {"port": port, "reconcile_interval_seconds": 60}})
    rpm.json("start")
    paths = resolve_paths({"RPM_HOME": str(rpm.home)})
    store = StateStore(paths)
    # The facts that used to drift: GPU work after the last request moves the idle end; billing above the
    # estimate is the spend.
    with store.lock(wait_seconds=10):
        state = json.loads(store.path.read_text())
        record = state["pods"]["e2e"]
        record["last_activity_at"] = record["lease"]["opened_at"]
        record["last_gpu_busy_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
        record.update(spend_usd=0.5, spend_of_ended_pods_usd=0.25, billed_usd=1.0)
        store.path.write_text(json.dumps(state))

    status = rpm.json("status")["data"]
    health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
    config = load_config(rpm.config_path, env={**rpm.env()}, paths=paths)
    saved = store.load().pods["e2e"]
    now = datetime.now(UTC)
    planner = policy.limit_view(now, config, saved, policy.activity_of(saved))
    ledger = spend.today_usd(saved, policy.local_day(now, config.zone))

    assert status["ready"] is True and health["pod"]["ready"] is True and saved.ready
    for name, planned in (("deadline", planner.deadline), ("idle_ends_at", planner.idle_ends_at)):
        assert planned is not None
        assert _instant(status[name]) == pytest.approx(planned.timestamp(), abs=1), name
        assert _instant(health["pod"][name]) == pytest.approx(planned.timestamp(), abs=1), name
    assert ledger == pytest.approx(1.25)
    assert status["spend_today_usd"] == pytest.approx(ledger, abs=0.01)
    assert health["pod"]["spend_today_usd"] == pytest.approx(ledger, abs=0.01)
    assert status["proxy"]["url"] == health["url"] == f"http://127.0.0.1:{port}/v1"
