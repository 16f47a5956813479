"""`rpm demo`, the README's main job: the whole story on the embedded emulator, exit 0, nothing left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _processes_in_session(session_id: int) -> list[int]:
    """Live processes whose session id is session_id (field 6 of /proc/<pid>/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session_id:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for leftover processes")
def test_demo_tells_the_whole_story_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPM_", "RUNPOD_"))}
    env["HOME"] = str(tmp_path)  # a fresh user: nothing configured
    process = subprocess.Popen([sys.executable, "-m", "runpod_manager", "demo"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path, start_new_session=True)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output
    assert "Traceback" not in output
    # Every step of the flow happened, in order.
    steps = ["pod ", "streamed chat completion through the proxy", "the other model", "rpm status",
             "stops each idle pod", "wakes it", "rpm shutdown", "stopped ✓", "terminate pod"]  # the proxy goes first
    positions = [output.find(step) for step in steps]
    assert all(p >= 0 for p in positions), dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions)
    assert len(re.findall(r"cold start of \d+\.\d+ s", output)) == 2  # the chat pod's, then the coder's wake
    assert re.search(r"resume: lease opened by wake", output)
    # The proxy pid it printed is gone, and nothing the demo started still runs.
    proxy_pid = re.search(r"proxy: pid (\d+)", output)
    assert proxy_pid, output
    assert not Path(f"/proc/{proxy_pid.group(1)}").exists()
    assert _processes_in_session(process.pid) == []
    # It ran in a temporary home: the user's directories stay untouched.
    assert not (tmp_path / ".local" / "state" / "rpm").exists() and not (tmp_path / "pod_config.toml").exists()
