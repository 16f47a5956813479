"""Parsing RunPod JSON into rpm's objects, and building the create request from a PodSpec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runpod_manager.errors import ApiError
from runpod_manager.runpod.models import (
    BillingRecord,
    GpuType,
    Pod,
    PodSpec,
    PodStatus,
    parse_timestamp,
)

NOON_UTC = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def full_pod(**overrides: Any) -> dict[str, Any]:
    """A v2 pod as the spec's example shows it, with overrides."""
    pod: dict[str, Any] = {
        "id": "7h9k2m4n6p",
        "name": "rpm-llm-ab12",
        "image": "vllm/vllm-openai:latest",
        "args": "--model x --api-key upstream-secret",
        "disk": 50,
        "ports": ["8000/http", "22/tcp"],
        "env": {"HF_TOKEN": "hf_supersecret", "MODEL": "x"},
        "registry": None,
        "status": "RUNNING",
        "actions": ["stop", "restart", "terminate"],
        "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
        "gpu": {"id": "NVIDIA L40S", "count": 2},
        "cloud": "SECURE",
        "dataCenterId": "EU-RO-1",
        "cudaVersion": "12.8",
        "ssh": {"proxy": None, "direct": None},
        "template": None,
        "cost": 1.72,
        "locked": False,
        "globalNetworking": {"enabled": False},
        "runtime": {
            "uptime": 3600,
            "gpus": [{"util": 94, "memoryUtil": 78}, {"util": 3}],
            "ports": [{"private": 22, "public": 34446, "type": "tcp", "ip": "195.26.233.3"}],
        },
        "createdAt": "2026-06-01T12:00:00Z",
        "startedAt": "2026-06-01T12:02:00.5Z",
    }
    pod.update(overrides)
    return pod


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-06-01T12:00:00Z", NOON_UTC),
        ("2026-06-01t12:00:00z", NOON_UTC),
        ("2026-06-01T12:00:00.144Z", NOON_UTC.replace(microsecond=144000)),
        ("2026-06-01T12:00:00.123456789Z", NOON_UTC.replace(microsecond=123456)),
        ("2026-06-01T14:00:00+02:00", NOON_UTC),
        ("2026-06-01T07:30:00-04:30", NOON_UTC),
        ("2026-06-01T12:00:00+0000", NOON_UTC),
        ("2026-06-01T12:00:00", NOON_UTC),  # no offset: RunPod reports UTC
        ("2026-06-01 12:00:00.123456789 +0000 UTC", NOON_UTC.replace(microsecond=123456)),
        ("2026-06-01 12:00:00 +0000 UTC m=+0.000123", NOON_UTC),
        ("2026-06-01 12:00:00.5 +0000 UTC m=+3.141592653", NOON_UTC.replace(microsecond=500000)),
        ("2026-06-01 14:00:00 +0200 CEST", NOON_UTC),
        ("2026-08-20 06:16:19.43 +0000 UTC", datetime(2026, 8, 20, 6, 16, 19, 430000, tzinfo=UTC)),
        ("  2026-06-01T12:00:00Z\n", NOON_UTC),
    ],
)
def test_parse_timestamp_reads_rfc3339_and_go_formats(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "2026-06-01", "Rented by User: Mon Jun 01 2026", "2026-06-01T25:00:00Z", "12:00:00"],
)
def test_parse_timestamp_rejects_other_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"timestamp|hour"):
        parse_timestamp(text)


aware_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2999, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]),
)


@given(aware_datetimes)
def test_any_instant_round_trips_through_both_formats(moment: datetime) -> None:
    offset = moment.strftime("%z")
    go_style = moment.strftime("%Y-%m-%d %H:%M:%S.%f ") + f"{offset} XYZ m=+12.5"
    assert parse_timestamp(moment.isoformat()) == moment
    assert parse_timestamp(go_style) == moment


# --- PodStatus --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["RUNNING", "running", " Exited "])
def test_known_statuses_parse_case_insensitively(text: str) -> None:
    assert PodStatus.from_api(text) in (PodStatus.RUNNING, PodStatus.EXITED)


def test_unknown_status_is_unknown_not_a_crash() -> None:
    pod = Pod.from_api(full_pod(status="MIGRATING"))
    assert pod.status is PodStatus.UNKNOWN
    assert pod.status_text == "MIGRATING"


# --- Pod --------------------------------------------------------------------------------------


def test_full_pod_parses_every_field() -> None:
    pod = Pod.from_api(full_pod())
    assert pod.id == "7h9k2m4n6p"
    assert pod.name == "rpm-llm-ab12"
    assert pod.status is PodStatus.RUNNING
    assert pod.actions == ("stop", "restart", "terminate")
    assert pod.image == "vllm/vllm-openai:latest"
    assert (pod.gpu_type_id, pod.gpu_count) == ("NVIDIA L40S", 2)
    assert (pod.cloud, pod.data_center_id, pod.cuda_version) == ("SECURE", "EU-RO-1", "12.8")
    assert pod.cost_per_hour == pytest.approx(1.72)
    assert pod.created_at == NOON_UTC
    assert pod.started_at == NOON_UTC.replace(minute=2, microsecond=500000)
    assert dict(pod.env) == {"HF_TOKEN": "hf_supersecret", "MODEL": "x"}
    assert pod.ports == ("8000/http", "22/tcp")
    assert pod.args == "--model x --api-key upstream-secret"
    assert pod.runtime is not None
    assert pod.runtime.uptime_seconds == 3600
    assert [(g.util_percent, g.memory_util_percent) for g in pod.runtime.gpus] == [(94, 78), (3, None)]
    (port,) = pod.runtime.ports
    assert (port.private_port, port.public_port, port.type, port.ip) == (22, 34446, "tcp", "195.26.233.3")
    assert pod.proxy_url(8000) == "https://7h9k2m4n6p-8000.proxy.runpod.net"


def test_minimal_pod_gets_safe_defaults() -> None:
    pod = Pod.from_api({"id": "p1", "name": "n", "status": "EXITED"})
    assert pod.status is PodStatus.EXITED
    assert (pod.actions, pod.image, pod.gpu_type_id, pod.gpu_count) == ((), "", None, 0)
    assert (pod.cost_per_hour, pod.created_at, pod.runtime, dict(pod.env), pod.ports) == (
        0.0,
        None,
        None,
        {},
        (),
    )


def test_unknown_fields_are_ignored() -> None:
    pod = Pod.from_api(full_pod(brandNewField={"nested": [1, 2]}, cluster={"id": "c", "rank": 0}))
    assert pod.id == "7h9k2m4n6p"


def test_go_style_timestamps_in_a_pod() -> None:
    pod = Pod.from_api(full_pod(createdAt="2026-06-01 12:00:00.43 +0000 UTC", startedAt=None))
    assert pod.created_at == NOON_UTC.replace(microsecond=430000)
    assert pod.started_at is None


def test_odd_optional_fields_are_treated_as_absent() -> None:
    pod = Pod.from_api(
        full_pod(
            runtime="starting",
            env=["A=1"],
            ports="8888/http,22/tcp",
            actions=["stop", 7],
            cost="0.74",
            gpu="NVIDIA L40S",
            createdAt="Rented by User: Mon Jun 01",
            args=None,
        )
    )
    assert pod.runtime is None
    assert dict(pod.env) == {}
    assert pod.ports == ("8888/http", "22/tcp")  # GraphQL-era comma string
    assert pod.actions == ("stop",)
    assert pod.cost_per_hour == pytest.approx(0.74)  # v1 sent cost as a numeric string
    assert (pod.gpu_type_id, pod.gpu_count) == (None, 0)
    assert pod.created_at is None
    assert pod.args == ""


def test_v1_field_names_are_read_when_v2_ones_are_absent() -> None:
    data = full_pod(imageName="img:1", costPerHr=0.5)
    del data["image"], data["cost"]
    pod = Pod.from_api(data)
    assert (pod.image, pod.cost_per_hour) == ("img:1", 0.5)


@pytest.mark.parametrize("field", ["id", "name", "status"])
def test_missing_required_field_names_it(field: str) -> None:
    data = full_pod()
    del data[field]
    with pytest.raises(ApiError, match=f"without '{field}'"):
        Pod.from_api(data)


@pytest.mark.parametrize(("field", "value"), [("id", 17), ("name", ["x"]), ("status", None), ("status", 3)])
def test_wrongly_typed_required_field_names_it(field: str, value: object) -> None:
    with pytest.raises(ApiError, match=f"'{field}'"):
        Pod.from_api(full_pod(**{field: value}))


def test_empty_id_is_rejected_but_empty_name_is_allowed() -> None:
    with pytest.raises(ApiError, match="empty 'id'"):
        Pod.from_api(full_pod(id=""))
    assert Pod.from_api(full_pod(name="")).name == ""


@pytest.mark.parametrize("data", [None, [], "pod", 42])
def test_non_object_pod_is_an_api_error(data: object) -> None:
    with pytest.raises(ApiError, match="not a JSON object"):
        Pod.from_api(data)


def test_pod_repr_hides_env_values_and_args() -> None:
    pod = Pod.from_api(full_pod())
    text = repr(pod)
    assert "hf_supersecret" not in text
    assert "upstream-secret" not in text
    assert "HF_TOKEN" in text  # keys are not secret and help debugging
    assert "7h9k2m4n6p" in text
    assert str(pod) == text


def test_pod_is_frozen_and_hashable() -> None:
    pod = Pod.from_api(full_pod())
    assert hash(pod) == hash(Pod.from_api(full_pod()))
    assert pod == Pod.from_api(full_pod())
    with pytest.raises(AttributeError):
        pod.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        pod.env["HF_TOKEN"] = "x"  # type: ignore[index]


# --- GpuType ----------------------------------------------------------------------------------

GPU_EXAMPLE = {
    "id": "NVIDIA GeForce RTX 4090",
    "name": "RTX 4090",
    "pool": "ADA_24",
    "manufacturer": "NVIDIA",
    "memory": 24,
    "secure": True,
    "community": True,
    "price": {"secure": 0.44, "community": 0.31, "serverless": 1.1},
    "maxCount": {"secure": 8, "community": 4},
    "availability": "HIGH",
    "dataCenters": [{"id": "US-KS-2", "name": "US Kansas 2", "availability": "HIGH"}],
}


def test_gpu_type_parses() -> None:
    gpu = GpuType.from_api(GPU_EXAMPLE)
    assert (gpu.id, gpu.name, gpu.memory_gb, gpu.secure, gpu.community) == (
        "NVIDIA GeForce RTX 4090",
        "RTX 4090",
        24,
        True,
        True,
    )
    assert (gpu.price_secure, gpu.price_community) == (0.44, 0.31)
    assert (gpu.max_count_secure, gpu.max_count_community) == (8, 4)
    assert gpu.availability == "HIGH"
    assert [(d.id, d.name, d.availability) for d in gpu.data_centers] == [("US-KS-2", "US Kansas 2", "HIGH")]
    assert gpu.price_for("COMMUNITY") == 0.31


def test_gpu_type_without_availability_or_prices() -> None:
    gpu = GpuType.from_api({"id": "AMD Instinct MI300X OAM", "secure": "yes"})
    assert (gpu.name, gpu.availability, gpu.data_centers) == ("AMD Instinct MI300X OAM", None, ())
    assert (gpu.price_secure, gpu.memory_gb, gpu.secure) == (None, 0, False)


def test_gpu_type_without_id_is_an_error() -> None:
    with pytest.raises(ApiError, match="GPU type without 'id'"):
        GpuType.from_api({"name": "x"})


# --- BillingRecord ----------------------------------------------------------------------------


def test_billing_record_parses_and_requires_total() -> None:
    record = BillingRecord.from_api(
        {
            "startTime": "2026-06-01T00:00:00Z",
            "endTime": "2026-06-02T00:00:00Z",
            "podId": "p",
            "totalAmount": 2,
        }
    )
    assert (record.pod_id, record.total_amount_usd) == ("p", 2.0)
    assert record.start == datetime(2026, 6, 1, tzinfo=UTC)
    with pytest.raises(ApiError, match="totalAmount"):
        BillingRecord.from_api({"podId": "p", "totalAmount": "lots"})


# --- numbers and dates no API means -------------------------------------------------------------
# JSON from RunPod (or a proxy in between) may carry NaN, Infinity, 1e400 or a 400-digit integer: a NaN cost
# or price compares false with every limit (a NaN-priced GPU passes max_price_per_hour), and a NaN spend
# never reaches the cap. Such a value is unknown, never a number to act on, and never a crash.

HUGE_INT = 10**400
IMPOSSIBLE_AMOUNTS = [float("nan"), float("inf"), float("-inf"), "nan", "inf", "1e400", HUGE_INT, -0.5, "-2"]
AMOUNT_IDS = ["nan", "inf", "-inf", "nan-text", "inf-text", "1e400-text", "400-digits", "negative", "negative-text"]


@pytest.mark.parametrize("cost", IMPOSSIBLE_AMOUNTS, ids=AMOUNT_IDS)
def test_a_pod_cost_that_is_not_a_finite_price_is_unknown(cost: object) -> None:
    pod = Pod.from_api(full_pod(cost=cost))
    assert pod.cost_per_hour == 0.0


@pytest.mark.parametrize("price", IMPOSSIBLE_AMOUNTS, ids=AMOUNT_IDS)
def test_a_gpu_price_that_is_not_a_finite_price_is_absent(price: object) -> None:
    gpu = GpuType.from_api({**GPU_EXAMPLE, "price": {"secure": price, "community": price}})
    assert (gpu.price_secure, gpu.price_community) == (None, None)


@pytest.mark.parametrize("total", IMPOSSIBLE_AMOUNTS, ids=AMOUNT_IDS)
def test_a_billing_total_that_is_not_a_finite_amount_is_an_api_error(total: object) -> None:
    with pytest.raises(ApiError, match="totalAmount"):
        BillingRecord.from_api({"podId": "p", "totalAmount": total})


@pytest.mark.parametrize("count", [HUGE_INT, float("nan"), float("inf"), 1e400],
                         ids=["400-digits", "nan", "inf", "1e400"])
def test_an_impossible_integer_is_absent_not_a_crash(count: object) -> None:
    pod = Pod.from_api(full_pod(gpu={"id": "NVIDIA L40S", "count": count}))
    assert pod.gpu_count == 1  # the spec's default


@pytest.mark.parametrize("stamp", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00",
                                   "9999-12-31 23:00:00 -0500 UTC"])
def test_a_timestamp_beyond_datetimes_range_is_absent_not_a_crash(stamp: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_timestamp(stamp)
    assert Pod.from_api(full_pod(createdAt=stamp)).created_at is None


# --- PodSpec ----------------------------------------------------------------------------------


def spec(**overrides: Any) -> PodSpec:
    fields: dict[str, Any] = {
        "name": "rpm-llm-ab12",
        "image": "vllm/vllm-openai:latest",
        "gpu_type_id": "NVIDIA L40S",
    }
    fields.update(overrides)
    return PodSpec(**fields)


def test_minimal_spec_sends_only_what_is_set() -> None:
    assert spec().to_api() == {
        "name": "rpm-llm-ab12",
        "image": "vllm/vllm-openai:latest",
        "gpu": {"id": "NVIDIA L40S", "count": 1},
        "cloud": "SECURE",
    }


def test_full_spec_with_persistent_volume() -> None:
    body = spec(
        gpu_count=2,
        cloud="COMMUNITY",
        container_disk_gb=40,
        volume_gb=100,
        volume_mount_path="/data",
        ports=["8000/http", "22/tcp"],
        env={"HF_TOKEN": "hf_x"},
        args="--model x",
        data_center_ids=["EU-RO-1", "US-TX-3"],
        allowed_cuda_versions=["12.8", "12.6"],
        start_ssh=True,
    ).to_api()
    assert body == {
        "name": "rpm-llm-ab12",
        "image": "vllm/vllm-openai:latest",
        "gpu": {"id": "NVIDIA L40S", "count": 2, "allowedCudaVersions": ["12.8", "12.6"]},
        "cloud": "COMMUNITY",
        "disk": 40,
        "mounts": {"persistent": {"size": 100, "path": "/data"}},
        "ports": ["8000/http", "22/tcp"],
        "env": {"HF_TOKEN": "hf_x"},
        "args": "--model x",
        "dataCenterIds": ["EU-RO-1", "US-TX-3"],
        "startSsh": True,
    }


def test_template_network_volume_and_min_cuda() -> None:
    body = spec(
        image=None,
        template_id="tmpl123",
        network_volume_id="vol_xyz",
        network_volume_mount_path="/runpod-volume",
        min_cuda_version="12.4",
        volume_gb=0,
    ).to_api()
    assert "image" not in body
    assert body["templateId"] == "tmpl123"
    assert body["mounts"] == {"network": [{"volumeId": "vol_xyz", "path": "/runpod-volume"}]}
    assert body["gpu"] == {"id": "NVIDIA L40S", "count": 1, "minCudaVersion": "12.4"}


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"name": ""}, "name is empty"),
        ({"image": None}, "image or a template_id"),
        ({"gpu_type_id": ""}, "gpu_type_id"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"cloud": "ALL"}, "cloud"),
        ({"container_disk_gb": 0}, "container_disk_gb"),
        ({"volume_gb": 5}, "volume_gb"),
        ({"volume_gb": 20, "network_volume_id": "vol"}, "not both"),
        ({"allowed_cuda_versions": ("12.8",), "min_cuda_version": "12.1"}, "mutually exclusive"),
        ({"allowed_cuda_versions": ("12",)}, "major.minor"),
        ({"min_cuda_version": "twelve"}, "major.minor"),
    ],
)
def test_impossible_specs_are_rejected(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        spec(**overrides)


def test_spec_repr_hides_env_values_and_args_and_copies_inputs() -> None:
    env = {"HF_TOKEN": "hf_supersecret"}
    pod_spec = spec(env=env, args="--api-key upstream-secret")
    env["HF_TOKEN"] = "changed"
    assert pod_spec.to_api()["env"] == {"HF_TOKEN": "hf_supersecret"}
    text = repr(pod_spec)
    assert "hf_supersecret" not in text
    assert "upstream-secret" not in text
    assert "HF_TOKEN" in text
