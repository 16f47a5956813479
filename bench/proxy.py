"""Benchmark: what rpm's proxy adds, against going direct, nginx, LiteLLM's proxy and a FastAPI + httpx proxy.

Every server runs in its own process on loopback: a minimal fast upstream (fixed JSON answers, SSE
streams stamped with their send time); rpm's real proxy as the team gateway runs it (`run_proxy`, 20 keys
with every per-key limit on the load's key, three pods so every request is routed by its model, the request
log on, cache off, fixed pod targets so no RunPod is involved); the same proxy on asyncio's loop when uvloop
is installed; a bare aiohttp forwarder (the framework's floor); the reference FastAPI + httpx proxy
(`bench/reference_proxy.py`); LiteLLM's proxy when `litellm[proxy]` is installed (here or on PATH) and nginx
as a proxy when nginx is installed (each says "not installed" otherwise). The load client runs in this
process. The wake measurement uses the embedded emulator and the real `rpm start` / idle stop / wake path.

Reported (rounds alternate every target; medians of the rounds):
- latency p50/p99, throughput and the proxy process's CPU per request at 1 and 16 connections, the added
  latency (through minus direct) and rpm's ratios against each peer;
- 20 concurrent streams × 100 events 2 ms apart: added delay per event p50/p99, added time to first token,
  events coalesced on the way; and the same streams one at a time (the single-stream figure);
- cache-hit latency; proxy RSS idle and with 200 open streams; wake time minus the pod's own boot.

Run:  pip install -e '.[bench,fast]' && python bench/proxy.py [--requests 4000] [--rounds 3] [--quick]
      (`--only-cpu`, `--only-latency`, `--only-wrk`: one table; `--profile FILE`: cProfile of the gateway proxy)
(2 cores here: the client, the proxy and the upstream share them, so absolute numbers are pessimistic;
the comparisons run under the same conditions.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from runpod_manager.backends.base import UpstreamTarget
    from runpod_manager.proxy.controller import PodView

HERE = Path(__file__).resolve().parent
MODEL = "bench/model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}).encode()


# ------------------------------------------------------------------------------------------- servers


def run_upstream(port: int) -> None:
    """The fast upstream: fixed answers; streams of `bench_events` events `bench_interval_ms` apart."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        document = await request.json()
        if not document.get("stream"):
            return web.Response(body=ANSWER, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        interval = float(document.get("bench_interval_ms", 0)) / 1000
        with contextlib.suppress(ConnectionResetError):  # the memory run hangs up on purpose
            for index in range(int(document.get("bench_events", 20))):
                if interval:
                    await asyncio.sleep(interval)
                event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "sent_at": time.time(),
                         "choices": [{"index": 0, "delta": {"content": f"t{index} "}, "finish_reason": None}]}
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


OTHER_MODEL = "bench/other"


def make_gateway_keys(home: str) -> str:
    """20 team keys in `home`'s store (so the proxy authenticates every request); the token of the one the
    load uses, which carries every per-key limit (set far above the load: every check runs, all admitted)."""
    from runpod_manager.keys import KeyLimits, KeyStore
    from runpod_manager.paths import resolve_paths

    store = KeyStore(resolve_paths({"RPM_HOME": home}).keys_file)
    for number in range(19):
        store.create(f"member-{number}", pods=("default",), now=time.time())
    limits = KeyLimits(requests_per_minute=10**9, tokens_per_minute=10**12, max_concurrent=10_000,
                       daily_budget_usd=10.0**9)
    return store.create("bench", limits=limits, now=time.time()).token


def run_bare_proxy(port: int, upstream: str) -> None:
    """The floor of any aiohttp proxy: an aiohttp server whose one handler reads the body, sends it with an
    aiohttp client session and returns the answer (no auth, routing, metrics, log, streaming or error
    handling), on the same event loop rpm's proxy picks. What rpm costs above it is rpm's own work."""
    from aiohttp import web

    from runpod_manager.proxy.server import loop_factory

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        async with session.post(upstream + request.path, data=await request.read(),
                                headers={"Content-Type": "application/json"}) as reply:
            return web.Response(body=await reply.read(), status=reply.status,
                                content_type=reply.content_type)

    async def main() -> None:
        app = web.Application()
        app["session"] = aiohttp.ClientSession()
        app.router.add_post("/v1/chat/completions", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await app["session"].close()
        await runner.cleanup()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())


def run_rpm_proxy(port: int, upstream: str, cache_dir: str, gateway: bool = False) -> None:
    """rpm's real proxy in front of a fixed target, with its request log on, as `rpm proxy` runs it.

    `gateway`: the team gateway's whole path: three pods (two model routes and an http service, so every
    request is routed by its model), the keys in RPM_HOME (auth, scopes and per-key limits on every request)."""
    import logging

    from runpod_manager.backends.base import UpstreamTarget
    from runpod_manager.config import CacheConfig, Config, PodConfig, ProxyConfig
    from runpod_manager.paths import resolve_paths
    from runpod_manager.proxy.server import configure_proxy_logging, run_proxy

    use_uvloop = os.environ.get("RPM_BENCH_ASYNCIO_LOOP") != "1"  # the A/B of uvloop in one run
    pods = ((PodConfig(name="default", model=MODEL), PodConfig(name="other", model=OTHER_MODEL),
             PodConfig(name="svc", kind="http")) if gateway else (PodConfig(model=MODEL),))
    target = UpstreamTarget("pod-bench", upstream, "bench-upstream-key")
    names = tuple(pod.name for pod in pods)

    # [pod] model is the name the upstream serves: the proxy answers other names itself with a 404.
    config = Config(pod=pods[0], pods=pods if gateway else (), proxy=ProxyConfig(host="127.0.0.1", port=port),
                    cache=CacheConfig(enabled=bool(cache_dir), dir=cache_dir))
    paths = resolve_paths()
    close_log = configure_proxy_logging(paths, level=logging.INFO)
    profile_to = os.environ.get("RPM_BENCH_PROFILE")  # a file: cProfile of the proxy, timed in CPU time
    try:
        if profile_to:
            import cProfile

            profiler = cProfile.Profile(time.process_time)
            try:
                profiler.runcall(run_proxy, config, FixedPod(names, target), paths, use_uvloop=use_uvloop)
            finally:
                profiler.dump_stats(profile_to)
        else:
            run_proxy(config, FixedPod(names, target), paths, use_uvloop=use_uvloop)
    finally:
        close_log()


# ------------------------------------------------------------------------------------------- helpers


class FixedPod:
    """A ProxyController whose pods are always running at one target: the proxy's own cost, no RunPod."""

    def __init__(self, names: tuple[str, ...], target: UpstreamTarget) -> None:
        from runpod_manager.proxy.controller import PodView

        self.names, self.target, self._pod_view = names, target, PodView

    def pod_names(self) -> tuple[str, ...]:
        return self.names

    def current_target(self, pod: str) -> UpstreamTarget:
        return self.target

    def wake(self, pod: str) -> UpstreamTarget:
        return self.target

    def reconcile(self, last_request_at: Any) -> dict[str, PodView]:
        return self.views()

    def view(self, pod: str) -> PodView:
        return self._pod_view(name=pod, pod_id="pod-bench", status="RUNNING", ready=True, lease_open=True)

    def views(self) -> dict[str, PodView]:
        return {name: self.view(name) for name in self.names}

    def mark_unreachable(self, pod: str, pod_id: str) -> None:
        pass


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL a server that has not exited after 15 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@contextlib.contextmanager
def server(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield process
    finally:
        stop(process)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of a process and its direct children (nginx's workers, a server's spawned worker)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += cpu_seconds(int(stat.parent.name))
    return total


def cpu_section(me: str, env: dict[str, str], total: int, rounds: int) -> None:
    """The proxy's CPU time per forwarded request. Unlike latency, contention from other processes on a shared
    machine barely moves it, so it tells a change to the hot path from noise (run it on both trees)."""
    up_port, rpm_port = free_port(), free_port()
    with (server([me, "--role", "upstream", "--port", str(up_port)], up_port),
          server([me, "--role", "rpm-proxy", "--port", str(rpm_port), "--upstream", f"http://127.0.0.1:{up_port}"],
                 rpm_port, env) as rpm):
        url = f"http://127.0.0.1:{rpm_port}/v1/chat/completions"
        asyncio.run(load(url, 16, min(total, 2000)))  # warm up
        print("\n## Proxy CPU per request (user + system time of the proxy process, non-streaming chat)\n")
        print("| connections | rounds | CPU per request (each round) | median |\n|---|---|---|---|")
        for connections in (1, 16):
            per_request = []
            for _ in range(rounds):
                before = cpu_seconds(rpm.pid)
                latencies, _ = asyncio.run(load(url, connections, total))
                per_request.append((cpu_seconds(rpm.pid) - before) / (len(latencies) + min(50, total)))
            shown = ", ".join(f"{value * 1e6:.0f} µs" for value in per_request)
            print(f"| {connections} | {rounds} | {shown} | {statistics.median(per_request) * 1e6:.0f} µs |")


def overhead_histogram(port: int, token: str = "bench-client") -> dict[float, float]:  # noqa: S107
    """rpm's own `rpm_proxy_overhead_seconds` buckets (le -> cumulative count) from /metrics."""
    import requests

    buckets: dict[float, float] = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                              headers={"Authorization": f"Bearer {token}"}).text.splitlines():
        if line.startswith("rpm_proxy_overhead_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], fraction: float) -> str:
    """The upper bound of the bucket holding the quantile of the requests between two scrapes."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts[float("inf")]
    for le, cumulative in counts.items():
        if cumulative >= fraction * total:
            return "> 100 ms" if le == float("inf") else f"≤ {le * 1000:g} ms"
    return "?"


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


# ---------------------------------------------------------------------------------------- measurements


async def load(url: str, connections: int, total: int, body: dict[str, Any] = CHAT,
               token: str = "bench-client") -> tuple[list[float], float]:  # noqa: S107 - a bench client key
    """`total` POSTs over `connections` keep-alive connections; per-request latency and the wall time."""
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    remaining = total
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(50, total)):  # warm the connections and both sides' code paths
            async with session.post(url, data=payload, headers=headers) as reply:
                await reply.read()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as reply:
                    await reply.read()
                    if reply.status != 200:
                        raise RuntimeError(f"{url} answered {reply.status}")
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - began
    return latencies, wall


async def stream_delays(url: str, streams: int, events: int, interval_ms: float, token: str) -> list[float]:
    """Receive time minus the upstream's send time for every event of `streams` streams, one at a time."""
    body = json.dumps({**CHAT, "stream": True, "bench_events": events, "bench_interval_ms": interval_ms}).encode()
    delays: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(streams):
            async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                             "Authorization": f"Bearer {token}"}) as reply:
                buffer = b""
                async for chunk in reply.content.iter_any():
                    now = time.time()
                    buffer += chunk
                    while b"\n\n" in buffer:
                        event, buffer = buffer.split(b"\n\n", 1)
                        if event.startswith(b"data: {"):
                            delays.append(now - json.loads(event[6:])["sent_at"])
    return delays


async def concurrent_streams(url: str, streams: int, events: int, interval_ms: float, token: str
                             ) -> tuple[list[float], list[float], int, int]:
    """`streams` streams at once: every event's delay (receive time minus the upstream's send time), each
    stream's time to first token (request sent → first event received), the events that arrived in a read
    together with another (coalesced somewhere on the way) and the events received."""
    body = json.dumps({**CHAT, "stream": True, "bench_events": events, "bench_interval_ms": interval_ms}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    delays: list[float] = []
    first_tokens: list[float] = []
    coalesced = received = 0
    connector = aiohttp.TCPConnector(limit=streams + 5)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal coalesced, received
            sent = time.perf_counter()
            first = True
            async with session.post(url, data=body, headers=headers) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"{url} answered {reply.status}")
                buffer = b""
                async for chunk in reply.content.iter_any():
                    now, now_perf = time.time(), time.perf_counter()
                    buffer += chunk
                    in_read = 0
                    while b"\n\n" in buffer:
                        event, buffer = buffer.split(b"\n\n", 1)
                        if event.startswith(b"data: {"):
                            in_read += 1
                            delays.append(now - json.loads(event[6:])["sent_at"])
                            if first:
                                first_tokens.append(now_perf - sent)
                                first = False
                    received += in_read
                    coalesced += in_read if in_read > 1 else 0

        await asyncio.gather(*(one() for _ in range(streams)))
    return delays, first_tokens, coalesced, received


async def hold_streams(url: str, count: int, pid: int, token: str) -> float:
    """Open `count` slow streams at once; once each has its first event, the proxy's RSS in MiB."""
    body = json.dumps({**CHAT, "stream": True, "bench_events": 30, "bench_interval_ms": 500}).encode()
    first = asyncio.Event()
    opened = 0
    connector = aiohttp.TCPConnector(limit=count + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one() -> None:
            nonlocal opened
            async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                             "Authorization": f"Bearer {token}"}) as reply:
                await reply.content.readuntil(b"\n\n")
                opened += 1
                if opened == count:
                    first.set()
                await first.wait()
                await asyncio.sleep(1.0)

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.wait_for(first.wait(), 60)
        rss = rss_mib(pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return rss


async def cache_hits(url: str, count: int) -> list[float]:
    body = json.dumps({**CHAT, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(200):  # until the write-behind cache has stored it
            async with session.post(url, data=body, headers=headers) as reply:
                await reply.read()
                if reply.headers.get("X-RPM-Cache") == "hit":
                    break
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("the cache never hit")
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as reply:
                await reply.read()
                if reply.headers.get("X-RPM-Cache") != "hit":
                    raise RuntimeError("expected a cache hit")
            latencies.append(time.perf_counter() - started)
    return latencies


def measure_wake(cycles: int) -> list[tuple[float, float]]:
    """(response time, cold start header) per wake through the real `rpm start` → idle stop → wake path."""
    import requests

    from runpod_manager.config import PodConfig
    from runpod_manager.sandbox.server import EmbeddedSandbox, SandboxOptions

    home = Path(tempfile.mkdtemp(prefix="rpm-bench-wake-"))
    port = free_port()
    (home / "pod_config.toml").write_text(f"""\
version = 1
[pod]
name = "bench"
gpu_types = ["NVIDIA GeForce RTX 4090"]
[limits]
runtime_seconds = 3600
daily_cutoff = ""
idle_timeout_seconds = 1
idle_action = "stop"
[startup]
initial_wait_seconds = 0.05
poll_interval_seconds = 0.05
[proxy]
port = {port}
reconcile_interval_seconds = 0.2
""", encoding="utf-8")
    options = SandboxOptions(port=0, provision_seconds=0.2, start_seconds=BOOT_START, model_load_seconds=BOOT_LOAD,
                             quiet=True)
    results: list[tuple[float, float]] = []
    with EmbeddedSandbox(options) as sandbox:
        env = {**os.environ, "RPM_HOME": str(home), "RUNPOD_API_URL": sandbox.url,
               "RUNPOD_API_KEY": sandbox.api_key, "RPM_API_POD_URL_TEMPLATE": sandbox.pod_url_template,
               "RPM_CONFIG": str(home / "pod_config.toml")}
        rpm = [sys.executable, "-m", "runpod_manager"]
        subprocess.run([*rpm, "start", "--json"], env=env, check=True, capture_output=True, timeout=120)
        try:
            for _ in range(cycles):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:  # the proxy's reconcile loop stops the idle pod
                    statuses = [pod.status for pod in list(sandbox.world.pods.values())]
                    if statuses and all(status == "EXITED" for status in statuses):
                        break
                    time.sleep(0.1)
                else:
                    raise RuntimeError("the pod was not stopped for idleness")
                started = time.perf_counter()
                reply = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                      json={**CHAT, "model": PodConfig().model}, timeout=120)
                elapsed = time.perf_counter() - started
                if reply.status_code != 200:
                    raise RuntimeError(f"wake answered {reply.status_code}: {reply.text[:200]}")
                results.append((elapsed, float(reply.headers.get("X-RPM-Cold-Start", "nan"))))
        finally:
            subprocess.run([*rpm, "shutdown"], env=env, capture_output=True, timeout=120, check=False)
    return results


BOOT_START = 0.5
BOOT_LOAD = 0.5


# ---------------------------------------------------------------------------------------------- main


NGINX_CONF = """
daemon off; master_process on; worker_processes 1; user root; pid {home}/nginx.pid; error_log {home}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; client_body_temp_path {home}; proxy_temp_path {home}; fastcgi_temp_path {home};
  uwsgi_temp_path {home}; scgi_temp_path {home}; keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{answer}'; }}
  }}
}}
"""
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk_run(url: str, connections: int, seconds: int, script: str) -> tuple[float, float, float]:
    """(p50 s, p99 s, requests/s) from one `wrk --latency` run (one thread: it needs little CPU)."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}

    def seconds_of(text: str) -> float:
        number = text.rstrip("usm")
        return float(number) * units[text[len(number):]]

    percentiles = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            percentiles[parts[0]] = seconds_of(parts[1])
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
    return percentiles["50%"], percentiles["99%"], rate


def wrk_section(me: str, env: dict[str, str], seconds: int) -> None:
    """The same latency table with a C load generator (wrk) and a C upstream (nginx), when installed: the
    bench's Python client and upstream no longer take the CPU the proxy needs on a 2-core machine."""
    import shutil

    if not (shutil.which("wrk") and shutil.which("nginx")):
        print("\n(wrk and nginx not installed: `apt-get install wrk nginx-light` adds the table measured with them)")
        return
    home = tempfile.mkdtemp(prefix="rpm-bench-nginx-")
    up_port, rpm_port, ref_port = free_port(), free_port(), free_port()
    conf = Path(home, "nginx.conf")
    conf.write_text(NGINX_CONF.format(home=home, port=up_port, answer=ANSWER.decode()))
    script = Path(home, "post.lua")
    script.write_text(WRK_SCRIPT.format(body=json.dumps(CHAT)))
    upstream = f"http://127.0.0.1:{up_port}"
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", home], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_listening(up_port, nginx)
        with (server([me, "--role", "rpm-proxy", "--port", str(rpm_port), "--upstream", upstream], rpm_port, env),
              server([str(HERE / "reference_proxy.py"), "--upstream", upstream, "--port", str(ref_port)],
                     ref_port)):
            targets = {"direct": up_port, "rpm": rpm_port, "reference": ref_port}
            rows = {(name, c): wrk_run(f"http://127.0.0.1:{port}/v1/chat/completions", c, seconds, str(script))
                    for c in (1, 16) for name, port in targets.items()}
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(15)
    print(f"\n## Latency and throughput with wrk and nginx ({seconds} s per run, `wrk -t1 --latency`)\n")
    print("| path | connections | p50 | p99 | requests/s | added p50 | added p99 | vs reference |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, c), (p50, p99, rate) in rows.items():
        d50, d99, _ = rows[("direct", c)]
        ratio = rate / rows[("reference", c)][2]
        print(f"| {name} | {c} | {ms(p50)} | {ms(p99)} | {rate:,.0f} | {ms(p50 - d50)} | {ms(p99 - d99)} "
              f"| {ratio:.2f}× |")


NGINX_PROXY_CONF = """
daemon off; master_process on; worker_processes 1; user root; pid {home}/nginx.pid; error_log {home}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; client_body_temp_path {home}; proxy_temp_path {home}; fastcgi_temp_path {home};
  uwsgi_temp_path {home}; scgi_temp_path {home}; keepalive_requests 1000000;
  upstream bench {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }}
  }}
}}
"""


@contextlib.contextmanager
def nginx_proxy(port: int, upstream: str) -> Iterator[int | str]:
    """nginx as a plain reverse proxy in front of the same upstream (the limit: what forwarding costs in C);
    yields its master's pid (tree_cpu_seconds adds the worker), or why it does not run."""
    import shutil

    binary = shutil.which("nginx")
    if binary is None:
        yield "not installed (`apt-get install nginx-light` adds it to this run)"
        return
    home = tempfile.mkdtemp(prefix="rpm-bench-nginx-proxy-")
    conf = Path(home, "nginx.conf")
    conf.write_text(NGINX_PROXY_CONF.format(home=home, port=port, upstream=upstream.removeprefix("http://")))
    process = subprocess.Popen([binary, "-c", str(conf), "-p", home], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield process.pid
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(15)


LITELLM_CONF = """model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: bench-upstream-key
"""


@contextlib.contextmanager
def litellm_proxy(port: int, upstream: str) -> Iterator[int | str]:
    """LiteLLM's proxy (the peer), one worker, no database, when `litellm[proxy]` is installed: in this
    interpreter, or as a `litellm` command on PATH (e.g. its own venv: it is no dependency of rpm's)."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("litellm") is not None:
        command = [sys.executable, "-m", "litellm"]
    elif shutil.which("litellm"):
        command = [str(shutil.which("litellm"))]
    else:
        yield "not installed (`pip install 'litellm[proxy]'`, here or in a venv whose bin is on PATH)"
        return
    home = tempfile.mkdtemp(prefix="rpm-bench-litellm-")
    conf = Path(home, "config.yaml")
    conf.write_text(LITELLM_CONF.format(model=MODEL, upstream=upstream))
    # No master key (LiteLLM then asks no auth: it does less per request than rpm's keyed path), no database,
    # the model cost map from the package (no fetch at start-up).
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen([*command, "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process, timeout=120)
        yield process.pid
    finally:
        stop(process)


PEERS = {"nginx": nginx_proxy, "litellm": litellm_proxy}


def run_role(role: str, port: int, upstream: str, cache_dir: str, gateway: bool) -> None:
    if role == "upstream":
        run_upstream(port)
    elif role == "bare":
        run_bare_proxy(port, upstream)
    else:
        run_rpm_proxy(port, upstream, cache_dir, gateway)


def profile_section(me: str, env: dict[str, str], total: int, out: str) -> None:
    """cProfile (CPU time) of the gateway proxy under `total` requests at 16 connections; its shares by package."""
    import collections
    import pstats

    home = tempfile.mkdtemp(prefix="rpm-bench-profile-")
    token = make_gateway_keys(home)
    up_port, rpm_port = free_port(), free_port()
    with (server([me, "--role", "upstream", "--port", str(up_port)], up_port),
          server([me, "--role", "rpm-proxy", "--gateway", "--port", str(rpm_port), "--upstream",
                  f"http://127.0.0.1:{up_port}"], rpm_port, {**env, "RPM_HOME": home, "RPM_BENCH_PROFILE": out})):
        asyncio.run(load(f"http://127.0.0.1:{rpm_port}/v1/chat/completions", 16, total, token=token))
    shares: collections.Counter[str] = collections.Counter()
    stats = pstats.Stats(out).stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, own, _, _) in stats.items():
        if "runpod_manager/" in filename:
            group = "rpm: " + filename.split("runpod_manager/", 1)[1]
        elif filename == "~":
            group = "built-in: " + function.split(" of ")[0][:40]
        else:
            parts = Path(filename).parts
            group = next((part for part in ("aiohttp", "yarl", "multidict", "limits", "prometheus_client",
                                            "asyncio", "json", "uvloop") if part in parts),
                         Path(filename).name)
        shares[group] += own
    whole = sum(shares.values())
    print(f"\n## Profile: cProfile in CPU time, {total} requests at 16 connections (`{out}`)\n")
    print("| share (own time) | where |\n|---|---|")
    for group, own in shares.most_common(25):
        print(f"| {own / whole:.1%} | {group} |")


def latency_section(me: str, env: dict[str, str], total: int) -> None:
    """Direct vs through rpm at 1 and 16 connections (for A/B runs of one change to the proxy)."""
    up_port, rpm_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    with (server([me, "--role", "upstream", "--port", str(up_port)], up_port),
          server([me, "--role", "rpm-proxy", "--port", str(rpm_port), "--upstream", upstream], rpm_port,
                 env) as rpm):
        print("\n| connections | direct p50 | rpm p50 | added p50 | added p99 | rpm requests/s | own overhead p50 "
              "| proxy CPU per request |")
        print("|---|---|---|---|---|---|---|---|")
        for connections in (1, 16):
            direct, _ = asyncio.run(load(f"http://127.0.0.1:{up_port}/v1/chat/completions", connections, total))
            before = overhead_histogram(rpm_port)
            cpu_before = cpu_seconds(rpm.pid)
            through, wall = asyncio.run(load(f"http://127.0.0.1:{rpm_port}/v1/chat/completions", connections,
                                             total))
            time.sleep(1.0)  # the proxy's log thread writes its last batch (every 0.5 s)
            cpu = (cpu_seconds(rpm.pid) - cpu_before) / (len(through) + 50)  # + the warm-up requests
            own = bucket_quantile(before, overhead_histogram(rpm_port), .5)
            print(f"| {connections} | {ms(pct(direct, .5))} | {ms(pct(through, .5))} "
                  f"| {ms(pct(through, .5) - pct(direct, .5))} | {ms(pct(through, .99) - pct(direct, .99))} "
                  f"| {len(through) / wall:,.0f} | {own} | {cpu * 1e6:.0f} µs |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="requests per latency run")
    parser.add_argument("--quick", action="store_true", help="small counts, to check the script works")
    parser.add_argument("--only-wrk", action="store_true", help="only the wrk + nginx table")
    parser.add_argument("--only-cpu", action="store_true", help="only the proxy's CPU time per request")
    parser.add_argument("--only-latency", action="store_true",
                        help="only direct vs rpm latency and throughput (no reference: needs no [bench] extras)")
    parser.add_argument("--role", choices=["upstream", "rpm-proxy", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="FILE", help="only: cProfile the gateway proxy under load into FILE")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the latency table (medians)")
    parser.add_argument("--no-wake", action="store_true", help="skip the wrk table and the wake measurement")
    args = parser.parse_args()
    if args.role is not None:  # one of the servers, started by the bench itself
        run_role(args.role, args.port, args.upstream, args.cache_dir, args.gateway)
        return

    total = 300 if args.quick else args.requests
    streams, events = (3, 50) if args.quick else (20, 100)
    held = 50 if args.quick else 200
    me = str(Path(__file__).resolve())
    home = tempfile.mkdtemp(prefix="rpm-bench-proxy-")
    env = {**os.environ, "RPM_HOME": home}
    up_port, rpm_port, ref_port, cached_port = free_port(), free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    print(f"# python bench/proxy.py --requests {total}{' --quick' if args.quick else ''}")
    if args.only_wrk:
        wrk_section(me, env, 2 if args.quick else 10)
        return
    if args.profile:
        profile_section(me, env, total, args.profile)
        return
    if args.only_cpu:
        cpu_section(me, env, total, 2 if args.quick else 3)
        return
    if args.only_latency:
        latency_section(me, env, total)
        return

    token = make_gateway_keys(home)
    rounds = 1 if args.quick else args.rounds
    print("rpm's proxy runs the team gateway's whole path: keys (20, the load's with every "
          "per-key limit), routing by model over 3 pods, the request log; cache off.")
    with contextlib.ExitStack() as stack:
        stack.enter_context(server([me, "--role", "upstream", "--port", str(up_port)], up_port))
        rpm = stack.enter_context(server([me, "--role", "rpm-proxy", "--gateway", "--port", str(rpm_port),
                                          "--upstream", upstream], rpm_port, env))
        ref = stack.enter_context(server([str(HERE / "reference_proxy.py"), "--upstream", upstream, "--port",
                                          str(ref_port)], ref_port))
        targets: dict[str, tuple[int, int | None]] = {"direct": (up_port, None), "rpm": (rpm_port, rpm.pid),
                                                      "reference": (ref_port, ref.pid)}
        import importlib.util

        if importlib.util.find_spec("uvloop") is not None:  # the same proxy on asyncio's loop: uvloop's share
            asyncio_port = free_port()
            rpm_asyncio = stack.enter_context(server(
                [me, "--role", "rpm-proxy", "--gateway", "--port", str(asyncio_port), "--upstream", upstream],
                asyncio_port, {**env, "RPM_BENCH_ASYNCIO_LOOP": "1"}))
            targets["rpm on asyncio's loop"] = (asyncio_port, rpm_asyncio.pid)
            print("- rpm runs on uvloop (installed); `rpm on asyncio's loop` is the same proxy without it")
        else:
            print("- rpm runs on asyncio's loop (uvloop not installed: `pip install -e '.[fast]'`)")
        bare_port = free_port()
        bare = stack.enter_context(server([me, "--role", "bare", "--port", str(bare_port), "--upstream", upstream],
                                          bare_port))
        targets["bare aiohttp"] = (bare_port, bare.pid)
        for name, start in PEERS.items():
            peer_port = free_port()
            started = stack.enter_context(start(peer_port, upstream))
            if isinstance(started, str):
                print(f"- {name}: {started}")
            else:
                targets[name] = (peer_port, started)
                print(f"- {name}: pid {started}, port {peer_port}")
        idle_rss = {name: rss_mib(pid) for name, (_, pid) in targets.items() if pid is not None}
        # runs[(name, connections)]: one (p50, p99, requests/s, CPU s per request) per round
        runs: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
        own: dict[int, tuple[dict[float, float], dict[float, float]]] = {}
        for _ in range(rounds):  # alternated: every target once per round, so the machine's load hits all alike
            for connections in (1, 16):
                for name, (port, pid) in targets.items():
                    count = total if name != "litellm" else max(200, total // 10)  # ~50× slower: fewer requests
                    before_hist = overhead_histogram(rpm_port, token) if name == "rpm" else {}
                    cpu_before = tree_cpu_seconds(pid) if pid else 0.0
                    latencies, wall = asyncio.run(load(f"http://127.0.0.1:{port}/v1/chat/completions", connections,
                                                       count, token=token))
                    if name == "rpm":
                        time.sleep(0.6)  # the request log's writer thread flushes its batch (every 0.5 s)
                        first = own.get(connections, (before_hist, {}))[0]
                        own[connections] = (first, overhead_histogram(rpm_port, token))
                    cpu = (tree_cpu_seconds(pid) - cpu_before) / (len(latencies) + min(50, count)) if pid else 0.0
                    runs.setdefault((name, connections), []).append(
                        (pct(latencies, .5), pct(latencies, .99), len(latencies) / wall, cpu))
        median = {key: tuple(statistics.median(run[i] for run in values) for i in range(4))
                  for key, values in runs.items()}
        print(f"\n## Latency, throughput and CPU (non-streaming chat, fixed upstream answer; medians of {rounds} "
              "alternated rounds)\n")
        print("| path | connections | p50 | p99 | requests/s | added p50 | added p99 | proxy CPU per request |")
        print("|---|---|---|---|---|---|---|---|")
        for connections in (1, 16):
            d50, d99, _, _ = median[("direct", connections)]
            for name in targets:
                p50, p99, rate, cpu = median[(name, connections)]
                shown_cpu = f"{cpu * 1e6:.0f} µs" if name != "direct" else "-"
                print(f"| {name} | {connections} | {ms(p50)} | {ms(p99)} | {rate:,.0f} | {ms(p50 - d50)} "
                      f"| {ms(p99 - d99)} | {shown_cpu} |")
        print("\nRatios (rpm against each, same run):\n")
        print("| connections | against | rpm throughput ÷ theirs | rpm CPU per request ÷ theirs |\n|---|---|---|---|")
        for connections in (1, 16):
            _, _, rate, cpu = median[("rpm", connections)]
            for name in targets:
                if name in ("direct", "rpm"):
                    continue
                _, _, their_rate, their_cpu = median[(name, connections)]
                print(f"| {connections} | {name} | {rate / their_rate:.2f}× | {cpu / their_cpu:.2f}× |")
            for name in PEERS:
                if name not in targets:
                    print(f"| {connections} | {name} | not installed | not installed |")
        print("\nrpm's own measure (its `rpm_proxy_overhead_seconds` histogram: time in the proxy minus time "
              "waiting on the upstream, so without the client's and upstream's share of the CPU):\n")
        print("| connections | overhead p50 | overhead p99 |\n|---|---|---|")
        for connections, (before_hist, after_hist) in own.items():
            print(f"| {connections} | {bucket_quantile(before_hist, after_hist, .5)} "
                  f"| {bucket_quantile(before_hist, after_hist, .99)} |")

        # LiteLLM re-encodes events (no sent_at left); the bare forwarder reads answers whole
        streamed = [name for name in targets if name not in ("litellm", "bare aiohttp")]
        print(f"\n## Streams: {streams} concurrent streams × {events} events, 2 ms apart\n")
        print("Delay = receive time − the upstream's send time, per event; time to first token = request sent → "
              "first event; coalesced = events that reached the client in one read with another (LiteLLM "
              "rebuilds each event, dropping the upstream's send time: not measured).\n")
        print("| path | events | delay p50 | delay p99 | added p50 | added p99 | first token p50 | added first token "
              "p50 | coalesced |")
        print("|---|---|---|---|---|---|---|---|---|")
        concurrent: dict[str, tuple[list[float], list[float], int, int]] = {}
        for _ in range(rounds):
            for name in streamed:
                delays, firsts, merged, received = asyncio.run(concurrent_streams(
                    f"http://127.0.0.1:{targets[name][0]}/v1/chat/completions", streams, events, 2.0, token))
                old = concurrent.get(name, ([], [], 0, 0))
                concurrent[name] = (old[0] + delays, old[1] + firsts, old[2] + merged, old[3] + received)
        base, base_first = concurrent["direct"][0], concurrent["direct"][1]
        for name, (delays, firsts, merged, received) in concurrent.items():
            print(f"| {name} | {len(delays)} | {ms(pct(delays, .5))} | {ms(pct(delays, .99))} "
                  f"| {ms(pct(delays, .5) - pct(base, .5))} | {ms(pct(delays, .99) - pct(base, .99))} "
                  f"| {ms(pct(firsts, .5))} | {ms(pct(firsts, .5) - pct(base_first, .5))} | {merged}/{received} |")

        single = {name: asyncio.run(stream_delays(f"http://127.0.0.1:{targets[name][0]}/v1/chat/completions",
                                                  streams, events, 2.0, token))
                  for name in ("direct", "rpm", "reference")}
        print(f"\n## Streams one at a time (single stream: {streams} streams × {events} events in sequence, "
              "2 ms apart; not the concurrent figure)\n")
        print("| path | events | p50 delay | p99 delay | added p50 | added p99 |")
        print("|---|---|---|---|---|---|")
        base = single["direct"]
        for name, values in single.items():
            print(f"| {name} | {len(values)} | {ms(pct(values, .5))} | {ms(pct(values, .99))} "
                  f"| {ms(pct(values, .5) - pct(base, .5))} | {ms(pct(values, .99) - pct(base, .99))} |")

        held_rss = {name: asyncio.run(hold_streams(f"http://127.0.0.1:{targets[name][0]}/v1/chat/completions",
                                                   held, pid, token))
                    for name, (_, pid) in targets.items() if pid is not None and name in ("rpm", "reference")}
        print(f"\n## Memory (RSS of the proxy process)\n\n| proxy | idle | {held} open streams |\n|---|---|---|")
        for name, rss in idle_rss.items():
            print(f"| {name} | {rss:.1f} MiB | {f'{held_rss[name]:.1f} MiB' if name in held_rss else '-'} |")

        cache_dir = tempfile.mkdtemp(prefix="rpm-bench-cache-")
        with server([me, "--role", "rpm-proxy", "--port", str(cached_port), "--upstream", upstream,
                     "--cache-dir", cache_dir], cached_port, {**os.environ, "RPM_HOME": tempfile.mkdtemp()}):
            hits = asyncio.run(cache_hits(f"http://127.0.0.1:{cached_port}/v1/chat/completions",
                                          200 if args.quick else 2000))
        print("\n## Cache hits (temperature 0, stored answer, 1 connection)\n")
        print(f"| hits | p50 | p99 |\n|---|---|---|\n| {len(hits)} | {ms(pct(hits, .5))} | {ms(pct(hits, .99))} |")

    if args.no_wake:
        return
    wrk_section(me, env, 2 if args.quick else 10)

    wakes = measure_wake(2 if args.quick else 5)
    boot = BOOT_START + BOOT_LOAD
    print(f"\n## Wake (emulator: resume {BOOT_START} s + model load {BOOT_LOAD} s = boot {boot} s)\n")
    print("Response = arrival → whole answer (includes the emulated model's 8 tokens × 20 ms); the wait for")
    print("the pod is X-RPM-Cold-Start; what the wake path adds is that wait minus the boot.\n")
    print("| wakes | response p50 | cold start p50 | cold start max | wake overhead p50 | wake overhead max |")
    print("|---|---|---|---|---|---|")
    elapsed, cold = [w[0] for w in wakes], [w[1] for w in wakes]
    print(f"| {len(wakes)} | {statistics.median(elapsed):.3f} s | {statistics.median(cold):.3f} s "
          f"| {max(cold):.3f} s | {statistics.median(cold) - boot:.3f} s | {max(cold) - boot:.3f} s |")


if __name__ == "__main__":
    main()
