"""The proxy's HTTP connections: what a client sees when aiohttp's parser refuses its request, and how
long a connection may take to send its headers or sit idle.

aiohttp answers a request its parser refuses (a header line over 8190 bytes, more than 128 headers, a bad
method, a negative Content-Length, Content-Length with chunked, a NUL in the path, TLS on the HTTP port)
before any application code runs: a middleware never sees it. It does so in
`RequestHandler.handle_error`, with plain text, and logs the parser's exception with its traceback —
which quotes the bytes it stopped at, a header line that may hold a key. `ProxyRequestHandler` overrides
that one method: the client gets the OpenAI error shape, the log one line without the bytes.

aiohttp builds its request handlers in `web.Server.__call__` and its `Server` in `AppRunner._make_server`;
`ProxyAppRunner` makes that Server build ours. Nothing on the path of a well-formed request changes.
`tests/e2e/test_proxy_http.py` fails if an aiohttp upgrade moves these seams.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from runpod_manager.proxy.errors import ProxyError

log = logging.getLogger("runpod_manager.proxy")

# Connections get this long to send a request's headers, from their opening or the end of the previous
# answer; idle keep-alive connections are closed after it too (nginx's client_header_timeout). Clients
# close idle connections sooner themselves (undici after 4 s, httpx after 5 s), so none races this.
IDLE_CONNECTION_TIMEOUT_SECONDS = 60.0

# The parser quotes the bytes it refused (`b'…'`, `bytearray(b'…')`) and points at them with `^`.
_QUOTED_BYTES = re.compile(r":?\s*(?:b|bytearray\(b)['\"].*$")


def describe_parse_error(exc: BaseException | None, message: str | None) -> str:
    """The parser's complaint without the request's bytes, e.g. "Bad status line: Invalid HTTP version"."""
    text = exc.message if isinstance(exc, HttpProcessingError) and exc.message else (message or "")
    parts = []
    for line in str(text).splitlines():
        line = _QUOTED_BYTES.sub("", line.strip()).rstrip(":. ")
        if line and set(line) != {"^"}:
            parts.append(line)
    return ": ".join(parts) or (type(exc).__name__ if exc is not None else "malformed request")


class ProxyRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering requests its parser refuses in the OpenAI error shape."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: part of an answer went out, the connection is broken
            raise ConnectionError("the response had started; no error response can follow")
        if status >= 500:
            # An exception escaped the application (its middleware answers everything else): a bug.
            log.error("unexpected error answering a request from %s", request.remote, exc_info=exc)
            error = ProxyError(500, "the proxy failed unexpectedly; see the proxy log", code="internal_error")
        else:
            reason = describe_parse_error(exc, message)
            log.info("could not parse a request from %s: %d %s (%s)", request.remote, status, reason,
                     type(exc).__name__ if exc is not None else "-")
            error = ProxyError(status, f"the proxy could not read this HTTP request: {reason}",
                               code="invalid_http_request", should_retry=False)
        response = error.response()
        response.force_close()  # the parser's state is unknown after an error: this connection is done
        return response


class _ProxyServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyAppRunner(web.AppRunner):
    """web.AppRunner whose connections are ProxyRequestHandlers."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProxyServer  # aiohttp's own Server, but for the handler class it builds
        return server
