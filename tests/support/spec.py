"""The official RunPod v2 OpenAPI document as a validator for tests.

Located relative to the repo root (`../shared/runpod-openapi-v2.json`, beside the checkout as in CI).
Never copied into the project. Where a clone has no ../shared, tests that need it skip and say why.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO_ROOT.parent / "shared" / "runpod-openapi-v2.json"
_SPEC_URI = "urn:runpod:openapi-v2"


@functools.cache
def load_spec() -> dict[str, Any]:
    if not SPEC_PATH.is_file():
        pytest.skip(f"no official spec at {SPEC_PATH} (a clone without ../shared); CI always has it")
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def _draft() -> Any:
    from referencing.jsonschema import DRAFT202012

    return DRAFT202012


def schema_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for a schema fragment whose $refs point into the spec (`#/components/...`)."""
    wrapped = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": _SPEC_URI + "#/__fragment__"}
    spec = dict(load_spec())
    spec["__fragment__"] = _rewrite_refs(schema)
    resource = Resource.from_contents(_rewrite_refs(spec), default_specification=_draft())
    registry = Registry().with_resource(_SPEC_URI, resource)
    return Draft202012Validator(wrapped, registry=registry)


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (_SPEC_URI + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _rewrite_refs(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


@functools.cache
def component_validator(name: str) -> Draft202012Validator:
    """Validator for `#/components/schemas/<name>`."""
    load_spec()
    return schema_validator({"$ref": f"#/components/schemas/{name}"})


def _operation(method: str, path: str) -> dict[str, Any]:
    spec = load_spec()
    try:
        return spec["paths"][path][method.lower()]
    except KeyError:
        raise AssertionError(f"the spec has no operation {method.upper()} {path}") from None


def request_validator(method: str, path: str) -> Draft202012Validator:
    """Validator for the JSON request body of an operation, e.g. ('POST', '/v2/pods')."""
    op = _operation(method, path)
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    return schema_validator(schema)


def response_schema(method: str, path: str, status: int) -> tuple[str, dict[str, Any]] | None:
    """(content type, schema) the spec gives for a response status, following `default`.

    Returns None for a documented response with no body (204).
    """
    spec = load_spec()
    op = _operation(method, path)
    responses = op["responses"]
    entry = responses.get(str(status)) or responses.get("default")
    if entry is None:
        raise AssertionError(f"{method} {path} documents no {status} and no default")
    if "$ref" in entry:
        entry = spec["components"]["responses"][entry["$ref"].rsplit("/", 1)[-1]]
    content = entry.get("content")
    if not content:
        return None
    content_type, media = next(iter(content.items()))
    return content_type, media.get("schema", {})


def assert_valid(validator: Draft202012Validator, instance: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message[:300]}" for e in errors[:10]]
        raise AssertionError(f"{what} does not conform to the official spec:\n" + "\n".join(lines))
