"""Fakes for the proxy's tests: a controller, a scriptable vLLM-like upstream, and proxy runners.

- `FakeController` implements ProxyController with counters and knobs (wake delay or a gate to hold
  the wake, wake errors, a target to return).
- `FakeUpstream` is a small aiohttp server on its own thread and loop that answers like vLLM's
  OpenAI server and lets a test fail the next N requests, hold a stream between events until the
  test releases it, observe client disconnects, and read back every request it received.
- `ProxyThread` runs the real `run_proxy` on a thread (real sockets, real runner); `python -m
  tests.support.proxy_fakes` runs it as a subprocess with a FakeController aimed at an upstream.
- `disk_with_room` makes the files under one directory share a small disk: writes past its room fail with
  ENOSPC, as on a full filesystem (the proxy writes its spools with os.write).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.config import CacheConfig, Config, PodConfig, ProxyConfig
from runpod_manager.errors import RpmError
from runpod_manager.paths import Paths
from runpod_manager.proxy.controller import PodView

UPSTREAM_KEY = "upstream-secret-key-4f9a1c"
MODEL = "fake/model"
TOKENS = ("Hello", " from", " the", " fake", " pod", ".")


# ------------------------------------------------------------------------------------------- controller


def _default_view(name: str) -> PodView:
    return PodView(name=name, pod_id="pod-fake", status="RUNNING", ready=True, lease_open=True,
                   gpu_type_id="NVIDIA GeForce RTX 4090", cost_per_hour=0.69, spend_today_usd=1.25,
                   max_daily_spend_usd=20.0, limits={"runtime": "2099-01-01T00:00:00Z", "idle": "not idle"})


class FakePod:
    """One pod of a FakeController: its answers, its wake's knobs and its counters."""

    def __init__(
        self,
        target: UpstreamTarget | None = None,
        *,
        wake_target: UpstreamTarget | None = None,
        wake_delay_seconds: float = 0.0,
        wake_error: BaseException | None = None,
        hold_wake: bool = False,
        view: PodView | None = None,
    ) -> None:
        self.target = target
        self.wake_target = wake_target if wake_target is not None else target
        self.wake_delay_seconds = wake_delay_seconds
        self.wake_error = wake_error
        self.release_wake = threading.Event()
        if not hold_wake:
            self.release_wake.set()
        self.wake_started = threading.Event()
        self.wake_calls = 0
        self.current_target_calls = 0
        self.unreachable: list[str] = []
        self.view = view


class FakeController:
    """A ProxyController whose answers and wake behaviour tests set directly (thread-safe counters).

    One pod, named like make_config's ("default"), from the keyword arguments: `FakeController(target,
    hold_wake=True)`; its knobs and counters are also attributes of the controller (`controller.target`,
    `.wake_calls`, `.release_wake`, …). Several: `FakeController(pods={"chat": FakePod(…), "coder": …})`,
    each reached with `controller.pods[name]`; the shortcuts then mean the first.
    """

    def __init__(
        self,
        target: UpstreamTarget | None = None,
        *,
        wake_target: UpstreamTarget | None = None,
        wake_delay_seconds: float = 0.0,
        wake_error: BaseException | None = None,
        hold_wake: bool = False,
        view: PodView | None = None,
        name: str = "default",
        pods: Mapping[str, FakePod] | None = None,
    ) -> None:
        if pods is None:
            pods = {name: FakePod(target, wake_target=wake_target, wake_delay_seconds=wake_delay_seconds,
                                  wake_error=wake_error, hold_wake=hold_wake, view=view)}
        self.pods: dict[str, FakePod] = dict(pods)
        for pod_name, pod in self.pods.items():
            if pod.view is None:
                pod.view = _default_view(pod_name)
            elif not pod.view.name:
                pod.view = replace(pod.view, name=pod_name)
        self.reconcile_calls: list[Mapping[str, datetime | None]] = []
        self.reconcile_error: BaseException | None = None
        self.wake_order: list[str] = []  # pods in the order their wakes started
        self.manage_calls: list[tuple[str, str, str]] = []  # (action, pod, opened_by) of start/stop calls
        self.manage_error: BaseException | None = None  # raised by start/stop (after recording the call)
        self._lock = threading.Lock()

    # -- the first pod's knobs and counters, for tests of one pod

    @property
    def first(self) -> FakePod:
        return next(iter(self.pods.values()))

    @property
    def target(self) -> UpstreamTarget | None:
        return self.first.target

    @target.setter
    def target(self, value: UpstreamTarget | None) -> None:
        self.first.target = value

    @property
    def wake_error(self) -> BaseException | None:
        return self.first.wake_error

    @wake_error.setter
    def wake_error(self, value: BaseException | None) -> None:
        self.first.wake_error = value

    @property
    def release_wake(self) -> threading.Event:
        return self.first.release_wake

    @property
    def wake_started(self) -> threading.Event:
        return self.first.wake_started

    @property
    def wake_calls(self) -> int:
        return self.first.wake_calls

    @property
    def current_target_calls(self) -> int:
        return self.first.current_target_calls

    @property
    def unreachable(self) -> list[str]:
        return self.first.unreachable

    @property
    def pod_view(self) -> PodView:
        assert self.first.view is not None
        return self.first.view

    @pod_view.setter
    def pod_view(self, value: PodView) -> None:
        self.first.view = value

    def last_request_times(self, pod: str | None = None) -> list[datetime | None]:
        """What each reconcile call said of one pod's last request (the first pod's by default)."""
        name = pod or next(iter(self.pods))
        with self._lock:
            return [calls[name] for calls in self.reconcile_calls]

    def release_all(self) -> None:
        for pod in self.pods.values():
            pod.release_wake.set()

    # -- the ProxyController protocol

    def pod_names(self) -> tuple[str, ...]:
        return tuple(self.pods)

    def current_target(self, pod: str) -> UpstreamTarget | None:
        fake = self.pods[pod]
        with self._lock:
            fake.current_target_calls += 1
        return fake.target

    def wake(self, pod: str) -> UpstreamTarget:
        fake = self.pods[pod]
        with self._lock:
            fake.wake_calls += 1
            self.wake_order.append(pod)
        fake.wake_started.set()
        if not fake.release_wake.wait(timeout=30):
            raise RpmError(f"the fake wake of {pod} was never released")
        time.sleep(fake.wake_delay_seconds)
        if fake.wake_error is not None:
            raise fake.wake_error
        assert fake.wake_target is not None
        fake.target = fake.wake_target
        return fake.wake_target

    def start(self, pod: str, opened_by: str) -> PodView:
        """The management API's start: recorded; the pod is ready at once when it has a wake target."""
        fake = self.pods[pod]
        with self._lock:
            self.manage_calls.append(("start", pod, opened_by))
        if self.manage_error is not None:
            raise self.manage_error
        fake.target = fake.wake_target
        return self.view(pod)

    def stop(self, pod: str, *, terminate: bool) -> PodView:
        with self._lock:
            self.manage_calls.append(("terminate" if terminate else "stop", pod, ""))
        if self.manage_error is not None:
            raise self.manage_error
        self.pods[pod].target = None
        return self.view(pod)

    def reconcile(self, last_request_at: Mapping[str, datetime | None]) -> Mapping[str, PodView]:
        assert set(last_request_at) == set(self.pods), last_request_at  # every pod, each on its own clock
        with self._lock:
            self.reconcile_calls.append(dict(last_request_at))
        if self.reconcile_error is not None:
            raise self.reconcile_error
        return self.views()

    def view(self, pod: str) -> PodView:
        view = self.pods[pod].view
        assert view is not None
        return view

    def views(self) -> Mapping[str, PodView]:
        return {name: self.view(name) for name in self.pods}

    def mark_unreachable(self, pod: str, pod_id: str) -> None:
        fake = self.pods[pod]
        with self._lock:
            fake.unreachable.append(pod_id)
        fake.target = None


# --------------------------------------------------------------------------------------------- upstream


@dataclass
class RecordedRequest:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Scripted:
    """One canned answer for the next request (status, body, headers)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class FakeUpstream:
    """A vLLM-like OpenAI server on its own thread; see the module docstring for the knobs."""

    def __init__(self, *, expected_key: str | None = UPSTREAM_KEY, model: str = MODEL) -> None:
        self.expected_key = expected_key
        self.model = model  # the one name it serves, like vLLM's --served-model-name
        self.requests: list[RecordedRequest] = []
        self.script: deque[Scripted] = deque()
        self.hold_streams = False  # when True, each event after the first waits for release()
        self.events_sent = 0
        self.running = 0  # like vllm:num_requests_running
        self.disconnected = threading.Event()
        self.stream_started = threading.Event()
        self.token_delay_seconds = 0.0
        self.response_delay_seconds = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._releases: asyncio.Semaphore | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._lock = threading.Lock()

    # -- control (from the test thread)

    def fail_next(self, count: int, status: int = 502, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> None:
        default = (b"<html><head><title>502 Bad Gateway</title></head><body>502</body></html>"
                   if status == 502 else json.dumps({"error": {"message": f"scripted {status}",
                                                               "type": "BadRequestError", "param": None,
                                                               "code": status}}).encode())
        for _ in range(count):
            self.script.append(Scripted(status, default if body is None else body, headers or {}))

    def release(self, count: int = 1) -> None:
        """Let a held stream send `count` more events."""
        assert self._loop is not None and self._releases is not None
        releases = self._releases
        for _ in range(count):
            self._loop.call_soon_threadsafe(releases.release)

    def target(self, pod_id: str = "pod-fake") -> UpstreamTarget:
        return UpstreamTarget(instance_id=pod_id, base_url=self.url, key=self.expected_key)

    def paths_seen(self) -> list[str]:
        with self._lock:
            return [request.path_qs for request in self.requests]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.script.clear()
        self.hold_streams = False
        self.events_sent = 0
        self.disconnected.clear()
        self.stream_started.clear()
        self.token_delay_seconds = 0.0
        self.response_delay_seconds = 0.0
        self.expected_key = UPSTREAM_KEY
        # Fresh permits: releases left over from an earlier test must not let this one's stream run on.
        self._releases = asyncio.Semaphore(0)

    # -- lifecycle

    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._releases = asyncio.Semaphore(0)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # -- serving (on the upstream's loop)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.path_qs, dict(request.headers), body))
        if self.response_delay_seconds:
            await asyncio.sleep(self.response_delay_seconds)
        if self.script:
            scripted = self.script.popleft()
            return web.Response(status=scripted.status, body=scripted.body, headers={
                "Content-Type": "text/html" if scripted.body.startswith(b"<") else "application/json",
                **scripted.headers})
        if self.expected_key is not None and request.headers.get("Authorization") != f"Bearer {self.expected_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)  # vLLM's --api-key answer
        path = request.path
        if path == "/v1/models":
            return web.json_response({"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm"}]})
        if path == "/v1/echo":
            return web.json_response({"method": request.method, "path_qs": request.path_qs,
                                      "headers": dict(request.headers), "body": body.decode()})
        if path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            try:
                document = json.loads(body)
            except ValueError:
                return web.json_response({"error": {"message": "bad json", "type": "BadRequestError",
                                                    "param": None, "code": 400}}, status=400)
            if document.get("model") != self.model:
                return web.json_response({"error": {
                    "message": f"The model `{document.get('model')}` does not exist.",
                    "type": "NotFoundError", "param": "model", "code": 404}}, status=404)
            if isinstance(document.get("max_tokens"), int) and document["max_tokens"] < 1:
                return web.json_response({"error": {"message": "max_tokens must be at least 1",
                                                    "type": "BadRequestError", "param": "max_tokens",
                                                    "code": 400}}, status=400)
            if path == "/v1/embeddings":
                return web.json_response({"object": "list", "model": self.model, "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3}})
            chat = path == "/v1/chat/completions"
            if document.get("stream") is True:
                return await self._stream(request, document, chat=chat)
            return web.json_response(_completion(document, chat=chat, model=self.model))
        return web.json_response({"detail": "Not Found"}, status=404)

    async def _stream(self, request: web.Request, document: dict[str, Any], *, chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        self.running += 1
        self.stream_started.set()
        include_usage = bool((document.get("stream_options") or {}).get("include_usage"))
        try:
            for index, event in enumerate(_stream_events(document, chat=chat, include_usage=include_usage)):
                if index > 0 and self.hold_streams:
                    assert self._releases is not None
                    await self._releases.acquire()
                elif self.token_delay_seconds:
                    await asyncio.sleep(self.token_delay_seconds)
                await response.write(event)
                self.events_sent += 1
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise
        finally:
            self.running -= 1
        return response


def _completion(document: dict[str, Any], *, chat: bool, model: str = MODEL) -> dict[str, Any]:
    text = "".join(TOKENS)
    usage = {"prompt_tokens": 5, "completion_tokens": len(TOKENS), "total_tokens": 5 + len(TOKENS)}
    if chat:
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}], "usage": usage}
    return {"id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}], "usage": usage}


def _stream_events(document: dict[str, Any], *, chat: bool, include_usage: bool) -> Iterator[bytes]:
    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    kind = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": "chatcmpl-fake" if chat else "cmpl-fake", "object": kind, "created": 1,
            "model": document.get("model", MODEL)}
    for index, token in enumerate(TOKENS):
        last = index == len(TOKENS) - 1
        if chat:
            delta = {"role": "assistant", "content": token} if index == 0 else {"content": token}
            choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
        else:
            choice = {"index": 0, "text": token, "finish_reason": "stop" if last else None, "logprobs": None}
        yield event({**base, "choices": [choice]})
    if include_usage:
        yield event({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(TOKENS),
                                                      "total_tokens": 5 + len(TOKENS)}})
    yield b"data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------ proxy runners


def make_config(port: int = 0, *, cache: bool = False, cache_dir: Path | None = None, model: str = MODEL,
                extra_args: str = "", pods: tuple[PodConfig, ...] = (), **proxy: Any) -> Config:
    """A Config for tests: free port, fast retries and reconcile, cache off unless asked; [pod] model is the
    name the upstream serves (the proxy refuses other names without waking the pod). `pods`: several
    [pods.<name>] tables instead of the one [pod] (then `model` and `extra_args` are not used)."""
    proxy_defaults: dict[str, Any] = {"host": "127.0.0.1", "port": port, "retry_delay_seconds": 0.01,
                                      "max_retries": 2, "reconcile_interval_seconds": 0.2,
                                      "queue_timeout_seconds": 10.0}
    proxy_defaults.update(proxy)
    cache_config = CacheConfig(enabled=cache, dir=str(cache_dir) if cache_dir else "")
    if pods:
        return Config(pod=pods[0], pods=pods, proxy=ProxyConfig(**proxy_defaults), cache=cache_config)
    return Config(pod=PodConfig(model=model, extra_args=extra_args), proxy=ProxyConfig(**proxy_defaults),
                  cache=cache_config)


def with_cache(config: Config, **cache: Any) -> Config:
    return replace(config, cache=replace(config.cache, **cache))


class ProxyThread:
    """The real run_proxy on a background thread; `.url` once ready, `.stop()` to end it gracefully."""

    def __init__(self, config: Config, controller: Any, paths: Paths, **app_options: Any) -> None:
        from runpod_manager.proxy.server import ProxyReady, run_proxy

        self.ready: ProxyReady | None = None
        self.error: BaseException | None = None
        started = threading.Event()

        def on_ready(ready: ProxyReady) -> None:
            self.ready = ready
            started.set()

        def run() -> None:
            try:
                run_proxy(config, controller, paths, ready_callback=on_ready, **app_options)
            except BaseException as exc:
                self.error = exc
                started.set()

        self._thread = threading.Thread(target=run, name="proxy-under-test", daemon=True)
        self._thread.start()
        if not started.wait(15):
            raise RuntimeError("proxy did not start within 15 s")
        if self.error is not None:
            raise self.error

    @property
    def url(self) -> str:
        assert self.ready is not None
        return self.ready.url

    def stop(self, timeout: float = 20.0) -> None:
        if self.ready is not None and self._thread.is_alive():
            self.ready.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("proxy did not stop")

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


@contextlib.contextmanager
def running_proxy(config: Config, controller: Any, paths: Paths, **app_options: Any) -> Iterator[ProxyThread]:
    proxy = ProxyThread(config, controller, paths, **app_options)
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.contextmanager
def disk_with_room(directory: Path, room_bytes: int) -> Iterator[list[int]]:
    """Files under `directory` get `room_bytes` in all; an os.write past that writes what fits, then fails
    with ENOSPC, as on a full filesystem (other files are untouched). Yields the bytes refused so far."""
    real_write = os.write
    used = [0]
    refused = [0]
    root = str(directory.resolve())

    def write(fd: int, data: Any) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(root + os.sep):
            return real_write(fd, data)
        room = room_bytes - used[0]
        if room <= 0:
            refused[0] += len(data)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(memoryview(data)[:room]))
        used[0] += written
        return written

    with contextlib.ExitStack() as stack:
        stack.callback(setattr, os, "write", real_write)
        os.write = write
        yield refused


def start_proxy_subprocess(upstream_url: str, home: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    """`python -m tests.support.proxy_fakes` (the proxy in its own process) with RPM_HOME `home`: the process
    (its output piped) and its URL once it listens. The caller ends it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RPM_", "RUNPOD_"))}
    env["RPM_HOME"] = str(home)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    process = subprocess.Popen([sys.executable, "-m", "tests.support.proxy_fakes", "--upstream", upstream_url,
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=env["PYTHONPATH"])
    assert process.stdout is not None
    line = ""
    for line in process.stdout:
        if line.startswith("READY "):
            return process, line.split()[1]
    process.kill()
    raise AssertionError(f"proxy subprocess did not start: {line}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# ----------------------------------------------------------------------------------- subprocess entry


def _subprocess_main(argv: list[str]) -> None:
    """Run the proxy in this process against an upstream URL: prints `READY <url>` when listening."""
    from runpod_manager.paths import resolve_paths
    from runpod_manager.proxy.server import ProxyReady, configure_proxy_logging, run_proxy

    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--upstream-key", default=UPSTREAM_KEY)
    parser.add_argument("--api-key", action="append", default=[])
    parser.add_argument("--service", default="",
                        help="the URL of an http service: pod `svc` (kind = http), asleep until a request wakes it")
    parser.add_argument("--max-file-bytes", type=int, default=0,
                        help="RLIMIT_FSIZE: a write past it fails with EFBIG, as a disk without room would")
    args = parser.parse_args(argv)
    if args.max_file_bytes:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of the process being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.max_file_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    paths = resolve_paths()
    close_log = configure_proxy_logging(paths, level=logging.INFO)
    controller = FakeController(UpstreamTarget("pod-sub", args.upstream, args.upstream_key))
    config = make_config(api_keys=tuple(args.api_key))
    if args.service:
        controller = FakeController(pods={
            "default": controller.first,
            "svc": FakePod(None, wake_target=UpstreamTarget("pod-svc", args.service, None), wake_delay_seconds=0.2)})
        config = make_config(api_keys=tuple(args.api_key), pods=(
            PodConfig(name="default", model=MODEL), PodConfig(name="svc", kind="http", image="svc/ui", port=8188)))

    def ready(info: ProxyReady) -> None:
        print(f"READY {info.url}", flush=True)

    try:
        run_proxy(config, controller, paths, ready_callback=ready)
    finally:
        close_log()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    _subprocess_main(sys.argv[1:])
