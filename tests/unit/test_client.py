"""The RunPod client against `responses` fakes (and, for transport failures, real local sockets).

Covers the error mapping, the retry policy, create's never-twice rule, action convergence, and that
the API key never leaks into errors, reprs or logs.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from runpod_manager import __version__
from runpod_manager.errors import (
    ApiError,
    ApiUnavailable,
    AuthError,
    ConfigError,
    Conflict,
    ExitCode,
    InsufficientBalance,
    InvalidRequest,
    NoCapacity,
    NotFound,
    RateLimited,
    ResumeRefused,
)
from runpod_manager.runpod import PodSpec, PodStatus, RunPodClient

BASE = "https://api.runpod.io"
KEY = "rpm-secret-key-XYZ123"
PODS = f"{BASE}/v2/pods"
POD = f"{PODS}/pod1"
ACTION = f"{POD}/action"

NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
HOST_GPU_TAKEN = "There are not enough free GPUs on the host machine to start this pod."
LOW_BALANCE = "Your account balance is too low to rent a pod. Please add funds to your account."


def pod_json(
    pod_id: str = "pod1", name: str = "rpm-llm-ab12", status: str = "RUNNING", **extra: Any
) -> dict[str, Any]:
    return {"id": pod_id, "name": name, "status": status, "env": {"HF_TOKEN": "hf_x"}, **extra}


def problem(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    return {"title": "Error", "status": status, "detail": detail, **extra}


def spec(name: str = "rpm-llm-ab12") -> PodSpec:
    return PodSpec(
        name=name, image="vllm/vllm-openai:latest", gpu_type_id="NVIDIA L40S", env={"HF_TOKEN": "hf_x"}
    )


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> Iterator[RunPodClient]:
    with RunPodClient(KEY, sleep=sleeps.append) as runpod:
        yield runpod


def body_of(call: Any) -> Any:
    body = call.request.body
    assert isinstance(body, bytes | str)
    return json.loads(body)


def sent(api: responses.RequestsMock, method: str) -> list[Any]:
    return [call for call in api.calls if call.request.method == method]


def error_texts(error: BaseException) -> str:
    """Everything a user, a log or a traceback could show of an error and its whole chain."""
    texts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), *map(str, vars(current).values())]
        current = current.__cause__ or current.__context__
    texts.append("".join(traceback.format_exception(error)))
    return "\n".join(texts)


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://api.runpod.io", BASE),
        ("https://api.runpod.io/", BASE),
        ("https://api.runpod.io/v2", BASE),
        ("https://api.runpod.io/v2/", BASE),
        ("  https://api.runpod.io/v2//  ", BASE),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://127.0.0.1:8765/sandbox/v2", "http://127.0.0.1:8765/sandbox"),
    ],
)
def test_base_url_is_normalised(given: str, expected: str, api: responses.RequestsMock) -> None:
    runpod = RunPodClient(KEY, given)
    assert runpod.base_url == expected
    api.get(f"{expected}/v2/pods", json={"pods": []})
    assert runpod.list_pods() == []
    assert api.calls[0].request.url == f"{expected}/v2/pods"


@pytest.mark.parametrize("given", ["", "api.runpod.io", "ftp://api.runpod.io", "https://", "https://h/?x=1"])
def test_bad_base_url_is_a_config_error(given: str) -> None:
    with pytest.raises(ConfigError, match="base URL"):
        RunPodClient(KEY, given)


@pytest.mark.parametrize("key", ["", "   ", "\n"])
def test_missing_key_fails_before_any_call(key: str, api: responses.RequestsMock) -> None:
    with pytest.raises(AuthError, match="RUNPOD_API_KEY") as raised:
        RunPodClient(key)
    assert raised.value.exit_code is ExitCode.AUTH
    assert len(api.calls) == 0


@pytest.mark.parametrize("key", [f"{KEY} extra", f"{KEY}\r\nX-Evil: 1", f"{KEY}é"])
def test_malformed_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(AuthError, match="RUNPOD_API_KEY") as raised:
        RunPodClient(key)
    assert KEY not in error_texts(raised.value)


def test_requests_carry_bearer_key_user_agent_and_json(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(PODS, json=pod_json(), status=201)
    client.create_pod(spec())
    request = api.calls[0].request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["User-Agent"] == f"rpm/{__version__}"
    assert request.headers["Content-Type"] == "application/json"
    assert body_of(api.calls[0]) == spec().to_api()


def test_netrc_cannot_replace_the_bearer_key(
    client: RunPodClient, api: responses.RequestsMock, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.runpod.io login someone password other-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    api.get(PODS, json={"pods": []})
    client.list_pods()
    assert api.calls[0].request.headers["Authorization"] == f"Bearer {KEY}"


# --- happy paths ------------------------------------------------------------------------------


def test_list_and_filter_pods(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(
        PODS,
        json={
            "pods": [
                pod_json("a", "rpm-llm-1"),
                pod_json("b", "rpm-llm-10"),
                pod_json("c", "notebook"),
            ]
        },
    )
    assert [pod.id for pod in client.list_pods()] == ["a", "b", "c"]
    assert [pod.id for pod in client.find_pods_by_name("rpm-llm-1")] == ["a"]
    assert [pod.id for pod in client.list_pods_with_prefix("rpm-")] == ["a", "b"]
    assert client.find_pods_by_name("missing") == []


def test_bare_list_is_accepted_and_a_missing_wrapper_is_an_error(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.get(PODS, json=[pod_json()])
    assert [pod.id for pod in client.list_pods()] == ["pod1"]
    api.replace(responses.GET, PODS, json={"items": []})
    with pytest.raises(ApiError, match="without 'pods'"):
        client.list_pods()


def test_malformed_pod_in_a_list_names_the_field(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(PODS, json={"pods": [{"id": "x", "name": "n"}]})
    with pytest.raises(ApiError, match="pod x without 'status'"):
        client.list_pods()


@pytest.mark.parametrize("body", ["<html>hello</html>", "[" * 100_000], ids=["html", "deep"])
def test_non_json_success_body_is_an_api_error(client: RunPodClient, api: responses.RequestsMock, body: str) -> None:
    api.get(POD, body=body, status=200)
    with pytest.raises(ApiError, match="not JSON"):
        client.get_pod("pod1")


def test_get_pod_quotes_the_id(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(f"{PODS}/a%2Fb", json=pod_json("a/b"))
    assert client.get_pod("a/b").id == "a/b"
    with pytest.raises(ValueError, match="pod_id"):
        client.get_pod("")


@pytest.mark.parametrize(
    ("method", "action"), [("start_pod", "start"), ("stop_pod", "stop")]
)
def test_actions_post_the_action_and_return_the_pod(
    method: str, action: str, client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(ACTION, json=pod_json(status="EXITED" if action == "stop" else "STARTING"))
    pod = getattr(client, method)("pod1")
    assert body_of(api.calls[0]) == {"action": action}
    assert pod.id == "pod1"
    assert client.calls == 1


def test_action_with_empty_answer_reads_the_pod(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.post(ACTION, status=204)
    api.get(POD, json=pod_json(status="EXITED"))
    assert client.stop_pod("pod1").status is PodStatus.EXITED
    assert client.calls == 2


def test_gpu_catalog_query_follows_the_spec(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(
        f"{BASE}/v2/catalog/gpus",
        match=[
            matchers.query_param_matcher(
                {"include": "AVAILABILITY", "product": "POD", "count": "2", "cloud": "COMMUNITY"}
            )
        ],
        json={"gpus": [{"id": "NVIDIA L40S", "name": "L40S", "availability": "LOW"}]},
    )
    (gpu,) = client.list_gpu_types(gpu_count=2, cloud="COMMUNITY")
    assert (gpu.id, gpu.availability) == ("NVIDIA L40S", "LOW")


def test_gpu_catalog_without_availability_sends_no_filters(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.get(f"{BASE}/v2/catalog/gpus", match=[matchers.query_param_matcher({})], json={"gpus": []})
    assert client.list_gpu_types(gpu_count=4, include_availability=False) == []


@pytest.mark.parametrize("kwargs", [{"cloud": "ALL"}, {"gpu_count": 0}])
def test_gpu_catalog_rejects_impossible_filters(kwargs: dict[str, Any], client: RunPodClient) -> None:
    with pytest.raises(ValueError, match=r"cloud|gpu_count"):
        client.list_gpu_types(**kwargs)


def test_pod_spend_sums_the_records_returned(client: RunPodClient, api: responses.RequestsMock) -> None:
    since = datetime(2026, 6, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))  # midnight UTC
    api.get(
        f"{BASE}/v2/billing/pods",
        match=[
            matchers.query_param_matcher(
                {"podId": "pod1", "bucketSize": "day", "startTime": "2026-06-01T00:00:00Z"}
            )
        ],
        json={
            "records": [
                {
                    "startTime": "2026-05-31T00:00:00Z",
                    "endTime": "2026-06-01T00:00:00Z",
                    "podId": "pod1",
                    "totalAmount": 1.25,
                },
                {
                    "startTime": "2026-06-01T00:00:00Z",
                    "endTime": "2026-06-02T00:00:00Z",
                    "podId": "pod1",
                    "totalAmount": 2.5,
                },
                {
                    "startTime": "2026-06-01T00:00:00Z",
                    "endTime": "2026-06-02T00:00:00Z",
                    "podId": "other",
                    "totalAmount": 99,
                },
            ],
            "metadata": {},
        },
    )
    assert client.pod_spend_usd("pod1", since=since) == pytest.approx(3.75)


def test_pod_spend_needs_an_aware_time_and_valid_records(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    with pytest.raises(ValueError, match="timezone"):
        client.pod_spend_usd("pod1", since=datetime(2026, 6, 1))
    api.get(f"{BASE}/v2/billing/pods", json={"records": [{"podId": "pod1"}]})
    with pytest.raises(ApiError, match="totalAmount"):
        client.pod_spend_usd("pod1", since=datetime(2026, 6, 1, tzinfo=UTC))
    api.replace(responses.GET, f"{BASE}/v2/billing/pods", json={"metadata": {}})
    with pytest.raises(ApiError, match="without 'records'"):
        client.pod_spend_usd("pod1", since=datetime(2026, 6, 1, tzinfo=UTC))


SSE_BODY = (
    "id: 2026-06-01T12:02:03Z/000000000001\n"
    'data: {"ts":"2026-06-01T12:02:03Z","source":"container","line":"one"}\n\n'
    ": a comment\n\n"
    "id: 2026-06-01T12:02:04Z/000000000002\n"
    'data: {"ts":"2026-06-01T12:02:04Z","source":"system","line":"two"}\n\n'
    "data: not json\n\n"
    'data:{"line":"four"}\n\n'
)


def test_pod_logs_reads_sse_lines(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(
        f"{POD}/logs",
        match=[matchers.query_param_matcher({"tail": "10"})],
        body=SSE_BODY,
        content_type="text/event-stream",
    )
    assert client.pod_logs("pod1", tail=10) == ["one", "two", "not json", "four"]
    assert api.calls[0].request.headers["Accept"] == "text/event-stream"


def test_pod_logs_stops_at_tail(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(f"{POD}/logs", body=SSE_BODY, content_type="text/event-stream")
    assert client.pod_logs("pod1", tail=2) == ["one", "two"]
    with pytest.raises(ValueError, match="tail"):
        client.pod_logs("pod1", tail=0)


def test_pod_logs_of_unknown_pod(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(f"{POD}/logs", json=problem(404, "pod not found"), status=404)
    with pytest.raises(NotFound, match="pod not found"):
        client.pod_logs("pod1")


@contextmanager
def sse_server_that_stays_open(events: list[str]) -> Iterator[int]:
    """A real HTTP server that sends `events` and then holds the stream open, as RunPod's live tail does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    done = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            connection.sendall(
                head + "".join(f'data: {{"line": "{event}"}}\n\n' for event in events).encode()
            )
            done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()


def test_pod_logs_returns_the_backfill_when_the_stream_goes_quiet() -> None:
    with sse_server_that_stays_open(["a", "b"]) as port:
        runpod = RunPodClient(KEY, f"http://127.0.0.1:{port}", log_idle_timeout_seconds=0.2, max_retries=0)
        assert runpod.pod_logs("pod1", tail=100) == ["a", "b"]


# --- error mapping ----------------------------------------------------------------------------

JSON = "application/problem+json"


@pytest.mark.parametrize(
    ("status", "body", "error_type", "texts"),
    [
        (
            401,
            problem(401, "missing bearer token"),
            AuthError,
            ["missing bearer token", "missing or invalid", "RUNPOD_API_KEY"],
        ),
        (403, problem(403, "access denied"), AuthError, ["access denied", "permission", "Pods read/write"]),
        (404, problem(404, "pod not found"), NotFound, ["pod not found", "get pod pod1"]),
        (404, {"message": "Pod not found"}, NotFound, ["Pod not found"]),
        (404, {"error": "pod not found"}, NotFound, ["pod not found"]),
        (404, "", NotFound, ["HTTP 404"]),
        (409, problem(409, "action not valid for current pod status"), Conflict, ["action not valid"]),
        (402, problem(402, LOW_BALANCE), InsufficientBalance, ["balance is too low", "add funds"]),
        (402, "", InsufficientBalance, ["HTTP 402"]),
        (400, problem(400, LOW_BALANCE), InsufficientBalance, ["balance is too low"]),
        (
            500,
            {"error": f"create pod: {LOW_BALANCE}", "status": 500},
            InsufficientBalance,
            ["balance is too low"],
        ),
        (
            400,
            problem(400, NO_CAPACITY),
            NoCapacity,
            ["no longer any instances available", "another GPU type"],
        ),
        (
            400,
            problem(
                400,
                "There are no instances available with the request specifications. Please try again later.",
            ),
            NoCapacity,
            ["no instances available"],
        ),
        (
            400,
            problem(
                400,
                "This machine does not have the resources to deploy your pod. Please try a different machine",
            ),
            NoCapacity,
            ["does not have the resources"],
        ),
        (
            500,
            {"error": f"create pod: {NO_CAPACITY}\ncreate pod: {NO_CAPACITY}", "status": 500},
            NoCapacity,
            ["no longer"],
        ),
        (400, problem(400, HOST_GPU_TAKEN), ResumeRefused, ["not enough free GPUs", "rented meanwhile"]),
        (500, {"error": f"start pod: {HOST_GPU_TAKEN}"}, ResumeRefused, ["not enough free GPUs"]),
        (400, problem(400, "gpu.count exceeds maxCount for this GPU"), InvalidRequest, ["exceeds maxCount"]),
        (400, "plain text, not json", InvalidRequest, ["plain text, not json"]),
        (418, problem(418, "teapot"), ApiError, ["HTTP 418", "teapot"]),
    ],
)
def test_error_mapping(
    *,
    status: int,
    body: dict[str, Any] | str,
    error_type: type[ApiError],
    texts: list[str],
    client: RunPodClient,
    api: responses.RequestsMock,
) -> None:
    if isinstance(body, dict):
        api.get(POD, json=body, status=status, content_type=JSON)
    else:
        api.get(POD, body=body, status=status, content_type="text/plain")
    with pytest.raises(ApiError) as raised:
        client.get_pod("pod1")
    error = raised.value
    assert type(error) is error_type
    assert error.status == status
    message = str(error)
    assert "\n" not in message
    for text in texts:
        assert text in message
    assert client.calls == 1  # none of these is transient: no retry


def test_validation_errors_become_field_errors(client: RunPodClient, api: responses.RequestsMock) -> None:
    errors = ["$.gpu.count: must be >= 1", "$.bogus: additional properties 'bogus' not allowed"]
    api.post(PODS, json=problem(422, "Request validation failed.", errors=errors), status=422)
    with pytest.raises(InvalidRequest) as raised:
        client.create_pod(spec())
    assert raised.value.field_errors == tuple(errors)
    assert "$.gpu.count: must be >= 1" in str(raised.value)
    assert raised.value.exit_code is ExitCode.USAGE
    assert len(sent(api, "GET")) == 0


def test_resume_refused_on_start_is_not_retried(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.post(ACTION, json={"error": f"start pod: {HOST_GPU_TAKEN}", "status": 500}, status=500)
    with pytest.raises(ResumeRefused, match="start pod pod1") as raised:
        client.start_pod("pod1")
    assert raised.value.exit_code is ExitCode.CAPACITY
    assert client.calls == 1


def test_html_error_page_is_not_dumped_into_the_message(
    client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.get(
        POD, body="<!DOCTYPE html><html><body>Bad gateway</body></html>", status=502, content_type="text/html"
    )
    with pytest.raises(ApiUnavailable) as raised:
        client.get_pod("pod1")
    assert "<html" not in str(raised.value)
    assert "HTTP 502" in str(raised.value)


def test_long_detail_is_truncated_to_one_line(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(POD, json=problem(400, "x" * 1000 + "\nsecond line"), status=400)
    with pytest.raises(InvalidRequest) as raised:
        client.get_pod("pod1")
    assert "\n" not in str(raised.value)
    assert len(str(raised.value)) < 500


# --- retries ----------------------------------------------------------------------------------


def test_429_honours_retry_after(
    client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.get(
        POD,
        json=problem(429, "rate limit exceeded for the minute window"),
        status=429,
        headers={"Retry-After": "7"},
    )
    api.get(
        POD,
        json=problem(429, "rate limit exceeded for the minute window"),
        status=429,
        headers={"Retry-After": "3"},
    )
    api.get(POD, json=pod_json())
    assert client.get_pod("pod1").id == "pod1"
    assert len(sleeps) == 2
    assert 7 <= sleeps[0] <= 7.5
    assert 3 <= sleeps[1] <= 3.5
    assert client.calls == 3


def test_429_retries_exhausted_is_rate_limited(
    client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.get(
        POD,
        json=problem(429, "rate limit exceeded for the minute window"),
        status=429,
        headers={"Retry-After": "2"},
    )
    with pytest.raises(RateLimited) as raised:
        client.get_pod("pod1")
    assert raised.value.retry_after_seconds == 2
    assert "rate limit exceeded for the minute window" in str(raised.value)
    assert "after 5 attempts" in str(raised.value)
    assert client.calls == 5
    assert len(sleeps) == 4


def test_retry_after_beyond_the_cap_fails_at_once(
    client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.get(
        POD,
        json=problem(429, "rate limit exceeded for the day window"),
        status=429,
        headers={"Retry-After": "40000"},
    )
    with pytest.raises(RateLimited) as raised:
        client.get_pod("pod1")
    assert raised.value.retry_after_seconds == 40000
    assert "40000 s" in str(raised.value)
    assert sleeps == []
    assert client.calls == 1


def test_429_without_retry_after_backs_off_with_full_jitter(api: responses.RequestsMock) -> None:
    sleeps: list[float] = []
    runpod = RunPodClient(
        KEY, sleep=sleeps.append, max_retries=6, backoff_base_seconds=1.0, backoff_max_seconds=8.0
    )
    api.get(POD, status=429, headers={"Retry-After": "soon"})
    with pytest.raises(RateLimited):
        runpod.get_pod("pod1")
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert len(sleeps) == len(ceilings)
    for slept, ceiling in zip(sleeps, ceilings, strict=True):
        assert 0 <= slept <= ceiling


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_then_success(
    status: int, client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.get(PODS, json=problem(status, "upstream hiccup"), status=status)
    api.get(PODS, json={"pods": [pod_json()]})
    assert len(client.list_pods()) == 1
    assert client.calls == 2
    assert len(sleeps) == 1


def test_5xx_exhausted_is_api_unavailable_naming_the_host(
    client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.get(PODS, json=problem(503, "service unavailable"), status=503)
    with pytest.raises(ApiUnavailable) as raised:
        client.list_pods()
    message = str(raised.value)
    assert "api.runpod.io" in message
    assert "failing" in message
    assert "service unavailable" in message
    assert "uptime.runpod.io" in message
    assert raised.value.exit_code is ExitCode.API
    assert client.calls == 5


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectionError("connection refused"),
        requests.ReadTimeout("read timed out"),
        requests.ConnectTimeout(),
    ],
)
def test_transport_failure_then_success(
    failure: Exception, client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.get(PODS, body=failure)
    api.get(PODS, json={"pods": []})
    assert client.list_pods() == []
    assert client.calls == 2


def test_transport_failures_exhausted_is_api_unavailable(
    client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.get(PODS, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(ApiUnavailable, match=r"unreachable.*no answer within 30 s.*after 5 attempts"):
        client.list_pods()
    assert client.calls == 5


def test_no_retries_when_disabled(api: responses.RequestsMock) -> None:
    runpod = RunPodClient(KEY, max_retries=0, sleep=lambda _: pytest.fail("slept"))
    api.get(PODS, status=503)
    with pytest.raises(ApiUnavailable):
        runpod.list_pods()
    assert runpod.calls == 1


def test_calls_counts_requests_sent(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.get(PODS, json={"pods": [pod_json()]})
    assert client.calls == 0
    client.find_pods_by_name("rpm-llm-ab12")
    assert client.calls == 1  # one pass that only observes costs exactly one call
    client.list_pods_with_prefix("rpm-")
    assert client.calls == 2


# --- create: never twice ----------------------------------------------------------------------


def test_create_returns_the_pod(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.post(PODS, json=pod_json(status="PROVISIONING"), status=201)
    pod = client.create_pod(spec())
    assert (pod.id, pod.status) == ("pod1", PodStatus.PROVISIONING)
    assert client.calls == 1


@pytest.mark.parametrize(
    "failure",
    [
        {"json": problem(500, "internal error"), "status": 500},
        {"body": "", "status": 502},
        {"body": requests.ReadTimeout("read timed out")},
        {"body": requests.ConnectionError("connection reset by peer")},
    ],
)
def test_create_failure_finds_the_pod_by_name_instead_of_resending(
    failure: dict[str, Any], client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.post(PODS, **failure)
    api.get(PODS, json={"pods": [pod_json("other", "rpm-llm-zz99"), pod_json("created", "rpm-llm-ab12")]})
    pod = client.create_pod(spec())
    assert pod.id == "created"
    assert len(sent(api, "POST")) == 1
    assert len(sent(api, "GET")) == 1
    assert sleeps == []


def test_create_failure_without_a_pod_is_unavailable_and_sends_once(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(PODS, json=problem(500, "internal error"), status=500)
    api.get(PODS, json={"pods": [pod_json("other", "rpm-llm-zz99")]})
    with pytest.raises(ApiUnavailable) as raised:
        client.create_pod(spec())
    message = str(raised.value)
    assert "create pod 'rpm-llm-ab12'" in message
    assert "internal error" in message
    assert "no pod of that name exists" in message
    assert raised.value.status == 500
    assert len(sent(api, "POST")) == 1


def test_create_failure_with_a_failing_lookup_says_the_pod_may_exist(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(PODS, body=requests.ConnectionError("connection reset"))
    api.get(PODS, body=requests.ConnectionError("connection refused"))
    with pytest.raises(ApiUnavailable, match="may exist"):
        client.create_pod(spec())
    assert len(sent(api, "POST")) == 1


def test_create_picks_the_newest_of_several_pods_with_the_name(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(PODS, status=500)
    api.get(
        PODS,
        json={
            "pods": [
                pod_json("old", createdAt="2026-06-01T10:00:00Z"),
                pod_json("new", createdAt="2026-06-01T12:00:00Z"),
                pod_json("undated"),
            ]
        },
    )
    assert client.create_pod(spec()).id == "new"


def test_create_is_resent_after_429(
    client: RunPodClient, api: responses.RequestsMock, sleeps: list[float]
) -> None:
    api.post(
        PODS,
        json=problem(429, "rate limit exceeded for the minute window"),
        status=429,
        headers={"Retry-After": "1"},
    )
    api.post(PODS, json=pod_json(), status=201)
    assert client.create_pod(spec()).id == "pod1"
    assert len(sent(api, "POST")) == 2
    assert len(sent(api, "GET")) == 0
    assert 1 <= sleeps[0] <= 1.5


@pytest.mark.parametrize("status", [400, 500])
def test_create_without_capacity_is_no_capacity_without_lookup(
    status: int, client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(PODS, json=problem(status, NO_CAPACITY), status=status)
    with pytest.raises(NoCapacity) as raised:
        client.create_pod(spec())
    assert raised.value.exit_code is ExitCode.CAPACITY
    assert client.calls == 1


# --- actions: retries converge ----------------------------------------------------------------


def test_stop_retry_conflict_converges_when_the_pod_is_stopped(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(ACTION, json=problem(502, "bad gateway"), status=502)
    api.post(ACTION, json=problem(409, "action not valid for current pod status"), status=409)
    api.get(POD, json=pod_json(status="EXITED"))
    pod = client.stop_pod("pod1")
    assert pod.status is PodStatus.EXITED
    assert len(sent(api, "POST")) == 2
    assert client.calls == 3


def test_start_retry_after_timeout_conflict_converges_on_starting(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(ACTION, body=requests.ReadTimeout("read timed out"))
    api.post(ACTION, json=problem(409, "action not valid for current pod status"), status=409)
    api.get(POD, json=pod_json(status="STARTING"))
    assert client.start_pod("pod1").status is PodStatus.STARTING


def test_stop_retry_conflict_in_another_state_is_a_conflict(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(ACTION, status=503)
    api.post(ACTION, json=problem(409, "action not valid for current pod status"), status=409)
    api.get(POD, json=pod_json(status="ERROR"))
    with pytest.raises(Conflict, match="stop pod pod1"):
        client.stop_pod("pod1")


def test_stop_retry_conflict_on_a_locked_running_pod_is_a_conflict_with_the_lock_read(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    # A locked pod refuses stop with 409 while it runs: that is never "already stopped".
    api.post(ACTION, status=503)
    api.post(ACTION, json=problem(409, "cannot stop pod pod1 in status RUNNING (the pod is locked)"), status=409)
    api.get(POD, json=pod_json(status="RUNNING", locked=True, actions=["terminate"]))
    with pytest.raises(Conflict, match="stop pod pod1"):
        client.stop_pod("pod1")
    api.replace(responses.GET, POD, json=pod_json(status="RUNNING", locked=True, actions=["terminate"]))
    pod = client.get_pod("pod1")
    assert pod.locked and pod.actions == ("terminate",)
    api.replace(responses.GET, POD, json=pod_json(status="RUNNING"))
    assert client.get_pod("pod1").locked is False  # absent means unlocked (the spec's default)


def test_first_attempt_conflict_is_a_conflict_without_lookup(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(ACTION, json=problem(409, "action not valid for current pod status"), status=409)
    with pytest.raises(Conflict):
        client.stop_pod("pod1")
    assert client.calls == 1


def test_conflict_after_a_connect_timeout_is_a_conflict(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    # A connect timeout proves the first request never left, so the 409 is about the pod's own state.
    api.post(ACTION, body=requests.ConnectTimeout())
    api.post(ACTION, json=problem(409, "not allowed"), status=409)
    with pytest.raises(Conflict):
        client.stop_pod("pod1")
    assert len(sent(api, "GET")) == 0


# --- update -----------------------------------------------------------------------------------


def test_update_patches_only_the_given_fields(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.patch(POD, json=pod_json(args="sh -c 'new'"))
    pod = client.update_pod("pod1", args="sh -c 'new'", ports=("8000/http",))
    assert body_of(api.calls[0]) == {"args": "sh -c 'new'", "ports": ["8000/http"]}
    assert pod.args == "sh -c 'new'"
    with pytest.raises(ValueError, match="at least one field"):
        client.update_pod("pod1")


def test_update_is_retried_and_maps_errors(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.patch(POD, status=503)
    api.patch(POD, json=problem(404, "pod not found"), status=404)
    with pytest.raises(NotFound, match="update pod pod1"):
        client.update_pod("pod1", env={"A": "1"})
    assert client.calls == 2


# --- terminate --------------------------------------------------------------------------------


def test_terminate_deletes(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.delete(POD, status=204)
    assert client.terminate_pod("pod1") is True


def test_terminate_of_a_gone_pod_is_false(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.delete(POD, json=problem(404, "pod not found"), status=404)
    assert client.terminate_pod("pod1") is False


def test_terminate_retried_after_5xx_then_404_means_we_deleted_it(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.delete(POD, status=500)
    api.delete(POD, json=problem(404, "pod not found"), status=404)
    assert client.terminate_pod("pod1") is True
    assert client.calls == 2


def test_terminate_of_a_cluster_pod_is_a_conflict(client: RunPodClient, api: responses.RequestsMock) -> None:
    api.delete(POD, json=problem(409, "Pod belongs to a cluster"), status=409)
    with pytest.raises(Conflict, match="cluster"):
        client.terminate_pod("pod1")


# --- secrets ----------------------------------------------------------------------------------


def test_client_repr_shows_the_base_url_only() -> None:
    runpod = RunPodClient(KEY, "https://user:pw@api.runpod.io/v2")
    assert repr(runpod) == "RunPodClient(base_url='https://api.runpod.io')"
    assert KEY not in repr(runpod)
    assert KEY not in str(vars(runpod))
    assert "pw" not in repr(runpod)


SECRET_FAILURES: list[tuple[str, dict[str, Any]]] = [
    ("401", {"json": problem(401, "missing bearer token"), "status": 401}),
    ("403", {"json": problem(403, "access denied"), "status": 403}),
    ("404", {"json": problem(404, "pod not found"), "status": 404}),
    ("409", {"json": problem(409, "not allowed"), "status": 409}),
    ("422", {"json": problem(422, "bad", errors=[f"$.x: got {KEY}"]), "status": 422}),
    ("400", {"json": problem(400, NO_CAPACITY), "status": 400}),
    ("402", {"json": problem(402, LOW_BALANCE), "status": 402}),
    ("429", {"json": problem(429, "slow down"), "status": 429, "headers": {"Retry-After": "1"}}),
    ("500", {"json": problem(500, "boom"), "status": 500}),
    ("echoed", {"body": f"Authorization: Bearer {KEY} is not allowed here", "status": 400}),
    (
        "connection error quoting the key",
        {"body": requests.ConnectionError(f"connection refused (headers: Authorization: Bearer {KEY})")},
    ),
    ("timeout quoting the key", {"body": requests.ReadTimeout(f"read timed out, Bearer {KEY}")}),
    ("unexpected requests error", {"body": requests.exceptions.InvalidHeader(f"bad header Bearer {KEY}")}),
]


@pytest.mark.parametrize(("label", "failure"), SECRET_FAILURES, ids=[label for label, _ in SECRET_FAILURES])
@pytest.mark.parametrize("call", ["get", "stop", "create", "terminate"])
def test_the_key_never_leaks_into_errors_or_logs(
    label: str,
    failure: dict[str, Any],
    call: str,
    api: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    runpod = RunPodClient(KEY, sleep=lambda _: None, max_retries=1)
    for method, url in (("GET", POD), ("GET", PODS), ("POST", ACTION), ("POST", PODS), ("DELETE", POD)):
        api.add(method, url, **failure)
    actions: dict[str, Callable[[], object]] = {
        "get": lambda: runpod.get_pod("pod1"),
        "stop": lambda: runpod.stop_pod("pod1"),
        "create": lambda: runpod.create_pod(spec()),
        "terminate": lambda: runpod.terminate_pod("pod1"),
    }
    if (label, call) == ("404", "terminate"):
        assert actions[call]() is False  # already gone is success, not an error
    else:
        with pytest.raises(ApiError) as raised:
            actions[call]()
        assert KEY not in error_texts(raised.value)
    assert KEY not in caplog.text
    assert any("/v2/pods" in record.getMessage() for record in caplog.records)


@contextmanager
def closed_port() -> Iterator[int]:
    """A local port that refuses connections (bound, not listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A local port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("server", "reason"), [(closed_port, "connection refused"), (silent_server, "no answer within")]
)
def test_real_transport_failures_do_not_leak_the_key(
    server: Callable[[], Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with server() as port:
        runpod = RunPodClient(
            KEY, f"http://127.0.0.1:{port}", read_timeout_seconds=0.05, max_retries=1, sleep=lambda _: None
        )
        with pytest.raises(ApiUnavailable) as raised:
            runpod.list_pods()
    error = raised.value
    assert reason in str(error)
    assert f"127.0.0.1:{port}" in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None  # no requests exception (holding the headers) is chained
    assert KEY not in error_texts(error)
    assert KEY not in caplog.text
    assert runpod.calls == 2
