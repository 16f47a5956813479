"""WebSocket pass-through with wake: `/pods/<name>/…` and listen-port upgrade requests.

The upgrade is checked here first (a malformed one is a 400 in the OpenAI error shape, before any wake);
then the client waits for the pod like any request (its handshake answer is held, up to
queue_timeout_seconds), the proxy opens the socket to the pod with the client's subprotocols, and only then
accepts the client's, so a client never holds an open socket to nothing. Frames are piped both ways in
order, text and binary, pings and pongs included (neither side's library answers them: the far end does);
a close from either side is passed on with its code and reason, and the other side is closed.

Activity: an open socket is not activity by itself. Each data frame (text or binary) the client sends marks
the pod used (the gate's `last_request_at`); a frame the service sends does only while a request the proxy
forwarded to that pod is in flight, or when the pod sets `websocket_activity = "both"`. So a forgotten tab
does not keep a pod up past idle_timeout_seconds, even on a service that pushes a status frame every second
(ComfyUI's), and a tab someone uses does; pings and pongs, which clients exchange on their own, never count.
`SocketRegistry` knows every open socket per pod: when the reconcile loop sees a pod's target go (a limit,
idle stop, a shutdown) or change, and when the proxy stops, the sockets are closed with 1001 (going away)
and a reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.proxy.controller import PodView
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import FORWARDED_FOR_HEADER, PROXY_ONLY_REQUEST_HEADERS
from runpod_manager.proxy.wake import WakeGate

log = logging.getLogger("runpod_manager.proxy")

GOING_AWAY = 1001
MAX_REASON_BYTES = 120  # a close frame's reason is at most 123 bytes (RFC 6455 §5.5)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # ComfyUI sends preview images as binary frames
CLOSE_WAIT_SECONDS = 5.0  # how long one side's close waits for the other side's answering close
# Headers the proxy negotiates itself on each of the two sockets, and those only the proxy reads (the same set
# as /v1 and the pass-through: job headers, X-Forwarded-For, Host…): never copied across.
_WS_OWN_HEADERS = PROXY_ONLY_REQUEST_HEADERS | {
    "connection", "upgrade", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept", "content-length", "transfer-encoding", "keep-alive", "te"}


def is_upgrade(request: web.Request) -> bool:
    """The client asks for a WebSocket (whatever else is wrong with its request)."""
    return request.headers.get("Upgrade", "").strip().lower() == "websocket"


def check_upgrade(request: web.Request) -> None:
    """Raise ProxyError(400) naming what is wrong with a WebSocket upgrade request (RFC 6455 §4.2.1)."""
    headers = request.headers
    problem = None
    if request.method != "GET":
        problem = f"must use GET, not {request.method}"
    elif "upgrade" not in {token.strip().lower() for token in headers.get("Connection", "").split(",")}:
        problem = "needs `Connection: Upgrade`"
    elif headers.get("Sec-WebSocket-Version", "").strip() != "13":
        problem = "needs `Sec-WebSocket-Version: 13`"
    else:
        key = headers.get("Sec-WebSocket-Key", "").strip()
        try:
            decoded = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != 16:
            problem = "needs a `Sec-WebSocket-Key` of 16 base64-encoded bytes"
    if problem is not None:
        raise ProxyError(400, f"malformed WebSocket upgrade: the request {problem}", code="bad_websocket_upgrade",
                         should_retry=False)


def forwarded_headers(headers: Mapping[str, str], added: Mapping[str, str], *, keep_authorization: bool,
                      forwarded: str | None = None) -> dict[str, str]:
    """The client's handshake headers worth passing to the pod (cookies, origin, the service's own), the
    pod's configured headers, and `forwarded` (forward.forwarded_for) as X-Forwarded-For."""
    out = {name: value for name, value in headers.items()
           if name.lower() not in _WS_OWN_HEADERS and (keep_authorization or name.lower() != "authorization")}
    if forwarded is not None:
        out[FORWARDED_FOR_HEADER] = forwarded
    out.update(added)
    return out


class SocketRegistry:
    """Every open pass-through socket, per pod, with the pod it was opened to."""

    def __init__(self) -> None:
        self._open: dict[str, dict[web.WebSocketResponse, str]] = {}  # gate name → {client socket: pod id}

    def add(self, gate: str, pod_id: str, client: web.WebSocketResponse) -> None:
        self._open.setdefault(gate, {})[client] = pod_id

    def discard(self, gate: str, client: web.WebSocketResponse) -> None:
        self._open.get(gate, {}).pop(client, None)

    def count(self, gate: str) -> int:
        return len(self._open.get(gate, {}))

    async def close_gone(self, gates: Mapping[str, WakeGate], views: Mapping[str, PodView]) -> None:
        """Close (1001) the sockets of pods that are no longer the gate's ready target: stopped by a limit,
        idle or a shutdown, or replaced."""
        closing = []
        for name, sockets in self._open.items():
            target = gates[name].target if name in gates else None
            for client, pod_id in list(sockets.items()):
                if target is None or target.instance_id != pod_id:
                    view = views.get(name)
                    why = (view.last_reason if view is not None and view.last_reason else "the pod stopped")
                    closing.append(self._close(client, f"pod {name} stopped: {why}"))
        await asyncio.gather(*closing)

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(self._close(client, reason) for sockets in self._open.values() for client in sockets))

    @staticmethod
    async def _close(client: web.WebSocketResponse, reason: str) -> None:
        encoded = reason.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode()
        with contextlib.suppress(Exception):  # a socket already closing is fine
            await client.close(code=GOING_AWAY, message=encoded)


async def open_upstream(session: aiohttp.ClientSession, url: str | URL, headers: Mapping[str, str],
                        request: web.Request, pod: str) -> aiohttp.ClientWebSocketResponse:
    """The pod's socket, with the client's subprotocols; ProxyError when the pod refuses or cannot be reached."""
    protocols = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    try:
        return await session.ws_connect(
            url, headers=headers, protocols=protocols, autoping=False, autoclose=False,
            max_msg_size=MAX_MESSAGE_BYTES, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            compress=0)
    except aiohttp.WSServerHandshakeError as exc:
        raise ProxyError(exc.status if exc.status >= 400 else 502,
                         f"pod {pod!r} refused the WebSocket at this path (HTTP {exc.status})",
                         code="upstream_websocket_refused", should_retry=False) from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ProxyError(502, f"pod {pod!r} could not be reached for a WebSocket ({type(exc).__name__})",
                         code="upstream_unreachable", retry_after_seconds=1.0, should_retry=True) from None


async def pipe(request: web.Request, upstream: aiohttp.ClientWebSocketResponse, gate: WakeGate,
               target: UpstreamTarget, registry: SocketRegistry, *, service_activity: bool = False
               ) -> web.WebSocketResponse:
    """Accept the client's socket and pipe frames both ways until either side closes. `service_activity`: the
    service's frames are activity too (websocket_activity = "both"), not only while a request is in flight."""
    client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (),
                                   autoping=False, autoclose=False, max_msg_size=MAX_MESSAGE_BYTES)
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close()
        raise
    registry.add(gate.name, target.instance_id, client)
    try:
        to_pod = asyncio.create_task(_copy(client, upstream, gate, always_activity=True))
        to_client = asyncio.create_task(_copy(upstream, client, gate, always_activity=service_activity))
        _done, pending = await asyncio.wait((to_pod, to_client), return_when=asyncio.FIRST_COMPLETED)
        # One side closed (or failed) and its close was passed on: the other side gets a moment to answer it.
        if pending:
            _finished, pending = await asyncio.wait(pending, timeout=CLOSE_WAIT_SECONDS)
        for task in pending:
            task.cancel()
    finally:
        registry.discard(gate.name, client)
        if not upstream.closed:
            with contextlib.suppress(Exception):
                await upstream.close(code=GOING_AWAY, message=b"the client's socket closed")
        if not client.closed:
            with contextlib.suppress(Exception):
                await client.close(code=_close_code(upstream.close_code), message=b"the pod's socket closed")
    return client


def _close_code(code: int | None) -> int:
    # 1005 (no status) and 1006 (abnormal) may not be sent in a close frame (RFC 6455 §7.4.1).
    return GOING_AWAY if code is None or code in (1005, 1006, 1015) else code


async def _copy(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, gate: WakeGate, *,
                always_activity: bool) -> None:
    """Copy frames from source to sink in order until source closes; then close sink with its code.
    A data frame is activity when `always_activity` (the client's frames; the service's with "both"), or
    while a request forwarded to the pod is in flight (the service's answer to work someone asked for)."""
    while True:
        message = await source.receive()
        kind = message.type
        if kind in (WSMsgType.TEXT, WSMsgType.BINARY) and (always_activity or gate.in_flight):
            # Data someone sent, or that answers work in flight: the pod is in use. Pings and pongs are not:
            # browsers and client libraries exchange them on their own, and a forgotten tab must not keep a
            # GPU up; nor may a service's own status pushes to it.
            gate.last_request_at = time.time()
        if kind == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif kind == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif kind == WSMsgType.PING:
            await sink.ping(message.data)
        elif kind == WSMsgType.PONG:
            await sink.pong(message.data)
        elif kind == WSMsgType.CLOSE:
            code = _close_code(message.data if isinstance(message.data, int) else None)
            reason = (message.extra or "").encode()[:MAX_REASON_BYTES]
            with contextlib.suppress(Exception):
                await sink.close(code=code, message=reason)
            return
        else:  # CLOSING, CLOSED, ERROR: the source's connection is gone without a close frame
            with contextlib.suppress(Exception):
                await sink.close(code=GOING_AWAY, message=b"the other side's connection was lost")
            return
