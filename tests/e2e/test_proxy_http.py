"""HTTP that aiohttp's parser refuses, and clients that are slow or idle, against the real server (the real
`run_proxy` on a thread) over raw asyncio streams.

Every error a client can see is OpenAI-shaped JSON; the proxy's log gets one line per bad request, never a
traceback and never the request's bytes (a header line can hold a key); a connection that does not finish
its headers in time, or idles between requests, is closed. Nothing here asserts timings: each read has a
deadline that only an unbounded wait would miss.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from runpod_manager.paths import Paths, resolve_paths
from tests.support.proxy_fakes import MODEL, FakeController, FakeUpstream, make_config, running_proxy

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 5.0  # seconds a read may block before the test fails
SECRET = "sk-client-secret-0c4f9e"

MALFORMED = {
    "huge-header": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "huge-header-with-a-key": (b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + SECRET.encode()
                               + b"a" * 9000 + b"\r\n\r\n"),
    "2000-headers": (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n"),
    "bad-method": b"G@T /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "negative-content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
    "content-length-and-chunked": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "nul-in-path": b"GET /he\x00alth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "tls-on-the-http-port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "bad-version": b"GET /health HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    "bad-chunk-size": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
    "huge-url": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def exchange(port: int, raw: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; read until the server closes. Returns what came back and whether it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        try:
            received = await asyncio.wait_for(reader.read(), READ_TIMEOUT)
        except TimeoutError:
            return b"", False
        return received, True
    finally:
        writer.close()


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def openai_error(body: bytes) -> dict[str, Any]:
    document = json.loads(body)
    assert set(document) == {"error"} and set(document["error"]) == {"message", "type", "param", "code"}
    return dict(document["error"])


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_http_gets_an_openai_shaped_400_and_one_log_line(name: str, upstream: FakeUpstream, paths: Paths,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        answer, closed = asyncio.run(exchange(port_of(proxy.url), MALFORMED[name]))
        assert closed, "the proxy kept a connection open after a request it could not parse"
        status, headers, body = parse(answer)
        assert status == 400, answer[:300]
        assert headers["content-type"].startswith("application/json")
        error = openai_error(body)
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_http_request"
        assert SECRET not in error["message"]  # the parser quotes the bytes it stopped at: never echoed
        # The proxy keeps serving.
        assert requests.post(f"{proxy.url}/v1/chat/completions", timeout=READ_TIMEOUT,
                             json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    lines = [record for record in caplog.records if "could not parse" in record.getMessage()]
    assert len(lines) == 1, [record.getMessage() for record in caplog.records]
    assert lines[0].name == "runpod_manager.proxy" and lines[0].levelno == logging.INFO
    assert all(record.exc_info is None for record in caplog.records if record.levelno >= logging.INFO)
    assert not [record for record in caplog.records if record.name.startswith("aiohttp")
                and record.levelno >= logging.INFO]
    assert SECRET not in caplog.text and "Traceback" not in caplog.text
    assert upstream.requests[:-1] == [] and len(upstream.requests) == 1  # only the request that followed


def test_clients_that_never_finish_their_headers_are_closed(upstream: FakeUpstream, paths: Paths) -> None:
    """Slowloris: connections that trickle (or never send) their headers are closed after the bound,
    as is a keep-alive connection left idle; a request under way is never cut by it."""

    async def slow_clients(port: int) -> list[bool]:
        async def one(first_bytes: bytes) -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(first_bytes)
                await writer.drain()
                try:
                    return await asyncio.wait_for(reader.read(), READ_TIMEOUT) == b""  # closed, nothing sent
                except TimeoutError:
                    return False
            finally:
                writer.close()

        partial = [b"", b"G", b"GET /v1/models HTTP/1.1\r\n", b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: 1"]
        return await asyncio.gather(*(one(partial[index % len(partial)]) for index in range(200)))

    async def idle_keep_alive(port: int) -> tuple[bytes, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            _, headers, _ = parse(first)
            await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), READ_TIMEOUT)
            try:
                rest = await asyncio.wait_for(reader.read(), READ_TIMEOUT)
            except TimeoutError:
                return first, False
            return first, rest == b""
        finally:
            writer.close()

    controller = FakeController(upstream.target())
    with running_proxy(make_config(), controller, paths, idle_connection_timeout_seconds=0.3) as proxy:
        port = port_of(proxy.url)
        assert all(asyncio.run(slow_clients(port)))
        first, closed = asyncio.run(idle_keep_alive(port))
        assert first.startswith(b"HTTP/1.1 200") and closed
        # A stream that outlasts the bound is not cut by it.
        upstream.hold_streams = True
        response = requests.post(f"{proxy.url}/v1/chat/completions", stream=True, timeout=READ_TIMEOUT,
                                 json={"model": MODEL, "messages": [], "stream": True})
        chunks = response.iter_content(chunk_size=None)
        received = [next(chunks)]
        time.sleep(0.6)  # the pod holds the stream for longer than the bound
        upstream.release(50)
        received.extend(chunks)
        assert received[-1] == b"data: [DONE]\n\n"
    # Nor is a request waiting for a wake longer than the bound.
    controller = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    with (running_proxy(make_config(), controller, paths, idle_connection_timeout_seconds=0.3) as proxy,
          ThreadPoolExecutor(1) as pool):
        waiting = pool.submit(requests.post, f"{proxy.url}/v1/chat/completions", timeout=READ_TIMEOUT,
                              json={"model": MODEL, "messages": []})
        assert controller.wake_started.wait(READ_TIMEOUT)
        time.sleep(0.6)
        controller.release_wake.set()
        assert waiting.result().status_code == 200
