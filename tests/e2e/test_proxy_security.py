"""The proxy tried as an attacker would (issue #20, items 8, 9 and 11), over real HTTP (the proxy on a thread, a
FakeController, a vLLM-like upstream): DNS rebinding, model scopes on every route, X-Forwarded-For, dot-dot
paths and log files planted as symlinks."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from runpod_manager.config import PodConfig
from runpod_manager.keys import KeyStore
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.proxy.controller import PodView
from tests.support.proxy_fakes import (
    MODEL,
    FakeController,
    FakePod,
    FakeUpstream,
    free_port,
    make_config,
    running_proxy,
    wait_until,
)

pytestmark = pytest.mark.e2e

OTHER = "org/other-7b"
READ_TIMEOUT = 5
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def error_of(response: requests.Response) -> dict[str, Any]:
    document = response.json()
    assert set(document) == {"error"} and set(document["error"]) == {"message", "type", "param", "code"}, document
    return dict(document["error"])


def sleeping_pod(upstream: FakeUpstream) -> FakeController:
    return FakeController(pods={"default": FakePod(None, wake_target=upstream.target(),
                                                   view=PodView(status="EXITED"))})


# ------------------------------------------------------------------------------------ 8. DNS rebinding


def test_a_loopback_proxy_without_keys_answers_only_hosts_that_name_it(upstream: FakeUpstream, paths: Paths) -> None:
    controller = sleeping_pod(upstream)
    with running_proxy(make_config(), controller, paths) as proxy:
        port = proxy.ready.port if proxy.ready else 0
        # What a rebinding page on evil.example sends once its name resolves to 127.0.0.1.
        for path in ("/v1/chat/completions", "/pods/default/v1/chat/completions"):
            refused = requests.post(f"{proxy.url}{path}", json={"model": MODEL, **CHAT}, timeout=READ_TIMEOUT,
                                    headers={"Host": f"evil.example:{port}", "Sec-Fetch-Site": "same-origin"})
            assert refused.status_code == 421, refused.text
            error = error_of(refused)
            assert error["code"] == "host_not_allowed" and "[proxy] allowed_hosts" in error["message"]
            assert refused.headers["x-should-retry"] == "false"
        assert requests.get(f"{proxy.url}/health", headers={"Host": "evil.example"},
                            timeout=READ_TIMEOUT).status_code == 421
        assert controller.pods["default"].wake_calls == 0 and not upstream.requests
        # Its own names, with its port, as the README's editor configs and rpm's own commands use them.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
            assert requests.get(f"{proxy.url}/health", headers={"Host": host},
                                timeout=READ_TIMEOUT).status_code == 200, host
        # The right name on another port is another server's page.
        assert requests.get(f"{proxy.url}/health", headers={"Host": "localhost:3000"},
                            timeout=READ_TIMEOUT).status_code == 421


def test_allowed_hosts_adds_names_and_a_bind_beyond_loopback_with_keys_takes_any_host(
        upstream: FakeUpstream, paths: Paths) -> None:
    config = make_config(allowed_hosts=("gpu.example.com", "lan-box:8443"))
    with running_proxy(config, sleeping_pod(upstream), paths) as proxy:
        def status(host: str) -> int:
            return requests.get(f"{proxy.url}/health", headers={"Host": host}, timeout=READ_TIMEOUT).status_code

        assert status("gpu.example.com") == 200 and status("GPU.example.com:443") == 200
        assert status("lan-box:8443") == 200 and status("lan-box:8080") == 421
        assert status("evil.example") == 421
    # Beyond loopback the keys protect the proxy (a rebinding page has none), so Host is not checked there.
    keyed = make_config(host="0.0.0.0", api_keys=("k-3f1e",))  # noqa: S104 - the test binds all interfaces
    with running_proxy(keyed, sleeping_pod(upstream), paths) as proxy:
        answered = requests.get(f"{proxy.url}/health", headers={"Host": "whatever.example"}, timeout=READ_TIMEOUT)
        assert answered.status_code == 200


def test_a_listen_port_answers_only_hosts_that_name_it_with_its_own_port(upstream: FakeUpstream, paths: Paths
                                                                          ) -> None:
    listen_port = free_port()
    service = PodConfig(name="svc", kind="http", image="any/service", port=8188, listen_port=listen_port)
    config = make_config(pods=(service, PodConfig(name="default", model=MODEL)))
    controller = FakeController(pods={"svc": FakePod(upstream.target("pod-svc")),
                                      "default": FakePod(upstream.target())})
    with running_proxy(config, controller, paths) as proxy:
        port = proxy.ready.port if proxy.ready else 0
        url = f"http://127.0.0.1:{listen_port}/v1/models"
        assert requests.get(url, timeout=READ_TIMEOUT).status_code == 401  # the service answered (it wants a key)
        for host in ("evil.example", f"evil.example:{listen_port}", f"127.0.0.1:{port}"):
            refused = requests.get(url, headers={"Host": host}, timeout=READ_TIMEOUT)
            assert refused.status_code == 421 and error_of(refused)["code"] == "host_not_allowed", host
    assert len(upstream.requests) == 1


# ------------------------------------------------------------------------------ 9. model scopes everywhere


def two_pods(upstream: FakeUpstream) -> tuple[Any, FakeController]:
    """`default` runs (serving MODEL, alias `fast`); `other` sleeps and must never be woken here."""
    config = make_config(pods=(PodConfig(name="default", model=MODEL, aliases=("fast",)),
                               PodConfig(name="other", model=OTHER)))
    controller = FakeController(pods={
        "default": FakePod(upstream.target()),
        "other": FakePod(None, wake_target=upstream.target("pod-other"), view=PodView(status="EXITED"))})
    return config, controller


def test_a_model_scoped_key_cannot_reach_another_model_through_its_pods_path_or_a_job(
        upstream: FakeUpstream, paths: Paths) -> None:
    store = KeyStore(paths.keys_file)
    fast_only = store.create("fast-only", models=("fast",), now=0).token
    model_only = store.create("model-only", models=(MODEL,), now=0).token
    keyed = {"Authorization": f"Bearer {fast_only}"}
    config, controller = two_pods(upstream)
    with running_proxy(config, controller, paths) as proxy:
        def post(path: str, token: str, model: str, **headers: str) -> requests.Response:
            return requests.post(f"{proxy.url}{path}", json={"model": model, **CHAT}, timeout=READ_TIMEOUT,
                                 headers={"Authorization": f"Bearer {token}", **headers})

        for extra in ({}, {"Prefer": "respond-async"}):
            denied = post("/pods/other/v1/chat/completions", fast_only, OTHER, **extra)
            assert denied.status_code == 403, denied.text
            assert error_of(denied)["code"] == "model_not_allowed"
        # A request that names no model it may use (a GET, a WebSocket) cannot go to a pod serving other models.
        denied = requests.get(f"{proxy.url}/pods/other/v1/models", headers=keyed, timeout=READ_TIMEOUT)
        assert denied.status_code == 403 and error_of(denied)["code"] == "model_not_allowed"
        assert controller.pods["other"].wake_calls == 0
        assert not [r for r in upstream.requests if OTHER.encode() in r.body]

        # An alias and its model are one model: either scope reaches the pod by either name, on every route.
        for token in (fast_only, model_only):
            for model in (MODEL, "fast"):
                assert post("/v1/chat/completions", token, model).status_code == 200, (token, model)
            assert post("/pods/default/v1/chat/completions", token, MODEL).status_code == 200
            reply = requests.get(f"{proxy.url}/pods/default/v1/models", headers={"Authorization": f"Bearer {token}"},
                                 timeout=READ_TIMEOUT)
            assert reply.status_code == 200  # every model of the pod is the key's: passed through as it is
            listed = requests.get(f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {token}"},
                                  timeout=READ_TIMEOUT).json()
            assert sorted(entry["id"] for entry in listed["data"]) == sorted([MODEL, "fast"])
        job = post("/pods/default/v1/chat/completions", fast_only, MODEL, Prefer="respond-async")
        assert job.status_code == 202, job.text


# ------------------------------------------------------------- 11. forwarded headers, paths, log files


def forwarded_seen(upstream: FakeUpstream) -> list[str | None]:
    return [next((value for name, value in r.headers.items() if name.lower() == "x-forwarded-for"), None)
            for r in upstream.requests]


@pytest.mark.parametrize(("trust", "expected"), [(False, "127.0.0.1"), (True, "6.6.6.6, 127.0.0.1")])
def test_x_forwarded_for_is_the_peer_unless_a_reverse_proxy_is_trusted(
        upstream: FakeUpstream, paths: Paths, trust: bool, expected: str) -> None:
    controller = FakeController(pods={"default": FakePod(upstream.target())})
    with running_proxy(make_config(trust_forwarded=trust), controller, paths) as proxy:
        spoofed = {"X-Forwarded-For": "6.6.6.6"}
        for path in ("/v1/chat/completions", "/pods/default/v1/chat/completions"):
            answer = requests.post(f"{proxy.url}{path}", json={"model": MODEL, **CHAT}, headers=spoofed,
                                   timeout=READ_TIMEOUT)
            assert answer.status_code == 200, answer.text
        plain = requests.post(f"{proxy.url}/v1/chat/completions", json={"model": MODEL, **CHAT}, timeout=READ_TIMEOUT)
        assert plain.status_code == 200
        # A job is replayed by the proxy itself: it carries what its submission was given, not the proxy's own.
        job = requests.post(f"{proxy.url}/v1/chat/completions", json={"model": MODEL, **CHAT}, timeout=READ_TIMEOUT,
                            headers={**spoofed, "Prefer": "respond-async"})
        assert job.status_code == 202, job.text
        assert wait_until(lambda: requests.get(f"{proxy.url}{job.headers['Location']}",
                                               timeout=READ_TIMEOUT).json()["state"] == "done")
    assert forwarded_seen(upstream) == [expected, expected, "127.0.0.1", expected]


DOT_DOT_PATHS = ("/pods/default/v1/../../../etc/passwd", "/pods/default/v1/a/../models",
                 "/pods/default/v1/%2e%2e/%2E%2E/admin", "/pods/default/v1/..%2f..%2fadmin",
                 "/pods/default/v1/%2e%2e%5cadmin", "/pods/default/v1/.%2e/models?x=1")


def test_dot_dot_segments_are_never_forwarded_to_a_pod(upstream: FakeUpstream, paths: Paths) -> None:
    controller = FakeController(pods={"default": FakePod(upstream.target())})
    with running_proxy(make_config(), controller, paths) as proxy:
        port = proxy.ready.port if proxy.ready else 0
        for path in DOT_DOT_PATHS:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT)
            connection.request("GET", path)  # sent as written: requests would normalise it first
            answer = connection.getresponse()
            body = answer.read()
            connection.close()
            assert answer.status == 400, (path, answer.status, body)
            assert json.loads(body)["error"]["code"] == "invalid_path"
        # A dot inside a name is not a segment of its own.
        assert requests.get(f"{proxy.url}/pods/default/v1/models.json..x", timeout=READ_TIMEOUT).status_code != 400
    assert [r.path_qs for r in upstream.requests] == ["/v1/models.json..x"]


def test_a_job_with_a_dot_dot_path_is_refused_at_submit(upstream: FakeUpstream, paths: Paths) -> None:
    # Its replay would be refused (400) before reaching the pod; the job must not be accepted (202) at all.
    controller = FakeController(pods={"default": FakePod(upstream.target())})
    with running_proxy(make_config(), controller, paths) as proxy:
        port = proxy.ready.port if proxy.ready else 0
        for path in DOT_DOT_PATHS:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT)
            connection.request("POST", path, body=b"{}", headers={"Prefer": "respond-async",
                                                                  "Content-Type": "application/json"})
            answer = connection.getresponse()
            body = answer.read()
            connection.close()
            assert answer.status == 400, (path, answer.status, body)
            assert json.loads(body)["error"]["code"] == "invalid_path"
    assert upstream.requests == []
