"""Benchmark: `rpm simulate` on a week of one developer's traffic (target, issue #15: ≥ 100,000 requests in
under 5 s on this machine).

Measured:
- the command as a user runs it (`rpm simulate --profile solo --json`, a subprocess: interpreter start-up,
  imports, the trace, every policy, the JSON), wall time over several runs;
- in process: building the trace, and replaying it under all 18 policies (how many planner calls that took);
- the same for four weeks, to show how it grows.
And, since `rpm simulate` and `rpm report` are new commands: that `rpm --help` did not get slower (the
import time of `python -X importtime -m runpod_manager --help`, summed).

Run:  python bench/simulate.py [--runs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from runpod_manager.config import Config
from runpod_manager.simulate import RunPodModel, profile_trace, simulate


def command_seconds(args: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "runpod_manager", *args], env=env, capture_output=True,
                          text=True, check=True)
    elapsed = time.perf_counter() - began
    json.loads(done.stdout) if "--json" in args else None
    return elapsed


def help_import_seconds(env: dict[str, str]) -> float:
    """Sum of the cumulative import times of the top-level imports, from -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "runpod_manager", "--help"], env=env,
                          capture_output=True, text=True, check=True)
    total = 0
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            total += int(parts[1].strip())  # cumulative µs of a top-level import
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "RPM_HOME": tempfile.mkdtemp(prefix="rpm-bench-sim-"), "COLUMNS": "120"}
    print(f"# python bench/simulate.py --runs {args.runs}   (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n")

    walls = [command_seconds(["simulate", "--profile", "solo", "--json"], env) for _ in range(args.runs)]
    config = Config()
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, timezone="UTC"))
    rows = []
    for days in (7, 28):
        builds, replays = [], []
        for _ in range(args.runs):
            began = time.perf_counter()
            trace = profile_trace("solo", seed=0, zone=config.zone, days=days)
            built = time.perf_counter()
            simulation = simulate(trace, config, RunPodModel())
            builds.append(built - began)
            replays.append(time.perf_counter() - built)
        calls = sum(result.planner_calls for result in simulation.policies)
        rows.append((days, len(trace.arrivals), statistics.median(builds), statistics.median(replays),
                     len(simulation.policies), calls))
    print("| what | requests | median | min | max |")
    print("|---|---|---|---|---|")
    print(f"| `rpm simulate --profile solo --json` (subprocess, {args.runs} runs) | {rows[0][1]:,} "
          f"| {statistics.median(walls):.2f} s | {min(walls):.2f} s | {max(walls):.2f} s |")
    print("\n| trace | requests | build the trace | replay every policy | policies | planner calls |")
    print("|---|---|---|---|---|---|")
    for days, count, build, replay, policies, calls in rows:
        print(f"| solo, {days} days | {count:,} | {build:.2f} s | {replay:.2f} s | {policies} | {calls:,} |")
    helps = [help_import_seconds(env) for _ in range(args.runs)]
    print(f"\n`python -X importtime -m runpod_manager --help`: {statistics.median(helps) * 1000:.0f} ms of imports "
          f"(median of {args.runs}); simulate, report and their modules are not among them: "
          f"{'yes' if not_imported(env) else 'NO'}")


def not_imported(env: dict[str, str]) -> bool:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "runpod_manager", "--help"], env=env,
                          capture_output=True, text=True, check=True)
    return not any(name in done.stderr for name in ("runpod_manager.simulate", "runpod_manager.report",
                                                     "runpod_manager.requestlog"))


if __name__ == "__main__":
    main()
