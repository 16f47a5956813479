"""Micro-benchmark: what logging one request costs the proxy, before and after the request log (#15).

The per-request line the proxy wrote until #15 was a `log.info` call in `proxy/app.py` `_finish`. It went
one of two ways:
- `configure_proxy_logging` (bench/proxy.py, tests): a QueueHandler on the request path (builds a
  LogRecord and formats it), a listener thread, a RotatingFileHandler (a stat and a flush per line);
- `rpm proxy` itself (`cli._configure_logging`): a StreamHandler on stderr, which is proxy.log for the
  background proxy: format, write and flush on the event loop, per line.
The request log replaces it: the request path appends a tuple to a deque (`RequestLog.append`), a thread
formats and writes batches.

For each, with the same values a request produces:
- the call on the request path: per-call p50/p99 (perf_counter_ns around each call, whose own ~50 ns is
  included) and the mean of a tight loop;
- the whole CPU cost per line: process CPU time for N lines, including the background thread's work,
  until everything is on disk.

Run:  python bench/requestlog.py [--lines 50000]
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runpod_manager.paths import resolve_paths
from runpod_manager.proxy.forward import RequestFacts
from runpod_manager.proxy.server import configure_proxy_logging
from runpod_manager.requestlog import RequestLog

ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"bench/model","choices":[{"index":0,'
          b'"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],'
          b'"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}')
FACTS = RequestFacts(document={"model": "bench/model", "messages": [{"role": "user", "content": "hello"}]})


def old_line(log: logging.Logger) -> Callable[[], None]:
    """The call `_finish` made per request before #15 (same format string and arguments)."""
    method, path, status, duration_ms = "POST", "/v1/chat/completions", 200, 3.2
    cache, cold, error = "bypass", None, None

    def call() -> None:
        log.info("%s %s %d %.1fms cache=%s cold=%s%s", method, path, status, duration_ms,
                 cache, "-" if cold is None else f"{cold:.1f}s",
                 "" if error is None else f" error={error}")
    return call


def new_line(request_log: RequestLog, log: logging.Logger) -> Callable[[], None]:
    """The calls `_finish` makes per request now: the entry tuple, the append, the debug-level check."""
    facts, first_byte_at, started, duration = FACTS, 1.0015, 1.0, 0.0032
    exchange_cache, error, cold, wake_wait = "bypass", None, None, 0.0

    def call() -> None:
        request_log.append((time.time(), duration, "default", "pod-bench", None if facts is None else facts.model,
                            facts is not None and facts.stream, "POST", "/v1/chat/completions", 200,
                            None if first_byte_at is None else first_byte_at - started, cold, wake_wait,
                            exchange_cache, error, ANSWER, None, cold))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("never at INFO")
    return call


def per_call_ns(call: Callable[[], None], count: int) -> tuple[float, float, float]:
    """(p50, p99, tight-loop mean) in nanoseconds."""
    timer = time.perf_counter_ns
    samples = []
    for _ in range(count):
        began = timer()
        call()
        samples.append(timer() - began)
    samples.sort()
    began = timer()
    for _ in range(count):
        call()
    mean = (timer() - began) / count
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], mean


def cpu_per_line_us(call: Callable[[], None], count: int, drain: Callable[[], None]) -> float:
    """Process CPU time (every thread) per line until the lines are written."""
    began = time.process_time()
    for _ in range(count):
        call()
    drain()
    return (time.process_time() - began) / count * 1e6


def fresh_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


Setup = Callable[[], tuple[Callable[[], None], Callable[[], None]]]  # () -> (the per-request call, drain)


def queue_rotating() -> tuple[Callable[[], None], Callable[[], None]]:
    os.environ["RPM_HOME"] = tempfile.mkdtemp(prefix="rpm-bench-log-")
    logger = fresh_logger("runpod_manager.proxy")
    close = configure_proxy_logging(resolve_paths())
    return old_line(logger), close  # close() stops the listener once its queue is written


def stream_handler() -> tuple[Callable[[], None], Callable[[], None]]:
    """`rpm proxy`'s own logging: a basicConfig-style StreamHandler on a file (the background proxy's stderr)."""
    stream = tempfile.NamedTemporaryFile("w", prefix="rpm-bench-stderr-", delete=False)  # noqa: SIM115
    logger = fresh_logger("bench.stderr")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)

    def drain() -> None:
        handler.flush()
        logger.removeHandler(handler)
        stream.close()
    return old_line(logger), drain


def request_log() -> tuple[Callable[[], None], Callable[[], None]]:
    directory = Path(tempfile.mkdtemp(prefix="rpm-bench-requests-"))
    writer = RequestLog(directory / "requests.jsonl", keep_days=30)
    writer.start()
    return new_line(writer, fresh_logger("bench.quiet")), writer.close


def measure(setup: Setup, count: int) -> tuple[tuple[float, float, float], float]:
    """Latency of the call, then (in a fresh setup, so no backlog is billed to it) CPU per line."""
    call, drain = setup()
    latency = per_call_ns(call, count)
    drain()
    call, drain = setup()
    cpu = cpu_per_line_us(call, count, drain)
    return latency, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50_000, help="lines per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the median is shown")
    args = parser.parse_args()
    print(f"# python bench/requestlog.py --lines {args.lines} --repeats {args.repeats}   (Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs)\n")
    rows: dict[str, Setup] = {
        "log.info → QueueHandler → RotatingFileHandler (configure_proxy_logging)": queue_rotating,
        "log.info → StreamHandler on stderr = proxy.log (`rpm proxy`)": stream_handler,
        "RequestLog.append (this issue)": request_log}
    print("| per request | call p50 | call p99 | call mean | CPU per line, all threads |")
    print("|---|---|---|---|---|")
    for name, setup in rows.items():
        runs = [measure(setup, args.lines) for _ in range(args.repeats)]
        p50 = statistics.median(run[0][0] for run in runs)
        p99 = statistics.median(run[0][1] for run in runs)
        mean = statistics.median(run[0][2] for run in runs)
        cpu = statistics.median(run[1] for run in runs)
        print(f"| {name} | {p50 / 1000:.2f} µs | {p99 / 1000:.2f} µs | {mean / 1000:.2f} µs | {cpu:.1f} µs |")


if __name__ == "__main__":
    main()
