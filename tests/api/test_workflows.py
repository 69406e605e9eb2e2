"""Workflow definitions over HTTP: create, validate, list, version, deactivate."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from bflow_tasks.models import Workflow, WorkflowVersion
from tests.api.helpers import API, Tenant, count, execute, post_workflow
from tests.factories import leave_request_definition


def test_create_answers_201_with_the_stored_definition(client: TestClient, tenant: Tenant) -> None:
    body = post_workflow(client, tenant)
    assert body["version"] == 1 and body["is_active"] is True
    assert body["name"] == "Leave request" and body["document_type"] == "leave_request"
    assert [n["key"] for n in body["nodes"]] == ["submit", "manager_review", "finance", "done"]
    assert body["associations"][0] == {"source": "submit", "dest": "manager_review"}
    assert body["id"] and body["created_at"].endswith("Z")


def test_invalid_definition_is_422_with_every_problem_and_its_path(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    raw = leave_request_definition()
    raw["nodes"] = [n for n in raw["nodes"] if n["action"] != "end"]
    raw["associations"] = [a for a in raw["associations"] if a["dest"] != "done"]
    raw["nodes"][1]["colour"] = "blue"
    response = client.post(f"{API}/workflows", json=raw, headers=tenant.headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_definition"
    assert {"path": "$.nodes[1].colour", "message": "Extra inputs are not permitted"} in error["details"]
    graph = leave_request_definition()
    graph["nodes"].pop()  # the end node
    graph["associations"] = [a for a in graph["associations"] if a["dest"] != "done"]
    details = client.post(f"{API}/workflows", json=graph, headers=tenant.headers).json()["error"]["details"]
    assert any(d["path"] == "$.nodes" and "'end'" in d["message"] for d in details), details
    assert count(api_engine, Workflow) == 0


def test_a_definition_that_could_not_be_served_back_is_422(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    deep = leave_request_definition()
    condition: dict[str, object] = {"var": "amount", "op": ">=", "value": 1000}
    for _ in range(600):  # once a RecursionError (500) inside validation
        condition = {"not": condition}
    deep["associations"][-1]["condition"] = condition
    response = client.post(f"{API}/workflows", json=deep, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"path": "$", "message": "nested more than 31 levels deep"}
    ]
    surrogate = leave_request_definition()
    surrogate["associations"][-1]["condition"] = {"var": "reason", "op": "==", "value": "x\ud800"}
    response = client.post(
        f"{API}/workflows",
        content=json.dumps(surrogate),
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "strings must be valid Unicode" in response.json()["error"]["details"][0]["message"]
    long_sla = leave_request_definition()
    long_sla["nodes"][1]["sla_hours"] = 1e300  # its due time would overflow every datetime
    response = client.post(f"{API}/workflows", json=long_sla, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "$.nodes[1].sla_hours"
    infinite = json.dumps(leave_request_definition()).replace(
        '"name": "Leave request"', '"name": "x", "v": Infinity'
    )
    response = client.post(
        f"{API}/workflows", content=infinite, headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert "numbers must be finite" in response.json()["error"]["details"][0]["message"]
    assert count(api_engine, Workflow) == 0


def test_out_of_range_query_values_are_refused_not_500(client: TestClient, tenant: Tenant) -> None:
    workflow_id = post_workflow(client, tenant)["id"]
    for url in (
        f"{API}/workflows?page=99999999999999999999",
        f"{API}/tasks?page=4611686018427387904",
        f"{API}/workflows/{workflow_id}?version=99999999999999999999",
        f"{API}/workflows/{workflow_id}/metrics?to=0001-01-01T00:30:00%2B01:00",
    ):
        assert client.get(url, headers=tenant.headers).status_code == 422, url
    early = client.get(
        f"{API}/workflows/{workflow_id}/metrics?to=0001-01-01T00:00:00", headers=tenant.headers
    )
    assert early.status_code == 400
    assert early.json()["error"]["details"][0]["path"] == "query.from"


def test_a_body_that_is_not_an_object_is_422(client: TestClient, tenant: Tenant) -> None:
    response = client.post(f"{API}/workflows", json=["nodes"], headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "$"


def test_list_is_paginated(client: TestClient, tenant: Tenant) -> None:
    ids = [post_workflow(client, tenant)["id"] for _ in range(3)]
    first = client.get(f"{API}/workflows?page_size=2", headers=tenant.headers).json()
    assert first["count"] == 3 and len(first["results"]) == 2 and first["previous"] is None
    assert "page=2" in first["next"] and "page_size=2" in first["next"]
    second = client.get(first["next"], headers=tenant.headers).json()
    assert len(second["results"]) == 1 and second["next"] is None and "page=1" in second["previous"]
    seen = [w["id"] for w in first["results"] + second["results"]]
    assert sorted(seen) == sorted(ids)
    assert set(first["results"][0]) == {
        "id", "name", "document_type", "version", "is_active", "created_at", "updated_at"
    }  # fmt: skip


def test_page_size_is_bounded(client: TestClient, tenant: Tenant) -> None:
    response = client.get(f"{API}/workflows?page_size=201", headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "query.page_size"
    assert client.get(f"{API}/workflows?page=0", headers=tenant.headers).status_code == 422


def test_get_returns_the_current_version(client: TestClient, tenant: Tenant) -> None:
    created = post_workflow(client, tenant)
    response = client.get(f"{API}/workflows/{created['id']}", headers=tenant.headers)
    assert response.status_code == 200
    assert response.json() == created


def test_put_stores_version_2_and_keeps_version_1(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    created = post_workflow(client, tenant)
    revised = leave_request_definition()
    revised["name"] = "Leave request v2"
    response = client.put(f"{API}/workflows/{created['id']}", json=revised, headers=tenant.headers)
    assert response.status_code == 200
    assert response.json()["version"] == 2 and response.json()["name"] == "Leave request v2"
    current = client.get(f"{API}/workflows/{created['id']}", headers=tenant.headers).json()
    assert current["version"] == 2 and current["name"] == "Leave request v2"
    old = client.get(f"{API}/workflows/{created['id']}?version=1", headers=tenant.headers).json()
    assert old["version"] == 1 and old["name"] == "Leave request"
    missing = client.get(f"{API}/workflows/{created['id']}?version=3", headers=tenant.headers)
    assert missing.status_code == 404
    assert count(api_engine, WorkflowVersion, workflow_id=created["id"]) == 2


def test_put_with_an_invalid_definition_keeps_the_current_version(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    created = post_workflow(client, tenant)
    response = client.put(f"{API}/workflows/{created['id']}", json={"name": "x"}, headers=tenant.headers)
    assert response.status_code == 422
    assert client.get(f"{API}/workflows/{created['id']}", headers=tenant.headers).json()["version"] == 1
    assert count(api_engine, WorkflowVersion) == 1


def test_delete_deactivates_and_submissions_are_refused(client: TestClient, tenant: Tenant) -> None:
    created = post_workflow(client, tenant)
    response = client.delete(f"{API}/workflows/{created['id']}", headers=tenant.headers)
    assert response.status_code == 204 and response.content == b""
    assert client.get(f"{API}/workflows/{created['id']}", headers=tenant.headers).json()["is_active"] is False
    refused = execute(client, tenant, created["id"])
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "conflict"


def test_another_tenants_workflow_is_not_found(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    created = post_workflow(client, tenant)
    url = f"{API}/workflows/{created['id']}"
    headers = other_tenant.headers
    assert client.get(url, headers=headers).status_code == 404
    assert client.put(url, json=leave_request_definition(), headers=headers).status_code == 404
    assert client.delete(url, headers=headers).status_code == 404
    assert client.get(f"{API}/workflows", headers=headers).json()["count"] == 0
    submitted = execute(client, other_tenant, created["id"])
    assert submitted.status_code == 404
    assert submitted.json()["error"]["code"] == "not_found"
    assert client.get(url, headers=tenant.headers).json()["is_active"] is True
