"""/dashboard in a real browser: headless Chromium loads the page, and what it rendered carries the pod,
the limits, the spend, the cache and the recent requests, with no secret on the page; with two pods, a card
each with its state in words, its limits and spend as bars, local times and human durations. Each test
keeps a screenshot of what Chromium drew under its tmp_path (`dashboard.png`, `dashboard-two-pods.png`).

Chromium comes from the OS (Debian's `chromium`; `.ci/run` installs it). Without it the test skips and
says why (pytest's -ra summary shows the skip).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace as dataclass_replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from runpod_manager.config import Config, PodConfig
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.proxy.controller import PodView
from tests.support.proxy_fakes import (
    MODEL,
    UPSTREAM_KEY,
    FakeController,
    FakePod,
    FakeUpstream,
    make_config,
    running_proxy,
)

pytestmark = pytest.mark.e2e

POD_ID = "pod-dash-4q7r"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium here: `apt-get install chromium` (.ci/run installs it where it can)")
    raise AssertionError  # unreachable: skip raises


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", "--virtual-time-budget=2000",
         *extra, url],
        capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def test_chromium_renders_the_dashboard(upstream: FakeUpstream, paths: Paths, tmp_path: Path) -> None:
    view = PodView(pod_id=POD_ID, status="RUNNING", ready=True, lease_open=True, gpu_type_id="NVIDIA L40S",
                   cost_per_hour=0.86, spend_today_usd=3.5, max_daily_spend_usd=20.0,
                   limits={"runtime": "2099-01-01T00:00:00Z", "idle": "not idle"},
                   last_action="resume", last_reason="lease opened by wake; resuming the stopped pod")
    controller = FakeController(upstream.target(POD_ID), view=view)
    with running_proxy(make_config(cache=True, cache_dir=tmp_path / "cache"), controller, paths) as proxy:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        caches = []
        for _ in range(50):  # a miss, then (once the cache's writer stored it) a hit
            reply = requests.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=10)
            assert reply.status_code == 200
            caches.append(reply.headers["X-RPM-Cache"])
            if caches[-1] == "hit":
                break
            time.sleep(0.05)
        assert caches[0] == "miss" and caches[-1] == "hit"
        requests.post(f"{proxy.url}/v1/chat/completions", data=b"{not json", timeout=10,
                      headers={"Content-Type": "application/json"})

        dom = browse(f"{proxy.url}/dashboard", tmp_path / "profile", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        shot = tmp_path / "dashboard.png"
        pictured = browse(f"{proxy.url}/dashboard", tmp_path / "profile-shot", f"--screenshot={shot}",
                          "--window-size=1000,1400")
        assert pictured.returncode == 0, pictured.stderr[-2000:]

    # The browser asked with its own Accept header and got the HTML page, not the JSON document.
    assert "<h1>rpm proxy" in page and not page.lstrip().startswith("{")
    assert re.search(r"<title>rpm proxy – running · ready</title>", page)
    for expected in (POD_ID, "NVIDIA L40S", "running · ready", "Recent requests", "/v1/chat/completions",
                     "stops in ", "$3.50 of $20.00 today", "idle: not idle"):
        assert expected in page, expected
    # A ready pod's last reason (how it got there) is not shown beside it; no raw ISO time, no Python bool.
    assert "lease opened by wake" not in page and "2099-01-01T00:00:00Z" not in page
    assert "True" not in page and "False" not in page
    statuses = re.findall(r"<td>/v1/chat/completions</td><td>(\d{3})</td>", page)
    assert sorted(statuses) == ["200"] * len(caches) + ["400"], statuses
    assert "<td>hit</td>" in page and "<td>miss</td>" in page
    hit_rate = f"{100 / (len(caches)):.1f} %"  # one hit among the cacheable requests
    assert f"<th>hit rate</th><td>{hit_rate}</td>" in page
    assert "<polyline" in page  # the latency chart has points
    assert UPSTREAM_KEY not in page
    # The screenshot is a real PNG of a rendered page, not an error page.
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


class _Cards(HTMLParser):
    """From the DOM Chromium dumped: each pod card's state words and its bars' labels and fill (0-100)."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[str, dict[str, Any]] = {}
        self.mains = 0
        self._card: dict[str, Any] | None = None
        self._in_state = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        classes = (named.get("class") or "").split()
        if tag == "main":
            self.mains += 1
        if tag == "section" and "card" in classes:
            self._card = self.cards.setdefault(named["data-pod"] or "", {"state": "", "bars": []})
        elif self._card is not None and "state" in classes:
            self._in_state = True
        elif self._card is not None and named.get("role") == "meter":
            self._card["bars"].append((named["aria-label"], float(named["aria-valuenow"] or 0)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_state = False
        if tag == "section":
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._card is not None and self._in_state:
            self._card["state"] += data


def test_chromium_renders_a_card_per_pod_with_bars_and_local_times(tmp_path: Path, paths: Paths) -> None:
    chat_upstream, coder_upstream = FakeUpstream(model="org/chat-7b").start(), FakeUpstream(model="org/coder").start()
    now = datetime.now(UTC)
    try:
        chat_view = PodView(pod_id="pod-chat", status="RUNNING", ready=True, lease_open=True,
                            gpu_type_id="NVIDIA L40S", cost_per_hour=0.86, spend_today_usd=4.0,
                            max_daily_spend_usd=20.0,
                            limits={"runtime": now + timedelta(hours=2, minutes=50, seconds=30),
                                    "cutoff": None, "idle": now + timedelta(minutes=12, seconds=30)},
                            last_action="create", last_reason="lease open and no pod")
        coder_view = PodView(pod_id="pod-coder", status="EXITED", lease_open=False, cost_per_hour=0.0,
                             spend_today_usd=1.25, max_daily_spend_usd=10.0, limits={},
                             last_action="stop", last_reason="idle for 900 s (idle_timeout_seconds 900)")
        controller = FakeController(pods={
            "chat": FakePod(None, wake_target=chat_upstream.target("pod-chat"), wake_delay_seconds=0.2,
                            view=chat_view),
            "coder": FakePod(None, wake_target=coder_upstream.target("pod-coder"), view=coder_view)})
        config = make_config(pods=(PodConfig(name="chat", model="org/chat-7b"),
                                   PodConfig(name="coder", model="org/coder")))
        config = replace_limits(config, timezone="Asia/Tokyo", runtime_seconds=4 * 3600, idle_timeout_seconds=900)
        with running_proxy(config, controller, paths) as proxy:
            body = {"model": "org/chat-7b", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(2):  # the first wakes the pod (a cold start felt), the second finds it awake
                assert requests.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=10).status_code == 200
            # Past the 5 s refresh: the page swapped its <main> for a fresh one and still shows every card.
            dom = browse(f"{proxy.url}/dashboard", tmp_path / "profile", "--dump-dom", "--virtual-time-budget=12000")
            assert dom.returncode == 0, dom.stderr[-2000:]
            metrics = requests.get(f"{proxy.url}/metrics", timeout=10).text
            shot = tmp_path / "dashboard-two-pods.png"
            pictured = browse(f"{proxy.url}/dashboard", tmp_path / "profile-shot", f"--screenshot={shot}",
                              "--window-size=1100,1200")
            assert pictured.returncode == 0, pictured.stderr[-2000:]
            document = requests.get(f"{proxy.url}/dashboard", timeout=10).json()
    finally:
        chat_upstream.stop()
        coder_upstream.stop()

    page = dom.stdout
    parsed = _Cards()
    parsed.feed(page)
    assert parsed.mains == 1
    # The page fetched itself again (the refresh ran) rather than only being loaded once.
    served = re.search(r'rpm_proxy_requests_total\{route="/dashboard",status="200"\} (\d+)', metrics)
    assert served and int(served.group(1)) >= 2, metrics
    assert list(parsed.cards) == ["chat", "coder"]
    chat, coder = parsed.cards["chat"], parsed.cards["coder"]
    assert chat["state"] == "running · ready" and coder["state"] == "stopped (idle)"
    labels = {label.split(" · at ")[0]: fill for label, fill in chat["bars"]}
    assert set(labels) == {"stops in 2 h 50 min (runtime)", "stops in 12 min (idle)", "$4.00 of $20.00 today"}
    assert 65 <= labels["stops in 2 h 50 min (runtime)"] <= 75  # 2 h 50 of 4 h left
    assert 80 <= labels["stops in 12 min (idle)"] <= 85  # 12.5 of 15 min left
    assert labels["$4.00 of $20.00 today"] == 20
    assert [label for label, _ in coder["bars"]] == ["$1.25 of $10.00 today"]
    # The idle stop's local time is in the config's zone (Tokyo), as hours and minutes.
    idle_at = (now + timedelta(minutes=12, seconds=30)).astimezone(ZoneInfo("Asia/Tokyo"))
    assert any(label.endswith(f"at {idle_at:%H:%M}") or label.endswith(f"at {idle_at:%a %H:%M}")
               for label, _ in chat["bars"] if "(idle)" in label), chat["bars"]
    assert "1 request waited for a wake today" in page and "(Asia/Tokyo)" in page
    assert "idle for 900 s" in page  # the stopped pod's reason explains it
    assert "lease open and no pod" not in page  # the ready pod's stale one is not shown
    assert "True" not in page and "False" not in page
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d{6}", page)  # no raw ISO time with microseconds
    assert "org/chat-7b" in page and '<svg class="cost"' in page and "always-on" in page
    check_json(document)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def replace_limits(config: Config, **limits: Any) -> Config:
    return dataclass_replace(config, limits=dataclass_replace(config.limits, **limits))


def check_json(document: dict[str, Any]) -> None:
    """The JSON keeps its fields and adds the new ones."""
    for key in ("proxy", "pod", "spend", "limits", "pods", "cache", "latency_ms", "recent_requests", "chart_ms",
                "today", "timezone"):
        assert key in document, key
    first = document["pods"][0]
    assert first["state_text"] == "running · ready" and first["cold_starts_today"]["count"] == 1
    assert document["recent_requests"][0]["model"] == "org/chat-7b"
