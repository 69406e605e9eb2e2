"""Submitting documents, reading runtimes, resubmit and cancel over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks import db
from bflow_tasks.models import Runtime, RuntimeCommand
from bflow_tasks.settings import settings
from bflow_tasks.worker import celery_app
from tests.api.helpers import (
    API,
    UNREACHABLE_BROKER,
    Tenant,
    apply_pending_commands,
    assert_no_runtime_rows,
    count,
    execute,
    open_runtime,
    post_workflow,
    queued_messages,
    switch_broker,
)


@pytest.fixture
def workflow_id(client: TestClient, tenant: Tenant) -> str:
    return post_workflow(client, tenant)["id"]


def test_submit_is_202_with_a_pending_runtime_and_a_queued_start(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    response = execute(client, tenant, workflow_id)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert count(api_engine, Runtime, id=body["runtime_id"], status="pending") == 1
    assert count(api_engine, RuntimeCommand, runtime_id=body["runtime_id"], kind="start") == 1
    assert queued_messages() == 1


def test_idempotency_key_replay_answers_the_same_runtime_and_queues_nothing(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    first = execute(client, tenant, workflow_id, key="k-1")
    again = execute(client, tenant, workflow_id, key="k-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert count(api_engine, Runtime) == 1
    assert count(api_engine, RuntimeCommand) == 1
    assert queued_messages() == 1
    other_document = execute(client, tenant, workflow_id, key="k-1", document_id="LR-2")
    assert other_document.status_code == 409
    other_data = execute(client, tenant, workflow_id, key="k-1", data={"amount": 99})
    assert other_data.status_code == 409
    assert "other data" in other_data.json()["error"]["message"]
    assert count(api_engine, Runtime) == 1
    assert queued_messages() == 1
    too_long = execute(client, tenant, workflow_id, key="k" * 256, document_id="LR-3")
    assert too_long.status_code == 422
    assert too_long.json()["error"]["details"][0]["path"] == "header.Idempotency-Key"


def test_same_document_in_flight_without_the_key_is_409(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    first = execute(client, tenant, workflow_id)
    second = execute(client, tenant, workflow_id)
    assert second.status_code == 409
    assert second.json()["error"]["details"] == {"runtime_id": first.json()["runtime_id"]}
    assert count(api_engine, Runtime) == 1
    assert execute(client, tenant, workflow_id, key="fresh").status_code == 409


def test_document_type_of_another_workflow_is_400(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    body = {
        "workflow_id": workflow_id,
        "document_type": "invoice",
        "document_id": "INV-1",
        "data": {},
        "submitted_by": "alice",
    }
    response = client.post(f"{API}/runtime/execute", json=body, headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["path"] == "$.document_type"
    assert_no_runtime_rows(api_engine)


def test_malformed_bodies_are_422_and_write_nothing(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    headers = {**tenant.headers, "Content-Type": "application/json"}
    broken = client.post(f"{API}/runtime/execute", content=b'{"workflow_id": ', headers=headers)
    assert broken.status_code == 422
    assert broken.json()["error"]["code"] == "invalid_input"
    assert broken.json()["error"]["details"] == [
        {"path": "$", "message": "JSON decode error: Expecting value at character 16"}
    ]
    body = {"workflow_id": workflow_id, "document_type": "leave_request", "document_id": "LR-1", "data": [1]}
    response = client.post(f"{API}/runtime/execute", json=body, headers=tenant.headers)
    assert response.status_code == 422
    paths = {d["path"] for d in response.json()["error"]["details"]}
    assert paths == {"$.data", "$.submitted_by"}
    assert_no_runtime_rows(api_engine)
    assert queued_messages() == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"document_id": "LR-\xff"}', "the body is not valid UTF-8 (invalid start byte at byte 20)"),
        (b'{"document_id": "caf\xe9"}', "the body is not valid UTF-8 (invalid continuation byte at byte 20)"),
        (b"[" * 100_000 + b"]" * 100_000, "the body is nested too deeply to parse as JSON"),
    ],
)
def test_a_body_json_cannot_parse_is_422_not_400_and_writes_nothing(
    client: TestClient, tenant: Tenant, api_engine: Engine, raw: bytes, message: str
) -> None:
    # FastAPI answers these 400 "There was an error parsing the body" by itself.
    headers = {**tenant.headers, "Content-Type": "application/json"}
    for url in (f"{API}/runtime/execute", f"{API}/workflows", f"{API}/webhooks"):
        response = client.post(url, content=raw, headers=headers)
        assert response.status_code == 422, (url, response.text)
        assert response.json() == {
            "error": {
                "code": "invalid_input",
                "message": "the request is not valid",
                "details": [{"path": "$", "message": message}],
            }
        }
    assert_no_runtime_rows(api_engine)
    assert queued_messages() == 0


def test_a_document_that_could_not_be_served_back_is_422_and_writes_nothing(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    deep: dict[str, object] = {"amount": 5}
    for _ in range(40):
        deep = {"nested": deep}
    body = {"workflow_id": workflow_id, "document_type": "leave_request", "document_id": "LR-1"}
    body |= {"submitted_by": "alice", "data": deep}
    too_deep = client.post(f"{API}/runtime/execute", json=body, headers=tenant.headers)
    assert too_deep.status_code == 422
    assert too_deep.json()["error"]["details"][0]["path"] == "$.data"
    assert "nested more than 30 levels deep" in too_deep.json()["error"]["details"][0]["message"]
    headers = {**tenant.headers, "Content-Type": "application/json"}
    for number in (b"NaN", b"Infinity", b"1e400"):
        raw = (
            json.dumps({**body, "data": {"amount": 0}})
            .encode()
            .replace(b'"amount": 0', b'"amount": ' + number)
        )
        response = client.post(f"{API}/runtime/execute", content=raw, headers=headers)
        assert response.status_code == 422, number
        assert "numbers must be finite" in response.json()["error"]["details"][0]["message"]
    # Half of a UTF-16 pair is a legal JSON escape, but no database stores it (a value or a key).
    for data in ('{"reason": "x\\ud800"}', '{"x\\udc00": 1}'):
        raw = json.dumps({**body, "data": {}}).replace('"data": {}', f'"data": {data}')
        response = client.post(f"{API}/runtime/execute", content=raw, headers=headers)
        assert response.status_code == 422, data
        assert "strings must be valid Unicode" in response.json()["error"]["details"][0]["message"]
    assert_no_runtime_rows(api_engine)
    assert queued_messages() == 0


def test_keys_and_document_ids_differing_only_in_case_are_different(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    first = execute(client, tenant, workflow_id, document_id="inv-a", key="order-abc")
    second = execute(client, tenant, workflow_id, document_id="INV-A", key="ORDER-ABC")
    assert first.status_code == second.status_code == 202, second.text
    assert first.json()["runtime_id"] != second.json()["runtime_id"]
    assert count(api_engine, Runtime) == 2


@pytest.mark.usefixtures("broker_down")
def test_broker_down_is_503_and_nothing_is_left_behind(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    response = execute(client, tenant, workflow_id, key="k-1")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "broker_unavailable"
    assert_no_runtime_rows(api_engine)


def test_after_a_503_the_same_key_is_accepted_once_the_broker_is_back(
    client: TestClient, tenant: Tenant, workflow_id: str, api_engine: Engine
) -> None:
    working = celery_app.app.conf.broker_url
    switch_broker(UNREACHABLE_BROKER)
    try:
        assert execute(client, tenant, workflow_id, key="k-1").status_code == 503
    finally:
        switch_broker(working)
    retried = execute(client, tenant, workflow_id, key="k-1")
    assert retried.status_code == 202
    assert count(api_engine, Runtime) == 1
    assert queued_messages() == 1


def test_runtime_detail_has_stages_assignees_and_log(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    opened = open_runtime(session_factory, tenant)
    response = client.get(f"{API}/runtimes/{opened.runtime_id}", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == opened.runtime_id and body["status"] == "in_progress"
    assert body["workflow_id"] == opened.workflow_id and body["workflow_version"] == 1
    assert body["data"] == {"amount": 500, "reason": "holiday"} and body["submitted_by"] == "alice"
    assert body["ended_at"] is None and body["error"] is None
    stages = {s["node_key"]: s for s in body["stages"]}
    review = stages["manager_review"]
    assert review["status"] == "open" and review["visit"] == 1 and review["round"] == 1
    assert {a["user"] for a in review["assignees"]} == {"u1", "u2", "u3"}
    assert all(a["status"] == "pending" and a["action_taken"] is None for a in review["assignees"])
    assert set(review["assignees"][0]) == {
        "id", "user", "status", "action_taken", "comments", "due_at", "completed_at"
    }  # fmt: skip
    actions = [line["action"] for line in body["log"]]
    assert actions[:2] == ["runtime.submitted", "runtime.started"]
    assert set(body["log"][0]) == {
        "sequence", "action", "actor", "stage_id", "task_id", "message", "details", "created_at"
    }  # fmt: skip
    assert [line["sequence"] for line in body["log"]] == list(range(1, len(actions) + 1))
    assert body["log_truncated"] is False and body["log_next"] is None


def test_another_tenants_runtime_is_not_found(
    client: TestClient, tenant: Tenant, other_tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    opened = open_runtime(session_factory, tenant)
    url = f"{API}/runtimes/{opened.runtime_id}"
    assert client.get(url, headers=other_tenant.headers).status_code == 404
    assert client.post(f"{url}/cancel", json={}, headers=other_tenant.headers).status_code == 404
    resubmit = client.post(f"{url}/resubmit", json={"actor": "alice"}, headers=other_tenant.headers)
    assert resubmit.status_code == 404
    assert client.get(url, headers=tenant.headers).status_code == 200


def test_cancel_is_202_once_then_409(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session], api_engine: Engine
) -> None:
    opened = open_runtime(session_factory, tenant)
    url = f"{API}/runtimes/{opened.runtime_id}/cancel"
    response = client.post(url, json={"actor": "alice"}, headers=tenant.headers)
    assert response.status_code == 202
    assert response.json() == {"runtime_id": opened.runtime_id, "action": "cancel", "status": "accepted"}
    assert count(api_engine, RuntimeCommand, runtime_id=opened.runtime_id, kind="cancel") == 1
    assert client.post(url, headers=tenant.headers).status_code == 409


def test_resubmit_needs_a_returned_runtime_and_its_submitter(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session], api_engine: Engine
) -> None:
    opened = open_runtime(session_factory, tenant)
    url = f"{API}/runtimes/{opened.runtime_id}/resubmit"
    assert client.post(url, json={"actor": "alice"}, headers=tenant.headers).status_code == 409
    returned = client.post(
        f"{API}/tasks/{opened.tasks['u1']}/action",
        json={"action": "return", "actor": "u1", "comments": "dates?"},
        headers=tenant.headers,
    )
    assert returned.status_code == 202
    apply_pending_commands(session_factory, opened.runtime_id)
    status = client.get(f"{API}/runtimes/{opened.runtime_id}", headers=tenant.headers).json()["status"]
    assert status == "returned"
    assert client.post(url, json={"actor": "u1"}, headers=tenant.headers).status_code == 403
    response = client.post(url, json={"actor": "alice", "data": {"amount": 300}}, headers=tenant.headers)
    assert response.status_code == 202
    assert count(api_engine, RuntimeCommand, runtime_id=opened.runtime_id, kind="resubmit") == 1
    assert client.post(url, json={"actor": "alice"}, headers=tenant.headers).status_code == 409


def test_runtime_detail_reads_each_table_once(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    opened = open_runtime(session_factory, tenant)
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get(f"{API}/runtimes/{opened.runtime_id}", headers=tenant.headers).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # The token, then the runtime (with its version), stages, assignees and log: one each.
    assert len(statements) == 5, statements


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers (a hung broker)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()
    for connection in held:
        connection.close()


def test_the_publish_timeout_bounds_each_wait_on_the_broker() -> None:
    assert celery_app.app.conf.broker_transport_options["socket_timeout"] == settings.publish_timeout_seconds


def test_a_broker_that_never_answers_is_503_within_the_publish_timeout(
    client: TestClient,
    tenant: Tenant,
    workflow_id: str,
    api_engine: Engine,
    silent_broker: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The configured 5 s, shortened for the test: three tries of 0.3 s each, with their pauses.
    options = {**celery_app.app.conf.broker_transport_options, "socket_timeout": 0.3}
    monkeypatch.setitem(celery_app.app.conf, "broker_transport_options", options)
    working = celery_app.app.conf.broker_url
    switch_broker(silent_broker)
    try:
        started = time.monotonic()
        response = execute(client, tenant, workflow_id)
        waited = time.monotonic() - started
    finally:
        switch_broker(working)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "broker_unavailable"
    assert waited < 5
    assert_no_runtime_rows(api_engine)
