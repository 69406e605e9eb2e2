"""HEAD answers wherever GET does: the same status and headers, no body (load balancers, uptime checks)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import API, Tenant, post_workflow

PROBES = [f"{API}/health", f"{API}/health/ready", "/metrics", f"{API}/metrics"]


@pytest.mark.parametrize("path", PROBES)
def test_head_on_the_probes_answers_as_get_without_a_body(client: TestClient, path: str) -> None:
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code  # /health: 503 here, no worker runs in-process
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert int(head.headers["content-length"]) > 0  # the length GET sends (these bodies vary)
    assert head.headers["x-request-id"]


def test_head_on_the_readiness_probe_is_200(client: TestClient) -> None:
    assert client.head(f"{API}/health/ready").status_code == 200


def test_head_on_an_authenticated_read_has_the_headers_of_get(client: TestClient, tenant: Tenant) -> None:
    path = f"{API}/workflows/{post_workflow(client, tenant)['id']}"
    get = client.get(path, headers=tenant.headers)
    head = client.head(path, headers=tenant.headers)
    assert (head.status_code, head.content) == (200, b"")
    for header in ("content-type", "content-length"):
        assert head.headers[header] == get.headers[header]
    unauthorised = client.head(path)
    assert (unauthorised.status_code, unauthorised.content) == (401, b"")
    assert unauthorised.headers["www-authenticate"] == "Bearer"


def test_head_where_there_is_no_get_is_405_naming_the_methods(client: TestClient, tenant: Tenant) -> None:
    response = client.head(f"{API}/runtime/execute", headers=tenant.headers)
    assert (response.status_code, response.content) == (405, b"")
    assert response.headers["allow"] == "POST"
    assert client.head(f"{API}/nowhere").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", f"{API}/health", "GET, HEAD"),
        ("PUT", "/metrics", "GET, HEAD"),
        ("PATCH", f"{API}/workflows", "GET, HEAD, POST"),  # two routes share the path
        ("PATCH", f"{API}/workflows/some-id", "GET, HEAD, PUT, DELETE"),
        ("GET", f"{API}/runtime/execute", "POST"),
    ],
)
def test_a_405_allows_every_method_of_the_path_and_head_with_get(
    client: TestClient, tenant: Tenant, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path, headers=tenant.headers)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


def test_head_is_counted_as_head_on_its_route(client: TestClient) -> None:
    client.head(f"{API}/health/ready")
    metrics = client.get("/metrics").text
    assert 'method="HEAD",route="/api/v1/health/ready",status="200"' in metrics


def test_head_adds_no_operation_to_the_openapi_schema(client: TestClient) -> None:
    schema = client.get(f"{API}/openapi.json").json()
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert not any("head" in path for path in schema["paths"].values())
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
