"""Queued jobs (`Prefer: respond-async`, proxy/jobs.py) through the real proxy over real HTTP: 202 with a position,
waking, running, done and the stored result; order and concurrency; cancel; the bounds (503, 413); unknown
ids; keys; a restart (a queued job runs after it, a job in flight fails and is never sent twice, a finished
job's result stays); no credential on disk. The pod is a FakeUpstream and its wake a FakeController's, held
until the test releases it, so every state is seen without timing anything. The same against the emulator
and a real `rpm proxy` process is in test_jobs_stack.py.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from runpod_manager.config import PodConfig
from runpod_manager.paths import Paths, resolve_paths
from runpod_manager.proxy.jobstore import INTERRUPTED
from runpod_manager.proxy.manage import openapi_document
from tests.support.openapi_client import CheckedClient
from tests.support.proxy_fakes import (
    MODEL,
    UPSTREAM_KEY,
    FakeController,
    FakePod,
    FakeUpstream,
    disk_with_room,
    make_config,
    running_proxy,
    start_proxy_subprocess,
)
from tests.support.rpm import wait_until

pytestmark = pytest.mark.e2e

ASYNC = {"Prefer": "respond-async"}
TIMEOUT = 5  # seconds a single HTTP call may take before the test fails (never an assertion on speed)
CLIENT_KEY = "sk-client-jobs-SECRET-9b2e"
SERVICE_SECRET = "svc-secret-header-value-71aa"


@pytest.fixture
def paths(isolated_home: Path) -> Paths:
    return resolve_paths()


def sleeping(upstream: FakeUpstream) -> FakeController:
    """A pod that sleeps until the test releases its wake."""
    return FakeController(None, wake_target=upstream.target(), hold_wake=True)


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def submit(url: str, body: Any = None, *, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None,
           **kwargs: Any) -> requests.Response:
    return requests.post(url + path, json=body if body is not None else chat(), timeout=TIMEOUT,
                         headers={**ASYNC, **(headers or {})}, **kwargs)


def checked(url: str) -> CheckedClient:
    """A client that fails any jobs call whose answer the /rpm/v1 OpenAPI document does not describe."""
    return CheckedClient(url, openapi_document())


def status(url: str, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    reply = checked(url).get(f"/rpm/v1/jobs/{job_id}", headers=headers)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def state_of(url: str, job_id: str) -> str:
    return str(status(url, job_id)["state"])


def error_of(reply: requests.Response) -> dict[str, Any]:
    document = reply.json()
    assert set(document) == {"error"} and set(document["error"]) == {"message", "type", "param", "code"}, document
    return dict(document["error"])


def prompts_seen(upstream: FakeUpstream) -> list[str]:
    return [json.loads(request.body)["messages"][0]["content"] for request in upstream.requests
            if request.path_qs == "/v1/chat/completions"]


def test_a_job_for_a_sleeping_pod_is_accepted_at_once_wakes_it_and_keeps_its_result(
        upstream: FakeUpstream, paths: Paths) -> None:
    controller = sleeping(upstream)
    with running_proxy(make_config(), controller, paths) as proxy:
        accepted = submit(proxy.url, chat("first"))
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert accepted.headers["Location"] == f"/rpm/v1/jobs/{job['id']}" == job["status_url"]
        assert accepted.headers["Preference-Applied"] == "respond-async"
        assert (job["state"], job["position"], job["pod"], job["path"]) == ("queued", 1, "default",
                                                                             "/v1/chat/completions")
        assert controller.wake_started.wait(TIMEOUT)  # the first job's request woke the pod
        assert wait_until(lambda: state_of(proxy.url, job["id"]) == "waking", TIMEOUT)
        second = submit(proxy.url, chat("second")).json()
        third = submit(proxy.url, chat("third")).json()
        # Concurrency 1: they wait their turn behind the first, in order.
        assert [(second["state"], second["position"]), (third["state"], third["position"])] == [("queued", 1),
                                                                                                ("queued", 2)]
        pod = requests.get(f"{proxy.url}/rpm/v1/pods/default", timeout=TIMEOUT).json()
        assert (pod["jobs_queued"], pod["jobs_running"]) == (2, 1) and pod["oldest_job_wait_seconds"] >= 0
        still = checked(proxy.url).get(f"/rpm/v1/jobs/{job['id']}/result")
        assert still.status_code == 202 and still.headers["Retry-After"] == "1"

        controller.release_wake.set()
        assert wait_until(lambda: state_of(proxy.url, third["id"]) == "done", TIMEOUT)
        done = status(proxy.url, job["id"])
        assert done["state"] == "done" and done["expires_at"] is not None
        assert done["response"]["status"] == 200 and done["response"]["body"]["choices"][0]["message"]["content"]
        result = requests.get(proxy.url + done["result_url"], timeout=TIMEOUT)
        assert result.status_code == 200 and result.headers["Content-Type"].startswith("application/json")
        assert result.json() == done["response"]["body"] and result.headers["X-RPM-Job-Id"] == job["id"]
        assert prompts_seen(upstream) == ["first", "second", "third"]  # each sent once, in submission order
        assert controller.wake_calls == 1

        # Without the header the request behaves as before.
        direct = requests.post(f"{proxy.url}/v1/chat/completions", json=chat("direct"), timeout=TIMEOUT)
        assert direct.status_code == 200 and "Preference-Applied" not in direct.headers


def test_a_service_error_is_the_jobs_result_a_proxy_refusal_is_a_failed_job_and_models_are_never_jobs(
        upstream: FakeUpstream, paths: Paths) -> None:
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        unknown = submit(proxy.url, chat(model="nobody/serves-this"))
        assert unknown.status_code == 404 and error_of(unknown)["code"] == "model_not_found"  # at once, no job
        upstream.fail_next(1, status=400)
        job = submit(proxy.url).json()
        assert wait_until(lambda: state_of(proxy.url, job["id"]) == "done", TIMEOUT)
        assert status(proxy.url, job["id"])["response"]["status"] == 400
        assert requests.get(f"{proxy.url}/rpm/v1/jobs/{job['id']}/result", timeout=TIMEOUT).status_code == 400
        models = requests.get(f"{proxy.url}/v1/models", headers=ASYNC, timeout=TIMEOUT)
        assert models.status_code == 200 and "Preference-Applied" not in models.headers
        wrong_method = requests.get(f"{proxy.url}/v1/chat/completions", headers=ASYNC, timeout=TIMEOUT)
        assert wrong_method.status_code == 405 and error_of(wrong_method)["code"] == "method_not_allowed"
        assert len(prompts_seen(upstream)) == 1


def test_a_failed_wake_fails_the_job_with_the_reason(upstream: FakeUpstream, paths: Paths) -> None:
    with running_proxy(make_config(wake_on_request=False), FakeController(None), paths) as proxy:
        job = submit(proxy.url).json()
        assert wait_until(lambda: state_of(proxy.url, job["id"]) == "failed", TIMEOUT)
        failed = status(proxy.url, job["id"])
        assert failed["error"]["code"] == "job_failed" and "wake_on_request is off" in failed["error"]["message"]
        result = requests.get(f"{proxy.url}/rpm/v1/jobs/{job['id']}/result", timeout=TIMEOUT)
        assert result.status_code == 502 and error_of(result)["code"] == "job_failed"
        assert upstream.requests == []


def test_cancel_a_queued_job_409_for_a_running_one_404_for_unknown_ids(upstream: FakeUpstream, paths: Paths) -> None:
    controller = sleeping(upstream)
    with running_proxy(make_config(), controller, paths) as proxy:
        running = submit(proxy.url, chat("running")).json()
        queued = submit(proxy.url, chat("cancelled")).json()
        assert wait_until(lambda: state_of(proxy.url, running["id"]) == "waking", TIMEOUT)

        cancelled = checked(proxy.url).call("DELETE", f"/rpm/v1/jobs/{queued['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        gone = checked(proxy.url).get(f"/rpm/v1/jobs/{queued['id']}")
        assert gone.status_code == 404 and error_of(gone)["code"] == "job_not_found"
        busy = checked(proxy.url).call("DELETE", f"/rpm/v1/jobs/{running['id']}")
        assert busy.status_code == 409 and error_of(busy)["code"] == "job_running"
        for unknown in ("job_" + "A" * 32, "nonsense", "..%2F..%2Fpod_state.json"):
            for method in ("GET", "DELETE"):
                reply = requests.request(method, f"{proxy.url}/rpm/v1/jobs/{unknown}", timeout=TIMEOUT)
                assert reply.status_code == 404 and error_of(reply)["code"] in ("job_not_found", "not_found")

        controller.release_wake.set()
        assert wait_until(lambda: state_of(proxy.url, running["id"]) == "done", TIMEOUT)
        deleted = checked(proxy.url).call("DELETE", f"/rpm/v1/jobs/{running['id']}")
        assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
        assert checked(proxy.url).get(f"/rpm/v1/jobs/{running['id']}").status_code == 404
        assert prompts_seen(upstream) == ["running"]
    assert [path.name for path in paths.jobs_dir.iterdir() if path.name.startswith("job_")] == []


def test_a_full_store_answers_503_with_retry_after_and_a_large_body_413(upstream: FakeUpstream, paths: Paths) -> None:
    config = make_config(jobs_max_count=2, max_body_bytes=4096)
    with running_proxy(config, sleeping(upstream), paths) as proxy:
        accepted = [submit(proxy.url), submit(proxy.url)]
        assert [reply.status_code for reply in accepted] == [202, 202]
        full = submit(proxy.url)
        assert full.status_code == 503 and full.headers["Retry-After"] and full.headers["x-should-retry"] == "true"
        assert error_of(full)["code"] == "jobs_full" and "jobs_max_count = 2" in error_of(full)["message"]

    config = make_config(max_body_bytes=4096)
    large = chat("x" * 5000)
    with running_proxy(config, sleeping(upstream), paths) as proxy:
        declared = submit(proxy.url, large)
        assert declared.status_code == 413 and error_of(declared)["code"] == "body_too_large"
        chunked = requests.post(f"{proxy.url}/v1/chat/completions", timeout=TIMEOUT,
                                data=iter([json.dumps(large).encode()[:3000], json.dumps(large).encode()[3000:]]),
                                headers={**ASYNC, "Content-Type": "application/json"})
        assert chunked.status_code == 413 and error_of(chunked)["code"] == "body_too_large"
    stored = {path.name.partition(".")[0] for path in paths.jobs_dir.iterdir() if path.name.startswith("job_")}
    assert stored <= {reply.json()["id"] for reply in accepted}  # nothing is left of the refused ones


def test_with_api_keys_jobs_need_a_key_and_no_credential_reaches_the_disk_or_the_pod(
        upstream: FakeUpstream, paths: Paths) -> None:
    config = make_config(api_keys=(CLIENT_KEY,))
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        refused = submit(proxy.url)
        assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
        forged = submit(proxy.url, headers={"X-RPM-Job-Token": "guess"})
        assert forged.status_code == 401
        job = submit(proxy.url, chat("echo me"), path="/v1/echo",
                     headers={**auth, "X-Api-Key": SERVICE_SECRET, "X-Request-Id": "req-7"}).json()
        assert requests.get(f"{proxy.url}/rpm/v1/jobs/{job['id']}", timeout=TIMEOUT).status_code == 401
        assert wait_until(lambda: status(proxy.url, job["id"], headers=auth)["state"] == "done", TIMEOUT)
        echoed = status(proxy.url, job["id"], headers=auth)["response"]["body"]
        assert json.loads(echoed["body"]) == chat("echo me")  # the body, replayed intact
        sent = {name.lower(): value for name, value in echoed["headers"].items()}
        assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the pod's own key, not the client's
        assert sent["x-request-id"] == "req-7"
        assert "x-api-key" not in sent and "x-rpm-job-token" not in sent and "prefer" not in sent
        assert "content-disposition" not in sent and sent["content-type"] == "application/json"
        assert int(sent["content-length"]) == len(json.dumps(chat("echo me")))
    for path in paths.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert CLIENT_KEY.encode() not in data and SERVICE_SECRET.encode() not in data, path
            if path.is_relative_to(paths.jobs_dir):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.fixture
def held(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.hold_streams = True
    yield upstream
    upstream.hold_streams = False
    upstream.release(50)


def test_across_a_restart_a_queued_job_runs_a_job_in_flight_fails_unsent_and_results_stay(
        held: FakeUpstream, paths: Paths) -> None:
    upstream = held
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        finished = submit(proxy.url, chat("finished")).json()
        assert wait_until(lambda: state_of(proxy.url, finished["id"]) == "done", TIMEOUT)
        in_flight = submit(proxy.url, chat("in flight", stream=True)).json()
        assert upstream.stream_started.wait(TIMEOUT)  # held after its first event
        queued = submit(proxy.url, chat("queued")).json()
        assert state_of(proxy.url, in_flight["id"]) == "running" and state_of(proxy.url, queued["id"]) == "queued"
    # Stopped: the stream was cut, the proxy did not wait for it.
    upstream.hold_streams = False
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        assert wait_until(lambda: state_of(proxy.url, queued["id"]) == "done", TIMEOUT)
        failed = status(proxy.url, in_flight["id"])
        assert failed["state"] == "failed" and failed["error"]["message"] == INTERRUPTED
        kept = requests.get(f"{proxy.url}/rpm/v1/jobs/{finished['id']}/result", timeout=TIMEOUT)
        assert kept.status_code == 200 and kept.json()["choices"]
    assert prompts_seen(upstream) == ["finished", "in flight", "queued"]  # nothing sent twice


def test_a_job_stopped_while_its_pod_wakes_never_reached_the_service_and_runs_after_the_restart(
        upstream: FakeUpstream, paths: Paths) -> None:
    """Running, "waking": the proxy stops before the replay's request left toward the pod. Nothing can have
    reached the service, so the job is queued again (first in line) and runs once after the restart."""
    waking = FakeController(None, wake_target=upstream.target(), hold_wake=True)
    try:
        with running_proxy(make_config(), waking, paths) as proxy:
            job = submit(proxy.url, chat("woken later")).json()
            queued = submit(proxy.url, chat("behind it")).json()
            assert wait_until(lambda: state_of(proxy.url, job["id"]) == "waking", TIMEOUT)
    finally:
        waking.release_wake.set()
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        assert wait_until(lambda: state_of(proxy.url, queued["id"]) == "done", TIMEOUT)
        done = status(proxy.url, job["id"])
        assert done["state"] == "done" and done["response"]["status"] == 200, done
    assert prompts_seen(upstream)[-2:] == ["woken later", "behind it"]  # each sent once, in order


def test_jobs_concurrency_runs_several_at_once_and_running_jobs_are_the_pods_activity(
        held: FakeUpstream, paths: Paths) -> None:
    upstream = held
    config = make_config(jobs_concurrency=2)
    controller = FakeController(upstream.target())
    with running_proxy(config, controller, paths) as proxy:
        jobs = [submit(proxy.url, chat(f"stream {index}", stream=True)).json() for index in range(3)]
        assert wait_until(lambda: [state_of(proxy.url, job["id"]) for job in jobs] == ["running", "running",
                                                                                      "queued"], TIMEOUT)
        assert status(proxy.url, jobs[2]["id"])["position"] == 1
        # Running jobs are the pod's activity: the control plane hears "now" while they run, not their start.
        held_since = datetime.now(UTC) + timedelta(seconds=0.5)
        assert wait_until(lambda: bool(controller.reconcile_calls) and (
            controller.reconcile_calls[-1]["default"] or held_since) > held_since, TIMEOUT)
        upstream.hold_streams = False
        upstream.release(50)
        assert wait_until(lambda: all(state_of(proxy.url, job["id"]) == "done" for job in jobs), TIMEOUT)
        stream = requests.get(f"{proxy.url}{jobs[0]['result_url']}", timeout=TIMEOUT)
        assert stream.headers["Content-Type"].startswith("text/event-stream") and "data: [DONE]" in stream.text


def test_a_second_proxy_on_the_same_state_directory_refuses_jobs_and_leaves_the_first_ones_alone(
        held: FakeUpstream, paths: Paths) -> None:
    upstream = held
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as first:
        running = submit(first.url, chat("long", stream=True)).json()
        assert upstream.stream_started.wait(TIMEOUT)
        with running_proxy(make_config(), FakeController(upstream.target()), paths) as second:
            refused = submit(second.url)
            assert refused.status_code == 503 and error_of(refused)["code"] == "jobs_unavailable"
            assert "another proxy" in error_of(refused)["message"]
        assert state_of(first.url, running["id"]) == "running"  # not recovered as failed by the second
        upstream.hold_streams = False
        upstream.release(50)
        assert wait_until(lambda: state_of(first.url, running["id"]) == "done", TIMEOUT)


def test_a_response_that_does_not_fit_in_jobs_max_bytes_fails_the_job_and_is_not_kept(
        upstream: FakeUpstream, paths: Paths) -> None:
    config = make_config(jobs_max_bytes=4096, max_body_bytes=4096)
    with running_proxy(config, FakeController(upstream.target()), paths) as proxy:
        body = chat('"' * 1400)  # ~2.9 KB; the echo answer escapes it again: ~5.7 KB
        job = submit(proxy.url, body, path="/v1/echo").json()
        assert wait_until(lambda: state_of(proxy.url, job["id"]) == "failed", TIMEOUT)
        assert "jobs_max_bytes = 4096" in status(proxy.url, job["id"])["error"]["message"]
        assert len(upstream.requests) == 1
    assert [path.name for path in paths.jobs_dir.iterdir() if path.name.startswith("job_")] == []


def test_the_last_free_place_takes_a_chunked_upload_and_a_chunked_upload_past_the_bytes_gets_503(
        upstream: FakeUpstream, paths: Paths) -> None:
    config = make_config(jobs_max_count=2, jobs_max_bytes=8192, max_body_bytes=8192)
    with running_proxy(config, sleeping(upstream), paths) as proxy:
        assert submit(proxy.url).status_code == 202

        def chunked(size: int) -> requests.Response:
            document = json.dumps(chat("x" * size)).encode()
            return requests.post(f"{proxy.url}/v1/chat/completions", data=iter([document[:100], document[100:]]),
                                 headers={**ASYNC, "Content-Type": "application/json"}, timeout=TIMEOUT)

        too_big = chunked(8080)  # fits max_body_bytes, not what the first job leaves of jobs_max_bytes
        assert too_big.status_code == 503 and error_of(too_big)["code"] == "jobs_full"
        assert chunked(100).status_code == 202  # the second of two places


def test_each_pod_has_its_own_queue_chosen_by_the_routing_of_the_request(paths: Paths) -> None:
    chat_upstream, coder_upstream = FakeUpstream(model="org/chat").start(), FakeUpstream(model="org/coder").start()
    try:
        config = make_config(pods=(PodConfig(name="chat", model="org/chat"),
                                   PodConfig(name="coder", model="org/coder", aliases=("autocomplete",))))
        controller = FakeController(pods={
            "chat": FakePod(None, wake_target=chat_upstream.target("pod-chat"), hold_wake=True),
            "coder": FakePod(coder_upstream.target("pod-coder"))})
        with running_proxy(config, controller, paths) as proxy:
            waiting = submit(proxy.url, chat(model="org/chat")).json()
            assert wait_until(lambda: state_of(proxy.url, waiting["id"]) == "waking", TIMEOUT)
            other = submit(proxy.url, chat(model="autocomplete")).json()  # an alias routes like a direct request
            assert (other["pod"], other["position"]) == ("coder", 1)
            assert wait_until(lambda: state_of(proxy.url, other["id"]) == "done", TIMEOUT)  # not behind chat's
            unnamed = submit(proxy.url, {"messages": [{"role": "user", "content": "hi"}]})
            assert unnamed.status_code == 400 and error_of(unnamed)["code"] == "model_required"
            controller.pods["chat"].release_wake.set()
            assert wait_until(lambda: state_of(proxy.url, waiting["id"]) == "done", TIMEOUT)
            assert [len(chat_upstream.requests), len(coder_upstream.requests)] == [1, 1]
    finally:
        chat_upstream.stop()
        coder_upstream.stop()


def test_a_full_disk_answers_507_naming_the_job_store_and_keeps_nothing_half_written(
        upstream: FakeUpstream, paths: Paths, caplog: pytest.LogCaptureFixture) -> None:
    """ENOSPC while a job's body is stored was a 500 "the proxy failed unexpectedly" with a traceback; while
    its result is stored, a failed job with a partial file left behind (issue #20, 14)."""
    import logging

    caplog.set_level(logging.INFO)
    payload = json.dumps(chat("y" * 3000)).encode()
    with running_proxy(make_config(), FakeController(upstream.target()), paths) as proxy:
        with disk_with_room(paths.jobs_dir, 1000):
            refused = submit(proxy.url, chat("x" * 5000))
        assert refused.status_code == 507, refused.text
        error = error_of(refused)
        assert error["code"] == "insufficient_storage" and error["type"] == "server_error"
        assert str(paths.jobs_dir) in error["message"] and refused.headers["x-should-retry"] == "false"
        assert [path.name for path in paths.jobs_dir.iterdir() if path.name.startswith("job_")] == []
        assert upstream.requests == []  # nothing was queued, nothing ran

        # Room for the request's body, none for the pod's answer: the job fails saying why, no partial result.
        with disk_with_room(paths.jobs_dir, len(payload)):
            job = requests.post(proxy.url + "/v1/chat/completions", data=payload, timeout=TIMEOUT,
                                headers={**ASYNC, "Content-Type": "application/json"}).json()
            assert wait_until(lambda: state_of(proxy.url, job["id"]) == "failed", TIMEOUT)
        failed = status(proxy.url, job["id"])
        assert "is full" in failed["error"]["message"] and str(paths.jobs_dir) in failed["error"]["message"]
        assert [path.name for path in paths.jobs_dir.iterdir() if path.name.startswith("job_")] == []

        accepted = submit(proxy.url, chat("room again"))  # the store works once there is room
        assert accepted.status_code == 202
        assert wait_until(lambda: state_of(proxy.url, accepted.json()["id"]) == "done", TIMEOUT)
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]


def test_a_proxy_whose_files_may_not_grow_answers_507_for_a_job_and_logs_no_traceback(
        upstream: FakeUpstream, isolated_home: Path) -> None:
    """The same with a real limit: the proxy in its own process under RLIMIT_FSIZE (64 KiB), where writing a
    job's 200 KB body fails with EFBIG as it would on a full disk."""
    process, url = start_proxy_subprocess(upstream.url, isolated_home, "--max-file-bytes", str(64 * 1024))
    try:
        refused = submit(url, chat("z" * 200_000))
        assert refused.status_code == 507, refused.text
        assert error_of(refused)["code"] == "insufficient_storage"
        jobs_dir = resolve_paths().jobs_dir
        assert [path.name for path in jobs_dir.iterdir() if path.name.startswith("job_")] == []
        small = submit(url, chat("fits"))
        assert small.status_code == 202
        assert wait_until(lambda: state_of(url, small.json()["id"]) == "done", TIMEOUT)
    finally:
        process.terminate()
        process.wait(timeout=15)
    log_text = (isolated_home / "state" / "logs" / "proxy.log").read_text()
    assert "Traceback" not in log_text and "is full" in log_text
