"""A generic HTTP + WebSocket service for the proxy's pass-through tests (in-process, on its own thread).

The routes mirror the emulator's fake service (sandbox/service.py) where they overlap — GET /, /health,
POST /prompt (JSON echo), POST /upload ({"sha256", "bytes"} of the body as received), /ws (echo) — plus what
pass-through needs checked: /echo (the request as the service saw it), /chunks (a chunked answer written
piece by piece, released by the test), /gzip (an encoded body), /redirect, /status/<n>, and /ws/push (server
frames on demand). It records each request's method, path and headers.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from runpod_manager.backends.base import UpstreamTarget

PAGE = b"<!doctype html><title>svc</title><script>fetch('/prompt', {method: 'POST', body: '{}'})</script>"


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body_bytes: int = 0


@dataclass
class ServiceFake:
    requests: list[Seen] = field(default_factory=list)
    sockets_open: int = 0
    ws_closed_with: list[int | None] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _release_chunks: asyncio.Event | None = None
    _push: list[web.WebSocketResponse] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self, pod_id: str = "pod-svc") -> UpstreamTarget:
        return UpstreamTarget(pod_id, self.url, "upstream-key-not-for-services")

    def reset(self) -> None:
        self.requests.clear()
        self.ws_closed_with.clear()

    def release_chunks(self) -> None:
        assert self._loop is not None and self._release_chunks is not None
        self._loop.call_soon_threadsafe(self._release_chunks.set)

    def push(self, text: str) -> None:
        """Send a text frame from the service on every /ws/push socket."""
        assert self._loop is not None
        for ws in list(self._push):
            asyncio.run_coroutine_threadsafe(ws.send_str(text), self._loop).result(5)

    def close_sockets(self, code: int = 4000, reason: bytes = b"service closes") -> None:
        assert self._loop is not None
        for ws in list(self._push):
            asyncio.run_coroutine_threadsafe(ws.close(code=code, message=reason), self._loop).result(5)

    def start(self) -> ServiceFake:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._release_chunks = asyncio.Event()
            app = web.Application(client_max_size=1024**3)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="service-fake", daemon=True)
        self._thread.start()
        assert started.wait(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        seen = Seen(request.method, request.path_qs, dict(request.headers))
        self.requests.append(seen)
        if path in ("/ws", "/ws/push"):
            return await self._ws(request, push=path == "/ws/push")
        if path == "/upload":
            digest = hashlib.sha256()
            async for chunk in request.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                seen.body_bytes += len(chunk)
            return web.json_response({"sha256": digest.hexdigest(), "bytes": seen.body_bytes})
        if path == "/echo":
            body = await request.read()
            seen.body_bytes = len(body)
            return web.json_response({"method": request.method, "path_qs": request.raw_path,
                                      "headers": dict(request.headers), "body": body.decode("utf-8", "replace")},
                                     headers={"X-Service": "yes", "Set-Cookie": "session=abc"})
        if path == "/prompt":
            return web.json_response({"echo": json.loads(await request.read() or b"null")})
        if path == "/health":
            return web.json_response({"ok": True})
        if path == "/chunks":
            assert self._release_chunks is not None
            self._release_chunks.clear()
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: first\n\n")
            await self._release_chunks.wait()
            await response.write(b"data: second\n\n")
            await response.write_eof()
            return response
        if path == "/gzip":
            return web.Response(body=gzip.compress(b"compressed " * 100),
                                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
        if path == "/redirect":
            return web.Response(status=302, headers={"Location": f"{self.url}/health"})
        if path.startswith("/status/"):
            return web.Response(status=int(path.rsplit("/", 1)[1]), text="as asked")
        if path == "/":
            return web.Response(body=PAGE, content_type="text/html")
        return web.Response(status=404, text="no such page in the fake service")

    async def _ws(self, request: web.Request, *, push: bool) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("svc.v1",))
        await ws.prepare(request)
        self.sockets_open += 1
        if push:
            self._push.append(ws)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    if message.data == "close-me":
                        await ws.close(code=4001, message=b"asked to close")
                        break
                    await ws.send_str(message.data)
                elif message.type == WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
        finally:
            self.sockets_open -= 1
            self.ws_closed_with.append(ws.close_code)
            if ws in self._push:
                self._push.remove(ws)
        return ws


def upload_digest(size: int, chunk: bytes = b"0123456789abcdef" * 4096) -> tuple[Any, str]:
    """A generator of `size` bytes (never held whole) and its sha256."""
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        piece = chunk[:remaining]
        digest.update(piece)
        remaining -= len(piece)

    def body() -> Any:
        left = size
        while left:
            piece = chunk[:left]
            left -= len(piece)
            yield piece

    return body(), digest.hexdigest()
