"""The emulator's simulated world on a hand-driven clock: timeline, transitions, capacity, billing, faults,
persistence. No HTTP here (tests/contract/test_sandbox_contract.py covers the wire)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from runpod_manager.sandbox.billing import bucket_ceil, bucket_floor, rfc3339
from runpod_manager.sandbox.errors import LOW_BALANCE_DETAIL, NO_CAPACITY_DETAIL, RESUME_REFUSED_DETAIL, WorldError
from runpod_manager.sandbox.faults import Faults, Settings
from runpod_manager.sandbox.gpus import availability_level, cuda_key, initial_stock
from runpod_manager.sandbox.pods import ALLOWED_ACTIONS, PodStatus, serves_vllm
from runpod_manager.sandbox.world import World

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, an hour boundary
GPU = "NVIDIA GeForce RTX 4090"
A5000 = "NVIDIA RTX A5000"


class Clock:
    def __init__(self, start: float = T0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_world(clock: Clock, faults: Faults | None = None, **settings: Any) -> World:
    values = {"provision_seconds": 2.0, "start_seconds": 3.0, "model_load_seconds": 5.0, **settings}
    return World(Settings(**values), faults, clock=clock, rng=random.Random(7))


@pytest.fixture
def world(clock: Clock) -> World:
    return make_world(clock)


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "rpm-main-abc123", "image": "vllm/vllm-openai:latest",
                            "gpu": {"id": GPU, "count": 1}, "ports": ["8000/http", "22/tcp"],
                            "args": "--model Qwen/Qwen2.5-Coder-7B-Instruct --api-key sk-pod"}
    body.update(overrides)
    return body


def free(world: World, gpu: str, dc: str, cloud: str = "SECURE") -> int:
    return world.stock.get((gpu, dc, cloud), 0)


# --- timeline ------------------------------------------------------------------------------------


def test_a_pod_provisions_starts_runs_and_loads_its_model_on_the_timeline(world: World, clock: Clock) -> None:
    pod = world.create_pod(request())
    seen = [(world.pod_json(pod)["status"], world.pod_json(pod)["runtime"], world.model_state(pod.id, 8000)[0])]
    for step in (1.99, 0.02, 2.98, 0.02, 4.98, 0.02):  # just before and after each edge
        clock.tick(step)
        body = world.pod_json(pod)
        seen.append((body["status"], body["runtime"] is not None, world.model_state(pod.id, 8000)[0]))
    assert [s[0] for s in seen] == ["PROVISIONING", "PROVISIONING", "STARTING", "STARTING", "RUNNING",
                                    "RUNNING", "RUNNING"]
    assert seen[0][1] is None and [s[1] for s in seen[1:4]] == [False, False, False]
    assert [s[2] for s in seen] == ["down"] * 6 + ["ready"]


def test_runtime_carries_uptime_gpus_and_ports_once_running(world: World, clock: Clock) -> None:
    pod = world.create_pod(request(gpu={"id": GPU, "count": 2}))
    clock.tick(5.0)
    body = world.pod_json(pod)
    assert body["startedAt"] == rfc3339(T0 + 5.0) and body["runtime"]["uptime"] == 0
    clock.tick(42.5)
    runtime = world.pod_json(pod)["runtime"]
    assert runtime["uptime"] == 42
    assert len(runtime["gpus"]) == 2 and runtime["gpus"][0]["memoryUtil"] > 50  # model loaded by now
    kinds = sorted((p["private"], p["type"]) for p in runtime["ports"])
    assert kinds == [(22, "tcp"), (8000, "http")]
    assert body["cost"] == pytest.approx(0.69 * 2)


def test_stop_keeps_the_pod_exited_and_free_and_start_resumes_it_on_its_host(world: World, clock: Clock) -> None:
    pod = world.create_pod(request())
    dc = pod.data_center_id
    held = free(world, GPU, dc)
    clock.tick(10.0)
    world.act(pod.id, "stop")
    body = world.pod_json(pod)
    assert (body["status"], body["cost"], body["runtime"]) == ("EXITED", 0.0, None)
    assert body["actions"] == ["start", "terminate"]
    assert free(world, GPU, dc) == held + 1
    world.act(pod.id, "start")
    assert world.pod_json(pod)["status"] == "STARTING" and pod.data_center_id == dc
    assert free(world, GPU, dc) == held
    clock.tick(3.0)
    assert world.pod_json(pod)["status"] == "RUNNING"
    assert world.model_state(pod.id, 8000)[0] == "down"  # the model loads again after a resume
    clock.tick(5.0)
    assert world.model_state(pod.id, 8000)[0] == "ready"


def test_terminate_removes_the_pod_and_returns_its_gpus(world: World) -> None:
    pod = world.create_pod(request())
    before = free(world, GPU, pod.data_center_id)
    world.act(pod.id, "terminate")
    with pytest.raises(WorldError) as caught:
        world.get_pod(pod.id)
    assert caught.value.status == 404
    assert free(world, GPU, pod.data_center_id) == before + 1
    assert world.model_state(pod.id, 8000)[0] == "missing"


def test_restart_reloads_the_model(world: World, clock: Clock) -> None:
    pod = world.create_pod(request())
    clock.tick(11.0)
    assert world.model_state(pod.id, 8000)[0] == "ready"
    generation = pod.container_generation
    world.act(pod.id, "restart")
    assert world.model_state(pod.id, 8000)[0] == "down" and pod.container_generation == generation + 1
    clock.tick(5.0)
    assert world.model_state(pod.id, 8000)[0] == "ready"


@pytest.mark.parametrize(("image", "vllm"), [
    ("vllm/vllm-openai:latest", True), ("VLLM/custom:1", True), ("ghcr.io/me/my-vllm-server", True),
    ("", True), ("comfyanonymous/comfyui:latest", False), ("runpod/pytorch:2.4", False),
])
def test_only_vllm_images_run_the_fake_vllm(image: str, vllm: bool) -> None:
    assert serves_vllm(image) is vllm


def test_a_service_pod_follows_the_same_timeline_and_logs_as_a_service(world: World, clock: Clock) -> None:
    pod = world.create_pod(request(image="comfyanonymous/comfyui:latest", args="",
                                   ports=["8188/http", "8000/http"]))
    clock.tick(9.99)
    assert world.model_state(pod.id, 8188)[0] == "down"
    clock.tick(0.02)
    assert [world.model_state(pod.id, port)[0] for port in (8188, 8000)] == ["ready", "ready"]
    container = [line.line for line in pod.logs if line.source == "container"]
    assert container == ["INFO: starting service comfyanonymous/comfyui:latest",
                         "INFO: service ready; listening on port 8000, port 8188"]
    world.service_stats[pod.id].requests = 3
    world.act(pod.id, "restart")  # a new container: fresh counters, like the model's
    assert world.service_stats[pod.id].requests == 0
    snapshot = next(p for p in world.snapshot()["pods"] if p["id"] == pod.id)
    assert snapshot["serves"] == "service" and snapshot["service"]["requests"] == 0


def test_a_port_the_pod_does_not_expose_over_http_is_missing(world: World, clock: Clock) -> None:
    pod = world.create_pod(request())
    clock.tick(11.0)
    assert world.model_state(pod.id, 22)[0] == "missing"
    assert world.model_state(pod.id, 9999)[0] == "missing"


# --- the action table ----------------------------------------------------------------------------


def _pod_in(world: World, clock: Clock, status: PodStatus) -> str:
    pod = world.create_pod(request())
    if status == PodStatus.STARTING:
        clock.tick(2.0)
    elif status == PodStatus.RUNNING:
        clock.tick(5.0)
    elif status in (PodStatus.EXITED, PodStatus.ERROR):
        world.set_status(pod.id, str(status))
    world.get_pod(pod.id)
    assert pod.status == status
    return pod.id


@pytest.mark.parametrize("status", [s for s in PodStatus if s != PodStatus.TERMINATED])
@pytest.mark.parametrize("action", ["start", "stop", "restart", "terminate"])
def test_every_status_allows_exactly_the_spec_table(world: World, clock: Clock, status: PodStatus,
                                                    action: str) -> None:
    pod_id = _pod_in(world, clock, status)
    if action in ALLOWED_ACTIONS[status]:
        world.act(pod_id, action)
        after = {"terminate": None, "stop": PodStatus.EXITED, "start": PodStatus.STARTING,
                 "restart": PodStatus.RUNNING}[action]
        assert (world.pods[pod_id].status if pod_id in world.pods else None) == after
    else:
        with pytest.raises(WorldError) as caught:
            world.act(pod_id, action)
        assert caught.value.status == 409
        assert f"in status {status}" in caught.value.detail and "allowed actions" in caught.value.detail


def test_a_locked_pod_cannot_be_stopped_but_can_be_terminated(world: World, clock: Clock) -> None:
    pod = world.create_pod(request())
    world.update_pod(pod.id, {"locked": True})
    clock.tick(5.0)
    with pytest.raises(WorldError, match="locked") as caught:
        world.act(pod.id, "stop")
    assert caught.value.status == 409
    assert world.pod_json(pod)["actions"] == ["terminate"]
    world.act(pod.id, "terminate")
    assert pod.id not in world.pods


# --- capacity, placement, balance --------------------------------------------------------------------


def test_the_scheduler_picks_the_data_center_with_most_stock_and_respects_the_callers_order(world: World) -> None:
    assert world.create_pod(request()).data_center_id == "EU-RO-1"  # 24 free, the most
    ordered = world.create_pod(request(dataCenterIds=["XX-NOPE-1", "US-KS-2", "US-TX-3"]))
    assert ordered.data_center_id == "US-KS-2"


def test_create_fails_with_runpods_text_when_no_stock_fits(world: World) -> None:
    for (gpu, dc, cloud) in list(world.stock):
        if gpu == A5000:
            world.set_stock(gpu, dc, cloud, 0)
    with pytest.raises(WorldError) as caught:
        world.create_pod(request(gpu={"id": A5000, "count": 1}))
    assert (caught.value.status, caught.value.detail) == (400, NO_CAPACITY_DETAIL)
    assert world.pods == {} and not world.billing


def test_cuda_filters_narrow_the_placement(world: World) -> None:
    pod = world.create_pod(request(gpu={"id": GPU, "count": 1, "allowedCudaVersions": ["12.6"]}))
    assert pod.data_center_id == "CA-MTL-1"
    pod = world.create_pod(request(gpu={"id": GPU, "count": 1, "minCudaVersion": "12.8"}))
    assert pod.cuda_version == "12.8"
    with pytest.raises(WorldError, match="no longer any instances"):
        world.create_pod(request(gpu={"id": GPU, "count": 1, "minCudaVersion": "12.10"}))


def test_unknown_gpu_and_oversized_count_are_400_naming_the_problem(world: World) -> None:
    with pytest.raises(WorldError, match="unknown GPU type 'NVIDIA GeForce GTX 285'"):
        world.create_pod(request(gpu={"id": "NVIDIA GeForce GTX 285", "count": 1}))
    with pytest.raises(WorldError, match=r"gpu\.count 5 exceeds") as caught:
        world.create_pod(request(gpu={"id": "NVIDIA A100 80GB PCIe", "count": 5}, cloud="COMMUNITY"))
    assert caught.value.status == 400


def test_a_stopped_pods_host_gpus_can_be_taken_and_then_its_resume_is_refused(world: World) -> None:
    pod = world.create_pod(request(dataCenterIds=["US-KS-2"]))  # 3 free there: now 2
    world.act(pod.id, "stop")
    for _ in range(3):
        world.create_pod(request(dataCenterIds=["US-KS-2"]))
    assert free(world, GPU, "US-KS-2") == 0
    with pytest.raises(WorldError) as caught:
        world.act(pod.id, "start")
    assert (caught.value.status, caught.value.detail) == (400, RESUME_REFUSED_DETAIL)
    assert world.pods[pod.id].status == PodStatus.EXITED


def test_take_host_refuses_every_later_resume(world: World) -> None:
    pod = world.create_pod(request())
    world.act(pod.id, "stop")
    world.take_host(pod.id)
    for _ in range(2):
        with pytest.raises(WorldError, match="not enough free GPUs on the host"):
            world.act(pod.id, "start")


def test_a_spent_balance_refuses_creates_and_resumes_with_402(clock: Clock) -> None:
    world = make_world(clock, balance_usd=0.69, bill_speed=3600.0)  # one second costs $0.69
    pod = world.create_pod(request())
    clock.tick(1.0)
    world.act(pod.id, "stop")
    for attempt in (lambda: world.create_pod(request()), lambda: world.act(pod.id, "start")):
        with pytest.raises(WorldError) as caught:
            attempt()
        assert (caught.value.status, caught.value.detail) == (402, LOW_BALANCE_DETAIL)


# --- billing ---------------------------------------------------------------------------------------


def test_billing_accrues_per_second_while_active_and_stops_when_exited(world: World, clock: Clock) -> None:
    pod = world.create_pod(request(gpu={"id": GPU, "count": 2}))
    clock.tick(1800.0)
    assert world.spend_usd() == pytest.approx(0.69 * 2 / 2)
    world.act(pod.id, "stop")
    clock.tick(7200.0)
    assert world.spend_usd() == pytest.approx(0.69)  # nothing while EXITED
    world.act(pod.id, "start")
    clock.tick(36.0)
    assert world.spend_usd() == pytest.approx(0.69 + 1.38 / 100)


def test_bill_speed_multiplies_the_rate(clock: Clock) -> None:
    world = make_world(clock, bill_speed=60.0)
    world.create_pod(request())
    clock.tick(60.0)
    assert world.spend_usd() == pytest.approx(0.69)  # a minute bills an hour


def test_pod_billing_splits_into_hour_buckets_per_pod(world: World, clock: Clock) -> None:
    clock.tick(1800.0)  # 00:30
    first = world.create_pod(request())
    clock.tick(3600.0)  # 01:30
    second = world.create_pod(request(gpu={"id": A5000, "count": 1}))
    clock.tick(1800.0)  # 02:00
    report = world.pod_billing(bucket_size="hour", start=T0, end=T0 + 3 * 3600, pod_id=None)
    rows = [(r["startTime"][11:16], r["podId"], round(r["totalAmount"], 4)) for r in report["records"]]
    assert rows == [("00:00", first.id, 0.345), ("01:00", first.id, 0.69), ("01:00", second.id, 0.135)]
    meta = report["metadata"]
    assert meta["recordCount"] == 3 and meta["uniquePodCount"] == 2
    assert meta["totals"]["totalAmount"] == pytest.approx(0.345 + 0.69 + 0.135)
    only = world.pod_billing(bucket_size="day", start=T0, end=T0 + 86400, pod_id=second.id)
    assert [r["podId"] for r in only["records"]] == [second.id]
    assert only["records"][0]["totalAmount"] == pytest.approx(0.135)


def test_bucket_edges_for_every_size() -> None:
    moment = T0 + 40 * 86400 + 5 * 3600 + 17  # 2026-02-10T05:00:17Z, a Tuesday
    assert rfc3339(bucket_floor(moment, "hour").timestamp()) == "2026-02-10T05:00:00Z"
    assert rfc3339(bucket_floor(moment, "day").timestamp()) == "2026-02-10T00:00:00Z"
    assert rfc3339(bucket_floor(moment, "month").timestamp()) == "2026-02-01T00:00:00Z"
    assert rfc3339(bucket_floor(moment, "year").timestamp()) == "2026-01-01T00:00:00Z"
    assert rfc3339(bucket_ceil(moment, "day").timestamp()) == "2026-02-11T00:00:00Z"
    assert bucket_ceil(T0, "hour").timestamp() == T0  # an edge is its own ceiling


def test_rfc3339_pads_early_years() -> None:
    assert rfc3339(-62135596800.0) == "0001-01-01T00:00:00Z"
    assert rfc3339(T0 + 0.9) == "2026-01-01T00:00:00Z"


# --- faults ----------------------------------------------------------------------------------------


def test_fail_creates_fails_exactly_n_creates_for_capacity(clock: Clock) -> None:
    world = make_world(clock, faults=Faults(fail_creates=2))
    for _ in range(2):
        with pytest.raises(WorldError, match="no longer any instances"):
            world.create_pod(request())
    assert world.create_pod(request()).status == PodStatus.PROVISIONING
    assert world.faults.fail_creates == 0


def test_fail_boots_sends_the_next_n_pods_to_error_instead_of_running(clock: Clock) -> None:
    world = make_world(clock, faults=Faults(fail_boots=1))
    broken, healthy = world.create_pod(request()), world.create_pod(request())
    clock.tick(10)
    assert world.get_pod(broken.id).status == PodStatus.ERROR
    assert world.cost_usd_per_hour(broken) == 0.0  # a failed pod bills no GPU
    assert world.get_pod(healthy.id).status == PodStatus.RUNNING
    assert world.faults.fail_boots == 0


def test_refuse_resumes_refuses_the_next_n_resumes_only(clock: Clock) -> None:
    world = make_world(clock, faults=Faults(refuse_resumes=1))
    pod = world.create_pod(request())
    world.act(pod.id, "stop")
    with pytest.raises(WorldError, match="not enough free GPUs"):
        world.act(pod.id, "start")
    world.act(pod.id, "start")
    assert pod.status == PodStatus.STARTING


def test_slow_model_load_fault_overrides_the_setting(clock: Clock) -> None:
    world = make_world(clock, faults=Faults(model_load_seconds=60.0))
    pod = world.create_pod(request())
    clock.tick(5.0 + 59.0)
    assert world.model_state(pod.id, 8000)[0] == "down"
    clock.tick(1.0)
    assert world.model_state(pod.id, 8000)[0] == "ready"


def test_a_crashed_model_is_down_until_the_pod_restarts(world: World, clock: Clock) -> None:
    pod = world.create_pod(request())
    clock.tick(11.0)
    world.crash_model(pod.id)
    assert world.model_state(pod.id, 8000)[0] == "down"
    assert world.pod_json(pod)["status"] == "RUNNING"  # RunPod still says RUNNING: only the server died
    world.act(pod.id, "restart")
    clock.tick(5.0)
    assert world.model_state(pod.id, 8000)[0] == "ready"


def test_the_platform_can_interrupt_or_break_a_pod(world: World) -> None:
    pod = world.create_pod(request())
    world.set_status(pod.id, "ERROR")
    assert world.pod_json(pod)["status"] == "ERROR" and world.pod_json(pod)["cost"] == 0.0
    with pytest.raises(WorldError) as caught:
        world.set_status(pod.id, "RUNNING")
    assert caught.value.status == 422


@pytest.mark.parametrize(("changes", "problem"), [
    ({"fail_creats": 1}, "$.fail_creats: unknown fault"),
    ({"fail_creates": -1}, "$.fail_creates: expected a non-negative integer"),
    ({"rate_limit": True}, "$.rate_limit: expected a non-negative integer"),
    ({"error_rate": 1.5}, "$.error_rate: must be between 0 and 1"),
    ({"latency_seconds": "slow"}, "$.latency_seconds: expected a non-negative number"),
])
def test_fault_updates_are_checked_and_all_or_nothing(changes: dict[str, Any], problem: str) -> None:
    faults = Faults()
    assert faults.update({"refuse_resumes": 3, **changes}) == [problem]
    assert faults.refuse_resumes == 0  # the valid part was not applied either


def test_per_call_faults_hit_at_their_rate_and_draw_nothing_when_off() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    assert Faults().injected_error(rng) is None and Faults().injected_latency(rng) == 0.0
    assert rng.getstate() == state  # off: the random source is not consumed, so seeded runs stay the same
    assert Faults(error_rate=1.0).injected_error(rng) in (500, 502, 503)
    assert Faults(latency_seconds=2.5, latency_rate=1.0).injected_latency(rng) == 2.5
    assert Faults(latency_seconds=2.5, latency_rate=0.0).injected_latency(rng) == 0.0


def test_a_pod_key_finds_only_its_own_pod(world: World) -> None:
    first, second = world.create_pod(request()), world.create_pod(request())
    assert first.pod_key.startswith("rpa_") and first.pod_key != second.pod_key
    assert world.pod_for_key(first.pod_key) is first
    assert world.pod_for_key("rpa_" + "0" * 40) is None


def test_reset_restores_the_starting_world(clock: Clock) -> None:
    world = make_world(clock, faults=Faults(fail_creates=1))
    world.faults.fail_creates = 0
    world.create_pod(request())
    world.settings.balance_usd = 5.0
    world.reset()
    assert (world.pods, world.billing, world.stock) == ({}, [], initial_stock())
    assert world.faults.fail_creates == 1 and world.settings.balance_usd == 1000.0


# --- catalog ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("free_gpus", "count", "level"), [
    (0, 1, "NONE"), (1, 2, "NONE"), (2, 1, "LOW"), (4, 2, "LOW"), (7, 1, "MEDIUM"), (8, 1, "HIGH"),
])
def test_availability_levels(free_gpus: int, count: int, level: str) -> None:
    assert availability_level(free_gpus, count) == level


def test_catalog_availability_follows_stock_count_and_cloud(world: World) -> None:
    def entry(**kwargs: Any) -> dict[str, Any]:
        return next(e for e in world.gpu_types(availability=True, **kwargs) if e["id"] == "NVIDIA L40S")

    assert entry()["availability"] == "HIGH"
    assert {dc["id"]: dc["availability"] for dc in entry()["dataCenters"]} == {
        "US-KS-2": "HIGH", "EU-RO-1": "MEDIUM", "EUR-IS-1": "LOW"}
    assert entry(count=8)["availability"] == "LOW"
    assert entry(cloud="COMMUNITY")["availability"] == "NONE" and "dataCenters" not in entry(cloud="COMMUNITY")
    world.set_stock("NVIDIA L40S", "US-KS-2", "SECURE", 0)
    assert entry(count=8)["availability"] == "NONE"
    assert entry(min_cuda="12.8")["availability"] == "NONE"  # US-TX-3 has none of them


def test_cuda_versions_compare_numerically() -> None:
    assert cuda_key("12.10") > cuda_key("12.8") > cuda_key("11.8")


# --- persistence -----------------------------------------------------------------------------------


def test_save_and_load_keep_pods_billing_stock_balance_and_keys(world: World, clock: Clock,
                                                                  tmp_path: Path) -> None:
    running = world.create_pod(request())
    stopped = world.create_pod(request(gpu={"id": A5000, "count": 1}))
    clock.tick(100.0)
    world.act(stopped.id, "stop")
    world.settings.balance_usd = 123.0
    path = tmp_path / "sandbox" / "world.json"
    world.save(path)
    assert path.stat().st_mode & 0o777 == 0o600  # holds pod-scoped keys
    assert list(path.parent.iterdir()) == [path]  # no temp file left
    again = make_world(clock)
    assert again.load(path) is True
    assert again.pod_json(again.pods[running.id]) == world.pod_json(running)
    assert again.pods[stopped.id].status == PodStatus.EXITED
    assert again.pods[running.id].pod_key == running.pod_key
    assert again.spend_usd() == pytest.approx(world.spend_usd())
    assert again.stock == world.stock and again.settings.balance_usd == 123.0
    assert again.load(tmp_path / "absent.json") is False


def test_a_saved_world_makes_missing_directories_0700_under_umask_000(world: World, tmp_path: Path) -> None:
    import os

    path = tmp_path / "new" / "deeper" / "world.json"
    previous = os.umask(0)
    try:
        world.save(path)
    finally:
        os.umask(previous)
    assert [path.stat().st_mode & 0o777 for path in (path, path.parent, path.parent.parent)] == [0o600, 0o700, 0o700]


@pytest.mark.parametrize("kind", ["dev-zero", "too-large"])
def test_a_state_path_that_is_not_a_small_regular_file_is_refused_unread(world: World, tmp_path: Path,
                                                                         kind: str) -> None:
    from runpod_manager.sandbox.world import MAX_STATE_BYTES

    path = tmp_path / "world.json"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")  # reading it whole would never end
    else:
        with path.open("wb") as handle:
            handle.truncate(MAX_STATE_BYTES + 1)
    with pytest.raises(OSError, match="not a regular file" if kind == "dev-zero" else "larger than"):
        world.load(path)


def _saved(world: World, clock: Clock) -> dict[str, Any]:
    world.create_pod(request())
    clock.tick(1.0)
    return json.loads(json.dumps(world.to_dict()))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: [d], "expected a JSON object, got array"),
    (lambda d: {**d, "version": 99}, "unsupported sandbox state version 99"),
    (lambda d: {k: v for k, v in d.items() if k != "billing"}, "missing 'billing'"),
    (lambda d: {**d, "pods": [{**d["pods"][0], "gpu_id": "GTX 285"}]}, "unknown GPU type 'GTX 285'"),
    (lambda d: {**d, "pods": [{**d["pods"][0], "created_at": "yesterday"}]}, "non-numeric timestamps"),
    (lambda d: {**d, "pods": [{**d["pods"][0], "status": "SLEEPING"}]}, "'SLEEPING' is not a valid PodStatus"),
    (lambda d: {**d, "pods": [{**d["pods"][0], "gpu_count": 0}]}, "an invalid gpu_count"),
    (lambda d: {**d, "billing": [{**d["billing"][0], "start": None}]}, "has a non-numeric field"),
    (lambda d: {**d, "stock": [["a", "b"]]}, "not a sandbox state file"),
    (lambda d: {**d, "balanceUsd": float("nan")}, "balanceUsd must be a finite number"),
    (lambda d: {**d, "balanceUsd": float("inf")}, "balanceUsd must be a finite number"),
    (lambda d: {**d, "balanceUsd": "lots"}, "balanceUsd must be a finite number"),
])
def test_a_damaged_state_is_refused_with_one_line_and_the_world_is_unchanged(
        world: World, clock: Clock, damage: Any, message: str) -> None:
    data = damage(_saved(world, clock))
    fresh = make_world(clock)
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        fresh.load_dict(data)
    assert "\n" not in str(caught.value)
    assert fresh.pods == {} and fresh.stock == initial_stock()
