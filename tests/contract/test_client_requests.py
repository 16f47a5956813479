"""What the client sends conforms to the official v2 spec, and the spec's own examples parse.

Request bodies are captured off the wire (not taken from `PodSpec.to_api()` directly) so that the
test covers what actually leaves the client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses

from runpod_manager.runpod import GpuType, Pod, PodSpec, PodStatus, RunPodClient
from runpod_manager.runpod.models import BillingRecord, parse_timestamp
from tests.support.spec import assert_valid, load_spec, request_validator, schema_validator

pytestmark = pytest.mark.contract

BASE = "https://api.runpod.io"
KEY = "contract-test-key"
POD_EXAMPLE_ID = "7h9k2m4n6p"

SPEC_VARIANTS: dict[str, PodSpec] = {
    "image with persistent volume": PodSpec(
        name="rpm-llm-ab12",
        image="vllm/vllm-openai:latest",
        gpu_type_id="NVIDIA L40S",
        container_disk_gb=40,
        volume_gb=50,
        ports=("8000/http", "22/tcp"),
        env={"HF_TOKEN": "hf_x", "MODEL": "meta-llama/Llama-3.1-8B-Instruct"},
        args="--model meta-llama/Llama-3.1-8B-Instruct --max-model-len 8192",
        start_ssh=True,
    ),
    "template id only": PodSpec(
        name="rpm-tmpl-cd34", template_id="30zmvf89kd", gpu_type_id="NVIDIA H100 80GB HBM3"
    ),
    "template with image override": PodSpec(
        name="rpm-tmpl-ef56",
        template_id="30zmvf89kd",
        image="vllm/vllm-openai:v0.9.0",
        gpu_type_id="NVIDIA L40S",
    ),
    "network volume": PodSpec(
        name="rpm-net-gh78",
        image="vllm/vllm-openai:latest",
        gpu_type_id="NVIDIA A100 80GB PCIe",
        network_volume_id="vol_xyz",
        network_volume_mount_path="/runpod-volume",
        data_center_ids=("EU-RO-1",),
    ),
    "allowed CUDA versions": PodSpec(
        name="rpm-cuda-ij90",
        image="vllm/vllm-openai:latest",
        gpu_type_id="NVIDIA GeForce RTX 4090",
        allowed_cuda_versions=("12.8", "12.6"),
    ),
    "minimum CUDA version": PodSpec(
        name="rpm-cuda-kl12",
        image="vllm/vllm-openai:latest",
        gpu_type_id="NVIDIA L40S",
        min_cuda_version="12.4",
    ),
    "several data centers, multi-GPU": PodSpec(
        name="rpm-multi-mn34",
        image="vllm/vllm-openai:latest",
        gpu_type_id="NVIDIA H100 80GB HBM3",
        gpu_count=8,
        data_center_ids=("US-TX-3", "US-KS-2", "EU-RO-1"),
        volume_gb=200,
        volume_mount_path="/models",
    ),
    "community cloud": PodSpec(
        name="rpm-comm-op56",
        image="vllm/vllm-openai:latest",
        gpu_type_id="NVIDIA GeForce RTX 3090",
        cloud="COMMUNITY",
        ports=("8000/http",),
        args="",
    ),
}


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def client() -> Iterator[RunPodClient]:
    with RunPodClient(KEY, sleep=lambda _: None) as runpod:
        yield runpod


def _body_of(call: Any) -> Any:
    body = call.request.body
    assert isinstance(body, bytes | str)
    return json.loads(body)


def minimal_pod(status: str = "RUNNING") -> dict[str, Any]:
    return {"id": "pod1", "name": "n", "status": status}


@pytest.mark.parametrize("variant", list(SPEC_VARIANTS))
def test_create_bodies_validate_against_create_pod_request(
    variant: str, client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(f"{BASE}/v2/pods", json=minimal_pod("PROVISIONING"), status=201)
    client.create_pod(SPEC_VARIANTS[variant])
    (call,) = api.calls
    assert call.request.headers["Content-Type"] == "application/json"
    body = _body_of(call)
    assert_valid(request_validator("POST", "/v2/pods"), body, f"create body ({variant})")


@pytest.mark.parametrize(
    "bad_body",
    [
        {"name": "x", "gpu": {"id": "NVIDIA L40S", "count": 1}},  # neither image nor templateId
        {"name": "x", "image": "i", "gpu": {"id": "g"}, "gpuTypeIds": ["g"]},  # v1 field: unknown in v2
        {"name": "x", "image": "i", "gpu": {"id": "g"}, "mounts": {"persistent": {"size": 5, "path": "/w"}}},
        {"name": "x", "image": "i", "gpu": {"id": "g", "allowedCudaVersions": ["12"]}},
    ],
)
def test_the_validator_rejects_bodies_the_spec_forbids(bad_body: dict[str, Any]) -> None:
    # Guards the test above against a validator that accepts anything.
    with pytest.raises(AssertionError, match="does not conform"):
        assert_valid(request_validator("POST", "/v2/pods"), bad_body, "bad body")


@pytest.mark.parametrize("action", ["start", "stop"])
def test_action_bodies_validate_against_pod_action_request(
    action: str, client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.post(f"{BASE}/v2/pods/pod1/action", json=minimal_pod())
    getattr(client, f"{action}_pod")("pod1")
    body = _body_of(api.calls[0])
    assert_valid(request_validator("POST", "/v2/pods/{id}/action"), body, f"{action} body")
    with pytest.raises(AssertionError):
        assert_valid(
            request_validator("POST", "/v2/pods/{id}/action"), {**body, "force": True}, "extra field"
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"args": "sh -c 'python3 -c pass & exec vllm serve x'"},
        {"env": {"HF_TOKEN": "hf_x"}, "ports": ("8000/http", "22/tcp")},
        {"name": "rpm-renamed", "image": "vllm/vllm-openai:v0.9.0"},
    ],
)
def test_update_bodies_validate_against_update_pod_request(
    changes: dict[str, Any], client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.patch(f"{BASE}/v2/pods/pod1", json=minimal_pod())
    client.update_pod("pod1", **changes)
    assert_valid(
        request_validator("PATCH", "/v2/pods/{id}"), _body_of(api.calls[0]), f"update body {changes}"
    )


def _operation_parameters(method: str, path: str) -> dict[str, dict[str, Any]]:
    spec = load_spec()
    item = spec["paths"][path]
    declared = [*item.get("parameters", []), *item[method.lower()].get("parameters", [])]
    resolved = {}
    for entry in declared:
        parameter = (
            spec["components"]["parameters"][entry["$ref"].rsplit("/", 1)[-1]] if "$ref" in entry else entry
        )
        if parameter["in"] == "query":
            resolved[parameter["name"]] = parameter
    return resolved


def _assert_query_conforms(url: str | None, method: str, path: str) -> None:
    assert url is not None
    declared = _operation_parameters(method, path)
    for name, value in parse_qsl(urlsplit(url).query):
        assert name in declared, f"{method} {path}: query parameter {name!r} is not in the spec"
        schema = declared[name]["schema"]
        instance: Any = value
        kind = schema.get("type")
        if kind == "array":  # style=form, explode=false: comma-separated
            instance = value.split(",")
        elif kind == "integer":
            instance = int(value)
        assert_valid(schema_validator(schema), instance, f"{method} {path} ?{name}={value}")


@pytest.mark.parametrize(("gpu_count", "cloud"), [(1, "SECURE"), (4, "COMMUNITY")])
def test_catalog_query_parameters_are_declared_and_valid(
    gpu_count: int, cloud: str, client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.get(f"{BASE}/v2/catalog/gpus", json={"gpus": []})
    client.list_gpu_types(gpu_count=gpu_count, cloud=cloud)
    client.list_gpu_types(include_availability=False)
    for call in api.calls:
        _assert_query_conforms(call.request.url, "GET", "/v2/catalog/gpus")


def test_billing_and_logs_query_parameters_are_declared_and_valid(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    api.get(f"{BASE}/v2/billing/pods", json={"records": [], "metadata": {}})
    api.get(f"{BASE}/v2/pods/pod1/logs", body="", content_type="text/event-stream")
    client.pod_spend_usd("pod1", since=datetime(2026, 6, 1, 9, 30, 15, 123, tzinfo=UTC))
    client.pod_logs("pod1", tail=250)
    client.billing_by_pod(since=datetime(2026, 6, 1, 9, 30, tzinfo=UTC), until=datetime(2026, 6, 8, tzinfo=UTC))
    _assert_query_conforms(api.calls[0].request.url, "GET", "/v2/billing/pods")
    _assert_query_conforms(api.calls[1].request.url, "GET", "/v2/pods/{id}/logs")
    _assert_query_conforms(api.calls[2].request.url, "GET", "/v2/billing/pods")  # every pod, hourly (rpm report)
    assert "bucketSize=hour" in str(api.calls[2].request.url) and "podId" not in str(api.calls[2].request.url)


# --- the spec's own response examples parse ---------------------------------------------------


def _response_examples(method: str, path: str, status: str) -> list[Any]:
    spec = load_spec()
    content = spec["paths"][path][method]["responses"][status]["content"]
    return [example["value"] for media in content.values() for example in media.get("examples", {}).values()]


def _pod_examples() -> list[dict[str, Any]]:
    pods = [pod for listing in _response_examples("get", "/v2/pods", "200") for pod in listing["pods"]]
    pods += _response_examples("get", "/v2/pods/{id}", "200")
    pods += _response_examples("post", "/v2/pods", "201")
    pods += _response_examples("post", "/v2/pods/{id}/action", "200")
    return pods


def test_spec_pod_examples_parse() -> None:
    examples = _pod_examples()
    assert len(examples) >= 4
    for example in examples:
        pod = Pod.from_api(example)
        assert pod.id == example["id"]
        assert pod.name == example["name"]
        assert pod.status is PodStatus(example["status"])
        assert pod.actions == tuple(example["actions"])
        assert pod.image == example["image"]
        assert pod.gpu_type_id == example["gpu"]["id"]
        assert pod.gpu_count == example["gpu"]["count"]
        assert pod.cloud == example["cloud"]
        assert pod.data_center_id == example["dataCenterId"]
        assert pod.cost_per_hour == pytest.approx(example["cost"])
        assert pod.created_at == parse_timestamp(example["createdAt"])
        assert dict(pod.env) == example["env"]
        assert pod.ports == tuple(example["ports"])
        if example["runtime"] is not None:
            assert pod.runtime is not None
            assert pod.runtime.uptime_seconds == example["runtime"].get("uptime")


def test_spec_pod_examples_parse_through_the_client(
    client: RunPodClient, api: responses.RequestsMock
) -> None:
    (listing,) = _response_examples("get", "/v2/pods", "200")
    (single,) = _response_examples("get", "/v2/pods/{id}", "200")
    api.get(f"{BASE}/v2/pods", json=listing)
    api.get(f"{BASE}/v2/pods/{POD_EXAMPLE_ID}", json=single)
    assert [pod.id for pod in client.list_pods()] == [pod["id"] for pod in listing["pods"]]
    assert client.get_pod(POD_EXAMPLE_ID).id == single["id"]


def test_spec_gpu_and_billing_examples_parse() -> None:
    (catalog,) = _response_examples("get", "/v2/catalog/gpus", "200")
    for example in catalog["gpus"]:
        gpu = GpuType.from_api(example)
        assert (gpu.id, gpu.name, gpu.memory_gb) == (example["id"], example["name"], example["memory"])
        assert gpu.price_secure == example["price"]["secure"]
        assert gpu.availability == example.get("availability")
    (billing,) = _response_examples("get", "/v2/billing/pods", "200")
    total = sum(BillingRecord.from_api(record).total_amount_usd for record in billing["records"])
    assert total == pytest.approx(billing["metadata"]["totals"]["totalAmount"])
