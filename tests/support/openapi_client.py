"""An HTTP client for the management API that checks every call against /rpm/v1/openapi.json.

Each request must be an operation of the document (method and path template), and each response's status
must be one the operation documents, with a JSON body valid against that response's schema (JSON Schema
2020-12, as OpenAPI 3.1 uses; `$ref`s resolved within the document). So a test that passes through this
client proves the document describes what the code does.
"""

from __future__ import annotations

import re
from typing import Any

import requests
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_DOCUMENT_URI = "urn:rpm-openapi"
TIMEOUT_SECONDS = 30


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


class CheckedClient:
    def __init__(self, base_url: str, document: dict[str, Any], token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.document = document
        self.token = token
        self.registry: Registry[Any] = Registry().with_resource(
            _DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT202012))
        self.operations: list[tuple[str, re.Pattern[str], str]] = []
        for template, item in document["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
            for method in item:
                self.operations.append((method.upper(), pattern, template))
        self.checked: list[tuple[str, str, int]] = []  # (method, template, status) of every call made

    def as_key(self, token: str | None) -> CheckedClient:
        other = CheckedClient.__new__(CheckedClient)
        other.__dict__.update(self.__dict__)
        other.token = token
        return other

    def operation_of(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for op_method, pattern, template in self.operations:
            if op_method == method and pattern.match(path):
                return template, self.document["paths"][template][method.lower()]
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")

    def call(self, method: str, path: str, *, params: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> requests.Response:
        template, operation = self.operation_of(method, path)
        sent = dict(headers or {})
        if self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        response = requests.request(method, self.base_url + path, params=params, headers=sent,
                                    timeout=TIMEOUT_SECONDS)
        status = str(response.status_code)
        assert status in operation["responses"], (
            f"{method} {template} answered {status}, which the document does not list: {response.text[:300]}")
        content = operation["responses"][status].get("content", {})
        if "application/json" in content:
            assert response.headers["Content-Type"].startswith("application/json"), response.headers
            pointer = _pointer("paths", template, method.lower(), "responses", status, "content",
                               "application/json", "schema")
            validator = Draft202012Validator({"$ref": f"{_DOCUMENT_URI}#/{pointer}"}, registry=self.registry)
            errors = sorted(validator.iter_errors(response.json()), key=lambda e: list(e.path))
            assert not errors, f"{method} {template} {status}: " + "; ".join(
                f"{list(e.path)}: {e.message}" for e in errors[:5])
        self.checked.append((method, template, response.status_code))
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", path, **kwargs)
