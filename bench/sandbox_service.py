"""Benchmark: the emulator's fake generic service, reached directly (the baseline for http-pod proxying).

Starts `rpm sandbox` as a subprocess on loopback, creates one non-vLLM pod through REST v2 and measures
at its pod URL, with the client in this process:
- a small `GET /health`: latency p50/p99 over sequential requests;
- a `/ws` round trip (send a text frame, receive its echo; progress frames off): p50/p99;
- `POST /upload` of a streamed body: MB/s, and the emulator's peak RSS growth (VmHWM) over the uploads.
Each figure is the median of `--runs` runs. The proxy's benchmark reports the same through rpm; the
difference is what rpm adds.

Run:  python bench/sandbox_service.py [--runs 5] [--requests 1000] [--upload-mb 200]
(2 shared cores here: the client and the emulator compete for them, so absolute numbers are pessimistic.)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import requests

GPU = "NVIDIA GeForce RTX 4090"
API_KEY = "bench-sandbox-key"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024


def start_sandbox() -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "runpod_manager", "sandbox", "--port", "0", "--api-key", API_KEY, "--quiet",
               "--provision-seconds", "0", "--start-seconds", "0", "--model-load-seconds", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("export RPM_API_POD_URL_TEMPLATE="):
            return process, line.split("=", 1)[1].strip().strip("'")
    raise RuntimeError("the sandbox did not start")


def create_pod(template: str) -> str:
    base = template.split("/pods/", 1)[0]
    body = {"name": "rpm-bench-s3rv1c", "image": "bench/service:latest", "gpu": {"id": GPU},
            "ports": ["8188/http"]}
    response = requests.post(f"{base}/v2/pods", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                             timeout=10)
    response.raise_for_status()
    url = template.format(pod_id=response.json()["id"], port=8188)
    deadline = time.monotonic() + 30
    while requests.get(url + "/health", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the service never became ready")
        time.sleep(0.02)
    return url


async def small_gets(url: str, count: int) -> list[float]:
    timings = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(url + "/health") as response:
                await response.read()
            timings.append(time.perf_counter() - started)
    return timings


async def ws_round_trips(url: str, count: int) -> list[float]:
    timings = []
    target = url.replace("http://", "ws://", 1) + "/ws?progress_seconds=0"
    async with aiohttp.ClientSession() as session, session.ws_connect(target) as ws:
        for index in range(count):
            started = time.perf_counter()
            await ws.send_str(f"frame {index}")
            await ws.receive()
            timings.append(time.perf_counter() - started)
    return timings


async def upload(url: str, total_bytes: int) -> tuple[float, dict[str, Any]]:
    block = hashlib.sha256(b"bench").digest() * 2048

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total_bytes // len(block)):
            yield block

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(url + "/upload", data=body()) as response:
            answer = await response.json()
        return time.perf_counter() - started, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--upload-mb", type=int, default=200)
    args = parser.parse_args()
    upload_bytes = args.upload_mb * 1024 * 1024
    process, template = start_sandbox()
    try:
        url = create_pod(template)
        rss_before = peak_rss_bytes(process.pid)
        runs: dict[str, list[float]] = {key: [] for key in ("get p50", "get p99", "ws p50", "ws p99", "MB/s")}
        for _ in range(args.runs):
            gets = asyncio.run(small_gets(url, args.requests))
            trips = asyncio.run(ws_round_trips(url, args.requests))
            seconds, answer = asyncio.run(upload(url, upload_bytes))
            assert answer["bytes"] == upload_bytes, answer
            runs["get p50"].append(statistics.median(gets) * 1000)
            runs["get p99"].append(percentile(gets, 0.99) * 1000)
            runs["ws p50"].append(statistics.median(trips) * 1000)
            runs["ws p99"].append(percentile(trips, 0.99) * 1000)
            runs["MB/s"].append(upload_bytes / seconds / 1e6)
        rss_after = peak_rss_bytes(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(f"direct to the emulator's service, median of {args.runs} runs "
          f"({args.requests} requests, {args.upload_mb} MB uploads):")
    print(f"  GET /health       p50 {statistics.median(runs['get p50']):.3f} ms   "
          f"p99 {statistics.median(runs['get p99']):.3f} ms")
    print(f"  /ws round trip    p50 {statistics.median(runs['ws p50']):.3f} ms   "
          f"p99 {statistics.median(runs['ws p99']):.3f} ms")
    print(f"  POST /upload      {statistics.median(runs['MB/s']):.0f} MB/s   "
          f"emulator peak RSS {rss_before / 1e6:.1f} MB before the uploads, {rss_after / 1e6:.1f} MB after")


if __name__ == "__main__":
    main()
