"""The management API (`/rpm/v1`, issue #14) end to end: the emulator and `rpm proxy` as subprocesses, keys
made with `rpm keys create`, every call through a client checked against /rpm/v1/openapi.json.

One emulator and one proxy serve the whole module (two pods: `coder`, rpm's own, and `legacy`, adopted);
the tests that start pods end them again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from openapi_spec_validator import validate

from runpod_manager.errors import LimitRefused, LockBusy
from runpod_manager.keys import usage_day
from runpod_manager.paths import resolve_paths
from runpod_manager.proxy.app import build_app
from runpod_manager.proxy.manage import ROUTES, openapi_document
from tests.support.openapi_client import CheckedClient
from tests.support.proxy_fakes import FakeController, free_port, make_config
from tests.support.rpm import Rpm, fast_config, health_answers, run_sandbox, stop_process_group, wait_until

pytestmark = pytest.mark.e2e


def _config(port: int, adopted_pod_id: str) -> str:
    return fast_config(proxy_port=port, pods={
        "coder": {"model": "org/coder-7b", "gpu_types": ["NVIDIA GeForce RTX 4090"]},
        "legacy": {"model": "org/legacy-7b", "pod_id": adopted_pod_id}})


@dataclass
class Stack:
    rpm: Rpm
    url: str
    admin: str
    dev: str
    adopted_pod_id: str
    proxy_log: Path
    client: CheckedClient

    def as_key(self, token: str | None) -> CheckedClient:
        return self.client.as_key(token)

    def sandbox_status(self, pod_id: str) -> str:
        return next((str(p["status"]) for p in self.rpm.sandbox.pods() if p["id"] == pod_id), "gone")

    def live_coder_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.rpm.sandbox.pods() if str(p["name"]).startswith("rpm-coder-")
                and p["status"] != "TERMINATED"]


def _create_key(rpm: Rpm, *args: str) -> str:
    created = rpm.json("keys", "create", *args)
    return str(created["data"]["secret"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("manage")
    home = root / "rpm-home"
    home.mkdir()
    with run_sandbox() as sandbox:
        rpm = Rpm(home=home, sandbox=sandbox, config_path=root / "pod_config.toml")
        body = {"name": "team-console-pod", "image": "vllm/vllm-openai:latest",
                "args": "--model org/legacy-7b --port 8000",
                "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "ports": ["8000/http"]}
        created = sandbox.api("POST", "/v2/pods", json=body)
        assert created.status_code == 201, created.text
        adopted = str(created.json()["id"])
        port = free_port()
        rpm.config_path.write_text(_config(port, adopted), encoding="utf-8")
        admin = _create_key(rpm, "ops", "--role", "admin")
        dev = _create_key(rpm, "dev", "--pods", "coder", "--daily-budget-usd", "2")
        proxy_log = root / "proxy.log"
        with proxy_log.open("w") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "runpod_manager", "proxy", "-v"], stdout=log_file,
                                       stderr=subprocess.STDOUT, env=rpm.env(), cwd=home, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            assert wait_until(lambda: health_answers(url), 20), proxy_log.read_text()
            client = CheckedClient(url, requests.get(f"{url}/rpm/v1/openapi.json", timeout=10).json())
            yield Stack(rpm, url, admin, dev, adopted, proxy_log, client)
        finally:
            stop_process_group(process, timeout_seconds=20)
            rpm.run("shutdown", "--all", timeout=30)


def _error(response: requests.Response) -> dict[str, Any]:
    document = response.json()
    assert set(document) == {"error"}, document
    return dict(document["error"])


def _chat(stack: Stack, token: str) -> requests.Response:
    body = {"model": "org/coder-7b", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    return requests.post(f"{stack.url}/v1/chat/completions", timeout=30, json=body,
                         headers={"Authorization": f"Bearer {token}"})


def _api_calls(stack: Stack) -> list[dict[str, Any]]:
    return [e for e in stack.rpm.events() if e["event"] == "api_call"]


# ------------------------------------------------------------------------------------------ the document


def test_the_document_is_valid_openapi_3_1_and_names_every_route_the_app_registers(isolated_home: Path) -> None:
    document = openapi_document()
    validate(document)  # openapi-spec-validator: raises on an invalid document
    assert document["openapi"].startswith("3.1")
    app = build_app(make_config(), FakeController(), paths=resolve_paths())
    registered = {(route.method, route.resource.canonical) for route in app.router.routes()
                  if route.resource is not None and route.resource.canonical.startswith("/rpm/v1")
                  and route.method != "HEAD"}
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert registered == documented
    jobs = {("GET", "/rpm/v1/jobs/{id}"), ("DELETE", "/rpm/v1/jobs/{id}"), ("GET", "/rpm/v1/jobs/{id}/result")}
    assert documented == {(method, path) for method, path, _handler in ROUTES} | jobs  # jobs.py registers those
    for item in document["paths"].values():  # every error answer has the OpenAI shape's schema
        for operation in item.values():
            for code, answer in operation["responses"].items():
                if code.startswith(("4", "5")):
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_the_document_and_its_docs_page_need_no_key_and_load_nothing_from_elsewhere(stack: Stack) -> None:
    assert stack.as_key(None).get("/rpm/v1/openapi.json").json() == openapi_document()
    page = stack.as_key(None).get("/rpm/v1/docs")
    assert page.headers["Content-Type"].startswith("text/html")
    for path, item in openapi_document()["paths"].items():
        for method in item:
            assert f"{method.upper()} {path}" in page.text
    assert "<script" not in page.text and "http://" not in page.text and "https://" not in page.text


# ------------------------------------------------------------------------------------------ who may


def test_without_a_key_every_management_route_is_401(stack: Stack) -> None:
    anonymous = stack.as_key(None)
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if operation.get("security") == []:
                continue
            response = anonymous.call(method.upper(), path.replace("{name}", "coder"))
            assert response.status_code == 401, (method, path)
            assert _error(response)["code"] == "invalid_api_key"
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert stack.live_coder_pods() == []


def test_a_user_key_reads_its_own_pods_and_usage_and_is_refused_everything_else(stack: Stack) -> None:
    dev = stack.as_key(stack.dev)
    calls_before = stack.rpm.sandbox.calls()
    assert [pod["name"] for pod in dev.get("/rpm/v1/pods").json()["pods"]] == ["coder"]
    assert dev.get("/rpm/v1/pods/coder").json()["name"] == "coder"
    refused = dev.get("/rpm/v1/pods/legacy")
    assert refused.status_code == 403 and _error(refused)["code"] == "pod_not_allowed"
    usage = dev.get("/rpm/v1/usage").json()
    assert usage["key"]["name"] == "dev" and usage["key"]["role"] == "user" and usage["key"]["pods"] == ["coder"]
    assert usage["key"]["limits"]["daily_budget_usd"] == 2
    for path in ("/rpm/v1/pods/coder/start", "/rpm/v1/pods/coder/stop", "/rpm/v1/pods/coder/terminate"):
        response = dev.post(path)
        assert response.status_code == 403, path
        error = _error(response)
        assert error["code"] == "admin_required" and error["type"] == "permission_error"
        assert "'dev' is a user key" in error["message"] and "admin key" in error["message"]
    for path in ("/rpm/v1/keys", "/rpm/v1/events"):
        assert dev.get(path).status_code == 403, path
    # Refused calls reached nothing: no pod, no lease, no RunPod call that changes anything.
    assert stack.live_coder_pods() == []
    assert stack.rpm.record("coder").get("lease") is None
    changing = ("create", "start", "stop", "terminate")
    after = stack.rpm.sandbox.calls()
    assert {k: v for k, v in after.items() if any(word in k for word in changing)} == {
        k: v for k, v in calls_before.items() if any(word in k for word in changing)}
    refusals = [e for e in _api_calls(stack) if e["key"] == "dev" and e["status"] == 403]
    assert {e["action"] for e in refusals} >= {"start a pod", "stop a pod", "terminate a pod", "list keys"}


def test_web_pages_may_not_start_pods_whatever_their_origin(stack: Stack) -> None:
    admin = stack.as_key(stack.admin)
    for headers in ({"Origin": "https://evil.example"}, {"Origin": f"{stack.url}"},
                    {"Sec-Fetch-Site": "cross-site"}):
        response = admin.post("/rpm/v1/pods/coder/start", headers=headers)
        assert response.status_code == 403, headers
        assert _error(response)["code"] == "origin_not_allowed"
    assert stack.live_coder_pods() == [] and stack.rpm.record("coder").get("lease") is None


# ------------------------------------------------------------------------------------------ admin


def test_a_start_runpod_refuses_leaves_no_lease_and_nothing_billing(stack: Stack) -> None:
    stack.rpm.sandbox.control("faults", {"fail_creates": 5})
    try:
        refused = stack.as_key(stack.admin).post("/rpm/v1/pods/coder/start")
    finally:
        stack.rpm.sandbox.control("faults", {"fail_creates": 0})
    assert refused.status_code == 502, refused.text
    error = _error(refused)
    assert error["code"] == "runpod_error" and "coder" in error["message"]
    assert "lease is closed" in error["message"]  # control.start's own account of what is left
    assert stack.rpm.record("coder").get("lease") is None and stack.live_coder_pods() == []
    assert stack.as_key(stack.admin).get("/rpm/v1/pods/coder").json()["waking"] is False



def test_an_admin_starts_stops_resumes_and_terminates_a_pod_and_the_log_names_the_key(stack: Stack) -> None:
    admin = stack.as_key(stack.admin)
    started = admin.post("/rpm/v1/pods/coder/start")
    assert started.status_code == 202, started.text
    entry = started.json()["pod"]
    assert entry["lease_open"] is True and entry["woken_by"] == "ops"
    assert wait_until(lambda: admin.get("/rpm/v1/pods/coder").json()["ready"], 30)
    pod = admin.get("/rpm/v1/pods/coder").json()
    assert pod["status"] == "RUNNING" and pod["deadline"] is not None and pod["woken_by"] == "ops"
    [live] = stack.live_coder_pods()
    assert live["id"] == pod["pod_id"] and live["status"] == "RUNNING"
    assert stack.rpm.record("coder")["lease"]["opened_by"] == "api"
    # The dashboard says who woke it.
    shown = requests.get(f"{stack.url}/dashboard", headers={"Authorization": f"Bearer {stack.admin}"}, timeout=10)
    assert {pod["name"]: pod["woken_by"] for pod in shown.json()["pods"]}["coder"] == "ops"
    page = requests.get(f"{stack.url}/dashboard", timeout=10,
                        headers={"Authorization": f"Bearer {stack.admin}", "Accept": "text/html"}).text
    assert " by ops</p>" in page and 'class="woken"' in page
    # The pod serves the dev key's requests at once: the start put it in the routing.
    chat = _chat(stack, stack.dev)
    assert chat.status_code == 200, chat.text

    stopped = admin.post("/rpm/v1/pods/coder/stop")
    assert stopped.status_code == 200 and stopped.json()["action"] == "stop"
    assert stopped.json()["pod"]["lease_open"] is False and stopped.json()["pod"]["ready"] is False
    assert stack.sandbox_status(live["id"]) == "EXITED"

    again = admin.post("/rpm/v1/pods/coder/start")
    assert again.status_code == 202
    assert wait_until(lambda: admin.get("/rpm/v1/pods/coder").json()["ready"], 30)
    assert [p["id"] for p in stack.live_coder_pods()] == [live["id"]]  # resumed, not created again

    ended = admin.post("/rpm/v1/pods/coder/terminate")
    assert ended.status_code == 200 and ended.json()["pod"]["lease_open"] is False
    assert stack.sandbox_status(live["id"]) in ("TERMINATED", "gone") and stack.live_coder_pods() == []

    calls = [(e["action"], e["pod"], e["status"]) for e in _api_calls(stack) if e["key"] == "ops" and "pod" in e
             and e["action"] != "read a pod"]
    assert calls[-4:] == [("start a pod", "coder", 202), ("stop a pod", "coder", 200),
                          ("start a pod", "coder", 202), ("terminate a pod", "coder", 200)]
    assert all(e["role"] == "admin" for e in _api_calls(stack) if e["key"] == "ops")


def test_a_request_that_wakes_a_pod_is_recorded_with_its_key(stack: Stack) -> None:
    chat = _chat(stack, stack.dev)
    assert chat.status_code == 200, chat.text
    admin = stack.as_key(stack.admin)
    pod = admin.get("/rpm/v1/pods/coder").json()
    assert pod["woken_by"] == "dev" and pod["woken_at"] is not None and pod["ready"] is True
    assert stack.rpm.record("coder")["lease"]["opened_by"] == "wake"
    wakes = [(e["config"], e.get("key")) for e in stack.rpm.events() if e["event"] == "wake_started"]
    assert wakes[-1] == ("coder", "dev") and ("coder", "ops") in wakes  # this wake, and the admin's start
    assert admin.post("/rpm/v1/pods/coder/terminate").status_code == 200
    assert stack.live_coder_pods() == []


def test_an_adopted_pod_is_never_terminated_409_and_stays_as_it_was(stack: Stack) -> None:
    admin = stack.as_key(stack.admin)
    before = stack.sandbox_status(stack.adopted_pod_id)
    refused = admin.post("/rpm/v1/pods/legacy/terminate")
    assert refused.status_code == 409
    error = _error(refused)
    assert error["code"] == "pod_not_owned" and "adopted" in error["message"]
    assert stack.adopted_pod_id in error["message"] and "never terminates" in error["message"]
    assert stack.sandbox_status(stack.adopted_pod_id) == before
    stopped = admin.post("/rpm/v1/pods/legacy/stop")  # stopping it is allowed
    assert stopped.status_code == 200
    assert stack.sandbox_status(stack.adopted_pod_id) == "EXITED"
    missing = admin.post("/rpm/v1/pods/nosuch/start")
    assert missing.status_code == 404 and _error(missing)["code"] == "pod_not_found"


def test_an_admin_lists_keys_and_usage_without_any_secret_or_hash(stack: Stack) -> None:
    paths = resolve_paths({"RPM_HOME": str(stack.rpm.home)})
    admin, dev = stack.as_key(stack.admin), stack.as_key(stack.dev)
    before = dev.get("/rpm/v1/usage").json()["usage_today"]
    assert _chat(stack, stack.dev).status_code == 200  # wakes coder (terminated by the test before)
    own = dev.get("/rpm/v1/usage").json()
    assert own["day"] == usage_day(time.time(), ZoneInfo("UTC")) and own["key"]["name"] == "dev"
    assert own["usage_today"]["requests"] == before["requests"] + 1
    assert own["usage_today"]["tokens"] > before["tokens"]
    listing = admin.get("/rpm/v1/keys")
    rows = {row["name"]: row for row in listing.json()["keys"]}
    assert set(rows) == {"ops", "dev"} and rows["ops"]["role"] == "admin" and rows["dev"]["status"] == "active"
    assert rows["dev"]["usage_today"] == own["usage_today"] and rows["dev"]["last_used_at"] is not None
    assert rows["dev"]["limits"]["daily_budget_usd"] == 2 and rows["ops"]["usage_today"]["requests"] == 0
    store = json.loads(paths.keys_file.read_text())
    for secret in (stack.admin, stack.dev, store["secret"], *(key["digest"] for key in store["keys"])):
        assert secret not in listing.text
    assert admin.post("/rpm/v1/pods/coder/terminate").status_code == 200

    dashboard = requests.get(f"{stack.url}/dashboard", headers={"Authorization": f"Bearer {stack.admin}"},
                             timeout=10).json()
    shown = {row["name"]: row["requests"] for row in dashboard["keys"]["rows"]}
    assert shown == {"ops": 0, "dev": rows["dev"]["usage_today"]["requests"]}
    page = requests.get(f"{stack.url}/dashboard", timeout=10,
                        headers={"Authorization": f"Bearer {stack.admin}", "Accept": "text/html"}).text
    assert "Keys today" in page and 'data-key="dev"' in page
    as_dev = requests.get(f"{stack.url}/dashboard", headers={"Authorization": f"Bearer {stack.dev}"}, timeout=10)
    assert [row["name"] for row in as_dev.json()["keys"]["rows"]] == ["dev"]  # a user sees its own use only


def test_the_event_log_pages_forward_and_refuses_bad_parameters(stack: Stack) -> None:
    admin = stack.as_key(stack.admin)
    admin.get("/rpm/v1/pods")
    last_two = admin.get("/rpm/v1/events", params={"limit": "2"}).json()
    assert len(last_two["events"]) == 2 and last_two["more"] is True
    known = admin.get("/rpm/v1/events", params={"limit": "1000"}).json()["events"]
    assert len(known) >= 5
    # Pages forward from a time: the two events after it, then on from the last one (the calls that read the
    # pages are logged too, after the events already known).
    page = admin.get("/rpm/v1/events", params={"since": known[-5]["time"], "limit": "2"}).json()
    assert page["events"] == known[-4:-2] and page["more"] is True
    assert page["next_since"] == known[-3]["time"]
    rest = admin.get("/rpm/v1/events", params={"since": page["next_since"], "limit": "2"}).json()
    assert rest["events"] == known[-2:]
    for params in ({"limit": "0"}, {"limit": "lots"}, {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}):
        refused = admin.get("/rpm/v1/events", params=params)
        assert refused.status_code == 400 and _error(refused)["code"] == "invalid_parameter", params
    reads = [e for e in _api_calls(stack) if e["action"] == "read the event log" and e["key"] == "ops"]
    assert {e["status"] for e in reads} == {200, 400}


def test_no_secret_reaches_any_response_log_or_file_but_the_hashed_store(stack: Stack) -> None:
    admin = stack.as_key(stack.admin)
    bodies = [admin.get("/rpm/v1/events", params={"limit": "1000"}).text, admin.get("/rpm/v1/pods").text,
              admin.get("/rpm/v1/keys").text, stack.as_key(stack.dev).get("/rpm/v1/usage").text]
    secrets = (stack.admin, stack.dev, stack.rpm.sandbox.api_key)
    for secret in secrets:
        assert all(secret not in body for body in bodies)
        assert secret not in stack.proxy_log.read_text()
        for path in stack.rpm.home.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    # The calls are logged by key name, the key's secret nowhere.
    assert {"ops", "dev"} <= {e["key"] for e in _api_calls(stack)}


# ------------------------------------------------------------------------------------------ no keys at all


def test_a_proxy_without_keys_lets_its_machine_manage_but_no_web_page(isolated_home: Path) -> None:
    from tests.support.proxy_fakes import FakePod, FakeUpstream, running_proxy

    upstream = FakeUpstream().start()
    try:
        controller = FakeController(pods={"default": FakePod(None, wake_target=upstream.target())})
        paths = resolve_paths()
        with running_proxy(make_config(), controller, paths) as proxy:
            client = CheckedClient(proxy.url, openapi_document())
            assert [pod["name"] for pod in client.get("/rpm/v1/pods").json()["pods"]] == ["default"]
            page = client.post("/rpm/v1/pods/default/start", headers={"Origin": "http://localhost:3000"})
            assert page.status_code == 403 and controller.manage_calls == []
            started = client.post("/rpm/v1/pods/default/start")
            assert started.status_code == 200 and controller.manage_calls == [("start", "default", "api")]
            assert client.post("/rpm/v1/pods/default/stop").status_code == 200
            controller.manage_error = LimitRefused("the daily spend cap of $1.00 is reached")
            refused = client.post("/rpm/v1/pods/default/start")
            assert refused.status_code == 409 and _error(refused)["code"] == "limit_refused"
            assert "spend cap" in _error(refused)["message"] and controller.pods["default"].wake_calls == 0
            controller.manage_error = LockBusy("the state is locked by another rpm process")
            busy = client.post("/rpm/v1/pods/default/stop")
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
            controller.manage_error = None
            no_usage = client.get("/rpm/v1/usage")
            assert no_usage.status_code == 404 and _error(no_usage)["code"] == "no_keys"
        events = [json.loads(line) for line in paths.event_log.read_text().splitlines()]
        assert [(e["action"], e["key"], e["status"]) for e in events if e["event"] == "api_call" and e.get("pod")] == [
            ("start a pod", "(none)", 200), ("stop a pod", "(none)", 200), ("start a pod", "(none)", 409),
            ("stop a pod", "(none)", 503)]
    finally:
        upstream.stop()
