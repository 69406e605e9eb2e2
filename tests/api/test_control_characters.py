"""Names (documents, document types, users) with a NUL or another control character are a 422."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.models import RuntimeCommand
from tests.api.helpers import (
    API,
    OpenRuntime,
    Tenant,
    assert_no_runtime_rows,
    count,
    open_runtime,
    post_workflow,
    queued_messages,
)

# NUL, the rest of C0 at both ends, DEL and a C1 character; each in the middle of a name.
CONTROLS = ["\x00", "\x01", "\n", "\x1b", "\x1f", "\x7f", "\x85"]


def problem(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    (only,) = error["details"]
    return dict(only)


def refused(char: str) -> str:
    return f"Value error, must not contain a control character (U+{ord(char):04X} at position 2)"


@pytest.mark.parametrize("char", CONTROLS)
@pytest.mark.parametrize("field", ["document_id", "document_type", "submitted_by"])
def test_a_submission_naming_anything_with_a_control_character_is_422_and_writes_nothing(
    client: TestClient, tenant: Tenant, api_engine: Engine, field: str, char: str
) -> None:
    workflow_id = post_workflow(client, tenant)["id"]
    body = {
        "workflow_id": workflow_id,
        "document_type": "leave_request",
        "document_id": "LR-1",
        "data": {"amount": 5},
        "submitted_by": "alice",
    }
    body[field] = body[field][:2] + char + body[field][2:]
    response = client.post(f"{API}/runtime/execute", json=body, headers=tenant.headers)
    assert problem(response) == {"path": f"$.{field}", "message": refused(char)}
    assert_no_runtime_rows(api_engine)
    assert queued_messages() == 0


@pytest.fixture
def opened(session_factory: sessionmaker[Session], tenant: Tenant) -> OpenRuntime:
    return open_runtime(session_factory, tenant)


@pytest.mark.parametrize("char", ["\x00", "\t", "\x7f"])
def test_an_actor_or_delegate_with_a_control_character_is_422_and_writes_nothing(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, api_engine: Engine, char: str
) -> None:
    task_url = f"{API}/tasks/{opened.tasks['u1']}/action"
    runtime_url = f"{API}/runtimes/{opened.runtime_id}"
    for url, body, field in (
        (task_url, {"action": "approve", "actor": f"u1{char}"}, "actor"),
        (task_url, {"action": "delegate", "actor": "u1", "delegate_to": f"u9{char}"}, "delegate_to"),
        (f"{runtime_url}/resubmit", {"actor": f"al{char}ice"}, "actor"),
        (f"{runtime_url}/cancel", {"actor": f"al{char}ice"}, "actor"),
    ):
        response = client.post(url, json=body, headers=tenant.headers)
        assert problem(response) == {"path": f"$.{field}", "message": refused(char)}, url
    commands = count(api_engine, RuntimeCommand)
    assert commands == 1  # the start command only
    assert queued_messages() == 0


@pytest.mark.parametrize("name", ["assignee", "document_type"])
def test_a_task_filter_with_a_control_character_is_422(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, name: str
) -> None:
    response = client.get(f"{API}/tasks", params={name: "u1\x00"}, headers=tenant.headers)
    assert problem(response) == {
        "path": f"query.{name}",
        "message": "Value error, must not contain a control character (U+0000 at position 2)",
    }
    assert client.get(f"{API}/tasks", params={"assignee": "u1"}, headers=tenant.headers).json()["count"] == 1
