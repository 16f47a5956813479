"""The proxy tried as an attacker would (issue #20, items 8, 9 and 11), over real HTTP (the proxy on a thread, a
FakeController, a vLLM-like upstream): DNS rebinding, model scopes on every route, X-Forwarded-For, dot-dot
paths and log files planted as symlinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.proxy.controller import PodView
from tests.support.proxy_fakes import MODEL, FakeController, FakePod, FakeUpstream, make_config, running_proxy

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
