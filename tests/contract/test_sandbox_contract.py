"""Every v2 call the emulator supports, good and bad, through real HTTP; every response conforms to the spec.

The spec is the official `../shared/runpod-openapi-v2.json` (tests/support/spec.py); each response body
is validated against the schema the spec gives for that operation and status (following `default`), and
its content type and RateLimit headers are checked too. A clone without ../shared skips with a reason.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from runpod_manager.sandbox.errors import LOW_BALANCE_DETAIL, NO_CAPACITY_DETAIL, RESUME_REFUSED_DETAIL
from runpod_manager.sandbox.server import EmbeddedSandbox
from tests.support.spec import assert_valid, load_spec, request_validator, response_schema, schema_validator

GPU = "NVIDIA GeForce RTX 4090"
RATE_LIMIT = re.compile(r'^"minute";r=\d+;t=\d+, "hour";r=\d+;t=\d+, "day";r=\d+;t=\d+$')
RATE_POLICY = re.compile(r'^"minute";q=\d+;w=60, "hour";q=\d+;w=3600, "day";q=\d+;w=86400$')
SEEN: set[tuple[str, str, int]] = set()


class Client:
    """Calls the emulator and checks each answer against the official spec before a test sees it."""

    def __init__(self, sandbox: EmbeddedSandbox) -> None:
        self.base = sandbox.url
        self.key = sandbox.api_key
        self.session = requests.Session()

    def call(self, method: str, path: str, status: int, *, template: str | None = None, key: str | None = "",
             spec_method: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        token = self.key if key == "" else key
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = self.session.request(method, self.base + path, headers=headers, timeout=10, **kwargs)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text[:300]}"
        check_against_spec(spec_method or method, template or path, response)
        SEEN.add((method, template or path, status))
        return response

    def control(self, path: str, body: dict[str, Any]) -> Any:
        response = self.session.post(f"{self.base}/_sandbox/{path}", json=body, timeout=10,
                                     headers={"Authorization": f"Bearer {self.key}"})
        assert response.status_code == 200, response.text
        return response.json()

    def create(self, **overrides: Any) -> dict[str, Any]:
        body = {"name": "rpm-main-abc123", "image": "vllm/vllm-openai:latest", "gpu": {"id": GPU, "count": 1},
                "ports": ["8000/http", "22/tcp"], "env": {"HF_TOKEN": "hf_x"}, **overrides}
        assert_valid(request_validator("POST", "/v2/pods"), body, "the test's own create body")
        return self.call("POST", "/v2/pods", 201, json=body).json()

    def wait_status(self, pod_id: str, status: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            body = self.call("GET", f"/v2/pods/{pod_id}", 200, template="/v2/pods/{id}").json()
            if body["status"] == status or time.monotonic() > deadline:
                assert body["status"] == status
                return body
            time.sleep(0.02)


def check_against_spec(method: str, template: str, response: requests.Response) -> None:
    documented = response_schema(method, template, response.status_code)
    what = f"{method} {template} → {response.status_code}"
    if documented is None:
        assert response.content == b"", f"{what}: the spec documents no body"
        return
    content_type, schema = documented
    assert response.headers["Content-Type"].split(";")[0] == content_type, what
    if response.status_code != 401:
        # "Returned on responses to authenticated requests, not only on 429s."
        assert RATE_LIMIT.match(response.headers.get("RateLimit", "")), f"{what}: RateLimit header"
        assert RATE_POLICY.match(response.headers.get("RateLimit-Policy", "")), f"{what}: RateLimit-Policy"
    if content_type == "text/event-stream":
        check_log_stream(response.text)
        return
    assert_valid(schema_validator(schema), response.json(), what)


def check_log_stream(text: str) -> None:
    """Events of `id: <date-time>/<seq>` and `data: {ts, source, line}`, as the spec's example."""
    for event in filter(None, text.split("\n\n")):
        id_line, data_line = event.split("\n")
        assert re.fullmatch(r"id: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/\d{12}", id_line), id_line
        data = json.loads(data_line.removeprefix("data: "))
        assert set(data) == {"ts", "source", "line"} and data["source"] in ("system", "container")


@pytest.fixture
def sandbox() -> Iterator[EmbeddedSandbox]:
    load_spec()  # skip early, with the reason, where there is no spec
    with EmbeddedSandbox(provision_seconds=0.05, start_seconds=0.05, model_load_seconds=0.05,
                         token_delay_seconds=0.0) as running:
        yield running


@pytest.fixture
def api(sandbox: EmbeddedSandbox) -> Client:
    return Client(sandbox)


# --- pods ------------------------------------------------------------------------------------------


def test_the_pod_lifecycle_conforms_at_every_step(api: Client) -> None:
    pod = api.create(dataCenterIds=["EU-RO-1"])
    assert pod["status"] == "PROVISIONING" and pod["runtime"] is None and pod["cost"] == 0.69
    pod_path = f"/v2/pods/{pod['id']}"
    running = api.wait_status(pod["id"], "RUNNING")
    assert running["runtime"]["ports"] and running["dataCenterId"] == "EU-RO-1"
    listed = api.call("GET", "/v2/pods", 200).json()
    assert [p["id"] for p in listed["pods"]] == [pod["id"]]
    api.call("GET", "/v2/pods?includeClusterPods=false", 200, template="/v2/pods")
    patched = api.call("PATCH", pod_path, 200, template="/v2/pods/{id}",
                       json={"env": {"HF_TOKEN": "hf_y"}, "args": "--max-model-len 4096"}).json()
    assert patched["env"] == {"HF_TOKEN": "hf_y"} and patched["args"] == "--max-model-len 4096"
    action = "/v2/pods/{id}/action"
    assert api.call("POST", pod_path + "/action", 200, template=action,
                    json={"action": "restart"}).json()["status"] == "RUNNING"
    stopped = api.call("POST", pod_path + "/action", 200, template=action, json={"action": "stop"}).json()
    assert (stopped["status"], stopped["cost"], stopped["runtime"]) == ("EXITED", 0, None)
    api.call("POST", pod_path + "/action", 200, template=action, json={"action": "start"})
    api.wait_status(pod["id"], "RUNNING")
    api.call("POST", pod_path + "/action", 204, template=action, json={"action": "terminate"})
    api.call("GET", pod_path, 404, template="/v2/pods/{id}")
    second = api.create()
    api.call("DELETE", f"/v2/pods/{second['id']}", 204, template="/v2/pods/{id}")
    api.call("DELETE", f"/v2/pods/{second['id']}", 404, template="/v2/pods/{id}")
    assert api.call("GET", "/v2/pods", 200).json() == {"pods": []}


def test_create_answers_201_with_a_location(api: Client) -> None:
    response = api.call("POST", "/v2/pods", 201, json={"name": "rpm-x-1", "image": "img", "gpu": {"id": GPU}})
    assert response.headers["Location"] == f"/v2/pods/{response.json()['id']}"


def test_logs_stream_as_server_sent_events_with_tail_since_and_last_event_id(api: Client) -> None:
    pod = api.create()
    api.wait_status(pod["id"], "RUNNING")
    logs = f"/v2/pods/{pod['id']}/logs"
    template = "/v2/pods/{id}/logs"
    # The model's "loaded" line follows RUNNING by model_load_seconds: wait for it, or on a loaded machine it
    # can land between the two reads below and the Last-Event-ID read would rightly include it.
    deadline = time.monotonic() + 10
    while "loaded; serving" not in api.call("GET", logs + "?tail=5000", 200, template=template).text:
        assert time.monotonic() < deadline, "the emulated model never logged that it loaded"
        time.sleep(0.02)
    every = api.call("GET", logs + "?tail=5000", 200, template=template)
    assert every.headers["Cache-Control"] == "no-cache" and every.headers["X-Accel-Buffering"] == "no"
    events = [e for e in every.text.split("\n\n") if e]
    assert len(events) >= 3 and "Pod rented" in events[0]
    last_id = events[1].split("\n")[0].removeprefix("id: ")
    after = api.call("GET", logs, 200, template=template, headers={"Last-Event-ID": last_id}).text
    assert [e for e in after.split("\n\n") if e] == events[2:]
    container = api.call("GET", logs + "?source=container&tail=5000", 200, template=template).text
    assert '"source": "system"' not in container and '"source": "container"' in container
    assert api.call("GET", logs + "?tail=0", 200, template=template).text == ""
    api.call("GET", logs + "?tail=5001", 422, template=template)
    api.call("GET", logs + "?since=yesterday", 422, template=template)


# --- catalog and billing ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "", "?include=AVAILABILITY&product=POD", "?include=AVAILABILITY&product=POD&count=4&cloud=COMMUNITY",
    "?include=AVAILABILITY&product=POD&countryCodes=US&minCudaVersion=12.6",
])
def test_the_gpu_catalog_conforms(api: Client, query: str) -> None:
    body = api.call("GET", "/v2/catalog/gpus" + query, 200, template="/v2/catalog/gpus").json()
    entries = body["gpus"]
    assert any(entry["id"] == GPU for entry in entries)
    assert ("availability" in json.dumps(entries)) == ("AVAILABILITY" in query)


@pytest.mark.parametrize("query", ["?count=0", "?cloud=PRIVATE", "?include=PRICES", "?countryCodes=usa",
                                   "?minCudaVersion=twelve", "?count=two", "?product=GPU_POD"])
def test_bad_catalog_queries_are_422_naming_the_parameter(api: Client, query: str) -> None:
    body = api.call("GET", "/v2/catalog/gpus" + query, 422, template="/v2/catalog/gpus").json()
    name = query[1:].split("=", maxsplit=1)[0]
    assert any(name in error for error in body["errors"]), body


def test_availability_filters_without_include_are_400_as_runpod_answers(api: Client) -> None:
    for query in ("?product=POD&cloud=SECURE", "?include=AVAILABILITY"):
        detail = api.call("GET", "/v2/catalog/gpus" + query, 400, template="/v2/catalog/gpus").json()["detail"]
        assert "include=AVAILABILITY" in detail


def test_billing_conforms_and_reports_what_the_pod_cost(api: Client, sandbox: EmbeddedSandbox) -> None:
    pod = api.create()
    time.sleep(0.3)
    api.call("POST", f"/v2/pods/{pod['id']}/action", 200, template="/v2/pods/{id}/action",
             json={"action": "stop"})
    billing = "/v2/billing/pods"
    body = api.call("GET", f"{billing}?bucketSize=hour&podId={pod['id']}", 200, template=billing).json()
    spent = sandbox.call(lambda world: world.spend_usd())
    assert body["metadata"]["totals"]["totalAmount"] == pytest.approx(spent) and spent > 0
    for query in ("?bucketSize=day&lastN=3", "?startTime=2026-01-01T00:00:00Z&endTime=2026-01-02T00:00:00Z",
                  "?bucketSize=month", "?bucketSize=year&lastN=2",
                  "?startTime=0001-01-01T00:00:00Z&bucketSize=week"):
        api.call("GET", billing + query, 200, template=billing)
    for query in ("?bucketSize=fortnight", "?lastN=0", "?startTime=soon",
                  "?endTime=9999-12-31T23:59:59Z&bucketSize=year", "?endTime=9999-12-31T23:30:00Z"):
        errors = api.call("GET", billing + query, 422, template=billing).json()["errors"]
        assert errors and all(error.startswith("$.query.") for error in errors), errors


# --- refusals with RunPod's own texts ----------------------------------------------------------------


def test_no_capacity_resume_refused_and_low_balance_use_runpods_texts(api: Client) -> None:
    api.control("faults", {"fail_creates": 1})
    body = api.call("POST", "/v2/pods", 400, json={"name": "rpm-a-1", "image": "img", "gpu": {"id": GPU}}).json()
    assert body["detail"] == NO_CAPACITY_DETAIL
    pod = api.create()
    action = f"/v2/pods/{pod['id']}/action"
    api.call("POST", action, 200, template="/v2/pods/{id}/action", json={"action": "stop"})
    api.control("faults", {"refuse_resumes": 1})
    refused = api.call("POST", action, 400, template="/v2/pods/{id}/action", json={"action": "start"}).json()
    assert refused["detail"] == RESUME_REFUSED_DETAIL
    api.control("account", {"balance_usd": 0})
    broke = api.call("POST", "/v2/pods", 402, json={"name": "rpm-b-1", "image": "img", "gpu": {"id": GPU}}).json()
    assert (broke["detail"], broke["title"], broke["status"]) == (LOW_BALANCE_DETAIL, "Payment Required", 402)


def test_a_transition_the_table_forbids_is_409(api: Client) -> None:
    pod = api.create()
    api.wait_status(pod["id"], "RUNNING")
    body = api.call("POST", f"/v2/pods/{pod['id']}/action", 409, template="/v2/pods/{id}/action",
                    json={"action": "start"}).json()
    assert "allowed actions: stop, restart, terminate" in body["detail"]


# --- auth, rate limits, faults ---------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "wrong-key"])
def test_without_the_key_every_call_is_401_with_a_problem_body(api: Client, key: str | None) -> None:
    headers = {"Authorization": "Bearer " if key == "" else f"Bearer {key}"} if key is not None else {}
    for method, path, template in (("GET", "/v2/pods", "/v2/pods"), ("POST", "/v2/pods", "/v2/pods"),
                                   ("GET", "/v2/pods/abc", "/v2/pods/{id}"),
                                   ("GET", "/v2/catalog/gpus", "/v2/catalog/gpus")):
        body = api.call(method, path, 401, template=template, key=None, headers=headers).json()
        assert body["status"] == 401 and "wrong-key" not in json.dumps(body)


def test_a_pod_key_reaches_only_its_own_pod(api: Client, sandbox: EmbeddedSandbox) -> None:
    mine, other = api.create(), api.create()
    pod_key = sandbox.call(lambda world: world.pods[mine["id"]].pod_key)
    api.call("GET", f"/v2/pods/{mine['id']}", 200, template="/v2/pods/{id}", key=pod_key)
    api.call("GET", f"/v2/pods/{other['id']}", 403, template="/v2/pods/{id}", key=pod_key)
    api.call("GET", "/v2/pods", 403, key=pod_key)
    api.call("POST", "/v2/pods", 403, key=pod_key, json={"name": "x", "image": "y", "gpu": {"id": GPU}})
    # The in-pod guard's way out: the pod removes itself with its own key.
    api.call("DELETE", f"/v2/pods/{mine['id']}", 204, template="/v2/pods/{id}", key=pod_key)
    api.call("GET", f"/v2/pods/{other['id']}", 200, template="/v2/pods/{id}")


def test_rate_limit_fault_answers_429_with_retry_after(api: Client) -> None:
    api.control("faults", {"rate_limit": 2, "retry_after_seconds": 3})
    for _ in range(2):
        response = api.call("GET", "/v2/pods", 429)
        assert response.headers["Retry-After"] == "3"
    api.call("GET", "/v2/pods", 200)


def test_the_quota_is_counted_down_in_the_ratelimit_header_and_then_refused() -> None:
    load_spec()
    with EmbeddedSandbox(quota_per_minute=3) as sandbox:
        api = Client(sandbox)
        remaining = [int(re.match(r'"minute";r=(\d+)', api.call("GET", "/v2/pods", 200).headers["RateLimit"])[1])
                     for _ in range(3)]
        assert remaining == [2, 1, 0]
        refused = api.call("GET", "/v2/pods", 429)
        assert 1 <= int(refused.headers["Retry-After"]) <= 60 and "minute" in refused.json()["detail"]


def test_injected_server_errors_are_problem_bodies(api: Client) -> None:
    api.control("faults", {"error_rate": 1.0})
    statuses = set()
    for _ in range(12):
        response = api.session.get(api.base + "/v2/pods", headers={"Authorization": f"Bearer {api.key}"},
                                   timeout=10)
        check_against_spec("GET", "/v2/pods", response)
        assert response.json()["detail"] == "upstream failure (injected by the sandbox)"
        statuses.add(response.status_code)
        SEEN.add(("GET", "/v2/pods", response.status_code))
    assert statuses <= {500, 502, 503} and len(statuses) > 1


def test_a_create_that_answers_500_still_places_the_pod(api: Client) -> None:
    api.control("faults", {"create_5xx_but_created": 1})
    api.call("POST", "/v2/pods", 500, json={"name": "rpm-main-zz9", "image": "img", "gpu": {"id": GPU}})
    pods = api.call("GET", "/v2/pods", 200).json()["pods"]
    assert [p["name"] for p in pods] == ["rpm-main-zz9"]


# --- bad requests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"name": "x", "image": "i", "gpu": {"id": GPU}, "bogus": 1}, 422, "$: additional properties 'bogus'"),
    ({"name": "x", "image": "i", "gpu": {"id": GPU, "count": "2"}}, 422, "$.gpu.count"),
    ({"name": "x", "image": "i", "gpu": {"id": GPU, "count": 0}}, 422, "$.gpu.count"),
    ({"name": "x", "image": "i", "gpu": {"id": GPU}, "cloud": "PRIVATE"}, 422, "$.cloud"),
    ({"image": "i", "gpu": {"id": GPU}}, 422, "$: missing required property 'name'"),
    ({"name": "x", "image": "i", "gpu": {"id": GPU}, "env": {"A": 1}}, 422, "$.env.A"),
    ({"name": "x", "image": "i", "gpu": {"id": GPU}, "cpu": {"id": "cpu3c", "vcpuCount": 2}}, 400, None),
    ({"name": "x", "image": "i", "gpu": {"id": GPU}, "ports": ["8000/udp"]}, 400, None),
    ({"name": "x", "image": "i", "gpu": {"id": "NVIDIA GeForce GTX 285"}}, 400, None),
    ([1, 2], 422, "$"),
])
def test_bad_create_bodies_get_the_specs_status_and_name_the_field(api: Client, body: Any, status: int,
                                                                   error: str | None) -> None:
    problem = api.call("POST", "/v2/pods", status, json=body).json()
    if error is not None:
        assert any(line.startswith(error) for line in problem["errors"]), problem
    assert api.call("GET", "/v2/pods", 200).json() == {"pods": []}


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"", b"null"])
def test_malformed_json_is_a_problem_not_a_crash(api: Client, raw: bytes) -> None:
    response = api.call("POST", "/v2/pods", 400 if raw not in (b"null",) else 422, data=raw,
                        headers={"Content-Type": "application/json"})
    assert "Traceback" not in response.text


def test_a_huge_body_is_413_and_the_server_keeps_serving(api: Client) -> None:
    response = api.call("POST", "/v2/pods", 413, data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                        headers={"Content-Type": "application/json"})
    assert "larger than" in response.json()["detail"]
    api.call("GET", "/v2/pods", 200)


def test_unknown_ids_actions_and_methods(api: Client) -> None:
    api.call("GET", "/v2/pods/nope", 404, template="/v2/pods/{id}")
    api.call("PATCH", "/v2/pods/nope", 404, template="/v2/pods/{id}", json={"name": "x"})
    api.call("POST", "/v2/pods/nope/action", 404, template="/v2/pods/{id}/action", json={"action": "stop"})
    api.call("GET", "/v2/pods/nope/logs", 404, template="/v2/pods/{id}/logs")
    pod = api.create()
    body = api.call("POST", f"/v2/pods/{pod['id']}/action", 422, template="/v2/pods/{id}/action",
                    json={"action": "explode"}).json()
    assert any("$.action" in error for error in body["errors"])
    api.call("PATCH", f"/v2/pods/{pod['id']}", 422, template="/v2/pods/{id}", json={"gpu": {"id": GPU}})
    # The spec has no PUT here, so the body is checked against the operation's `default` error.
    response = api.call("PUT", f"/v2/pods/{pod['id']}", 405, template="/v2/pods/{id}", spec_method="GET", json={})
    assert "GET" in response.headers["Allow"] and "PATCH" in response.headers["Allow"]


def test_every_supported_operation_was_exercised(request: pytest.FixtureRequest) -> None:
    """Runs last in this module: the calls above covered every operation rpm uses and every status the
    emulator answers, the bad ones included. Guards against a test silently dropping a call."""
    ran = [item for item in request.session.items if item.module is request.module]
    if len(ran) < 40:
        pytest.skip("only meaningful when the whole module runs")
    load_spec()  # a clone without ../shared: its siblings skipped, so nothing was exercised; skip with them
    operations = {(m, p) for m, p, _ in SEEN}
    wanted = {("GET", "/v2/pods"), ("POST", "/v2/pods"), ("GET", "/v2/pods/{id}"), ("PATCH", "/v2/pods/{id}"),
              ("DELETE", "/v2/pods/{id}"), ("POST", "/v2/pods/{id}/action"), ("GET", "/v2/pods/{id}/logs"),
              ("GET", "/v2/catalog/gpus"), ("GET", "/v2/billing/pods")}
    assert wanted <= operations
    statuses = {s for _, _, s in SEEN}
    assert {200, 201, 204, 400, 401, 402, 403, 404, 405, 409, 413, 422, 429, 500} <= statuses
