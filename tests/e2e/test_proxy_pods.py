"""Many pods behind one proxy (issue #12), over real HTTP: routing by model, aliases, replicas, each pod's
own activity, /health's and /metrics' per-pod facts, and /rpm/v1/pods. Each pod is a FakeUpstream that
serves its own model name; a FakeController holds each pod's target and wake.

Nothing here asserts timings: wakes are held until the test releases them, and a second replica's wake is
awaited as an event (the scale-up rule's timing is tested on a controlled clock in
tests/unit/test_proxy_wake.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from runpod_manager.config import PodConfig
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.proxy.controller import PodView
from tests.support.proxy_fakes import FakeController, FakePod, FakeUpstream, make_config, running_proxy, wait_until

pytestmark = pytest.mark.e2e

CHAT = "org/chat-7b"
CODER = "org/coder-1.5b"
READ_TIMEOUT = 5  # seconds a single read may block before the test fails (never an assertion on speed)
CLIENT_KEY = "client-key-pods-31f"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeUpstream]]:
    started = {"chat": FakeUpstream(model=CHAT).start(), "chat-r2": FakeUpstream(model=CHAT).start(),
               "coder": FakeUpstream(model=CODER).start()}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
def upstreams(servers: dict[str, FakeUpstream]) -> Iterator[dict[str, FakeUpstream]]:
    for server in servers.values():
        server.reset()
    yield servers
    for server in servers.values():
        server.hold_streams = False
        server.release(50)  # never leave a held stream behind for the next test


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def chat_pod(**extra: Any) -> PodConfig:
    return PodConfig(name="chat", model=CHAT, **extra)


def coder_pod(**extra: Any) -> PodConfig:
    return PodConfig(name="coder", model=CODER, aliases=("autocomplete",), **extra)


def ask(url: str, model: Any, **extra: Any) -> requests.Response:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    if model is not None:
        body["model"] = model
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=READ_TIMEOUT)


def error_of(response: requests.Response) -> dict[str, Any]:
    document = response.json()
    assert set(document) == {"error"} and set(document["error"]) == {"message", "type", "param", "code"}, document
    return dict(document["error"])


def asleep(upstreams: dict[str, FakeUpstream], *names: str, **pods: FakePod) -> FakeController:
    """A controller whose pods sleep; each wakes to its own upstream."""
    made = {name: FakePod(None, wake_target=upstreams[name].target(f"pod-{name}"),
                          view=PodView(status="EXITED", pod_id=f"pod-{name}")) for name in names}
    return FakeController(pods={**made, **pods})


# ------------------------------------------------------------------------------------------ two models


def test_two_models_on_two_pods_each_request_wakes_and_reaches_only_its_own(
        upstreams: dict[str, FakeUpstream], paths: Paths) -> None:
    controller = asleep(upstreams, "chat", "coder")
    config = make_config(pods=(chat_pod(), coder_pod()))
    with running_proxy(config, controller, paths) as proxy:
        answer = ask(proxy.url, CHAT)
        assert answer.status_code == 200 and answer.json()["model"] == CHAT
        assert "X-RPM-Cold-Start" in answer.headers
        assert controller.pods["chat"].wake_calls == 1 and controller.pods["coder"].wake_calls == 0
        assert upstreams["coder"].requests == []

        answer = ask(proxy.url, CODER, stream=True)
        assert answer.status_code == 200 and b"data: [DONE]" in answer.content
        assert controller.pods["coder"].wake_calls == 1 and controller.pods["chat"].wake_calls == 1
        assert [request.json()["model"] for request in upstreams["chat"].requests] == [CHAT]
        assert [request.json()["model"] for request in upstreams["coder"].requests] == [CODER]

        # An alias reaches its pod under the pod's own name: vLLM answers only to what it serves.
        aliased = ask(proxy.url, "autocomplete", temperature=0)
        assert aliased.status_code == 200
        sent = upstreams["coder"].requests[-1].json()
        assert sent["model"] == CODER and sent["temperature"] == 0
        assert len(upstreams["chat"].requests) == 1


def test_model_lists_name_every_model_and_unknown_models_are_answered_without_a_wake(
        upstreams: dict[str, FakeUpstream], paths: Paths) -> None:
    controller = asleep(upstreams, "chat", "coder")
    controller.pods["chat"].wake_error = controller.pods["coder"].wake_error = AssertionError("no wake")
    config = make_config(pods=(chat_pod(), coder_pod()))
    with running_proxy(config, controller, paths) as proxy:
        listed = requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT)
        assert listed.status_code == 200
        assert [entry["id"] for entry in listed.json()["data"]] == [CHAT, CODER, "autocomplete"]
        assert listed.headers["X-RPM-Models"] == "chat=config, coder=config"
        one = requests.get(f"{proxy.url}/v1/models/autocomplete", timeout=READ_TIMEOUT)
        assert one.status_code == 200 and one.json()["root"] == CODER

        for stream in (False, True):
            unknown = ask(proxy.url, "gpt-4o", stream=stream)
            assert unknown.status_code == 404, unknown.text  # plain HTTP, even for a stream
            error = error_of(unknown)
            assert error["code"] == "model_not_found" and error["param"] == "model"
            for name in ("gpt-4o", CHAT, CODER, "autocomplete", "pod chat", "pod coder"):
                assert name in error["message"], name
        # Several models: a request must say which; the 400 names them.
        nameless = ask(proxy.url, None)
        assert nameless.status_code == 400
        error = error_of(nameless)
        assert error["code"] == "model_required" and CHAT in error["message"] and CODER in error["message"]
        assert requests.get(f"{proxy.url}/v1/echo", timeout=READ_TIMEOUT).status_code == 400
    assert controller.wake_order == []
    assert all(not server.requests for server in upstreams.values())


def test_the_model_list_merges_what_running_pods_say_with_what_sleeping_ones_said(
        upstreams: dict[str, FakeUpstream], paths: Paths) -> None:
    controller = asleep(upstreams, "coder", chat=FakePod(upstreams["chat"].target("pod-chat")))
    config = make_config(pods=(chat_pod(), coder_pod()))
    with running_proxy(config, controller, paths) as proxy:
        listed = requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT)
        assert listed.headers["X-RPM-Models"] == "chat=live, coder=config"
        assert [entry["id"] for entry in listed.json()["data"]] == [CHAT, CODER, "autocomplete"]
        assert upstreams["chat"].paths_seen() == ["/v1/models"] and upstreams["coder"].requests == []
        controller.pods["chat"].target = None  # idle stop; the reconcile loop notices
        assert wait_until(lambda: requests.get(f"{proxy.url}/ready", timeout=READ_TIMEOUT).json()["pods"]["chat"]
                          is None)
        later = requests.get(f"{proxy.url}/v1/models", timeout=READ_TIMEOUT)
        assert later.headers["X-RPM-Models"] == "chat=remembered, coder=config"
        assert later.json()["data"][0] == listed.json()["data"][0]  # the pod's own entry
    assert controller.wake_order == []


# ----------------------------------------------------------------------------------------- replicas


def replica_config(**proxy: Any) -> Any:
    return make_config(pods=(chat_pod(replicas=2, replica_queue_depth=2, replica_queue_seconds=3600),),
                       **proxy)


def test_a_request_goes_to_the_ready_replica_with_the_fewest_in_flight(upstreams: dict[str, FakeUpstream],
                                                                       paths: Paths) -> None:
    controller = FakeController(pods={"chat": FakePod(upstreams["chat"].target("pod-1")),
                                      "chat-r2": FakePod(upstreams["chat-r2"].target("pod-2"))})
    for name in ("chat", "chat-r2"):
        upstreams[name].hold_streams = True
    with running_proxy(replica_config(), controller, paths) as proxy, ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, proxy.url, CHAT, stream=True)
        assert upstreams["chat"].stream_started.wait(READ_TIMEOUT)  # a tie went to the first replica
        second = pool.submit(ask, proxy.url, CHAT, stream=True)
        assert upstreams["chat-r2"].stream_started.wait(READ_TIMEOUT)  # the first is busy: the other one
        upstreams["chat"].release(50)
        assert first.result().status_code == 200
        third = ask(proxy.url, CHAT)  # chat-r2 still streams: back to the idle first replica
        assert third.status_code == 200 and len(upstreams["chat"].requests) == 2
        upstreams["chat-r2"].release(50)
        assert second.result().status_code == 200
        assert len(upstreams["chat-r2"].requests) == 1
    assert controller.wake_order == []


def test_a_burst_wakes_one_replica_and_a_queue_that_stays_deep_wakes_the_second(
        upstreams: dict[str, FakeUpstream], paths: Paths) -> None:
    controller = asleep(upstreams, "chat", "chat-r2")
    for pod in controller.pods.values():
        pod.release_wake.clear()  # held
    with running_proxy(replica_config(), controller, paths) as proxy, ThreadPoolExecutor(6) as pool:
        burst = [pool.submit(ask, proxy.url, CHAT) for _ in range(6)]
        assert wait_until(lambda: _pods(proxy.url)["chat"]["queue_depth"] == 6)
        assert controller.wake_order == ["chat"]  # six waiting, one wake (replica_queue_seconds not reached)
        assert _pods(proxy.url)["chat"]["oldest_wait_seconds"] > 0
        controller.pods["chat"].release_wake.set()
        assert [future.result().status_code for future in burst] == [200] * 6
    assert controller.wake_order == ["chat"] and len(upstreams["chat"].requests) == 6

    upstreams["chat"].reset()
    controller = asleep(upstreams, "chat", "chat-r2")
    for pod in controller.pods.values():
        pod.release_wake.clear()
    config = make_config(pods=(chat_pod(replicas=2, replica_queue_depth=2, replica_queue_seconds=0.2),))
    with running_proxy(config, controller, paths) as proxy, ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(ask, proxy.url, CHAT) for _ in range(3)]  # 3 > 2, for longer than 0.2 s
        assert controller.pods["chat-r2"].wake_started.wait(READ_TIMEOUT)
        assert controller.wake_order == ["chat", "chat-r2"]
        controller.pods["chat-r2"].release_wake.set()  # the second is ready first: they go there
        assert [future.result().status_code for future in waiting] == [200] * 3
        assert len(upstreams["chat-r2"].requests) == 3 and upstreams["chat"].requests == []
        controller.pods["chat"].release_wake.set()


def test_the_first_wake_resumes_a_stopped_replica_rather_than_create_one(upstreams: dict[str, FakeUpstream],
                                                                          paths: Paths) -> None:
    never_created = FakePod(None, wake_target=upstreams["chat"].target("pod-1"), view=PodView())
    stopped = FakePod(None, wake_target=upstreams["chat-r2"].target("pod-2"),
                      view=PodView(pod_id="pod-2", status="EXITED"))
    controller = FakeController(pods={"chat": never_created, "chat-r2": stopped})
    config = make_config(pods=(chat_pod(replicas=2),), reconcile_interval_seconds=3600)  # the start-up views only
    with running_proxy(config, controller, paths) as proxy:
        assert ask(proxy.url, CHAT).status_code == 200
    assert controller.wake_order == ["chat-r2"] and len(upstreams["chat-r2"].requests) == 1


def test_each_pod_reports_its_own_activity_to_the_control_plane(upstreams: dict[str, FakeUpstream],
                                                                paths: Paths) -> None:
    controller = FakeController(pods={"chat": FakePod(upstreams["chat"].target("pod-1")),
                                      "chat-r2": FakePod(upstreams["chat-r2"].target("pod-2")),
                                      "coder": FakePod(upstreams["coder"].target("pod-3"))})
    config = make_config(pods=(chat_pod(replicas=2), coder_pod()), reconcile_interval_seconds=0.05)
    with running_proxy(config, controller, paths) as proxy:
        for _ in range(3):  # one at a time: always the first replica
            assert ask(proxy.url, "autocomplete").status_code == 200
            assert ask(proxy.url, CHAT).status_code == 200
        seen = len(controller.reconcile_calls)
        assert wait_until(lambda: len(controller.reconcile_calls) >= seen + 2)
        latest = controller.reconcile_calls[-1]
        assert latest["chat"] is not None and latest["coder"] is not None
        assert latest["chat-r2"] is None  # it served nothing: the other replica's traffic must not keep it up
    assert upstreams["chat-r2"].requests == []


# --------------------------------------------------------------------------------------- observability


def _pods(url: str, **headers: str) -> dict[str, dict[str, Any]]:
    response = requests.get(f"{url}/rpm/v1/pods", headers=headers, timeout=READ_TIMEOUT)
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()["pods"]}


def test_rpm_v1_pods_health_metrics_and_dashboard_show_each_pod(upstreams: dict[str, FakeUpstream],
                                                                paths: Paths) -> None:
    chat_view = PodView(pod_id="pod-chat", status="RUNNING", ready=True, lease_open=True, cost_per_hour=0.86,
                        spend_today_usd=2.5, max_daily_spend_usd=20.0,
                        limits={"idle": "2099-01-01T00:15:00Z"})
    controller = asleep(upstreams, "coder", chat=FakePod(upstreams["chat"].target("pod-chat"), view=chat_view))
    controller.pods["coder"].release_wake.clear()
    config = make_config(pods=(chat_pod(), coder_pod()), api_keys=(CLIENT_KEY,))
    good = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with running_proxy(config, controller, paths) as proxy, ThreadPoolExecutor(1) as pool:
        for path in ("/rpm/v1/pods", "/rpm/v1/pods/chat"):
            refused = requests.get(f"{proxy.url}{path}", timeout=READ_TIMEOUT)
            assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
        waiting = pool.submit(requests.post, f"{proxy.url}/v1/completions", headers=good, timeout=30,
                              json={"model": "autocomplete", "prompt": "def f("})
        assert controller.pods["coder"].wake_started.wait(READ_TIMEOUT)
        assert wait_until(lambda: _pods(proxy.url, **good)["coder"]["queue_depth"] == 1)
        pods = _pods(proxy.url, **good)
        chat, coder = pods["chat"], pods["coder"]
        assert list(pods) == ["chat", "coder"]
        assert chat["models"] == [CHAT] and coder["models"] == [CODER, "autocomplete"]
        assert (chat["status"], chat["ready"], chat["queue_depth"], chat["oldest_wait_seconds"]) == (
            "RUNNING", True, 0, None)
        assert chat["idle_ends_at"] == "2099-01-01T00:15:00Z" and chat["spend_today_usd"] == 2.5
        assert (coder["status"], coder["ready"], coder["waking"]) == ("EXITED", False, True)
        assert coder["oldest_wait_seconds"] >= 0
        for key in ("deadline", "pod_id", "lease_open", "max_daily_spend_usd", "in_flight", "replica_of"):
            assert key in chat and key in coder, key
        one = requests.get(f"{proxy.url}/rpm/v1/pods/coder", headers=good, timeout=READ_TIMEOUT)
        assert one.status_code == 200 and one.json()["name"] == "coder" and one.json()["queue_depth"] == 1
        missing = requests.get(f"{proxy.url}/rpm/v1/pods/nope", headers=good, timeout=READ_TIMEOUT)
        assert missing.status_code == 404
        assert error_of(missing)["code"] == "pod_not_found" and "chat, coder" in error_of(missing)["message"]

        health = requests.get(f"{proxy.url}/health", timeout=READ_TIMEOUT).json()
        assert [entry["name"] for entry in health["pods"]] == ["chat", "coder"]
        assert health["pod"] == health["pods"][0]  # the first pod, where one-pod scripts look
        assert health["pods"][1]["queue_depth"] == 1 and health["proxy"]["queue_depth"] == 1

        metrics = requests.get(f"{proxy.url}/metrics", headers=good, timeout=READ_TIMEOUT).text
        for sample in ('rpm_proxy_queue_depth{pod="coder"} 1.0', 'rpm_proxy_queue_depth{pod="chat"} 0.0',
                       'rpm_pod_up{pod="chat"} 1.0', 'rpm_pod_up{pod="coder"} 0.0',
                       'rpm_pod_cost_per_hour_usd{pod="chat"} 0.86', 'rpm_spend_today_usd{pod="chat"} 2.5',
                       'rpm_proxy_pod_in_flight_requests{pod="coder"} 0.0'):
            assert sample in metrics, sample

        page = requests.get(f"{proxy.url}/dashboard", headers={**good, "Accept": "text/html"},
                            timeout=READ_TIMEOUT).text
        assert "<title>rpm proxy – 1 of 2 pods ready</title>" in page
        assert "<h2>Pod chat" in page and "<h2>Pod coder" in page and "pod-chat" in page
        document = requests.get(f"{proxy.url}/dashboard", headers=good, timeout=READ_TIMEOUT).json()
        assert [section["name"] for section in document["pods"]] == ["chat", "coder"]
        assert document["pods"][0]["spend"]["today_usd"] == 2.5

        controller.pods["coder"].release_wake.set()
        assert waiting.result().status_code == 200
        metrics = requests.get(f"{proxy.url}/metrics", headers=good, timeout=READ_TIMEOUT).text
        assert 'rpm_proxy_wakes_total{outcome="ok",pod="coder"} 1.0' in metrics
        assert 'rpm_proxy_wake_duration_seconds_count{pod="coder"} 1.0' in metrics
        assert 'pod="chat",outcome' not in metrics and 'outcome="ok",pod="chat"' not in metrics  # never woken
        recent = requests.get(f"{proxy.url}/dashboard", headers=good, timeout=READ_TIMEOUT).json()
        assert recent["recent_requests"][0]["pod"] == "coder"
    assert controller.wake_order == ["coder"]
