"""Listing workflows by document type and by whether they are active."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import API, Tenant, post_workflow
from tests.factories import leave_request_definition


def definition(name: str, document_type: str) -> dict[str, Any]:
    raw = leave_request_definition()
    raw["name"], raw["document_type"] = name, document_type
    return raw


def names(client: TestClient, tenant: Tenant, query: str) -> list[str]:
    response = client.get(f"{API}/workflows{query}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["results"])
    return [w["name"] for w in body["results"]]


@pytest.fixture
def listed(client: TestClient, tenant: Tenant) -> None:
    """Leave A (active), Leave B (deactivated), Expense C (active), created in that order."""
    for name, document_type in (("Leave A", "leave"), ("Leave B", "leave"), ("Expense C", "expense")):
        created = post_workflow(client, tenant, definition(name, document_type))
        if name == "Leave B":
            url = f"{API}/workflows/{created['id']}"
            assert client.delete(url, headers=tenant.headers).status_code == 204


@pytest.mark.usefixtures("listed")
def test_without_filters_active_and_deactivated_are_listed_newest_first(
    client: TestClient, tenant: Tenant
) -> None:
    assert names(client, tenant, "") == ["Expense C", "Leave B", "Leave A"]


@pytest.mark.usefixtures("listed")
def test_each_filter_alone_and_combined(client: TestClient, tenant: Tenant) -> None:
    assert names(client, tenant, "?document_type=leave") == ["Leave B", "Leave A"]
    assert names(client, tenant, "?active=true") == ["Expense C", "Leave A"]
    assert names(client, tenant, "?active=false") == ["Leave B"]
    assert names(client, tenant, "?document_type=leave&active=true") == ["Leave A"]
    assert names(client, tenant, "?document_type=leave&active=false") == ["Leave B"]
    assert names(client, tenant, "?document_type=expense&active=false") == []
    assert names(client, tenant, "?document_type=unknown") == []


@pytest.mark.usefixtures("listed")
def test_filters_keep_the_pagination_envelope(client: TestClient, tenant: Tenant) -> None:
    first = client.get(f"{API}/workflows?active=true&page_size=1", headers=tenant.headers).json()
    assert first["count"] == 2 and [w["name"] for w in first["results"]] == ["Expense C"]
    assert first["previous"] is None and "active=true" in first["next"]
    second = client.get(first["next"], headers=tenant.headers).json()
    assert [w["name"] for w in second["results"]] == ["Leave A"] and second["next"] is None


@pytest.mark.usefixtures("listed")
def test_another_tenant_sees_none_of_them(client: TestClient, other_tenant: Tenant) -> None:
    assert names(client, other_tenant, "?document_type=leave") == []
    assert names(client, other_tenant, "?active=false") == []


@pytest.mark.parametrize("query", ["active=maybe", "active=", "document_type=", "page_size=0"])
def test_bad_filter_values_are_422(client: TestClient, tenant: Tenant, query: str) -> None:
    response = client.get(f"{API}/workflows?{query}", headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["path"] == f"query.{query.split('=')[0]}"
