"""Team keys in the proxy, over real HTTP (the proxy on a thread, a FakeController, a vLLM-like upstream):
a key resolves to its principal, scopes refuse with 403 before any wake, a revoked key is refused within a
second without a restart, and `[proxy] api_keys` keep working next to the store."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from runpod_manager.config import KeysConfig, PodConfig
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
        assert ask(proxy.url, alias_only, MODEL).status_code == 200  # an alias and its model are one model
        denied = ask(proxy.url, alias_only, OTHER)
        assert denied.status_code == 403
        assert error_of(denied)["code"] == "model_not_allowed" and "it may use models fast" in error_of(
            denied)["message"]
        # No wake for any refused request, and none reached a pod.
        assert controller.pods["other"].wake_calls == 0 and controller.pods["default"].wake_calls == 0
        assert len([r for r in upstream.requests if r.path_qs == "/v1/chat/completions"]) == 4

        # The config's keys are unscoped users; unknown and missing keys are 401.
        assert ask(proxy.url, CONFIG_KEY, MODEL).status_code == 200
        for token in (None, "rpm_not-a-key", default_only + "x"):
            refused = ask(proxy.url, token, MODEL)
            assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
        assert requests.get(f"{proxy.url}/health", timeout=READ_TIMEOUT).status_code == 200


def test_a_scoped_key_lists_only_the_models_it_may_use(upstream: FakeUpstream, paths: Paths) -> None:
    store = KeyStore(paths.keys_file)
    other_only = store.create("script", pods=("other",), now=0).token
    alias_only = store.create("fast-only", models=("fast",), now=0).token
    everything = store.create("admin", role="admin", now=0).token
    config, controller = two_pods(upstream)
    with running_proxy(config, controller, paths) as proxy:
        def listed(token: str) -> list[str]:
            reply = requests.get(f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {token}"},
                                 timeout=READ_TIMEOUT)
            assert reply.status_code == 200, reply.text
            return sorted(entry["id"] for entry in reply.json()["data"])

        assert listed(other_only) == [OTHER]
        assert listed(alias_only) == sorted([MODEL, "fast"])  # the alias's model is the same model
        assert set(listed(everything)) >= {MODEL, "fast", OTHER}
        assert controller.pods["other"].wake_calls == 0


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


# ------------------------------------------------------------------------------------------ limits


def sdk(url: str, token: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=3)


def refusals(paths: Paths, name: str) -> int:
    """The 429s a key got, from the request log (what the SDK saw and retried)."""
    from runpod_manager.requestlog import read_requests

    return sum(1 for request in read_requests(paths.request_log) if request.key == name and request.status == 429)


def test_the_openai_sdk_backs_off_on_a_keys_rpm_and_tpm_and_then_succeeds(upstream: FakeUpstream,
                                                                         paths: Paths) -> None:
    """One-second windows (so the SDK's waits are short): 120 rpm is 2 requests per window; 600 tpm is 10
    tokens per window, and each answer reports 11."""
    store = KeyStore(paths.keys_file)
    by_rate = store.create("by-rate", limits=KeyLimits(requests_per_minute=120), now=0).token
    by_tokens = store.create("by-tokens", limits=KeyLimits(tokens_per_minute=600), now=0).token
    raw = store.create("raw", limits=KeyLimits(requests_per_minute=120), now=0).token
    config = make_config(key_limit_window_seconds=1)
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        client = sdk(proxy.url, by_rate)
        for _ in range(3):
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content

        # A raw look at the refusal: OpenAI's headers, and the SDK's own retry hints.
        ask(proxy.url, raw, MODEL)
        ask(proxy.url, raw, MODEL)
        refused = ask(proxy.url, raw, MODEL)
        assert refused.status_code == 429 and error_of(refused)["type"] == "rate_limit_error"
        assert refused.headers["x-ratelimit-limit-requests"] == "120"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert {"x-ratelimit-reset-requests", "Retry-After", "retry-after-ms"} <= set(refused.headers)

        client = sdk(proxy.url, by_tokens)
        for _ in range(2):  # streams: the proxy asks for usage and hides the usage-only event
            stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                    stream=True)
            chunks = list(stream)
            assert chunks and all(chunk.choices for chunk in chunks)  # no usage-only chunk reached the client
        sent = [r.json() for r in upstream.requests if r.path_qs == "/v1/chat/completions" and r.json().get("stream")]
        assert all(body["stream_options"] == {"include_usage": True} for body in sent)
        # A client that asked for usage gets it.
        wanted = list(sdk(proxy.url, by_tokens).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
        assert wanted[-1].usage is not None and wanted[-1].usage.total_tokens == 11
    # Each SDK was refused at least once, waited as told, and then succeeded (the answers above).
    assert refusals(paths, "by-rate") >= 1 and refusals(paths, "by-tokens") >= 1
    usage = {entry["name"]: entry for entry in _usage(paths)}
    assert usage["by-tokens"]["tokens"] == 33 and usage["by-rate"]["requests"] == 3


def _usage(paths: Paths) -> list[dict[str, Any]]:
    from runpod_manager.keys import usage_report

    report = usage_report(paths, name=None, now=__import__("time").time(), zone=None)
    return [{"name": row.record.name, **row.today.as_json()} for row in report.rows]


def test_a_budget_spent_by_one_key_stops_it_and_not_the_others_and_survives_a_restart(
        upstream: FakeUpstream, paths: Paths) -> None:
    """The pod costs $3,600/h ($1/s) here, so any request spends more than the $0.000001 budget."""
    store = KeyStore(paths.keys_file)
    script = store.create("script", limits=KeyLimits(daily_budget_usd=0.000001), now=0).token
    dev = store.create("dev", limits=KeyLimits(daily_budget_usd=100.0), now=0).token
    expensive = PodView(pod_id="pod-fake", status="RUNNING", ready=True, lease_open=True, cost_per_hour=3600.0)
    config = make_config(api_keys=(CONFIG_KEY,))
    with running_proxy(config, FakeController(upstream.target(), view=expensive), paths) as proxy:
        assert ask(proxy.url, script, MODEL).status_code == 200
        refused = ask(proxy.url, script, MODEL)
        assert refused.status_code == 429 and error_of(refused)["code"] == "daily_budget_exceeded"
        assert "spent its daily budget" in error_of(refused)["message"] and "it resets at" in error_of(
            refused)["message"]
        assert refused.headers["x-should-retry"] == "false"
        assert ask(proxy.url, dev, MODEL).status_code == 200
        assert ask(proxy.url, CONFIG_KEY, MODEL).status_code == 200
        chats = len(upstream.requests)
    before = {entry["name"]: entry for entry in _usage(paths)}
    assert before["script"]["spend_usd"] > 0.000001 and before["script"]["refused"] == 1
    assert before["script"]["requests"] == 1 and before["dev"]["requests"] == 1
    with running_proxy(config, FakeController(upstream.target(), view=expensive), paths) as proxy:
        assert ask(proxy.url, script, MODEL).status_code == 429  # a restart does not reset a budget
        assert ask(proxy.url, dev, MODEL).status_code == 200
        assert len(upstream.requests) == chats + 1
    after = {entry["name"]: entry for entry in _usage(paths)}
    assert after["dev"]["requests"] == 2 and after["script"]["refused"] == 2
    assert after["script"]["spend_usd"] == before["script"]["spend_usd"]


def test_max_concurrent_refuses_the_request_beyond_it_with_its_pods_answer_time(upstream: FakeUpstream,
                                                                               paths: Paths) -> None:
    """With `[keys] queue_seconds = 0` the request beyond max_concurrent is refused at once, and its Retry-After
    is at least the pod's median answer time (here over 2 s), not 1 s: an SDK's retries must not run out
    while the answer it waits for takes seconds (issue #20, 15)."""
    from concurrent.futures import ThreadPoolExecutor

    token = KeyStore(paths.keys_file).create("one-at-a-time", limits=KeyLimits(max_concurrent=1), now=0).token
    config = replace(make_config(), keys=KeysConfig(queue_seconds=0))
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy, ThreadPoolExecutor(1) as pool:
        upstream.response_delay_seconds = 2.0
        assert ask(proxy.url, token, MODEL).status_code == 200  # the pod's answers take 2 s and more
        upstream.response_delay_seconds = 0.0
        upstream.hold_streams = True
        held = pool.submit(ask, proxy.url, token, MODEL, stream=True)
        assert upstream.stream_started.wait(READ_TIMEOUT)
        refused = ask(proxy.url, token, MODEL)
        assert refused.status_code == 429 and error_of(refused)["code"] == "concurrency_limit_exceeded"
        assert int(refused.headers["Retry-After"]) >= 2 and int(refused.headers["retry-after-ms"]) >= 2000
        assert refused.headers["x-should-retry"] == "true"
        upstream.hold_streams = False
        upstream.release(50)
        assert held.result(READ_TIMEOUT).status_code == 200
        assert ask(proxy.url, token, MODEL).status_code == 200


def test_a_request_beyond_max_concurrent_waits_its_turn_within_queue_seconds(upstream: FakeUpstream,
                                                                            paths: Paths) -> None:
    """By default a key at its max_concurrent queues (first come first served) for up to `[keys]
    queue_seconds`: three parallel requests of a key limited to one at a time are all answered, one after
    the other, never two at once at the pod (issue #20, 15)."""
    from concurrent.futures import ThreadPoolExecutor

    token = KeyStore(paths.keys_file).create("one-at-a-time", limits=KeyLimits(max_concurrent=1), now=0).token
    upstream.response_delay_seconds = 0.3
    most_at_once = 0
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy, \
            ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(ask, proxy.url, token, MODEL, stream=True) for _ in range(3)]
        while not all(answer.done() for answer in answers):
            most_at_once = max(most_at_once, upstream.running)
            time.sleep(0.005)
        statuses = [answer.result(READ_TIMEOUT).status_code for answer in answers]
    assert statuses == [200, 200, 200] and most_at_once <= 1
    usage = {entry["name"]: entry for entry in _usage(paths)}
    assert usage["one-at-a-time"]["requests"] == 3 and usage["one-at-a-time"]["refused"] == 0


def test_parallel_requests_pass_a_keys_tokens_per_minute_by_one_request_at_most(upstream: FakeUpstream,
                                                                               paths: Paths) -> None:
    """Tokens are reserved when a request is admitted (its prompt and max_tokens), not only counted when it
    ends: 100 parallel requests against a limit of 50 tokens a minute were once all let in (issue #20, 13)."""
    from concurrent.futures import ThreadPoolExecutor

    token = KeyStore(paths.keys_file).create("tpm", limits=KeyLimits(tokens_per_minute=50), now=0).token
    upstream.response_delay_seconds = 0.5  # every request is admitted while the first ones are still in flight
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy, \
            ThreadPoolExecutor(25) as pool:
        answers = list(pool.map(lambda _: ask(proxy.url, token, MODEL, max_tokens=20), range(100)))
    served = [answer.json()["usage"]["total_tokens"] for answer in answers if answer.status_code == 200]
    refused = [error_of(answer)["code"] for answer in answers if answer.status_code != 200]
    assert served and set(refused) == {"rate_limit_tokens"}
    assert sum(served) <= 50 + max(served), served


def test_the_request_log_names_the_key_and_no_secret_is_written_anywhere(upstream: FakeUpstream,
                                                                         paths: Paths, isolated_home: Path) -> None:
    store = KeyStore(paths.keys_file)
    token = store.create("logged", now=0).token
    with running_proxy(make_config(api_keys=(CONFIG_KEY,)), FakeController(upstream.target()), paths) as proxy:
        assert ask(proxy.url, token, MODEL).status_code == 200
        assert ask(proxy.url, token, MODEL, stream=True).status_code == 200
        assert ask(proxy.url, CONFIG_KEY, MODEL).status_code == 200
        assert ask(proxy.url, token + "-wrong", MODEL).status_code == 401
    from runpod_manager.requestlog import read_requests

    keys = [request.key for request in read_requests(paths.request_log)]
    assert keys == ["logged", "logged", "config-key-1", None]
    for path in isolated_home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and token[4:].encode() not in data, path
            assert CONFIG_KEY.encode() not in data, path
