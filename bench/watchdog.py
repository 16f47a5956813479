"""Benchmark: one `rpm watchdog` pass against the emulator — wall time and RunPod calls.

Two measurements, both with a running pod whose lease is open (the steady state cron sees):
- in-process `Lifecycle.reconcile()` passes (the cost of the pass itself: lock, state read/write,
  one GET /v2/pods/{id}, plan), and
- the `rpm watchdog` command as cron runs it (adds interpreter start-up and imports).

Run:  python bench/watchdog.py [--passes 200] [--commands 20]
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

CONFIG = """\
version = 1
[pod]
name = "bench"
gpu_types = ["NVIDIA GeForce RTX 4090"]
[limits]
runtime_seconds = 3600
daily_cutoff = ""
idle_timeout_seconds = 0
max_daily_spend_usd = 100
[startup]
initial_wait_seconds = 0.05
poll_interval_seconds = 0.05
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--commands", type=int, default=20)
    args = parser.parse_args()

    from runpod_manager.config import load_config
    from runpod_manager.lifecycle import Lifecycle
    from runpod_manager.paths import resolve_paths
    from runpod_manager.sandbox.server import EmbeddedSandbox, SandboxOptions

    home = Path(tempfile.mkdtemp(prefix="rpm-bench-"))
    (home / "pod_config.toml").write_text(CONFIG, encoding="utf-8")
    options = SandboxOptions(port=0, provision_seconds=0.05, start_seconds=0.05, model_load_seconds=0.05,
                             quiet=True)
    with EmbeddedSandbox(options) as sandbox:
        env = {"RPM_HOME": str(home), "RUNPOD_API_URL": sandbox.url, "RUNPOD_API_KEY": sandbox.api_key,
               "RPM_API_POD_URL_TEMPLATE": sandbox.pod_url_template, "RPM_CONFIG": str(home / "pod_config.toml")}
        os.environ.update(env)
        paths = resolve_paths()
        lifecycle = Lifecycle(load_config(home / "pod_config.toml", paths=paths), paths)
        lifecycle.start()
        lifecycle.reconcile()  # settle
        timings, calls = [], []
        for _ in range(args.passes):
            started = time.perf_counter()
            result = lifecycle.reconcile()
            timings.append((time.perf_counter() - started) * 1000)
            calls.append(result.api_calls)
            assert result.plan.empty, result.plan
        print(f"in-process pass  n={args.passes}  p50 {statistics.median(timings):.2f} ms  "
              f"p99 {percentile(timings, 0.99):.2f} ms  RunPod calls per pass: min {min(calls)} max {max(calls)}")

        command_times = []
        before = sum(sandbox.call(lambda world: dict(world.calls)).values())
        for _ in range(args.commands):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "runpod_manager", "watchdog"], env=os.environ.copy(),
                                  capture_output=True, text=True, check=True)
            command_times.append((time.perf_counter() - started) * 1000)
            assert done.stdout == "" and done.stderr == "", (done.stdout, done.stderr)
        after = sum(sandbox.call(lambda world: dict(world.calls)).values())
        print(f"`rpm watchdog`   n={args.commands}  p50 {statistics.median(command_times):.0f} ms  "
              f"p99 {percentile(command_times, 0.99):.0f} ms  "
              f"RunPod calls per run: {(after - before) / args.commands:.2f}"
              "  (silent: no output)")
        lifecycle.shutdown()
        lifecycle.close()


if __name__ == "__main__":
    main()
