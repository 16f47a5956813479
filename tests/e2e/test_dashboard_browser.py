"""/dashboard in a real browser: headless Chromium loads the page, and what it rendered carries the pod,
the limits, the spend, the cache and the recent requests, with no secret on the page.

Chromium comes from the OS (Debian's `chromium`; `.ci/run` installs it). Without it the test skips and
says why (pytest's -ra summary shows the skip).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.proxy.controller import PodView
from tests.support.proxy_fakes import (
    MODEL,
    UPSTREAM_KEY,
    FakeController,
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
    assert re.search(r"<title>rpm proxy – ready</title>", page)
    for expected in (POD_ID, "NVIDIA L40S", "RUNNING", "lease opened by wake", "2099-01-01T00:00:00Z",
                     "Recent requests", "/v1/chat/completions"):
        assert expected in page, expected
    statuses = re.findall(r"<td>/v1/chat/completions</td><td>(\d{3})</td>", page)
    assert sorted(statuses) == ["200"] * len(caches) + ["400"], statuses
    assert "<td>hit</td>" in page and "<td>miss</td>" in page
    hit_rate = f"{100 / (len(caches)):.1f} %"  # one hit among the cacheable requests
    assert f"<th>hit rate</th><td>{hit_rate}</td>" in page
    assert re.search(r"<th>today \(USD\)</th><td>3\.5</td>", page)
    assert "<polyline" in page  # the latency chart has points
    assert UPSTREAM_KEY not in page
    # The screenshot is a real PNG of a rendered page, not an error page.
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
