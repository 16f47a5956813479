"""Forwarding to the pod, the pure half: header hygiene, request inspection, the FIM rewrite, upstream errors
normalised to the OpenAI shape (errors.py), SSE splitting. Retries before the first byte and the event-by-event
relay with cancellation are upstream.py's.

The pure helpers (`upstream_request_headers`, `client_response_headers`, `inspect_json_body`,
`apply_fim_template`, `normalize_upstream_error`, `SSESplitter`) carry no state and are unit-tested
directly; `Upstream` and `relay_events` (upstream.py) do the I/O.

Bodies are forwarded as the client sent them: a body is parsed only to read `model`, `stream`,
`temperature`, `n` and `suffix`, and re-serialised only when the `suffix` rewrite changes it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from runpod_manager.proxy.errors import ProxyError, error_type_for_status, openai_error_document

# RFC 9110 §7.6.1 hop-by-hop headers; they describe one connection, never the end-to-end message.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})


# Recomputed by aiohttp (host, content-length), replaced by us (authorization, accept-encoding), handled by
# our own server (expect) or meant for the proxy only (x-rpm-cache, and a job replay's token: jobs.py).
JOB_TOKEN_HEADER = "X-RPM-Job-Token"  # noqa: S105 - a header name, not a secret


# With the token: the name of the key that submitted the job, whose scopes and limits its replay gets.
JOB_OWNER_HEADER = "X-RPM-Job-Owner"


# A job's id: its 202's and its result's header; with the token, the job a replay runs (marked sent by the
# proxy just before the replay's request leaves toward the pod: jobs.JobRunner.sending).
JOB_ID_HEADER = "X-RPM-Job-Id"


FORWARDED_FOR_HEADER = "X-Forwarded-For"


# Request headers never passed on as the client sent them, on /v1 or the pass-through (passthrough.py);
# X-Forwarded-For is set anew (`forwarded_for`).
PROXY_ONLY_REQUEST_HEADERS = frozenset({"host", "expect", "x-rpm-cache", JOB_TOKEN_HEADER.lower(),
                                        JOB_OWNER_HEADER.lower(), JOB_ID_HEADER.lower(),
                                        FORWARDED_FOR_HEADER.lower()})


# Set by the middleware on a job's replay whose token it verified (jobs.py): its X-Forwarded-For is the
# proxy's own, written when the job was submitted.
JOB_REPLAY = web.RequestKey("rpm_job_replay", bool)


_REQUEST_DROP = HOP_BY_HOP | PROXY_ONLY_REQUEST_HEADERS | {"content-length", "authorization", "accept-encoding"}


# The body may be re-framed (chunked) or was decompressed by the client session; our server sets its own
# date/server.
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}


# Retried before the first byte: the pod's proxy answers 502 until vLLM listens, 524 after 100 s silent.
RETRYABLE_STATUSES = frozenset({502, 503, 504, 524})


# Routes whose POST body must be a JSON object (vLLM rejects anything else; we say why, earlier).
JSON_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


SSE_DONE = b"data: [DONE]\n\n"


# Most of an event we hold while waiting for its terminator before passing it on anyway (non-SSE bytes).
_MAX_PENDING_EVENT_BYTES = 1024 * 1024


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


_FIM_FIELDS = re.compile(r"\{prefix\}|\{suffix\}")


def write_fully(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` to `fd` (os.write may write part of it); OSError as os.write raises it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def forwardable_headers(headers: Iterable[tuple[str, str]], drop: frozenset[str]) -> CIMultiDict[str]:
    """A request's headers minus `drop` (lower-case names) and those its Connection header names, which are
    hop-by-hop too (RFC 9110 §7.6.1; rare, so collected as they come). /v1 and the pass-through share it."""
    out: CIMultiDict[str] = CIMultiDict()
    extra_drop: set[str] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered == "connection":
            extra_drop.update(token.strip().lower() for token in value.split(","))
        if lowered in drop:
            continue
        out.add(name, value)
    for name in extra_drop:
        out.popall(name, None)
    return out


def forwarded_for(request: web.Request, *, trust: bool) -> str | None:
    """The X-Forwarded-For a pod gets. The client's own is a claim anyone can make (a spoofed address in a
    service's logs or allow-list), so by default it is replaced with the peer's address; behind a reverse
    proxy that sets it (`[proxy] trust_forwarded`) the peer is appended to it. A job's replay comes from the
    proxy itself: it carries what the job's submission was given."""
    claimed = ", ".join(request.headers.getall(FORWARDED_FOR_HEADER, ())) or None
    if request.get(JOB_REPLAY):
        return claimed
    peer = request.remote or None
    if trust and claimed is not None:
        return claimed if peer is None else f"{claimed}, {peer}"
    return peer


def upstream_request_headers(headers: Iterable[tuple[str, str]], upstream_key: str | None, *,
                             forwarded: str | None = None) -> CIMultiDict[str]:
    """Client headers minus hop-by-hop and proxy-only ones, with the pod's key as the only credential and
    `forwarded` (`forwarded_for`) as X-Forwarded-For."""
    out = forwardable_headers(headers, _REQUEST_DROP)
    if forwarded is not None:
        out[FORWARDED_FOR_HEADER] = forwarded
    # Compressed upstream bytes would have to be inflated to split events; the pod is a fast link anyway.
    out["Accept-Encoding"] = "identity"
    if upstream_key is not None:
        out["Authorization"] = f"Bearer {upstream_key}"
    return out


def client_response_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Upstream response headers safe to pass to the client (hop-by-hop and framing removed)."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        if name.lower() not in _RESPONSE_DROP:
            out.add(name, value)
    return out


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the proxy needs to know about a request body, read once."""

    document: dict[str, Any] | None = None
    stream: bool = False

    @property
    def model(self) -> Any:
        return None if self.document is None else self.document.get("model")

    @property
    def temperature(self) -> Any:
        return None if self.document is None else self.document.get("temperature")

    @property
    def n(self) -> Any:
        return None if self.document is None else self.document.get("n")

    @property
    def has_suffix(self) -> bool:
        return self.document is not None and self.document.get("suffix") is not None


NO_BODY = RequestFacts()


def is_json_content_type(content_type: str) -> bool:
    # application/json, application/json; charset=utf-8, application/vnd.foo+json
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or main.endswith("+json")


def inspect_json_body(body: bytes) -> RequestFacts:
    """Parse a JSON request body; raise ProxyError(400) for anything that is not a JSON object."""
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise ProxyError(400, "the request body is not UTF-8 encoded JSON", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise ProxyError(400, f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno})", code="invalid_json") from None
    except RecursionError:  # `[[[[…` a few thousand deep fits any body limit and exhausts the decoder
        raise ProxyError(400, "the request body is not valid JSON (nested too deeply)", code="invalid_json") from None
    if not isinstance(document, dict):
        raise ProxyError(400, "the request body must be a JSON object", code="invalid_json")
    return RequestFacts(document=document, stream=document.get("stream") is True)


def apply_fim_template(document: dict[str, Any], template: str) -> bytes:
    """Turn a `suffix` completion into a plain prompt with the configured FIM template.

    CodeGPT and similar editors send `suffix`; vLLM's OpenAI server rejects it. Substitution is one pass
    over the template (never str.format: code is full of braces), so a prefix containing the literal
    text "{suffix}" is not substituted twice.
    """
    suffix = document.get("suffix")
    prompt = document.get("prompt", "")
    if not isinstance(suffix, str):
        raise ProxyError(400, "suffix must be a string", code="invalid_suffix", param="suffix")

    def fill(prefix: Any) -> str:
        if not isinstance(prefix, str):
            raise ProxyError(400, "with suffix, prompt must be a string or a list of strings "
                             "(token ids cannot be combined with [proxy] fim_template)",
                             code="invalid_prompt", param="prompt")
        values = {"{prefix}": prefix, "{suffix}": suffix}
        return _FIM_FIELDS.sub(lambda match: values[match.group(0)], template)

    rewritten = dict(document)
    del rewritten["suffix"]
    rewritten["prompt"] = [fill(item) for item in prompt] if isinstance(prompt, list) else fill(prompt)
    return json.dumps(rewritten, ensure_ascii=False).encode()


FIM_MISSING_MESSAGE = (
    "this request has `suffix` (fill-in-the-middle), which vLLM's OpenAI server does not accept; "
    "set [proxy] fim_template in pod_config.toml to the model's FIM prompt, e.g. "
    "\"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>\" for Qwen2.5-Coder, "
    "and the proxy will rewrite such requests into plain prompts"
)


def normalize_upstream_error(status: int, body: bytes) -> bytes:
    """Any upstream error body → the OpenAI shape `{"error": {"message","type","param","code"}}`.

    Already-conforming bodies are returned byte for byte. vLLM's bare `{"error": "Unauthorized"}` (its
    --api-key check), its older flat ErrorResponse, FastAPI's `{"detail": …}` and non-JSON pages from
    the pod's HTTP proxy (502/524 HTML) are rewritten with a message that says what happened.
    """
    try:
        document = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        document = None
    error_type = error_type_for_status(status)
    code: Any = status
    param: Any = None
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            if all(key in error for key in ("type", "param", "code")):
                return body
            return json.dumps(openai_error_document(
                error["message"], error_type=str(error.get("type") or error_type),
                code=error.get("code", status), param=error.get("param"))).encode()
        if isinstance(error, str):
            if status == 401:
                message = (f"the pod rejected the upstream key (its model server answered 401 "
                           f"{error!r}): the key rpm holds for this pod does not match the pod's "
                           "--api-key; run `rpm shutdown` and `rpm start` to recreate it")
                code = "upstream_unauthorized"
            else:
                message = f"the pod's model server answered HTTP {status}: {error}"
        elif isinstance(document.get("message"), str):  # vLLM's older flat ErrorResponse
            message = document["message"]
            error_type = str(document.get("type") or error_type)
            code = document.get("code", status)
            param = document.get("param")
        elif "detail" in document:  # FastAPI (unknown route, validation errors)
            detail = document["detail"]
            message = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
            message = f"the pod's model server answered HTTP {status}: {message}"
        else:
            message = f"the pod's model server answered HTTP {status}"
    else:
        message = _describe_non_json(status, body)
    return json.dumps(openai_error_document(message, error_type=error_type, code=code,
                                            param=param)).encode()


def _describe_non_json(status: int, body: bytes) -> str:
    if status == 524:
        return ("the pod's HTTP proxy gave up after 100 s without a response byte (HTTP 524); "
                "long non-streaming generations should use stream=true")
    if status == 502:
        return ("the pod's HTTP proxy could not reach the model server (HTTP 502): it is not "
                "listening yet, or the pod is stopped or has no GPU")
    text = body[:300].decode("utf-8", "replace").strip()
    if not text or text.lstrip().startswith("<"):  # an HTML error page says nothing useful here
        return f"the pod answered HTTP {status}"
    return f"the pod answered HTTP {status}: {text}"


class SSESplitter:
    """Cuts a byte stream into complete server-sent events (each ends with a blank line).

    Holding back an incomplete event costs the client nothing (its parser cannot dispatch it either)
    and lets each event go out as one write. Bytes that never form an event (a non-SSE body) are
    passed on once _MAX_PENDING_EVENT_BYTES have gathered, and by `flush` at the end.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk if self._pending else chunk
        events: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(data):
            events.append(data[start:match.end()])
            start = match.end()
        self._pending = data[start:]
        if len(self._pending) > _MAX_PENDING_EVENT_BYTES:
            events.append(self._pending)
            self._pending = b""
        return events

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def is_done_event(event: bytes) -> bool:
    return event.startswith(b"data: [DONE]") or event.startswith(b"data:[DONE]")


def is_error_event(event: bytes) -> bool:
    # vLLM reports failures mid-stream as `data: {"error": …}`; chunks start with {"id": …}.
    return b'"error"' in event[:48]
