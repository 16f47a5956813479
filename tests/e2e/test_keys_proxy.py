"""Team keys in the proxy, over real HTTP (the proxy on a thread, a FakeController, a vLLM-like upstream):
a key resolves to its principal, scopes refuse with 403 before any wake, a revoked key is refused within a
second without a restart, and `[proxy] api_keys` keep working next to the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from runpod_manager.config import PodConfig
from runpod_manager.keys import KeyLimits, KeyStore
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.proxy.controller import PodView
from tests.support.proxy_fakes import (
    MODEL,
    FakeController,
    FakePod,
    FakeUpstream,
    make_config,
    running_proxy,
    wait_until,
)

pytestmark = pytest.mark.e2e

OTHER = "org/other-7b"
READ_TIMEOUT = 5
CONFIG_KEY = "config-key-secret-5be1"


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def two_pods(upstream: FakeUpstream) -> tuple[Any, FakeController]:
    """`default` runs (serving MODEL, alias `fast`); `other` sleeps and must never be woken here."""
    config = make_config(pods=(PodConfig(name="default", model=MODEL, aliases=("fast",)),
                               PodConfig(name="other", model=OTHER)), api_keys=(CONFIG_KEY,))
    controller = FakeController(pods={
        "default": FakePod(upstream.target()),
        "other": FakePod(None, wake_target=upstream.target("pod-other"), view=PodView(status="EXITED"))})
    return config, controller


def ask(url: str, token: str | None, model: str, **extra: Any) -> requests.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return requests.post(f"{url}/v1/chat/completions", headers=headers, timeout=READ_TIMEOUT,
                         json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def error_of(response: requests.Response) -> dict[str, Any]:
    document = response.json()
    assert set(document) == {"error"} and set(document["error"]) == {"message", "type", "param", "code"}, document
    return dict(document["error"])


def test_scoped_keys_reach_only_their_pods_and_models_and_a_refusal_wakes_nothing(
        upstream: FakeUpstream, paths: Paths) -> None:
    store = KeyStore(paths.keys_file)
    everything = store.create("admin", role="admin", now=0).token
    default_only = store.create("dev", pods=("default",), now=0).token
    other_only = store.create("script", pods=("other",), now=0).token
    alias_only = store.create("fast-only", models=("fast",), now=0).token
    config, controller = two_pods(upstream)
    with running_proxy(config, controller, paths) as proxy:
        assert ask(proxy.url, default_only, MODEL).status_code == 200
        assert ask(proxy.url, everything, MODEL).status_code == 200
        assert ask(proxy.url, alias_only, "fast").status_code == 200

        denied = ask(proxy.url, other_only, MODEL, stream=True)
        assert denied.status_code == 403
        error = error_of(denied)
        assert error["code"] == "pod_not_allowed" and error["type"] == "permission_error"
        assert "'script' may not use pod 'default'; it may use pods other" in error["message"]
        denied = ask(proxy.url, default_only, OTHER)
        assert denied.status_code == 403 and "it may use pods default" in error_of(denied)["message"]
        denied = ask(proxy.url, alias_only, MODEL)
        assert denied.status_code == 403
        assert error_of(denied)["code"] == "model_not_allowed" and "it may use models fast" in error_of(
            denied)["message"]
        # No wake for any refused request, and none reached a pod.
        assert controller.pods["other"].wake_calls == 0 and controller.pods["default"].wake_calls == 0
        assert len([r for r in upstream.requests if r.path_qs == "/v1/chat/completions"]) == 3

        # The config's keys are unscoped users; unknown and missing keys are 401.
        assert ask(proxy.url, CONFIG_KEY, MODEL).status_code == 200
        for token in (None, "rpm_not-a-key", default_only + "x"):
            refused = ask(proxy.url, token, MODEL)
            assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
        assert requests.get(f"{proxy.url}/health", timeout=READ_TIMEOUT).status_code == 200


def test_a_revoked_key_is_refused_within_a_second_without_a_restart(upstream: FakeUpstream, paths: Paths) -> None:
    store = KeyStore(paths.keys_file)
    token = store.create("leaving", limits=KeyLimits(), now=0).token
    stays = store.create("staying", now=0).token
    config, controller = two_pods(upstream)
    with running_proxy(config, controller, paths) as proxy:
        assert ask(proxy.url, token, MODEL).status_code == 200
        store.revoke("leaving", now=1)
        assert wait_until(lambda: ask(proxy.url, token, MODEL).status_code == 401, timeout=1.0)
        assert ask(proxy.url, stays, MODEL).status_code == 200
        # A key created while the proxy runs works as soon (no restart either).
        fresh = store.create("new", now=2).token
        assert wait_until(lambda: ask(proxy.url, fresh, MODEL).status_code == 200, timeout=1.0)


def test_a_store_with_every_key_revoked_still_requires_a_key(upstream: FakeUpstream, paths: Paths) -> None:
    store = KeyStore(paths.keys_file)
    store.create("gone", now=0)
    store.revoke("gone", now=1)
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        assert ask(proxy.url, None, MODEL).status_code == 401
