"""Benchmark: queued jobs (`Prefer: respond-async`) against direct requests through rpm's proxy.

The servers of bench/proxy.py (its fast upstream and rpm's real proxy in front of a fixed target, each its own
process, RPM_HOME in a temporary directory so the job store is a fresh one) and a client in this process,
one request at a time:
- direct: a non-streaming chat request through the proxy, p50/p99;
- submit: the same request with `Prefer: respond-async`, until its 202 (spooled, stored, answered), p50/p99;
- job path: N jobs submitted at once, then drained by the proxy one after another (jobs_concurrency = 1):
  the wall time from the first submit to the last job done, per job; its difference from a direct
  request is what the job path adds per request (spool, sqlite, the loopback replay, storing the answer).

Run:  python bench/jobs.py [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import proxy as proxy_bench  # noqa: E402 - bench/proxy.py, beside this file

ASYNC = {"Prefer": "respond-async"}


async def sequential(base: str, count: int, headers: dict[str, str]) -> list[float]:
    times = []
    ids = []
    async with aiohttp.ClientSession() as session:
        for index in range(count + 10):  # 10 warm-up requests: connection, first sqlite pages
            started = time.perf_counter()
            async with session.post(f"{base}/v1/chat/completions", json=proxy_bench.CHAT,
                                    headers=headers) as response:
                body = await response.read()
                assert response.status in (200, 202), body
            if index >= 10:
                times.append(time.perf_counter() - started)
            if response.status == 202:
                ids.append(json.loads(body)["id"])
        await forget(session, base, ids)
    return times


async def forget(session: aiohttp.ClientSession, base: str, ids: list[str]) -> None:
    """Wait until the jobs are done, then delete them (finished jobs count against jobs_max_count)."""
    for job_id in ids:
        while True:
            async with session.get(f"{base}/rpm/v1/jobs/{job_id}") as reply:
                if (await reply.json())["state"] in ("done", "failed"):
                    break
            await asyncio.sleep(0.005)
        async with session.delete(f"{base}/rpm/v1/jobs/{job_id}") as reply:
            await reply.read()


async def drain(base: str, count: int) -> float:
    """Seconds per job: submit `count` jobs, wait until the last is done."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        ids = []
        for _ in range(count):
            async with session.post(f"{base}/v1/chat/completions", json=proxy_bench.CHAT, headers=ASYNC) as reply:
                document = await reply.json()
                assert reply.status == 202, document
                ids.append(document["id"])
        while True:  # jobs run in order: the last one done means all are
            async with session.get(f"{base}/rpm/v1/jobs/{ids[-1]}") as reply:
                if (await reply.json())["state"] in ("done", "failed"):
                    break
            await asyncio.sleep(0.005)
        per_job = (time.perf_counter() - started) / count
        await forget(session, base, ids)
        return per_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    me = str(HERE / "proxy.py")
    up_port, rpm_port = proxy_bench.free_port(), proxy_bench.free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    base = f"http://127.0.0.1:{rpm_port}"
    rows: dict[str, list[float]] = {"direct p50": [], "direct p99": [], "submit p50": [], "submit p99": [],
                                    "job path per job": []}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "RPM_HOME": home}
        with (proxy_bench.server([me, "--role", "upstream", "--port", str(up_port)], up_port),
              proxy_bench.server([me, "--role", "rpm-proxy", "--port", str(rpm_port), "--upstream", upstream],
                                 rpm_port, env)):
            for _ in range(args.rounds):
                direct = asyncio.run(sequential(base, args.requests, {}))
                submit = asyncio.run(sequential(base, args.requests, ASYNC))
                per_job = asyncio.run(drain(base, args.requests))
                rows["direct p50"].append(proxy_bench.pct(direct, .5))
                rows["direct p99"].append(proxy_bench.pct(direct, .99))
                rows["submit p50"].append(proxy_bench.pct(submit, .5))
                rows["submit p99"].append(proxy_bench.pct(submit, .99))
                rows["job path per job"].append(per_job)
    print(f"\n{args.rounds} rounds of {args.requests} requests; medians of the rounds\n")
    print("| what | median | rounds |")
    print("|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {proxy_bench.ms(statistics.median(values))} | "
              f"{', '.join(proxy_bench.ms(value) for value in values)} |")
    added = statistics.median(rows["job path per job"]) - statistics.median(rows["direct p50"])
    print(f"\njob path adds ≈ {proxy_bench.ms(added)} per request over a direct one (per-job drain time minus "
          "the direct p50)")


if __name__ == "__main__":
    main()
