"""Request rules of RunPod's REST v2, written out for the emulator (the package cannot ship the spec).

Two layers, as the spec itself splits them:
- schema rules (types, required fields, enums, patterns, minimums, no unknown fields) → 422, with every
  violation listed in `errors` as `$.path: message`;
- handler rules that the schema cannot express (exactly one of gpu/cpu, CUDA set vs floor, at most one
  mount kind, port syntax) → 400 with one `detail`.

The schemas below are a small dialect of our own: type, properties, required, closed (no other keys),
values (schema of every value of an open map), items, max_items, enum, min_length, minimum, maximum,
pattern, nullable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runpod_manager.sandbox.billing import BUCKET_SIZES

Schema = Mapping[str, Any]

VALIDATION_DETAIL = "Request validation failed."
_CUDA_VERSION = r"^\d+\.\d+$"
_PORT = re.compile(r"^(\d{1,5})/(http|tcp)$")


class RequestInvalidError(Exception):
    """The request breaks a rule: `status` is 400 (handler rule) or 422 (schema), `errors` the violations."""

    def __init__(self, status: int, detail: str, errors: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []


# --- the schemas ------------------------------------------------------------------------------------

_STRING: Schema = {"type": "string"}
_BOOLEAN: Schema = {"type": "boolean"}
_STRING_LIST: Schema = {"type": "array", "items": _STRING}
_ENV: Schema = {"type": "object", "values": _STRING}
_PERSISTENT_MOUNT: Schema = {
    "type": "object", "closed": True, "required": ("size", "path"),
    "properties": {"size": {"type": "integer", "minimum": 10}, "path": _STRING},
}
_NETWORK_MOUNT: Schema = {
    "type": "object", "closed": True, "required": ("volumeId", "path"),
    "properties": {"volumeId": _STRING, "path": _STRING},
}
_MOUNTS: Schema = {
    "type": "object", "closed": True,
    "properties": {"persistent": _PERSISTENT_MOUNT,
                   "network": {"type": "array", "max_items": 1, "items": _NETWORK_MOUNT}},
}
# Fields every container-bearing body shares (the spec's ContainerConfig).
_CONTAINER_FIELDS: dict[str, Schema] = {
    "args": _STRING,
    "disk": {"type": "integer", "minimum": 1},
    "env": _ENV,
    "image": _STRING,
    "ports": _STRING_LIST,
    "registry": {"type": "string", "nullable": True},
}
_CLOUDS = ("SECURE", "COMMUNITY")
_POD_ACTIONS = ("start", "stop", "restart", "terminate")

CREATE_POD: Schema = {
    "type": "object", "closed": True, "required": ("name",),
    "properties": {
        **_CONTAINER_FIELDS,
        "name": {"type": "string", "min_length": 1},
        "cloud": {"type": "string", "enum": _CLOUDS},
        "cpu": {"type": "object", "closed": True, "required": ("id", "vcpuCount"),
                "properties": {"id": {"type": "string", "min_length": 1},
                               "vcpuCount": {"type": "integer", "minimum": 2}}},
        "dataCenterIds": _STRING_LIST,
        "globalNetworking": _BOOLEAN,
        "gpu": {"type": "object", "closed": True, "required": ("id",),
                "properties": {"id": _STRING,
                               "count": {"type": "integer", "minimum": 1},
                               "allowedCudaVersions": {"type": "array",
                                                       "items": {"type": "string", "pattern": _CUDA_VERSION}},
                               "minCudaVersion": {"type": "string", "pattern": _CUDA_VERSION}}},
        "mounts": _MOUNTS,
        "startJupyter": _BOOLEAN,
        "startSsh": _BOOLEAN,
        "templateId": {"type": "string", "min_length": 1},
    },
}

UPDATE_POD: Schema = {
    "type": "object", "closed": True,
    "properties": {
        **_CONTAINER_FIELDS,
        "globalNetworking": _BOOLEAN,
        "locked": _BOOLEAN,
        "mounts": _MOUNTS,
        "name": {"type": "string", "min_length": 1},
        "templateId": _STRING,
    },
}

POD_ACTION: Schema = {
    "type": "object", "closed": True, "required": ("action",),
    "properties": {"action": {"type": "string", "enum": _POD_ACTIONS}},
}


# --- the engine -------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_type(value: Any, expected: str) -> bool:
    actual = _json_type(value)
    if expected == "number":
        return actual in ("integer", "number")
    if expected == "integer":
        # JSON Schema counts 2.0 as an integer: it is the same number.
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    return actual == expected


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{json.dumps(key)}]"


def _quoted(values: Any) -> str:
    return ", ".join(f"'{v}'" for v in values)


def check(schema: Schema, value: Any, path: str = "$") -> list[str]:
    """Every violation of `schema` by `value`, as `$.path: message` strings."""
    if value is None and schema.get("nullable"):
        return []
    expected = schema["type"]
    if not _is_type(value, expected):
        return [f"{path}: expected {expected}, got {_json_type(value)}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: value must be one of {_quoted(schema['enum'])}")
    if "min_length" in schema and len(value) < schema["min_length"]:
        problems.append(f"{path}: length must be >= {schema['min_length']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{path}: value {json.dumps(value)} does not match pattern '{schema['pattern']}'")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{path}: must be >= {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{path}: must be <= {schema['maximum']}")
    if expected == "array":
        if "max_items" in schema and len(value) > schema["max_items"]:
            problems.append(f"{path}: must have at most {schema['max_items']} items")
        for index, item in enumerate(value):
            problems += check(schema["items"], item, f"{path}[{index}]")
    if expected == "object":
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                problems.append(f"{path}: missing required property '{name}'")
        if schema.get("closed"):
            unknown = [key for key in value if key not in properties]
            if unknown:
                problems.append(f"{path}: additional properties {_quoted(unknown)} not allowed")
        for key, item in value.items():
            if key in properties:
                problems += check(properties[key], item, _child(path, key))
            elif "values" in schema:
                problems += check(schema["values"], item, _child(path, key))
    return problems


def _schema_errors(schema: Schema, body: Any) -> None:
    problems = check(schema, body)
    if problems:
        raise RequestInvalidError(422, VALIDATION_DETAIL, problems)


def _normalise_integers(body: dict[str, Any], *paths: tuple[str, ...]) -> None:
    """2.0 passed the schema as an integer; store it as 2."""
    for path in paths:
        node: Any = body
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), float):
            node[path[-1]] = int(node[path[-1]])


# --- bodies -------------------------------------------------------------------------------------------


def parse_json(raw: bytes) -> Any:
    """The body as JSON; malformed JSON is a 400, as JSON APIs answer before any schema check."""
    if not raw.strip():
        raise RequestInvalidError(400, "request body is required (a JSON object)")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestInvalidError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        # `[[[[...` a few thousand deep fits in the size limit and exhausts the decoder's stack.
        raise RequestInvalidError(400, "request body is not valid JSON: nested too deeply") from None


def _check_ports(ports: list[str] | None) -> None:
    for index, port in enumerate(ports or []):
        match = _PORT.match(port)
        if not match or not 1 <= int(match.group(1)) <= 65535:
            raise RequestInvalidError(400, f"ports[{index}]: '{port}' is not '<port>/http' or '<port>/tcp'")


def _check_mounts(mounts: Mapping[str, Any] | None) -> None:
    if mounts and "persistent" in mounts and "network" in mounts:
        raise RequestInvalidError(400, "mounts: set at most one of 'persistent' and 'network'")


def validate_create_pod(body: Any) -> dict[str, Any]:
    """A CreatePodRequest that passed every rule, or RequestInvalidError (422 schema, 400 handler rule)."""
    _schema_errors(CREATE_POD, body)
    if "templateId" not in body and "image" not in body:
        problem = "$: missing required property 'image' (no templateId)"
        raise RequestInvalidError(422, VALIDATION_DETAIL, [problem])
    if ("gpu" in body) == ("cpu" in body):
        raise RequestInvalidError(400, "set exactly one of 'gpu' and 'cpu'")
    gpu = body.get("gpu") or {}
    if gpu.get("allowedCudaVersions") and "minCudaVersion" in gpu:
        raise RequestInvalidError(400, "gpu: a non-empty allowedCudaVersions and minCudaVersion "
                                       "cannot be combined")
    _check_mounts(body.get("mounts"))
    if "cpu" in body and "persistent" in (body.get("mounts") or {}):
        raise RequestInvalidError(400, "mounts.persistent is not allowed on CPU pods")
    _check_ports(body.get("ports"))
    _normalise_integers(body, ("disk",), ("gpu", "count"), ("cpu", "vcpuCount"),
                        ("mounts", "persistent", "size"))
    return dict(body)


def validate_update_pod(body: Any) -> dict[str, Any]:
    """An UpdatePodRequest that passed every rule, or RequestInvalidError."""
    _schema_errors(UPDATE_POD, body)
    _check_mounts(body.get("mounts"))
    _check_ports(body.get("ports"))
    _normalise_integers(body, ("disk",), ("mounts", "persistent", "size"))
    return dict(body)


def validate_pod_action(body: Any) -> str:
    """The action of a PodActionRequest, or RequestInvalidError (422)."""
    _schema_errors(POD_ACTION, body)
    return str(body["action"])


# --- query parameters ----------------------------------------------------------------------------------


def _csv(query: Mapping[str, str], name: str) -> list[str] | None:
    if name not in query:
        return None
    return [part.strip() for part in query[name].split(",") if part.strip()]


def _integer(query: Mapping[str, str], name: str, minimum: int, problems: list[str]) -> int | None:
    if name not in query:
        return None
    text = query[name]
    if not re.fullmatch(r"[+-]?\d+", text.strip()):
        problems.append(f"$.query.{name}: expected integer, got {json.dumps(text)}")
        return None
    number = int(text)
    if number < minimum:
        problems.append(f"$.query.{name}: must be >= {minimum}")
        return None
    return number


def _enum_list(values: list[str] | None, name: str, allowed: tuple[str, ...], problems: list[str]) -> None:
    for value in values or []:
        if value not in allowed:
            problems.append(f"$.query.{name}: value must be one of {_quoted(allowed)}")


def parse_timestamp(text: str) -> float | None:
    """RFC 3339 (`Z` or offset) to epoch seconds; None when it is not one."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", text):
        return None
    try:
        return datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class CatalogQuery:
    availability: bool
    count: int
    cloud: str
    countries: list[str] | None
    cuda_versions: list[str] | None
    min_cuda: str | None


def parse_catalog_query(query: Mapping[str, str]) -> CatalogQuery:
    """GET /v2/catalog/gpus parameters: malformed values → 422, misused combinations → 400."""
    problems: list[str] = []
    include = _csv(query, "include")
    _enum_list(include, "include", ("AVAILABILITY",), problems)
    if include is not None and len(include) > 1:
        problems.append("$.query.include: must have at most 1 items")
    product = _csv(query, "product")
    _enum_list(product, "product", ("POD", "CLUSTER", "SERVERLESS"), problems)
    count = _integer(query, "count", 1, problems)
    cloud = query.get("cloud")
    if cloud is not None and cloud not in _CLOUDS:
        problems.append(f"$.query.cloud: value must be one of {_quoted(_CLOUDS)}")
    countries = _csv(query, "countryCodes")
    problems += [f"$.query.countryCodes: {json.dumps(c)} is not an ISO 3166-1 alpha-2 code"
                 for c in countries or [] if not re.fullmatch(r"[A-Z]{2}", c)]
    cuda_versions = _csv(query, "cudaVersions")
    problems += [f"$.query.cudaVersions: {json.dumps(v)} is not major.minor"
                 for v in cuda_versions or [] if not re.fullmatch(r"\d+\.\d+", v)]
    min_cuda = query.get("minCudaVersion")
    if min_cuda is not None and not re.fullmatch(r"\d+(\.\d+)?", min_cuda):
        problems.append(f"$.query.minCudaVersion: {json.dumps(min_cuda)} is not major or major.minor")
    if problems:
        raise RequestInvalidError(422, VALIDATION_DETAIL, problems)
    availability = bool(include)
    if availability and not product:
        raise RequestInvalidError(400, "product is required with include=AVAILABILITY "
                                       "(POD, CLUSTER or SERVERLESS)")
    if not availability:
        only_with_availability = ("product", "count", "cloud", "countryCodes", "cudaVersions",
                                  "minCudaVersion")
        misused = [name for name in only_with_availability if name in query]
        if misused:
            raise RequestInvalidError(400, f"{', '.join(misused)} valid only with include=AVAILABILITY")
    if cuda_versions and min_cuda is not None:
        raise RequestInvalidError(400, "cudaVersions and minCudaVersion cannot be combined")
    return CatalogQuery(availability, count or 1, cloud or "SECURE", countries, cuda_versions, min_cuda)


@dataclass(frozen=True)
class BillingQuery:
    bucket_size: str
    start: float | None
    end: float | None
    last_n: int | None
    pod_id: str | None


def parse_billing_query(query: Mapping[str, str]) -> BillingQuery:
    """GET /v2/billing/pods parameters (the window is resolved against the clock by the caller)."""
    problems: list[str] = []
    bucket = query.get("bucketSize", "day")
    if bucket not in BUCKET_SIZES:
        problems.append(f"$.query.bucketSize: value must be one of {_quoted(BUCKET_SIZES)}")
    times: dict[str, float | None] = {}
    for name in ("startTime", "endTime"):
        times[name] = None
        if name in query:
            times[name] = parse_timestamp(query[name])
            if times[name] is None:
                problems.append(f"$.query.{name}: {json.dumps(query[name])} is not an RFC 3339 date-time")
    last_n = _integer(query, "lastN", 1, problems)
    if problems:
        raise RequestInvalidError(422, VALIDATION_DETAIL, problems)
    if last_n is not None and ("startTime" in query or "endTime" in query):
        raise RequestInvalidError(400, "lastN cannot be combined with startTime/endTime")
    start, end = times["startTime"], times["endTime"]
    if start is not None and end is not None and end <= start:
        raise RequestInvalidError(400, "endTime must be after startTime")
    return BillingQuery(bucket, start, end, last_n, query.get("podId") or None)


@dataclass(frozen=True)
class LogQuery:
    source: str | None
    tail: int
    since: float | None  # resume from this time (inclusive), or
    after_seq: int | None  # resume after this event (our ids are `<ts>/<sequence>`)


def parse_log_query(query: Mapping[str, str], last_event_id: str | None) -> LogQuery:
    """GET /v2/pods/{id}/logs parameters; Last-Event-ID wins over `since`, which wins over `tail`."""
    problems: list[str] = []
    source = query.get("source")
    if source is not None and source not in ("container", "system"):
        problems.append("$.query.source: value must be one of 'container', 'system'")
    tail = _integer(query, "tail", 0, problems)
    if tail is not None and tail > 5000:
        problems.append("$.query.tail: must be <= 5000")
    since: float | None = None
    after_seq: int | None = None
    if last_event_id:
        stamp, _, sequence = last_event_id.partition("/")
        if sequence.isdigit():
            after_seq = int(sequence)
        else:
            since = parse_timestamp(stamp)
            if since is None:
                problems.append(f"Last-Event-ID: {json.dumps(last_event_id)} is not an event id we sent")
    elif "since" in query:
        since = parse_timestamp(query["since"])
        if since is None:
            problems.append(f"$.query.since: {json.dumps(query['since'])} is not an RFC 3339 date-time")
    if problems:
        raise RequestInvalidError(422, VALIDATION_DETAIL, problems)
    return LogQuery(source, 100 if tail is None else tail, since, after_seq)


def parse_bool_param(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    problem = f"$.query.{name}: expected boolean, got {json.dumps(value)}"
    raise RequestInvalidError(422, VALIDATION_DETAIL, [problem])
