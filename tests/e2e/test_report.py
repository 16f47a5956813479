"""`rpm report` on a session recorded from the emulator with a fast billing clock.

The session runs the real stack (sandbox subprocess, `rpm start` with its proxy subprocess, idle stop by the
proxy, a wake, `rpm shutdown`). The emulator bills at 3600× (a second costs an hour's price), and computes
its bill from its own record of when each pod held a GPU: the report's money must be that bill, and its
GPU hours the billed seconds the emulator saw. Waits are compared with what the clients were told.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.test_proxy_stack import configure, free_port
from tests.support.rpm import Rpm, wait_until

pytestmark = pytest.mark.e2e

MODEL = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
BILL_SPEED = 3600.0
RATE = 0.69  # the emulator's secure RTX 4090, $/h
IDLE_SECONDS = 2


class SvgCollector(HTMLParser):
    """Every SVG element of the page, with its attributes and the svg it belongs to."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[list[tuple[str, dict[str, str]]]] = []
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "svg":
            self.svgs.append([])
            self.depth += 1
        elif self.depth:
            self.svgs[-1].append((tag, values))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.depth -= 1


def of_class(elements: list[tuple[str, dict[str, str]]], tag: str, css_class: str) -> list[dict[str, str]]:
    return [attrs for name, attrs in elements if name == tag and attrs.get("class") == css_class]


def ask(port: int, prompt: str) -> requests.Response:
    response = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4})
    assert response.status_code == 200, response.text
    return response


def stopped(rpm: Rpm) -> bool:
    return [pod["status"] for pod in rpm.sandbox.pods()] == ["EXITED"]


def record_session(rpm: Rpm) -> list[float]:
    """`rpm start`, idle stop, a wake by one request (two more follow it), idle stop, a wake by two requests
    at once, idle stop, `rpm shutdown`. Returns each wake's wait as its clients were told it."""
    port = free_port()
    configure(rpm, port, idle_timeout_seconds=IDLE_SECONDS, idle_action="stop")
    assert rpm.json("start")["data"]["ready"] is True
    assert wait_until(lambda: stopped(rpm), 20)  # idle stop by the proxy's reconcile loop
    first = [ask(port, f"first wake {index}") for index in range(3)]  # the first wakes it, two follow at once
    assert wait_until(lambda: stopped(rpm), 20)
    with ThreadPoolExecutor(max_workers=2) as pool:  # both wait for the one wake
        second = list(pool.map(lambda index: ask(port, f"second wake {index}"), range(2)))
    assert wait_until(lambda: stopped(rpm), 20)
    assert rpm.run("shutdown").returncode == 0  # the proxy writes its last request lines as it stops
    told = [float(first[0].headers["X-RPM-Cold-Start"]),
            max(float(response.headers["X-RPM-Cold-Start"]) for response in second)]
    assert all("X-RPM-Cold-Start" not in response.headers for response in first[1:])
    wakes_logged = [e for e in rpm.events() if e["event"] == "lease_opened" and e["opened_by"] == "wake"]
    assert len(wakes_logged) == 2  # the session went as planned (`rpm start` opened the first lease)
    return told


def check_page(page: Path) -> None:
    """The page parses, and its three plots exist and show the session."""
    parser = SvgCollector()
    parser.feed(page.read_text(encoding="utf-8"))
    timeline, cost, waits = parser.svgs
    assert len(of_class(timeline, "rect", "state-ready")) == 3  # created, then resumed by each wake
    assert len(of_class(timeline, "rect", "state-booting")) == 3
    assert sum(int(rect["height"] != "0") for rect in of_class(timeline, "rect", "requests")) >= 1
    assert len(of_class(timeline, "circle", "wake")) == 2
    lines = {name: of_class(cost, "polyline", f"cost-{name}") for name in ("rpm", "always-on", "oracle")}
    for name, [line] in lines.items():
        points = [tuple(map(float, point.split(","))) for point in line["points"].split()]
        assert len(points) >= 2, name
        assert points[-1][1] < points[0][1], name  # it rises from zero (SVG y grows downwards)
    assert len(of_class(waits, "rect", "wait")) == 2
    assert of_class(waits, "line", "wait-p95")


@pytest.mark.parametrize("sandbox_flags", [["--bill-speed", str(BILL_SPEED)]])
def test_the_report_of_a_recorded_session_matches_the_emulators_bill(rpm: Rpm, tmp_path: Path) -> None:
    told = record_session(rpm)
    state = rpm.sandbox.control("state")
    assert state["pods"] == []
    bill = state["spendUsd"]  # the emulator's own sum over the stretches it billed
    billed_seconds = bill * 3600 / (RATE * BILL_SPEED)

    page = tmp_path / "report.html"
    data = rpm.json("report", "--since", "1h", "--html", str(page))["data"]
    [pod] = data["pods"]
    totals = pod["totals"]
    assert pod["pod"] == "e2e" and pod["rate_usd_per_hour"] == RATE and len(pod["pod_ids"]) == 1
    assert data["billing_read"] is True and totals["cost_source"] == "billing"
    assert totals["cost_usd"] + totals["storage_usd"] == pytest.approx(bill, rel=1e-6)
    # The event log's timeline: each event is written just after its API call returns, so each end lags a
    # little, like each start; under a loaded machine a few tenths of a second in all.
    assert totals["gpu_hours"] * 3600 == pytest.approx(billed_seconds, abs=1.0)
    assert totals["requests"] == 5 and totals["failed_requests"] == 0
    assert totals["tokens_out"] > 0 and totals["tokens_in"] > 0
    assert totals["cold_starts"] == 2  # `rpm start` is not a cold start felt; the wakes are
    assert [wake["started_by"] for wake in pod["wakes"]] == ["resume", "resume"]
    assert [wake["wait_seconds"] for wake in pod["wakes"]] == pytest.approx(told, abs=0.002)
    assert totals["wait_max_seconds"] == pytest.approx(max(told), abs=0.002)
    # Three idle stops, each the idle timeout after the last request and at most a few reconcile passes later;
    # the first pod had no request, and its idle time counted from the lease's opening, before it was ready.
    events = rpm.events()
    opened, ready = (next(datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
                          for e in events if e["event"] == name) for name in ("lease_opened", "ready"))
    idle_seconds = totals["idle_billed_hours"] * 3600
    assert 3 * IDLE_SECONDS - (ready - opened) - 0.1 <= idle_seconds <= 3 * (IDLE_SECONDS + 3)
    since, until = (datetime.fromisoformat(data[key].replace("Z", "+00:00")) for key in ("since", "until"))
    first_event = datetime.fromisoformat(rpm.events()[0]["time"].replace("Z", "+00:00"))
    assert since < first_event < until
    assert totals["always_on_usd"] == pytest.approx(RATE * (until - first_event).total_seconds() / 3600, rel=0.01)
    assert 0 < totals["oracle_usd"] < totals["always_on_usd"]
    assert sum(day["cost_usd"] for day in pod["days"]) == pytest.approx(totals["cost_usd"])

    human = rpm.run("report", "--since", "1h")
    assert human.returncode == 0, human.stderr
    assert "e2e · $0.69/h" in human.stdout and "always-on would have cost" in human.stdout
    assert "2 cold start(s) felt" in human.stdout
    check_page(page)


def test_the_report_without_a_key_estimates_and_says_so(rpm: Rpm) -> None:
    """Billing needs the key; the report still shows the timeline from the logs, marked as estimated."""
    events = rpm.home / "state" / "logs" / "events.jsonl"
    events.parent.mkdir(parents=True)
    now = datetime.now(UTC).timestamp()

    def at(offset: float) -> str:
        return datetime.fromtimestamp(now - 600 + offset, UTC).isoformat().replace("+00:00", "Z")

    lines = [{"time": at(0), "event": "lease_opened", "config": "e2e", "opened_by": "start"},
             {"time": at(1), "event": "created", "config": "e2e", "pod_id": "p1", "cost_per_hour": 0.5},
             {"time": at(61), "event": "ready", "config": "e2e", "pod_id": "p1"},
             {"time": at(361), "event": "stop", "config": "e2e", "pod_id": "p1", "ok": True}]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = rpm.run("report", "--since", "1h", "--json", env={"RUNPOD_API_KEY": ""})
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)["data"]
    totals = data["pods"][0]["totals"]
    assert data["billing_read"] is False and totals["cost_source"] == "estimate"
    assert totals["gpu_hours"] == pytest.approx(360 / 3600)
    assert totals["cost_usd"] == pytest.approx(0.5 * 360 / 3600)
    assert any("estimated" in note for note in data["notes"])
