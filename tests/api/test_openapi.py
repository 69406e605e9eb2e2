"""The OpenAPI schema documents the error body the API sends, and real errors match it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api_shim import schemas
from api_shim.app import create_app
from tests.api.helpers import API, Tenant
from tests.factories import leave_request_definition

ERROR_REF = "#/components/schemas/ErrorRead"


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The schema as served (it needs no database)."""
    with TestClient(create_app()) as client:
        response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", op)
        for path, ops in openapi["paths"].items()
        for method, op in ops.items()
    ]


def _schema_ref(response: dict[str, Any]) -> str:
    return response["content"]["application/json"]["schema"]["$ref"]


def test_every_422_and_every_other_error_refers_to_the_error_body(openapi: dict[str, Any]) -> None:
    validated = [
        (name, op) for name, op in _operations(openapi) if op.get("parameters") or op.get("requestBody")
    ]
    assert validated  # the routes FastAPI would have given its own 422
    for name, operation in validated:
        assert _schema_ref(operation["responses"]["422"]) == ERROR_REF, name
    for name, operation in _operations(openapi):
        assert _schema_ref(operation["responses"]["default"]) == ERROR_REF, name


def test_fastapis_own_validation_body_is_not_documented(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ValidationError" not in components
    assert components["ErrorInfo"]["required"] == ["code", "message", "details"]


def test_the_authenticated_routes_document_401_and_503(openapi: dict[str, Any]) -> None:
    for name, operation in _operations(openapi):
        if "/health" in name or name.endswith("/metrics") or "/schemas/" in name:
            continue
        assert _schema_ref(operation["responses"]["401"]) == ERROR_REF, name
        assert _schema_ref(operation["responses"]["503"]) == ERROR_REF, name
        assert "Retry-After" in operation["responses"]["503"]["headers"], name


def _as_documented(body: dict[str, Any]) -> schemas.ErrorRead:
    """Validate a body with the documented model, and check that nothing is left out of it."""
    error = schemas.ErrorRead.model_validate(body)
    assert error.model_dump(mode="json") == body
    return error


def test_a_real_422_is_the_documented_error_body(client: TestClient, tenant: Tenant) -> None:
    response = client.post(
        f"{API}/runtime/execute", json={"workflow_id": "w", "colour": "blue"}, headers=tenant.headers
    )
    assert response.status_code == 422
    error = _as_documented(response.json()).error
    assert error.code == "invalid_input"
    assert isinstance(error.details, list)
    assert schemas.ProblemRead(path="$.colour", message="Extra inputs are not permitted") in error.details


def test_a_real_422_for_a_definition_and_a_401_are_the_documented_error_body(
    client: TestClient, tenant: Tenant
) -> None:
    definition = leave_request_definition()
    definition["nodes"][0]["action"] = "dance"
    invalid = client.post(f"{API}/workflows", json=definition, headers=tenant.headers)
    assert invalid.status_code == 422
    assert _as_documented(invalid.json()).error.code == "invalid_definition"
    unauthorised = client.get(f"{API}/workflows")
    assert unauthorised.status_code == 401
    assert _as_documented(unauthorised.json()).error.details is None
