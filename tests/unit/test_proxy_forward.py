"""The proxy's pure helpers: header hygiene, body inspection, FIM rewrite, error shapes, SSE splitting,
bind and TLS checks, wake-error mapping."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from runpod_manager.config import ProxyConfig
from runpod_manager.errors import ApiError, ConfigError, LimitRefused, LockBusy, NotReady, RpmError
from runpod_manager.model_names import served_model_names
from runpod_manager.proxy.bind import build_ssl_context, check_bind
from runpod_manager.proxy.errors import ProxyError
from runpod_manager.proxy.forward import (
    SSESplitter,
    apply_fim_template,
    client_response_headers,
    inspect_json_body,
    is_done_event,
    is_error_event,
    is_json_content_type,
    normalize_upstream_error,
    upstream_request_headers,
)
from runpod_manager.proxy.hosts import is_loopback_host
from runpod_manager.proxy.passthrough import service_request_headers
from runpod_manager.proxy.upstream import StreamOutcome, relay_events
from runpod_manager.proxy.wake import wake_error
from runpod_manager.proxy.websocket import forwarded_headers

# ------------------------------------------------------------------------------------------------ headers


def test_request_headers_drop_hop_by_hop_and_replace_the_key() -> None:
    headers = [
        ("Host", "localhost:8080"), ("Connection", "keep-alive, X-Private-Hop"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic abc"), ("TE", "trailers"), ("Trailer", "x"),
        ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Content-Length", "12"),
        ("Authorization", "Bearer client-key"), ("Accept-Encoding", "gzip, br"), ("X-Private-Hop", "1"),
        ("X-RPM-Cache", "force"), ("User-Agent", "OpenAI/Python 3.54.0"), ("Accept", "application/json"),
        ("X-Custom", "a"), ("X-Custom", "b"),
    ]
    out = upstream_request_headers(headers, "pod-key")
    names = {name.lower() for name in out}
    for dropped in ("host", "connection", "keep-alive", "proxy-authorization", "te", "trailer",
                    "transfer-encoding", "upgrade", "content-length", "x-private-hop", "x-rpm-cache"):
        assert dropped not in names
    assert out["Authorization"] == "Bearer pod-key"
    assert out.getall("Authorization") == ["Bearer pod-key"]
    assert out["Accept-Encoding"] == "identity"
    assert out["User-Agent"] == "OpenAI/Python 3.54.0"
    assert out.getall("X-Custom") == ["a", "b"]


def test_request_headers_without_upstream_key_carry_no_credential() -> None:
    out = upstream_request_headers([("Authorization", "Bearer client-key")], None)
    assert "Authorization" not in out


def test_the_clients_x_forwarded_for_is_never_passed_on_as_it_came_on_any_route() -> None:
    incoming = [("X-Forwarded-For", "6.6.6.6"), ("x-forwarded-for", "7.7.7.7"), ("Accept", "*/*")]
    assert "X-Forwarded-For" not in upstream_request_headers(incoming, None)
    assert upstream_request_headers(incoming, None, forwarded="10.0.0.9").getall("X-Forwarded-For") == ["10.0.0.9"]
    routed = service_request_headers(incoming, keep_authorization=True, added={}, upstream_key=None,
                                     forwarded="10.0.0.9")
    assert routed.getall("X-Forwarded-For") == ["10.0.0.9"]
    socket_headers = forwarded_headers({"X-Forwarded-For": "6.6.6.6"}, {}, keep_authorization=False,
                                       forwarded="10.0.0.9")
    assert socket_headers == {"X-Forwarded-For": "10.0.0.9"}


def test_response_headers_drop_framing_and_hop_by_hop() -> None:
    out = client_response_headers([
        ("Content-Type", "application/json"), ("Content-Length", "10"), ("Transfer-Encoding", "chunked"),
        ("Connection", "close"), ("Content-Encoding", "gzip"), ("Date", "x"), ("Server", "uvicorn"),
        ("Retry-After", "3"), ("x-request-id", "abc"),
    ])
    assert dict(out) == {"Content-Type": "application/json", "Retry-After": "3", "x-request-id": "abc"}


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/json", True), ("application/json; charset=utf-8", True), ("Application/JSON", True),
    ("application/vnd.api+json", True), ("text/plain", False), ("application/x-www-form-urlencoded", False),
    ("", False),
])
def test_json_content_types(content_type: str, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


# ------------------------------------------------------------------------------------------------- bodies


def test_inspect_reads_stream_and_sampling_fields() -> None:
    facts = inspect_json_body(b'{"model": "m", "stream": true, "temperature": 0, "n": 1, "suffix": "x"}')
    assert facts.model == "m"
    assert facts.stream is True
    assert facts.temperature == 0
    assert facts.n == 1
    assert facts.has_suffix
    assert inspect_json_body(b'{"stream": "true"}').stream is False  # only the JSON boolean streams


@pytest.mark.parametrize(("args", "extra_args", "expected"), [
    ("", "", ("org/m",)),
    ("", "--served-model-name a b --max-num-seqs 4", ("a", "b")),
    ("", "--served-model-name=a", ("a",)),
    ("", "--served-model-name a --served-model-name b", ("b",)),  # argparse: the last one wins
    ("", "--enable-lora --lora-modules sql=/loras/sql '{\"name\": \"fr\", \"path\": \"/loras/fr\"}'",
     ("org/m", "sql", "fr")),
    ("", "--max-model-len 'unbalanced", ("org/m",)),
    ("--model {model} --port {port} --api-key {upstream_key}", "", ("org/m",)),
    ("--model=other/weights", "", ("other/weights",)),
    ("vllm serve other/weights --port 8000", "", ("other/weights",)),
    ("python3 my_server.py --port 8000", "", None),  # a custom server: the proxy cannot tell
    ("--model 'unbalanced", "", None),
], ids=["default", "served", "served-equals", "served-twice", "lora", "bad-extra", "custom-model",
        "custom-equals", "vllm-serve", "custom-server", "bad-custom"])
def test_served_model_names_follow_vllms_rule(args: str, extra_args: str, expected: tuple[str, ...] | None) -> None:
    assert served_model_names("org/m", args, extra_args) == expected


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b"", b"[" * 100_000],
                         ids=["syntax", "array", "string", "utf8", "empty", "deep"])
def test_inspect_rejects_non_objects_with_400(body: bytes) -> None:
    with pytest.raises(ProxyError) as caught:
        inspect_json_body(body)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_json"


def test_fim_template_rewrites_suffix_into_prompt() -> None:
    template = "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    document = {"model": "m", "prompt": "def f():\n    return {'a': 1}", "suffix": "\nprint(f())",
                "max_tokens": 5}
    rewritten = json.loads(apply_fim_template(document, template))
    assert "suffix" not in rewritten
    assert rewritten["prompt"] == ("<|fim_prefix|>def f():\n    return {'a': 1}<|fim_suffix|>\nprint(f())"
                                   "<|fim_middle|>")
    assert rewritten["max_tokens"] == 5
    assert "suffix" in document  # the caller's document is left alone


def test_fim_substitution_is_single_pass() -> None:
    rewritten = json.loads(apply_fim_template({"prompt": "a{suffix}b", "suffix": "S"}, "{prefix}|{suffix}"))
    assert rewritten["prompt"] == "a{suffix}b|S"


def test_fim_list_prompt_and_token_ids() -> None:
    rewritten = json.loads(apply_fim_template({"prompt": ["a", "b"], "suffix": "S"}, "{prefix}-{suffix}"))
    assert rewritten["prompt"] == ["a-S", "b-S"]
    with pytest.raises(ProxyError) as caught:
        apply_fim_template({"prompt": [1, 2, 3], "suffix": "S"}, "{prefix}{suffix}")
    assert caught.value.status == 400


# ------------------------------------------------------------------------------------------------- errors


def _error(body: bytes) -> dict[str, object]:
    document = json.loads(body)
    assert set(document) == {"error"}
    assert set(document["error"]) == {"message", "type", "param", "code"}
    return document["error"]


def test_vllm_bare_unauthorized_becomes_openai_shape_naming_the_upstream_key() -> None:
    error = _error(normalize_upstream_error(401, b'{"error": "Unauthorized"}'))
    assert "rejected the upstream key" in str(error["message"])
    assert error["type"] == "authentication_error"
    assert error["code"] == "upstream_unauthorized"


def test_conforming_error_passes_byte_for_byte() -> None:
    body = b'{"error": {"message": "bad", "type": "BadRequestError", "param": null, "code": 400}}'
    assert normalize_upstream_error(400, body) is body


@pytest.mark.parametrize(("status", "body", "fragment"), [
    (400, b'{"object": "error", "message": "too long", "type": "BadRequestError", "param": null, "code": 400}',
     "too long"),
    (404, b'{"detail": "Not Found"}', "Not Found"),
    (502, b"<html><body>502 Bad Gateway</body></html>", "not listening yet"),
    (524, b"<html>A timeout occurred</html>", "100 s"),
    (500, b"", "HTTP 500"),
    (503, b"overloaded", "overloaded"),
    (400, b'{"error": {"message": "partial"}}', "partial"),
])
def test_other_error_bodies_are_normalised(status: int, body: bytes, fragment: str) -> None:
    error = _error(normalize_upstream_error(status, body))
    assert fragment in str(error["message"])


def test_proxy_error_headers_and_shapes() -> None:
    error = ProxyError(503, "queue full", code="queue_full", retry_after_seconds=0.25, should_retry=True)
    assert error.headers() == {"Retry-After": "1", "retry-after-ms": "250", "x-should-retry": "true"}
    response = error.response()
    assert response.status == 503
    assert json.loads(response.body)["error"] == {  # type: ignore[arg-type]
        "message": "queue full", "type": "server_error", "param": None, "code": "queue_full"}
    assert ProxyError(401, "no", code="x").headers()["WWW-Authenticate"] == "Bearer"
    event = error.sse_event()
    assert event.startswith(b"data: {") and event.endswith(b"\n\n") and event.count(b"\n") == 2


# -------------------------------------------------------------------------------------------------- SSE


def test_splitter_yields_complete_events_across_chunks() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: {\"a\": 1}\n") == []
    assert splitter.feed(b"\ndata: {\"b\"") == [b"data: {\"a\": 1}\n\n"]
    assert splitter.feed(b": 2}\n\ndata: [DONE]\n\n") == [b"data: {\"b\": 2}\n\n", b"data: [DONE]\n\n"]
    assert splitter.flush() == b""


def test_splitter_handles_crlf_and_leftovers() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: x\r\n\r") == []
    assert splitter.feed(b"\ndata: y") == [b"data: x\r\n\r\n"]
    assert splitter.flush() == b"data: y"


def test_splitter_passes_on_bytes_that_never_form_an_event() -> None:
    splitter = SSESplitter()
    blob = b"x" * (1024 * 1024 + 1)
    assert splitter.feed(blob) == [blob]


def test_event_classification() -> None:
    assert is_done_event(b"data: [DONE]\n\n")
    assert is_error_event(b'data: {"error": {"message": "boom"}}\n\n')
    assert not is_error_event(b'data: {"id": "chatcmpl-1", "choices": [{"text": "\\"error\\""}]}\n\n')


# ---------------------------------------------------------------------------------------- bind and TLS

EVERYWHERE = "0.0.0.0"  # noqa: S104 - the bind these tests make sure is refused without keys


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), (EVERYWHERE, False),
    ("::", False), ("192.168.1.5", False), ("my-host.example", False),
])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_open_bind_without_keys_is_refused_naming_the_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        check_bind(ProxyConfig(host=EVERYWHERE))
    assert "[proxy] host" in str(caught.value) and "[proxy] api_keys" in str(caught.value)
    check_bind(ProxyConfig(host=EVERYWHERE, api_keys=("k",)))
    check_bind(ProxyConfig(host="127.0.0.1"))


def test_tls_with_missing_or_bad_files_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[proxy\] ssl_cert"):
        build_ssl_context(ProxyConfig(use_https=True, ssl_cert=str(tmp_path / "no.pem"),
                                      ssl_key=str(tmp_path / "no.key")))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(ConfigError, match=r"\[proxy\] ssl_cert"):
        build_ssl_context(ProxyConfig(use_https=True, ssl_cert=str(cert), ssl_key=str(key)))
    assert build_ssl_context(ProxyConfig()) is None


# ------------------------------------------------------------------------------------------- wake errors


@pytest.mark.parametrize(("exc", "status", "code"), [
    (LimitRefused("daily spend cap of $20.00 reached"), 503, "limit_refused"),
    (LockBusy("another rpm holds the lock"), 503, "state_busy"),
    (NotReady("not ready in 1200 s"), 503, "pod_not_ready"),
    (ApiError("RunPod answered 500"), 502, "wake_failed"),
    (RpmError("something"), 503, "wake_failed"),
    (ValueError("secret-ish local detail"), 502, "wake_failed"),
])
def test_wake_errors_map_to_statuses_with_reasons(exc: BaseException, status: int, code: str) -> None:
    error = wake_error(exc)
    assert (error.status, error.code) == (status, code)
    if isinstance(exc, RpmError):
        assert exc.message in error.message
    else:
        assert "secret-ish" not in error.message  # unexpected errors show their type, never their text


def test_the_default_hold_lets_default_sdk_retries_span_a_ten_minute_wake() -> None:
    """openai-node, openai-python and the ai SDK retry twice by default and honour Retry-After; Node's
    fetch drops a request whose headers take 300 s. With the defaults, a wake of 10 minutes loses nothing."""
    from openai._constants import DEFAULT_MAX_RETRIES

    from runpod_manager.proxy.app import WAKE_RETRY_AFTER_SECONDS

    hold_seconds = ProxyConfig().wake_hold_seconds
    assert hold_seconds < 300
    attempts = DEFAULT_MAX_RETRIES + 1
    assert attempts * hold_seconds + DEFAULT_MAX_RETRIES * WAKE_RETRY_AFTER_SECONDS >= 600


def test_a_pods_connection_budget_refuses_sockets_at_once_and_lets_requests_wait_their_turn() -> None:
    from runpod_manager.proxy.upstream import ConnectionBudget

    async def scenario() -> None:
        budget = ConnectionBudget(2, "[pods.comfy] max_connections")
        budget.take_now()
        await budget.take()
        with pytest.raises(ProxyError) as refused:  # a socket over the budget: at once
            budget.take_now()
        assert refused.value.status == 503 and refused.value.code == "pod_connections_full"
        assert "[pods.comfy] max_connections = 2" in refused.value.message
        waiting = asyncio.create_task(budget.take(5))
        await asyncio.sleep(0)
        with pytest.raises(ProxyError):  # nobody overtakes a request that waits
            budget.take_now()
        budget.give()  # handed to the waiter: still 2 open
        await waiting
        assert budget.open == 2
        with pytest.raises(ProxyError, match=r"no connection freed within 0\.01 s"):
            await budget.take(0.01)
        leaving = asyncio.create_task(budget.take(5))
        await asyncio.sleep(0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        budget.give()
        budget.give()
        assert budget.open == 0

    asyncio.run(scenario())


def test_a_socket_handshake_never_passes_on_the_proxys_own_request_headers() -> None:
    # The same set as /v1 and the pass-through (forward.PROXY_ONLY_REQUEST_HEADERS): a client's copy of the job
    # headers or the cache switch is never the service's business.
    incoming = {"X-RPM-Job-Id": "job-1", "X-RPM-Job-Token": "t", "X-RPM-Job-Owner": "o", "X-RPM-Cache": "off",
                "Cookie": "a=b"}
    assert forwarded_headers(incoming, {}, keep_authorization=False) == {"Cookie": "a=b"}


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class _LeavingClient:
    """A client that closes its connection once it has read `[DONE]`, as the openai SDK does."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    async def write(self, data: bytes) -> None:
        if any(b"[DONE]" in chunk for chunk in self.got):
            raise ConnectionResetError("Cannot write to closing transport")
        self.got.append(data)


def test_a_client_that_leaves_after_done_had_the_whole_answer_and_is_not_gone() -> None:
    # A 499 in the request log for a stream the SDK read to its end: it closed after [DONE], before the last
    # bytes (here a trailing partial event) were written.
    upstream = type("Upstream", (), {"content": _Content([b"data: {\"a\":1}\n\n", b"data: [DONE]\n\n", b"x"])})()
    client = _LeavingClient()
    outcome = asyncio.run(relay_events(upstream, client, StreamOutcome(events=None),  # type: ignore[arg-type]
                                       max_kept_bytes=1024))
    assert outcome.saw_done and not outcome.client_gone
    assert client.got == [b"data: {\"a\":1}\n\n", b"data: [DONE]\n\n"]
