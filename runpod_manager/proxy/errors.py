"""The proxy's own answers: `ProxyError` (always in the OpenAI error shape), the OpenAI error documents,
and the JSON answers of the proxy's own routes. Imported by every module that raises or answers one, so none
of them needs the forwarder (forward.py) for an exception."""

from __future__ import annotations

import errno
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

_TYPE_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 409: "conflict_error",
    413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for_status(status: int) -> str:
    """The OpenAI `error.type` that best names an HTTP status."""
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def openai_error_document(message: str, *, error_type: str, code: str | int | None,
                          param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ProxyError(Exception):
    """An answer the proxy gives itself, always in the OpenAI error shape.

    `retry_after_seconds` sets Retry-After (and retry-after-ms, which the openai SDK prefers);
    `should_retry` sets x-should-retry, which the SDK obeys over its own status rules.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        error_type: str | None = None,
        param: str | None = None,
        retry_after_seconds: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.error_type = error_type or error_type_for_status(status)
        self.param = param
        self.retry_after_seconds = retry_after_seconds
        self.should_retry = should_retry

    def document(self) -> dict[str, Any]:
        return openai_error_document(self.message, error_type=self.error_type, code=self.code,
                                     param=self.param)

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after_seconds is not None:
            # Retry-After is whole seconds by RFC; retry-after-ms keeps sub-second precision for the SDK.
            headers["Retry-After"] = str(max(1, round(self.retry_after_seconds + 0.4999)))
            headers["retry-after-ms"] = str(int(self.retry_after_seconds * 1000))
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers

    def response(self, extra_headers: Mapping[str, str] | None = None) -> web.Response:
        headers = self.headers()
        if extra_headers:
            headers.update(extra_headers)
        return web.Response(status=self.status, body=json.dumps(self.document()).encode(),
                            content_type="application/json", headers=headers)

    def sse_event(self) -> bytes:
        """The error as a stream event, for streams whose 200 status already went out."""
        return b"data: " + json.dumps(self.document()).encode() + b"\n\n"


# A write that failed for want of room: a full disk, a quota, a file-size limit (RLIMIT_FSIZE).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(directory: Path, what: str) -> ProxyError:
    """507 for a write the disk had no room for; nothing of it was kept (the caller removed what it wrote)."""
    return ProxyError(507, f"the disk holding {directory} is full: {what} could not be stored and nothing of it "
                      "was kept; free space there, then retry", code="insufficient_storage", should_retry=False)


def json_response(document: Any, status: int = 200) -> web.Response:
    """A JSON answer of the proxy's own (its routes under /rpm/v1, /health, the jobs')."""
    return web.Response(status=status, body=json.dumps(document).encode(), content_type="application/json")
