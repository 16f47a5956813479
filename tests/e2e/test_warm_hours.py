"""Warm hours end to end against the emulator: a window that starts in two minutes makes the next `rpm watchdog`
open a lease (opened_by "warm") and create the pod; a second pass keeps it; after `rpm shutdown` inside the
window no pass reopens it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.rpm import Rpm, fast_config

pytestmark = pytest.mark.e2e

def _config(window: str) -> str:
    return fast_config(limits={"idle_timeout_seconds": 60, "warm_hours": window, "warm_idle_timeout_seconds": 3600},
                       api=False, pod={"name": "warm", "model": "org/warm-model",
                                       "gpu_types": ["NVIDIA GeForce RTX 4090"]})


def live(rpm: Rpm) -> list[str]:
    return [str(p["status"]) for p in rpm.sandbox.pods() if p["status"] != "TERMINATED"]


def test_a_window_starting_soon_is_warmed_by_the_watchdog_once(rpm: Rpm) -> None:
    now = datetime.now(UTC)
    start, end = now + timedelta(minutes=2), now + timedelta(hours=1)
    if end.date() != now.date():
        pytest.skip("the window would cross midnight (UTC)")
    weekday = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[start.weekday()]  # not %a: it follows the locale
    window = f"{weekday} {start:%H:%M}-{end:%H:%M}"
    rpm.config_path.write_text(_config(window), encoding="utf-8")
    first = rpm.run("watchdog")
    assert first.returncode == 0, first.stderr
    record = rpm.state()["pods"]["warm"]
    assert record["lease"]["opened_by"] == "warm" and record["pod_id"]
    assert record["warm_opened_for"].startswith(start.strftime("%Y-%m-%dT%H:%M"))
    assert len(live(rpm)) == 1 and rpm.sandbox.calls().get("createPod") == 1
    time.sleep(0.5)
    assert rpm.run("watchdog").returncode == 0
    assert rpm.sandbox.calls().get("createPod") == 1 and rpm.state()["pods"]["warm"]["lease"] is not None
    assert rpm.run("shutdown").returncode == 0
    assert rpm.run("watchdog").returncode == 0
    assert rpm.state()["pods"]["warm"]["lease"] is None and live(rpm) == []
