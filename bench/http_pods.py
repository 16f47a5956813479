"""Benchmark: what rpm's proxy adds in front of an http pod (issue #13).

Every server runs in its own process on loopback: a minimal aiohttp service (GET /small, POST /upload that
hashes the body as it arrives, /ws echo) and rpm's real proxy (`run_proxy`, request logging on) with one
`kind = "http"` pod whose target is that service (a fixed target: no RunPod, no wake). The client runs in
this process.

Reported (each measurement repeated `--rounds` times; the tables show the median round):
- a small GET direct vs through `/pods/svc/small`: p50/p99 and the added latency;
- WebSocket round trip (send a frame, receive its echo) direct vs through `/pods/svc/ws`: p50/p99 added;
- a large upload direct vs through the proxy: MB/s, and the proxy's RSS before and at its peak during it.

Run:  python bench/http_pods.py [--requests 2000] [--upload-mb 200] [--rounds 3] [--quick]
(The machine is shared and loaded: absolute numbers are pessimistic; both sides run under the same load.)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import FixedPod, free_port, rss_mib, server  # the sibling bench's process helpers

BLOCK = bytes(range(256)) * 256  # 64 KiB


def run_service(port: int) -> None:
    from aiohttp import WSMsgType, web

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "bytes": size})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(message.data)
        return socket

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", ws)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


def run_rpm_proxy(port: int, service: str) -> None:
    import logging

    from runpod_manager.backends.base import UpstreamTarget
    from runpod_manager.config import CacheConfig, Config, PodConfig, ProxyConfig
    from runpod_manager.paths import resolve_paths
    from runpod_manager.proxy.server import configure_proxy_logging, run_proxy

    target = UpstreamTarget("pod-bench", service, None)

    pod = PodConfig(name="svc", kind="http", image="bench/service", max_body_bytes=64 * 1024**3)
    config = Config(pod=pod, pods=(pod,), proxy=ProxyConfig(host="127.0.0.1", port=port),
                    cache=CacheConfig(enabled=False))
    paths = resolve_paths()
    close_log = configure_proxy_logging(paths, level=logging.INFO)
    try:
        run_proxy(config, FixedPod(("svc",), target), paths)
    finally:
        close_log()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def get_latencies(url: str, count: int) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm the connection
            async with session.get(url) as response:
                await response.read()
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
            latencies.append(time.perf_counter() - started)
    return latencies


async def ws_round_trips(url: str, count: int) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as socket:
        for index in range(count + 20):
            started = time.perf_counter()
            await socket.send_str(f"frame {index}")
            await socket.receive()
            if index >= 20:
                latencies.append(time.perf_counter() - started)
    return latencies


async def upload(url: str, size_bytes: int) -> tuple[float, dict[str, Any]]:
    async def body() -> Any:
        for _ in range(size_bytes // len(BLOCK)):
            yield BLOCK

    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        async with session.post(url, data=body(), headers={"Content-Length": str(size_bytes)}) as response:
            document = await response.json()
        return time.perf_counter() - started, document


def latency_table(title: str, rounds: int, urls: dict[str, str],
                  measure: Callable[[str], Coroutine[Any, Any, list[float]]]) -> None:
    """Print p50/p99 of `measure` per path (direct, rpm: alternated each round) and what rpm adds to them."""
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            values = asyncio.run(measure(url))
            rows[name].append((percentile(values, 0.5), percentile(values, 0.99)))
    print(f"\n## {title}\n")
    print("| path | p50 | p99 |\n|---|---|---|")
    for name, results in rows.items():
        print(f"| {name} | {statistics.median(r[0] for r in results) * 1e3:.3f} | "
              f"{statistics.median(r[1] for r in results) * 1e3:.3f} |")
    added = [(r[0] - d[0], r[1] - d[1]) for r, d in zip(rows["rpm"], rows["direct"], strict=True)]
    print(f"| added by rpm | {statistics.median(a[0] for a in added) * 1e3:.3f} | "
          f"{statistics.median(a[1] for a in added) * 1e3:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--role", choices=["service", "rpm-proxy"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--service", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "service":
        run_service(args.port)
        return
    if args.role == "rpm-proxy":
        run_rpm_proxy(args.port, args.service)
        return
    count = 200 if args.quick else args.requests
    upload_bytes = (20 if args.quick else args.upload_mb) * 1024 * 1024 // len(BLOCK) * len(BLOCK)
    me = str(Path(__file__).resolve())
    env = {**os.environ, "RPM_HOME": tempfile.mkdtemp(prefix="rpm-bench-http-")}
    svc_port, rpm_port = free_port(), free_port()
    print(f"# python bench/http_pods.py --requests {count} --upload-mb {upload_bytes // 1024 // 1024} "
          f"--rounds {args.rounds}{' --quick' if args.quick else ''}")
    with (server([me, "--role", "service", "--port", str(svc_port)], svc_port),
          server([me, "--role", "rpm-proxy", "--port", str(rpm_port), "--service", f"http://127.0.0.1:{svc_port}"],
                 rpm_port, env) as proxy):
        direct, routed = f"http://127.0.0.1:{svc_port}", f"http://127.0.0.1:{rpm_port}/pods/svc"
        bases = (("direct", direct), ("rpm", routed))
        latency_table("Small GET (1 connection, ms; median of rounds)", args.rounds,
                      {name: f"{base}/small" for name, base in bases}, lambda url: get_latencies(url, count))
        latency_table("WebSocket round trip (one socket, ms; median of rounds)", args.rounds,
                      {name: f"{base.replace('http', 'ws', 1)}/ws" for name, base in bases},
                      lambda url: ws_round_trips(url, count))

        rates: dict[str, list[float]] = {"direct": [], "rpm": []}
        idle_rss = rss_mib(proxy.pid)
        peak = [idle_rss]
        for _ in range(args.rounds):
            for name, base in (("direct", direct), ("rpm", routed)):
                done = threading.Event()

                def sample(done: threading.Event = done) -> None:
                    while not done.is_set():
                        peak[0] = max(peak[0], rss_mib(proxy.pid))
                        done.wait(0.02)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                seconds, document = asyncio.run(upload(f"{base}/upload", upload_bytes))
                done.set()
                sampler.join()
                assert document["bytes"] == upload_bytes, document
                rates[name].append(upload_bytes / 1024 / 1024 / seconds)
        print(f"\n## Upload of {upload_bytes // 1024 // 1024} MiB (one client; MB/s, median of rounds)\n")
        print("| path | MiB/s (each round) | median |\n|---|---|---|")
        for name, values in rates.items():
            print(f"| {name} | {', '.join(f'{v:.0f}' for v in values)} | {statistics.median(values):.0f} |")
        print(f"\nproxy RSS: {idle_rss:.1f} MiB before the uploads, {peak[0]:.1f} MiB at the peak "
              f"(+{peak[0] - idle_rss:.1f} MiB)")


if __name__ == "__main__":
    main()
