"""Benchmark: one `rpm watchdog` pass against the emulator — wall time and RunPod calls — for 1, 5 and 20 pods.

Each config has N `[pods.<name>]` tables, every pod running with its lease open (the steady state cron
sees). Two measurements per N:
- in-process `control.reconcile()` passes (the pass itself: lock, state read/write, one `GET /v2/pods` for
  all pods, a plan per pod), and
- the `rpm watchdog` command as cron runs it (adds interpreter start-up and imports).

Run:  python bench/watchdog.py [--pods 1,5,20] [--passes 100] [--commands 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD = """\
version = 1
[limits]
runtime_seconds = 3600
daily_cutoff = ""
idle_timeout_seconds = 0
max_daily_spend_usd = 1000
[startup]
initial_wait_seconds = 0.05
poll_interval_seconds = 0.05
"""
POD = """
[pods.p{index}]
model = "bench/model-{index}"
gpu_types = ["NVIDIA GeForce RTX 4090"]
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(count: int, passes: int, commands: int) -> None:
    from runpod_manager import control
    from runpod_manager.config import load_config
    from runpod_manager.lifecycle import Lifecycle
    from runpod_manager.paths import resolve_paths
    from runpod_manager.sandbox.server import EmbeddedSandbox, SandboxOptions

    home = Path(tempfile.mkdtemp(prefix="rpm-bench-"))
    config_path = home / "pod_config.toml"
    config_path.write_text(HEAD + "".join(POD.format(index=i) for i in range(count)), encoding="utf-8")
    options = SandboxOptions(port=0, provision_seconds=0.05, start_seconds=0.05, model_load_seconds=0.05,
                             quiet=True)
    with EmbeddedSandbox(options) as sandbox:
        env = {"RPM_HOME": str(home), "RUNPOD_API_URL": sandbox.url, "RUNPOD_API_KEY": sandbox.api_key,
               "RPM_API_POD_URL_TEMPLATE": sandbox.pod_url_template, "RPM_CONFIG": str(config_path)}
        os.environ.update(env)
        paths = resolve_paths()
        fleet = control.Fleet(Lifecycle(load_config(config_path, paths=paths), paths))
        control.start_many(list(fleet.members.values()))
        control.reconcile(fleet)  # settle
        timings, calls = [], []
        for _ in range(passes):
            started = time.perf_counter()
            result = control.reconcile(fleet)
            timings.append((time.perf_counter() - started) * 1000)
            calls.append(result.api_calls)
            assert not any(o.plan.actions for o in result.outcomes.values())
        print(f"{count:>2} pods  in-process pass  n={passes}  p50 {statistics.median(timings):.2f} ms  "
              f"p99 {percentile(timings, 0.99):.2f} ms  RunPod calls per pass: min {min(calls)} max {max(calls)}")
        command_times = []
        before = sum(sandbox.call(lambda world: dict(world.calls)).values())
        for _ in range(commands):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "runpod_manager", "watchdog"], env=os.environ.copy(),
                                  capture_output=True, text=True, check=True)
            command_times.append((time.perf_counter() - started) * 1000)
            assert done.stdout == "" and done.stderr == "", (done.stdout, done.stderr)
        after = sum(sandbox.call(lambda world: dict(world.calls)).values())
        print(f"{count:>2} pods  `rpm watchdog`   n={commands}  p50 {statistics.median(command_times):.0f} ms  "
              f"p99 {percentile(command_times, 0.99):.0f} ms  RunPod calls per run: "
              f"{(after - before) / commands:.2f}  (silent: no output)")
        control.shutdown(list(fleet.members.values()))
        fleet.lead.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", default="1,5,20")
    parser.add_argument("--passes", type=int, default=100)
    parser.add_argument("--commands", type=int, default=10)
    args = parser.parse_args()
    for count in (int(n) for n in args.pods.split(",")):
        measure(count, args.passes, args.commands)


if __name__ == "__main__":
    main()
