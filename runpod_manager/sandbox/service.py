"""The fake generic HTTP/WebSocket service inside sandbox pods whose image is not a vLLM image.

A pod runs it (instead of the fake vLLM in model.py) when `world.serves_vllm(pod.image)` is false: the
image name does not contain `vllm`. It answers on every `port/http` entry of the pod, behind the same
RunPod-proxy stand-in as the model (`/pods/{pod_id}-{port}/...`: 404 for an unknown pod or port, 502
until the pod is RUNNING and its start-up delay, `--model-load-seconds`, has passed). Like a service on
RunPod's public URL it checks no key, unless the pod's env sets `SERVICE_API_KEY`: then every route but
`/health` wants `Authorization: Bearer <that key>` (401 otherwise), for proxies that add a header upstream.

Routes (a contract: the proxy's tests and outside checks rely on them):
- `GET /`: an HTML page whose script fetches `/prompt` and opens `/ws` by absolute path, as ComfyUI's does.
- `GET /health`: 200 `{"status": "ok", ...}`.
- `POST /prompt`: JSON echo `{"received": <body>}`; 400 for invalid JSON, 413 above 8 MiB.
- `POST /upload`: any body, read as it arrives and never held whole: `{"sha256", "bytes", "contentType"}`
  of the raw request body (for multipart/form-data that is the whole encoded body, boundaries included:
  what a client that built the body can hash too).
- `POST /slow?seconds=N`: answers `{"slept": N}` after N seconds (0 ≤ N ≤ 600, else 400).
- `/ws`: a WebSocket echoing every text or binary frame as the same type, pushing a text frame
  `{"progress": n}` (n = 1, 2, …) every `--service-progress-seconds` (default 1; `?progress_seconds=S`
  overrides it per socket, 0 turns it off); pings are answered; a client close is answered cleanly.
- Not in the contract, for streaming tests: `GET /stream?chunks=N&interval=S` (an SSE response of N
  events `data: {"chunk": i}`), `GET /download?bytes=N` (N bytes of `i % 256`, streamed, with
  Content-Length), and `/headers` (any method: the request line and headers it received, as JSON).

When the pod stops, restarts or crashes, the service goes with it: open WebSockets are closed with 1001
"pod stopped" and other requests in flight lose their connection, as when a container dies; new ones get
the 502 above. Each request is counted in `world.service_stats` (shown by `/_sandbox/state`) without
header values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from runpod_manager.sandbox.pods import Pod, ServiceStats
from runpod_manager.sandbox.world import World

PROGRESS_SECONDS = 1.0
MAX_PROMPT_BYTES = 8 * 1024 * 1024
MAX_SLOW_SECONDS = 600.0
MAX_STREAM_CHUNKS = 100_000
MAX_STREAM_INTERVAL_SECONDS = 60.0
MAX_DOWNLOAD_BYTES = 16 * 1024 * 1024 * 1024
MAX_PROGRESS_SECONDS = 3600.0
_CHUNK_BYTES = 64 * 1024
# How often a request in flight checks that its pod still runs: stop → cut within this delay.
_WATCH_SECONDS = 0.05
_DOWNLOAD_BLOCK = bytes(range(256)) * (_CHUNK_BYTES // 256)

Route = Callable[[web.Request, Pod, int], Awaitable[web.StreamResponse]]

_INDEX_HTML = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>sandbox service</title></head>
<body>
<h1>sandbox service</h1>
<p>This page calls the service by absolute path, like ComfyUI's UI: <code>POST /prompt</code> and
<code>/ws</code>.</p>
<button id="send">POST /prompt</button>
<pre id="result">(no answer yet)</pre>
<pre id="progress">(no progress yet)</pre>
<script>
const result = document.getElementById("result");
async function send() {
  const response = await fetch("/prompt", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({prompt: "hello from the page", sent: Date.now()}),
  });
  result.textContent = response.status + " " + await response.text();
}
document.getElementById("send").addEventListener("click", send);
send();
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const socket = new WebSocket(scheme + location.host + "/ws");
socket.onmessage = (event) => { document.getElementById("progress").textContent = event.data; };
</script>
</body>
</html>
"""


class ServiceRequestError(Exception):
    """A bad request to the fake service: answered as `{"error": message}` with the status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _dropped(request: web.Request) -> web.Response:
    """Close the connection without an answer; the returned response never leaves."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=502)


def _number_param(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    """A query parameter as a finite number in [low, high], or ServiceRequestError(400) naming it."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise ServiceRequestError(400, f"query parameter {name} must be a number from {low:g} to {high:g}, "
                                       f"got {text[:40]!r}")
    return value


def _count_param(request: web.Request, name: str, default: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) > high:
        raise ServiceRequestError(400, f"query parameter {name} must be a whole number from 0 to {high}, "
                                       f"got {text[:40]!r}")
    return int(text)


class ServiceServer:
    """Serves every service pod's routes; `route` is called once the pod URL resolved to a ready pod."""

    def __init__(self, world: World, progress_seconds: float = PROGRESS_SECONDS) -> None:
        self.world = world
        self.progress_seconds = progress_seconds
        self._routes: dict[str, tuple[str, Route]] = {
            "/": ("GET", self._index),
            "/health": ("GET", self._health),
            "/prompt": ("POST", self._prompt),
            "/upload": ("POST", self._upload),
            "/slow": ("POST", self._slow),
            "/ws": ("GET", self._websocket),
            "/stream": ("GET", self._stream),
            "/download": ("GET", self._download),
            "/headers": ("*", self._headers),
        }

    def stats(self, pod: Pod) -> ServiceStats:
        return self.world.service_stats.setdefault(pod.id, ServiceStats())

    async def route(self, request: web.Request, pod: Pod, port: int, path: str) -> web.StreamResponse:
        stats = self.stats(pod)
        stats.requests += 1
        # An open WebSocket is not work for the GPU (ComfyUI's UI keeps one open all day); only requests
        # being answered make the emulator report the GPU busy.
        counted = path != "/ws"
        stats.active += counted
        entry: dict[str, Any] = {"method": request.method, "path": path, "query": request.query_string,
                                 "port": port, "status": None}
        stats.recent.append(entry)
        try:
            response = await self._dispatch(request, pod, port, path)
        except ConnectionError:
            # The client went away mid-body (an aborted upload): nobody to answer, and no error to log.
            return _dropped(request)
        finally:
            stats.active -= counted
        entry["status"] = response.status
        return response

    async def _dispatch(self, request: web.Request, pod: Pod, port: int, path: str) -> web.StreamResponse:
        if path not in self._routes:
            return web.json_response({"detail": "Not Found"}, status=404)
        method, handler = self._routes[path]
        if method not in ("*", request.method) and not (method == "GET" and request.method == "HEAD"):
            return web.json_response({"detail": "Method Not Allowed"}, status=405, headers={"Allow": method})
        key = pod.env.get("SERVICE_API_KEY")
        sent = request.headers.get("Authorization", "").encode()
        if key and path != "/health" and not secrets.compare_digest(sent, f"Bearer {key}".encode()):
            return _error(401, "this service wants Authorization: Bearer <SERVICE_API_KEY>")
        try:
            if path == "/ws":
                return await handler(request, pod, port)
            return await self._until_pod_stops(handler(request, pod, port), request, pod, port)
        except ServiceRequestError as exc:
            return _error(exc.status, exc.message)

    # -- the pod's lifetime --

    def _still_running(self, pod: Pod, port: int, generation: int) -> bool:
        state, current = self.world.model_state(pod.id, port)
        return state == "ready" and current is pod and pod.container_generation == generation

    async def _wait_pod_stops(self, pod: Pod, port: int) -> None:
        generation = pod.container_generation
        while self._still_running(pod, port, generation):
            await asyncio.sleep(_WATCH_SECONDS)

    async def _until_pod_stops(self, work: Awaitable[web.StreamResponse], request: web.Request, pod: Pod,
                               port: int) -> web.StreamResponse:
        """Run a handler; if the pod stops first, drop the connection as a dead container's would."""
        handler = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self._wait_pod_stops(pod, port))
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not handler.done():
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
        if handler.cancelled():
            return _dropped(request)  # the pod stopped mid-request
        return handler.result()

    # -- routes --

    async def _index(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        return web.Response(text=_INDEX_HTML, content_type="text/html")

    async def _health(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        return web.json_response({"status": "ok", "pod": pod.id, "port": port})

    async def _prompt(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        raw = bytearray()
        async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
            raw += chunk
            if len(raw) > MAX_PROMPT_BYTES:
                raise ServiceRequestError(413, f"request body exceeds {MAX_PROMPT_BYTES} bytes")
        self.stats(pod).received_bytes += len(raw)
        try:
            body = json.loads(bytes(raw))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ServiceRequestError(400, f"invalid JSON body: {exc}") from None
        except RecursionError:
            raise ServiceRequestError(400, "invalid JSON body: nested too deeply") from None
        return web.json_response({"received": body})

    async def _upload(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        digest = hashlib.sha256()
        received = 0
        stats = self.stats(pod)
        # iter_any hands over what arrived; aiohttp pauses reading the socket while its small buffer is
        # full, so a body of any size costs a few chunks of memory here.
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
            stats.received_bytes += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "bytes": received,
                                  "contentType": request.headers.get("Content-Type")})

    async def _slow(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        seconds = _number_param(request, "seconds", 1.0, 0.0, MAX_SLOW_SECONDS)
        await asyncio.sleep(seconds)
        return web.json_response({"slept": seconds})

    async def _stream(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        chunks = _count_param(request, "chunks", 10, MAX_STREAM_CHUNKS)
        interval = _number_param(request, "interval", 0.0, 0.0, MAX_STREAM_INTERVAL_SECONDS)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for index in range(1, chunks + 1):
            if interval and index > 1:
                await asyncio.sleep(interval)
            await response.write(f"data: {json.dumps({'chunk': index})}\n\n".encode())
        await response.write_eof()
        return response

    async def _download(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        size = _count_param(request, "bytes", 1024, MAX_DOWNLOAD_BYTES)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        left = size
        while left > 0:
            block = _DOWNLOAD_BLOCK[: min(left, len(_DOWNLOAD_BLOCK))]
            await response.write(block)
            left -= len(block)
        await response.write_eof()
        return response

    async def _headers(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return web.json_response({"method": request.method, "path": request.path,
                                  "query": request.query_string, "headers": headers})

    async def _websocket(self, request: web.Request, pod: Pod, port: int) -> web.StreamResponse:
        progress_seconds = _number_param(request, "progress_seconds", self.progress_seconds, 0.0,
                                         MAX_PROGRESS_SECONDS)
        socket = web.WebSocketResponse(autoping=True)
        if not socket.can_prepare(request).ok:
            raise ServiceRequestError(400, "/ws wants a WebSocket upgrade (Connection: Upgrade, "
                                           "Upgrade: websocket, Sec-WebSocket-Key, Sec-WebSocket-Version: 13)")
        await socket.prepare(request)
        stats = self.stats(pod)
        stats.open_websockets += 1
        helpers = [asyncio.ensure_future(self._close_when_pod_stops(socket, pod, port))]
        if progress_seconds > 0:
            helpers.append(asyncio.ensure_future(self._push_progress(socket, progress_seconds)))
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    stats.websocket_frames += 1
                    await socket.send_str(message.data)
                elif message.type == WSMsgType.BINARY:
                    stats.websocket_frames += 1
                    await socket.send_bytes(message.data)
        except (ConnectionResetError, ConnectionError):
            pass  # the client vanished; nothing left to answer
        finally:
            stats.open_websockets -= 1
            for helper in helpers:
                helper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*helpers, return_exceptions=True)
        return socket

    async def _push_progress(self, socket: web.WebSocketResponse, progress_seconds: float) -> None:
        count = 0
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            while not socket.closed:
                await asyncio.sleep(progress_seconds)
                count += 1
                await socket.send_str(json.dumps({"progress": count}))

    async def _close_when_pod_stops(self, socket: web.WebSocketResponse, pod: Pod, port: int) -> None:
        await self._wait_pod_stops(pod, port)
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            await socket.close(code=1001, message=b"pod stopped")
