"""Pass-through to any HTTP service of a pod: `/pods/<name>[:<port>]/<path>` and an http pod's listen port.

Any method, path, query, headers and body go to `<pod URL of that port>/<path>`, and the answer comes back
as the pod sends it, both ways streamed: the request body is read from the client in chunks only as the pod
takes them (never held whole), the response is written to the client as each chunk arrives (SSE, chunked
answers, large downloads), bytes untouched (no decompression: Content-Encoding and Content-Length pass).

Waking: a request for a pod with no ready target waits through the pod's WakeGate like a /v1 request (the
bounded queue, wake_hold_seconds then a retryable 503 with Retry-After, queue_full 503). A body with a
Content-Length that fits [proxy] wake_spool_max_bytes is received into a 0600 file meanwhile (WakeSpool says
why), then sent from it. Any other body waits by **backpressure**: nothing of it is read until the pod is
ready, so it stays in the client's socket and kernel buffers and the proxy's memory does not grow whatever
the upload's size. A client with a short write timeout may give up then during a long cold start; such
clients should wake the pod first (`GET` the route or `rpm start`) — the README says so.

Retries before the first response byte (the pod's HTTP proxy answers 502 until the service listens): a
connection that could not be opened is retried whenever no body byte was read; a retryable status or a
broken connection only for idempotent methods whose body (if any) was not started. A request that may have
reached the service with a body it consumed is never sent twice.

Headers: hop-by-hop ones (and those named in Connection) are dropped, Host is the pod's; the pod's
configured `headers` are added (never logged). The client's Authorization goes on to the service only when
the proxy has no api_keys (with keys, it is the proxy's own credential); a kind = "openai" pod gets its
upstream key instead, as on /v1. A redirect to the pod's own URL is rewritten to the route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from runpod_manager.backends.base import UpstreamTarget
from runpod_manager.paths import ensure_private_dir
from runpod_manager.proxy.errors import ProxyError, is_disk_full
from runpod_manager.proxy.forward import (
    FORWARDED_FOR_HEADER,
    HOP_BY_HOP,
    PROXY_ONLY_REQUEST_HEADERS,
    RETRYABLE_STATUSES,
    forwardable_headers,
    forwarded_for,
)
from runpod_manager.proxy.process import pid_exists
from runpod_manager.proxy.routing import PodRoute
from runpod_manager.proxy.wake import PodGroup, WakeGate

log = logging.getLogger("runpod_manager.proxy")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
BODY_CHUNK_BYTES = 256 * 1024  # read from the client (and written to the pod) this much at a time
# The job token (jobs.py's replays) is the proxy's own credential: it never leaves the proxy.
_REQUEST_DROP: frozenset[str] = HOP_BY_HOP | PROXY_ONLY_REQUEST_HEADERS
_REQUEST_DROP_WITH_AUTHORIZATION = _REQUEST_DROP | {"authorization"}  # the proxy took the key
# Bytes pass unchanged, so Content-Length and Content-Encoding stay; our server sets its own Date/Server.
_RESPONSE_DROP = HOP_BY_HOP | {"date", "server"}


@dataclass(frozen=True)
class ServiceRoute:
    """One routed request: the pod's group, the pod port, the path (with query) sent to the pod, the prefix
    the client sees the service under ("/pods/comfy" or "" on a listen port) and the body limit."""

    group: PodGroup
    port: int
    raw_path: str
    prefix: str
    max_body_bytes: int

    @property
    def route(self) -> PodRoute:
        return self.group.route


def service_request_headers(headers: Iterable[tuple[str, str]], *, keep_authorization: bool,
                            added: Mapping[str, str], upstream_key: str | None,
                            forwarded: str | None = None) -> CIMultiDict[str]:
    """Client headers minus hop-by-hop ones, plus the pod's own (`added`, or the upstream key) and `forwarded`
    (forward.forwarded_for) as X-Forwarded-For."""
    out = forwardable_headers(headers, _REQUEST_DROP if keep_authorization else _REQUEST_DROP_WITH_AUTHORIZATION)
    if forwarded is not None:
        out[FORWARDED_FOR_HEADER] = forwarded
    if upstream_key is not None:
        out["Authorization"] = f"Bearer {upstream_key}"
    for name, value in added.items():
        out[name] = value
    return out


def service_response_headers(headers: Iterable[tuple[str, str]], *, pod_base_url: str, prefix: str
                             ) -> CIMultiDict[str]:
    """The pod's response headers for the client: hop-by-hop dropped, its own redirects pointed at the route."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        lowered = name.lower()
        if lowered in _RESPONSE_DROP:
            continue
        if lowered == "location":
            value = rewrite_location(value, pod_base_url=pod_base_url, prefix=prefix)
        out.add(name, value)
    return out


def rewrite_location(location: str, *, pod_base_url: str, prefix: str) -> str:
    """A redirect to the pod's own URL, or to an absolute path on it, as the client reaches it here."""
    if location.startswith(pod_base_url + "/") or location == pod_base_url:
        location = location[len(pod_base_url):] or "/"
    if location.startswith("/") and not location.startswith("//"):
        return prefix + location
    return location


class BodyTooLarge(Exception):
    """The client's body passed the route's limit while it was streamed."""


class RequestBody:
    """The client's body, streamed chunk by chunk to the pod; knows whether any of it was read."""

    def __init__(self, request: web.Request, limit_bytes: int, read_timeout_seconds: float) -> None:
        self._content = request.content
        self._limit = limit_bytes
        self._timeout = read_timeout_seconds
        self.started = False
        self.bytes_read = 0
        self.too_large = False
        self.client_wait_seconds = 0.0

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            waiting_since = time.perf_counter()
            try:
                async with asyncio.timeout(self._timeout):
                    chunk = await self._content.read(BODY_CHUNK_BYTES)
            except TimeoutError:
                raise ProxyError(408, f"the request body stalled for {self._timeout:g} s", code="request_timeout",
                                 should_retry=False) from None
            finally:
                self.client_wait_seconds += time.perf_counter() - waiting_since
            if not chunk:
                return
            self.started = True
            self.bytes_read += len(chunk)
            if self.bytes_read > self._limit:
                self.too_large = True
                raise BodyTooLarge
            yield chunk


class WakeSpool:
    """Where uploads wait while their pod wakes: 0600 files in a 0700 directory, `max_bytes` at most at once.

    Backpressure alone (RequestBody reading only as the pod takes it) leaves a large body in the client's
    socket for the whole cold start, and a client with a write timeout (httpx: 5 s) gives up. So a body with
    a Content-Length that fits what is left of the budget is received into a file while the pod wakes, then
    sent from it; the file is deleted when the request ends. Others (chunked, or over the budget) wait by
    backpressure as before. So does the rest of a body whose file the disk had no room for (ENOSPC, a quota,
    a file-size limit): what was received is sent from the file (and memory, for the last chunk), the rest
    from the client's socket when the pod is ready. A full disk never loses an upload nor fails it.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.held_bytes = 0

    def sweep(self) -> None:
        """Remove what a proxy killed mid-upload left (files named by a pid that no longer runs)."""
        with contextlib.suppress(OSError):
            for leftover in self.directory.glob("upload-*"):
                pid = leftover.name.split("-")[1]
                if pid.isdigit() and not pid_exists(int(pid)):
                    with contextlib.suppress(OSError):
                        leftover.unlink()

    def reserve(self, length: int | None) -> bool:
        if length is None or length <= 0 or self.held_bytes + length > self.max_bytes:
            return False
        self.held_bytes += length
        return True

    async def fill(self, request: web.Request, length: int, read_timeout_seconds: float) -> SpooledBody:
        """Receive the body (its `length` reserved) into a new file; 408 if it stalls, the file removed on
        any failure. The caller releases the reservation when the request ends (SpooledBody.discard). A
        disk with no room stops the spooling, not the request: the rest stays in the client's socket."""
        path = self.directory / f"upload-{os.getpid()}-{secrets.token_hex(16)}"
        body = SpooledBody(self, path, length)
        try:
            ensure_private_dir(self.directory)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            if not is_disk_full(exc):
                body.discard()
                raise
            return self._held_by_client(body, request, b"", exc, read_timeout_seconds)
        try:
            try:
                while True:
                    waiting_since = time.perf_counter()
                    try:
                        async with asyncio.timeout(read_timeout_seconds):
                            chunk = await request.content.read(BODY_CHUNK_BYTES)
                    except TimeoutError:
                        raise ProxyError(408, f"the request body stalled for {read_timeout_seconds:g} s",
                                         code="request_timeout", should_retry=False) from None
                    finally:
                        body.client_wait_seconds += time.perf_counter() - waiting_since
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    try:
                        while view:  # unbuffered, so what reached the file is known to the byte
                            written = os.write(fd, view)
                            body.spooled_bytes += written
                            view = view[written:]
                    except OSError as exc:
                        if not is_disk_full(exc):
                            raise
                        return self._held_by_client(body, request, bytes(view), exc, read_timeout_seconds)
            finally:
                os.close(fd)
        except BaseException:
            body.discard()
            raise
        return body

    def _held_by_client(self, body: SpooledBody, request: web.Request, pending: bytes, exc: OSError,
                        read_timeout_seconds: float) -> SpooledBody:
        log.warning("the disk holding %s is full (%s): the rest of an upload of %d bytes waits in the client's "
                    "connection until its pod is ready", self.directory, exc.strerror or exc, body.length)
        body.pending = pending
        body.rest = RequestBody(request, body.length, read_timeout_seconds)  # read once the pod is ready
        return body


class SpooledBody:
    """A body received into a WakeSpool file: sent from it, as often as a retry needs (`started`: this
    attempt began sending, so the request may have reached the service)."""

    def __init__(self, spool: WakeSpool, path: Path, length: int) -> None:
        self._spool = spool
        self.path = path
        self.length = length
        self.spooled_bytes = 0  # in the file
        self.pending = b""  # received, but the disk had no room for it (the file's last chunk)
        self.rest: RequestBody | None = None  # the rest, still in the client's socket (a full disk)
        self._started = False
        self.too_large = False
        self.client_wait_seconds = 0.0
        self._released = False

    @property
    def started(self) -> bool:
        """This attempt began sending, or the client's part of the body was read (it cannot be sent again)."""
        return self._started or (self.rest is not None and self.rest.started)

    async def chunks(self) -> AsyncIterator[bytes]:
        self._started = False
        if self.spooled_bytes:
            with open(self.path, "rb") as handle:
                left = self.spooled_bytes
                while left and (chunk := await asyncio.to_thread(handle.read, min(BODY_CHUNK_BYTES, left))):
                    self._started = True
                    left -= len(chunk)
                    yield chunk
        if self.pending:
            self._started = True
            yield self.pending
        if self.rest is not None:
            async for chunk in self.rest.chunks():
                yield chunk

    def discard(self) -> None:
        if not self._released:
            self._released = True
            self._spool.held_bytes -= self.length
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class HeldBody:
    """A body read whole before it is sent (a scoped key's JSON request, whose `model` was checked: auth.
    routed_model): sent from memory, as often as a retry needs (`started`: as SpooledBody's)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.started = False
        self.too_large = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        yield self.data

    def discard(self) -> None:
        """Nothing to release (SpooledBody's counterpart)."""


def too_large_error(limit_bytes: int, route: PodRoute) -> ProxyError:
    key = (f"[pods.{route.name}] max_body_bytes" if route.kind == "http" else "[proxy] max_body_bytes")
    return ProxyError(413, f"the request body is larger than {limit_bytes} bytes ({key}) for pod {route.name!r}",
                      code="body_too_large", should_retry=False)


def pod_port_url(target: UpstreamTarget, route: PodRoute, port: int, template: str) -> str:
    """The pod URL of one of its ports (the target's own URL for the main port)."""
    if port == route.ports[0]:
        return target.base_url
    return template.format(pod_id=target.instance_id, port=port).rstrip("/")


@dataclass
class PassThrough:
    """Sends one routed request to its pod and streams the answer back."""

    session: aiohttp.ClientSession
    max_retries: int
    retry_delay_seconds: float
    pod_url_template: str
    # True while the proxy takes no keys: then a client's Authorization is the service's own, sent on.
    keep_client_authorization: Callable[[], bool]
    added_headers: Mapping[str, Mapping[str, str]]  # pod name → its configured headers
    body_read_timeout_seconds: float
    trust_forwarded: bool = False  # [proxy] trust_forwarded (forward.forwarded_for)

    async def open(self, request: web.Request, service: ServiceRoute, gate: WakeGate, target: UpstreamTarget,
                   body: RequestBody | SpooledBody | HeldBody | None) -> tuple[aiohttp.ClientResponse, str]:
        """Send the request and return the pod's response (headers arrived) and the pod URL it went to.
        Raises ProxyError (413, 502) when it could not; retries as the module docstring says."""
        route = service.route
        base_url = pod_port_url(target, route, service.port, self.pod_url_template)
        headers = service_request_headers(
            request.headers.items(), keep_authorization=self.keep_client_authorization() and route.kind == "http",
            added=self.added_headers.get(route.name, {}),
            upstream_key=target.key if route.kind != "http" else None,
            forwarded=forwarded_for(request, trust=self.trust_forwarded))
        url = URL(base_url + service.raw_path, encoded=True)
        method = request.method
        attempt = 0
        while True:
            try:
                response = await self.session.request(
                    method, url, headers=headers, data=None if body is None else body.chunks(),
                    allow_redirects=False, auto_decompress=False,
                    skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"))
            except BodyTooLarge:
                raise too_large_error(service.max_body_bytes, route) from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                if body is not None and body.too_large:
                    raise too_large_error(service.max_body_bytes, route) from None
                started = body is not None and body.started
                connect_failed = isinstance(exc, aiohttp.ClientConnectorError)
                if attempt >= self.max_retries or started or not (connect_failed or method in IDEMPOTENT_METHODS):
                    raise ProxyError(
                        502, f"pod {route.name!r} could not be reached at port {service.port} "
                        f"({type(exc).__name__})" + (
                            "; the request was not sent again: its body had been sent" if started else ""),
                        code="upstream_unreachable", retry_after_seconds=max(self.retry_delay_seconds, 1.0),
                        should_retry=not started) from None
            else:
                if not (response.status in RETRYABLE_STATUSES and attempt < self.max_retries
                        and method in IDEMPOTENT_METHODS and (body is None or not body.started)):
                    return response, base_url
                response.close()  # the pod's HTTP proxy's error page: the service is not listening yet
            attempt += 1
            await asyncio.sleep(self.retry_delay_seconds)


async def relay_response(request: web.Request, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]
                         ) -> tuple[web.StreamResponse, bool]:
    """Write the pod's response to the client as it arrives; whether it ended cleanly (False: the pod's
    stream broke off, and the client's connection is closed so it cannot take a short body for a whole one)."""
    client = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await client.prepare(request)
    if request.method == "HEAD" or upstream.status in (204, 304):
        await client.write_eof()
        return client, True
    try:
        async for chunk in upstream.content.iter_any():
            await client.write(chunk)
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        log.info("the pod's answer to %s %s broke off (%s)", request.method, request.path, type(exc).__name__)
        if request.transport is not None:
            request.transport.close()
        return client, False
    await client.write_eof()
    return client, True
