"""Cross-cutting behaviour: authentication, the error envelope, body limits, health."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from api_shim import reads
from api_shim.app import create_app
from api_shim.routes import health_routes
from bflow_tasks import db
from bflow_tasks.engine.definitions import documents
from bflow_tasks.settings import settings
from tests.api.helpers import (
    API,
    Tenant,
    assert_no_runtime_rows,
    execute,
    open_runtime,
    post_workflow,
    queued_messages,
)
from tests.factories import leave_request_definition


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer bflow_not-a-real-token", "Basic dXNlcjpwdw==", "bflow_token-without-scheme"],
)
def test_requests_without_a_valid_token_are_401(client: TestClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get(f"{API}/workflows", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


def test_routing_errors_use_the_error_envelope(client: TestClient, tenant: Tenant) -> None:
    missing = client.get(f"{API}/nowhere", headers=tenant.headers)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not Found", "details": None}}
    wrong_method = client.patch(f"{API}/workflows", headers=tenant.headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_oversize_body_is_413_and_writes_nothing(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    workflow_id = post_workflow(client, tenant)["id"]
    body = {
        "workflow_id": workflow_id,
        "document_type": "leave_request",
        "document_id": "LR-1",
        "data": {"blob": "x" * settings.max_body_bytes},
        "submitted_by": "alice",
    }
    response = client.post(f"{API}/runtime/execute", json=body, headers=tenant.headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert_no_runtime_rows(api_engine)


def test_oversize_streamed_body_without_content_length_is_413(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(settings.max_body_bytes // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    headers = {**tenant.headers, "Content-Type": "application/json"}
    response = client.post(f"{API}/workflows", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert client.get(f"{API}/workflows", headers=tenant.headers).json()["count"] == 0


def test_a_streamed_body_under_the_limit_is_read_whole(client: TestClient, tenant: Tenant) -> None:
    import json

    from tests.factories import leave_request_definition

    raw = json.dumps(leave_request_definition()).encode()
    parts = [raw[i : i + 100] for i in range(0, len(raw), 100)]
    headers = {**tenant.headers, "Content-Type": "application/json"}
    response = client.post(f"{API}/workflows", content=iter(parts), headers=headers)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded"]
)
def test_a_json_body_sent_as_another_media_type_is_415_and_accepts_nothing(
    content_type: str | None, client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    workflow_id = post_workflow(client, tenant)["id"]
    body = json.dumps(
        {
            "workflow_id": workflow_id,
            "document_type": "leave_request",
            "document_id": "LR-1",
            "data": {"amount": 500},
            "submitted_by": "alice",
        }
    )
    headers = {**tenant.headers, **({"Content-Type": content_type} if content_type else {})}
    url = f"{API}/runtime/execute"
    response = client.post(url, content=body, headers=headers)
    assert response.status_code == 415
    given = f"'{content_type}'" if content_type else "none"
    message = f"the request body must be JSON sent with Content-Type: application/json (got {given})"
    assert response.json() == {
        "error": {
            "code": "unsupported_media_type",
            "message": message,
            "details": {"content_type": content_type},
        }
    }
    assert_no_runtime_rows(api_engine)
    assert queued_messages() == 0
    as_json = {**tenant.headers, "Content-Type": "application/json; charset=utf-8"}
    assert client.post(url, content=body, headers=as_json).status_code == 202


def test_unexpected_errors_are_500_with_a_generic_message(
    api_engine: Engine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(reads, "runtime_detail", explode)
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        response = client.get(f"{API}/runtimes/anything", headers=tenant.headers)
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "an unexpected error occurred", "details": None}
    }


def test_health_needs_no_token_and_reports_each_check(client: TestClient) -> None:
    response = client.get(f"{API}/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker"}
    assert all(c["status"] == "ok" and c["latency_ms"] >= 0 for c in body["checks"].values())


def test_health_on_the_in_process_broker_without_a_worker_is_503(client: TestClient) -> None:
    # Bare `uvicorn api_shim.app:app` on the embedded default: the memory:// broker lives in
    # this process and nothing here consumes it, so accepted work would never be carried.
    response = client.get(f"{API}/health")
    assert response.status_code == 503
    body = response.json()
    failing = ["workers.maintenance", "workers.webhooks", "workers.workflow"]
    assert body["error"]["details"] == {"failing": failing}
    assert "run `bflow dev`" in body["checks"]["workers.workflow"]["error"]
    assert body["checks"]["database"]["status"] == body["checks"]["broker"]["status"] == "ok"


def assert_health_discloses_nothing(response: Response, failing: str, *leaks: str) -> None:
    """Each check's name, status and latency; no exception class, driver message or address."""
    body = response.json()
    for name, check in body["checks"].items():
        assert check["status"] in ("ok", "error") and isinstance(check["latency_ms"], float), name
    assert body["checks"][failing] == {
        "status": "error",
        "latency_ms": body["checks"][failing]["latency_ms"],
        "error": f"the {failing} check failed; the reason is in the server log",
    }
    for leak in ("127.0.0.1", ":1/", "Errno", "refused", *leaks):
        assert leak not in response.text, leak
    assert re.search(r"[A-Za-z]+(Error|Exception)\b", response.text) is None, response.text


def assert_logged_once(caplog: pytest.LogCaptureFixture, check: str) -> logging.LogRecord:
    records = [r for r in caplog.records if r.name == "api_shim.routes.health_routes"]
    (record,) = [r for r in records if r.getMessage().startswith(f"health check {check} failed")]
    assert record.exc_info is not None and record.levelno == logging.WARNING
    return record


@pytest.mark.usefixtures("broker_down")
def test_health_is_503_naming_the_broker_when_it_is_down(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    health_routes._cache.clear()
    with caplog.at_level(logging.WARNING, logger="api_shim.routes.health_routes"):
        response = client.get(f"{API}/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["broker"]["status"] == "error"
    assert body["error"]["details"] == {"failing": ["broker"]}
    assert_health_discloses_nothing(response, "broker", "redis", "connecting")
    # The reason is in the server's log, once, with the exception.
    record = assert_logged_once(caplog, "broker")
    assert record.exc_info is not None and "127.0.0.1" in str(record.exc_info[1])


def test_health_with_the_database_down_names_the_check_and_not_the_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A real connection refused (nothing listens on port 1), as the 503 test below does.
    monkeypatch.setattr(settings, "database_url", "mysql+pymysql://root@127.0.0.1:1/bflow?charset=utf8mb4")
    db.reset_engine()
    health_routes._cache.clear()
    try:
        with (
            TestClient(create_app()) as client,
            caplog.at_level(logging.WARNING, logger="api_shim.routes.health_routes"),
        ):
            response = client.get(f"{API}/health/ready")
    finally:
        db.reset_engine()
    assert response.status_code == 503
    assert set(response.json()["checks"]) == {"database", "broker"}
    assert response.json()["error"]["details"] == {"failing": ["database"]}
    assert_health_discloses_nothing(response, "database", "Can't connect", "MySQL", "pymysql", "2003")
    record = assert_logged_once(caplog, "database")
    assert record.exc_info is not None and "Can't connect to MySQL server" in str(record.exc_info[1])


def test_a_database_that_does_not_answer_gives_503_and_accepts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A real connection refused (nothing listens on port 1), not a mock.
    monkeypatch.setattr(settings, "database_url", "mysql+pymysql://root@127.0.0.1:1/bflow?charset=utf8mb4")
    db.reset_engine()
    try:
        with TestClient(create_app()) as client:
            response = client.post(
                f"{API}/runtime/execute",
                json={
                    "workflow_id": "w",
                    "document_type": "t",
                    "document_id": "d",
                    "data": {},
                    "submitted_by": "u",
                },
                headers={"Authorization": "Bearer bflow_not_cached"},
            )
    finally:
        db.reset_engine()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "5"


def nested(levels: int) -> dict[str, object]:
    """A JSON object nested exactly `levels` deep (the outer object is the first level)."""
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def depth(value: object) -> int:
    children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max((depth(child) for child in children), default=0)


def test_documents_and_definitions_as_deep_as_allowed_are_stored_and_one_more_level_is_422(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session], api_engine: Engine
) -> None:
    """The limits follow MariaDB's JSON check (31 levels), counting where each value is stored."""
    workflow_id = post_workflow(client, tenant)["id"]
    assert execute(client, tenant, workflow_id, data=nested(documents.MAX_DEPTH)).status_code == 202
    too_deep = execute(client, tenant, workflow_id, data=nested(documents.MAX_DEPTH + 1), document_id="LR-2")
    assert too_deep.status_code == 422
    # An action's data is stored inside its command: one level further down.
    task_id = open_runtime(session_factory, tenant, document_id="LR-3").tasks["u1"]
    for levels, status in ((documents.MAX_DEPTH + 1, 422), (documents.MAX_DEPTH, 202)):
        body = {"action": "approve", "actor": "u1", "data": {"reason": nested(levels - 1)}}
        response = client.post(f"{API}/tasks/{task_id}/action", json=body, headers=tenant.headers)
        assert response.status_code == status, response.text
    definition = leave_request_definition()
    association = next(a for a in definition["associations"] if "condition" in a)
    while depth(definition) < documents.MAX_STORED_DEPTH:
        association["condition"] = {"not": association["condition"]}
    assert post_workflow(client, tenant, definition)["id"]
    association["condition"] = {"not": association["condition"]}
    response = client.post(f"{API}/workflows", json=definition, headers=tenant.headers)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("database_url", ["mysql"], indirect=True)
def test_a_database_error_caused_by_the_data_is_500_not_503(
    api_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 tells the client to retry; a statement the database refuses for its data never succeeds.

    MariaDB's JSON CHECK (json_valid) refuses a value nested too deep with error 4025, which
    PyMySQL raises as an OperationalError, the class connection errors come in too.
    """
    app = create_app()

    @app.get("/refused-by-the-database")
    def refused() -> None:
        with api_engine.connect() as conn:
            conn.exec_driver_sql("CREATE TEMPORARY TABLE deep (j LONGTEXT CHECK (json_valid(j)))")
            conn.exec_driver_sql("INSERT INTO deep VALUES (%s)", (json.dumps(nested(40)),))

    with TestClient(app) as client, caplog.at_level(logging.ERROR, logger="api_shim.error_responses"):
        response = client.get("/refused-by-the-database")
    assert response.status_code == 500, response.text
    assert response.json()["error"]["code"] == "internal_error"
    assert "Retry-After" not in response.headers
    [record] = [r for r in caplog.records if r.name == "api_shim.error_responses"]
    assert record.exc_info is not None and "4025" in str(record.exc_info[1])  # logged whole


def test_a_full_connection_pool_is_503(
    api_engine: Engine, tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pooled connection busy past the pool timeout is an overload of the moment, not a bug."""
    tiny = create_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    monkeypatch.setattr(db, "_engine", tiny)
    try:
        # The test holds the pool's only connection while the request waits for one.
        with TestClient(create_app(), raise_server_exceptions=False) as client, tiny.connect():
            response = client.get(f"{API}/workflows", headers=tenant.headers)
    finally:
        tiny.dispose()
    assert response.status_code == 503, response.text
    assert response.json() == {
        "error": {
            "code": "database_unavailable",
            "message": "the database is unavailable; nothing was accepted, retry later",
            "details": None,
        }
    }
    assert response.headers["Retry-After"] == "5"
