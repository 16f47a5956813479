"""Benchmark: what team keys add to the proxy's hot path (auth + scopes + limits + usage counters).

Two real rpm proxies (bench/proxy.py's `rpm-proxy` role: request log on, cache off, a fixed pod) in front of
one fast upstream, each in its own process: one with no keys at all, one whose state holds 20 keys, the one
used carrying every limit (rpm, tpm, concurrency, daily budget; all far above the load, so every request
is admitted and every check runs). The load client runs in this process and alternates between the two,
round after round, so drift on a shared machine hits both alike. Reported:

- p50 / p99 latency at 1 and 16 connections, no keys vs keys, medians over the rounds, and the difference;
- the proxy's CPU time per request, no keys vs keys (contention barely moves it);
- in-process cost of the added calls themselves: resolving a token (`KeyIndex.resolve`: one HMAC-SHA256 and a
  dict lookup) and a limited key's admission + finish (`KeyLimiter.admit`/`finish`, the `limits` library's
  fixed window), per call;
- how long a revoke takes to reach a running proxy (the store is stat-ed every 0.25 s).

Run:  python bench/keys.py [--requests 3000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import proxy as bench_proxy  # noqa: E402 - bench/proxy.py: the servers and the load client

from runpod_manager.keys import KeyIndex, KeyLimits, KeyStore, Principal  # noqa: E402
from runpod_manager.paths import resolve_paths  # noqa: E402
from runpod_manager.proxy.limits import KeyLimiter  # noqa: E402

BIG = KeyLimits(requests_per_minute=10**9, tokens_per_minute=10**12, max_concurrent=10_000,
                daily_budget_usd=10.0**9)


def make_keys(home: str) -> str:
    """20 keys in `home`'s store; the token of the one the load uses (every limit set)."""
    store = KeyStore(resolve_paths({"RPM_HOME": home}).keys_file)
    for number in range(19):
        store.create(f"member-{number}", pods=("default",), now=time.time())
    return store.create("bench", limits=BIG, now=time.time()).token


def per_call_ns(call: object, count: int) -> tuple[float, float]:
    timer = time.perf_counter_ns
    samples = []
    for _ in range(count):
        began = timer()
        call()  # type: ignore[operator]
        samples.append(timer() - began)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def micro(count: int) -> None:
    home = tempfile.mkdtemp(prefix="rpm-bench-keys-micro-")
    token = make_keys(home)
    index = KeyIndex(KeyStore(resolve_paths({"RPM_HOME": home}).keys_file).load())
    limiter = KeyLimiter(Path(home) / "usage.json", zone=None)
    principal = Principal(name="bench", limits=BIG)
    unlimited = Principal(name="unlimited")
    now = time.time()

    def admit_finish() -> None:
        limiter.admit(principal)
        limiter.finish(principal, tokens=12, cost_usd=0.0001)

    def admit_finish_unlimited() -> None:
        limiter.admit(unlimited)
        limiter.finish(unlimited, tokens=12, cost_usd=0.0001)

    print("\n## The added calls, in process (per call)\n")
    print("| call | p50 | p99 |\n|---|---|---|")
    for label, call in (("KeyIndex.resolve (HMAC-SHA256 + dict)", lambda: index.resolve(token, now)),
                        ("KeyLimiter.admit + finish, every limit set", admit_finish),
                        ("KeyLimiter.admit + finish, no limits (counters only)", admit_finish_unlimited)):
        p50, p99 = per_call_ns(call, count)
        print(f"| {label} | {p50 / 1000:.1f} µs | {p99 / 1000:.1f} µs |")
    limiter.close()


def revoke_reach(url: str, home: str, trials: int) -> list[float]:
    """Seconds from `rpm keys revoke` (the store written) to the proxy's first 401 for that key."""
    store = KeyStore(resolve_paths({"RPM_HOME": home}).keys_file)
    chat = f"{url}/v1/chat/completions"
    reached = []
    for trial in range(trials):
        token = store.create(f"revoked-{trial}-{time.time_ns()}", now=time.time()).token
        headers = {"Authorization": f"Bearer {token}"}
        while requests.post(chat, json=bench_proxy.CHAT, headers=headers, timeout=10).status_code != 200:
            time.sleep(0.01)  # until the proxy has loaded the new key
        began = time.perf_counter()
        store.revoke(store.records()[-1].name, now=time.time())
        while requests.post(chat, json=bench_proxy.CHAT, headers=headers, timeout=10).status_code != 401:
            time.sleep(0.005)
        reached.append(time.perf_counter() - began)
    return reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per latency run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians are reported)")
    parser.add_argument("--quick", action="store_true", help="small counts, to check the script works")
    args = parser.parse_args()
    total, rounds = (300, 2) if args.quick else (args.requests, args.rounds)
    print(f"# python bench/keys.py --requests {total} --rounds {rounds}{' --quick' if args.quick else ''}")
    me = str(HERE / "proxy.py")
    plain_home = tempfile.mkdtemp(prefix="rpm-bench-nokeys-")
    keyed_home = tempfile.mkdtemp(prefix="rpm-bench-keys-")
    token = make_keys(keyed_home)
    up_port, plain_port, keyed_port = (bench_proxy.free_port() for _ in range(3))
    upstream = f"http://127.0.0.1:{up_port}"
    proxy_args = ["--role", "rpm-proxy", "--upstream", upstream]
    with (bench_proxy.server([me, "--role", "upstream", "--port", str(up_port)], up_port),
          bench_proxy.server([me, *proxy_args, "--port", str(plain_port)], plain_port,
                             {**os.environ, "RPM_HOME": plain_home}) as plain,
          bench_proxy.server([me, *proxy_args, "--port", str(keyed_port)], keyed_port,
                             {**os.environ, "RPM_HOME": keyed_home}) as keyed):
        runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for _ in range(rounds):
            for connections in (1, 16):
                for name, port, process, used in (("no keys", plain_port, plain, "bench-client"),
                                                  ("keys", keyed_port, keyed, token)):
                    cpu_before = bench_proxy.cpu_seconds(process.pid)
                    latencies, _ = asyncio.run(bench_proxy.load(f"http://127.0.0.1:{port}/v1/chat/completions",
                                                                connections, total, token=used))
                    cpu = (bench_proxy.cpu_seconds(process.pid) - cpu_before) / (len(latencies) + min(50, total))
                    runs.setdefault((name, connections), []).append(
                        (bench_proxy.pct(latencies, .5), bench_proxy.pct(latencies, .99), cpu))
        print("\n## Latency through the proxy, no keys vs keys (non-streaming chat; medians of the rounds)\n")
        print("| connections | no keys p50 | keys p50 | added p50 | no keys p99 | keys p99 | added p99 "
              "| CPU/request no keys | keys | added |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for connections in (1, 16):
            plain_runs, keyed_runs = runs[("no keys", connections)], runs[("keys", connections)]
            medians = [statistics.median(run[i] for run in plain_runs) for i in range(3)]
            keyed_medians = [statistics.median(run[i] for run in keyed_runs) for i in range(3)]
            print(f"| {connections} | {bench_proxy.ms(medians[0])} | {bench_proxy.ms(keyed_medians[0])} "
                  f"| {bench_proxy.ms(keyed_medians[0] - medians[0])} | {bench_proxy.ms(medians[1])} "
                  f"| {bench_proxy.ms(keyed_medians[1])} | {bench_proxy.ms(keyed_medians[1] - medians[1])} "
                  f"| {medians[2] * 1e6:.0f} µs | {keyed_medians[2] * 1e6:.0f} µs "
                  f"| {(keyed_medians[2] - medians[2]) * 1e6:.0f} µs |")
        reached = revoke_reach(f"http://127.0.0.1:{keyed_port}", keyed_home, 3 if args.quick else 10)
        print(f"\nA revoke reached the running proxy in {statistics.median(reached) * 1000:.0f} ms (median), "
              f"{max(reached) * 1000:.0f} ms at most, over {len(reached)} revokes.")
    micro(20_000 if args.quick else 200_000)


if __name__ == "__main__":
    main()
