"""People's tasks over HTTP: listing and acting, with every refusal the engine makes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.models import RuntimeAssignee, RuntimeCommand
from tests.api.helpers import (
    API,
    OpenRuntime,
    Tenant,
    apply_pending_commands,
    assert_no_runtime_rows,
    count,
    open_runtime,
    queued_messages,
    zoned_definition,
)


@pytest.fixture
def opened(session_factory: sessionmaker[Session], tenant: Tenant) -> OpenRuntime:
    return open_runtime(session_factory, tenant)


def act(client: TestClient, tenant: Tenant, task_id: str, **body: object):  # type: ignore[no-untyped-def]
    return client.post(f"{API}/tasks/{task_id}/action", json=body, headers=tenant.headers)


def test_action_is_202_with_a_queued_command(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, api_engine: Engine
) -> None:
    task_id = opened.tasks["u1"]
    response = act(client, tenant, task_id, action="approve", actor="u1", comments="ok")
    assert response.status_code == 202
    assert response.json() == {"task_id": task_id, "action": "approve", "status": "accepted"}
    assert count(api_engine, RuntimeCommand, assignee_id=task_id, kind="action", status="requested") == 1
    assert queued_messages() == 1


def test_a_second_action_on_the_same_task_is_409_before_the_first_is_applied(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, api_engine: Engine
) -> None:
    task_id = opened.tasks["u1"]
    assert act(client, tenant, task_id, action="approve", actor="u1").status_code == 202
    again = act(client, tenant, task_id, action="reject", actor="u1")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"
    assert count(api_engine, RuntimeCommand, assignee_id=task_id) == 1
    assert act(client, tenant, opened.tasks["u2"], action="approve", actor="u2").status_code == 202


def test_only_the_assignee_may_act(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, api_engine: Engine
) -> None:
    response = act(client, tenant, opened.tasks["u1"], action="approve", actor="u2")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert count(api_engine, RuntimeCommand, kind="action") == 0


def test_editing_a_field_outside_the_stage_zones_is_403(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, api_engine: Engine
) -> None:
    task_id = opened.tasks["u1"]
    response = act(client, tenant, task_id, action="approve", actor="u1", data={"amount": 5, "reason": "x"})
    assert response.status_code == 403
    assert response.json()["error"]["details"] == [
        {"path": "$.data.amount", "message": "outside this stage's zones"}
    ]
    assert count(api_engine, RuntimeCommand, kind="action") == 0
    allowed = act(client, tenant, task_id, action="approve", actor="u1", data={"reason": "family"})
    assert allowed.status_code == 202


def test_delegate_needs_someone_else(client: TestClient, tenant: Tenant, opened: OpenRuntime) -> None:
    task_id = opened.tasks["u1"]
    missing = act(client, tenant, task_id, action="delegate", actor="u1")
    assert missing.status_code == 400
    assert missing.json()["error"]["details"] == [{"path": "$.delegate_to", "message": "required"}]
    assert act(client, tenant, task_id, action="delegate", actor="u1", delegate_to="u2").status_code == 409
    assert act(client, tenant, task_id, action="delegate", actor="u1", delegate_to="u9").status_code == 202


def test_a_user_differing_only_in_case_is_someone_else(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, session_factory: sessionmaker[Session]
) -> None:
    # On MariaDB the unique keys once took "U2" for "u2": the delegation was admitted, then
    # failed at every try, and u1's task stayed locked behind it.
    task_id = opened.tasks["u1"]
    assert act(client, tenant, task_id, action="delegate", actor="u1", delegate_to="U2").status_code == 202
    apply_pending_commands(session_factory, opened.runtime_id)
    with session_factory() as session:
        assert session.scalars(
            select(RuntimeCommand.status).where(RuntimeCommand.kind == "action")
        ).all() == ["applied"]
        holders = select(RuntimeAssignee.user).where(
            RuntimeAssignee.runtime_id == opened.runtime_id, RuntimeAssignee.status == "pending"
        )
        assert sorted(session.scalars(holders)) == ["U2", "u2", "u3"]
    inbox = client.get(f"{API}/tasks", params={"assignee": "u2"}, headers=tenant.headers).json()
    assert [task["user"] for task in inbox["results"]] == ["u2"]


def test_delegate_with_data_is_422_and_stores_nothing(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, api_engine: Engine
) -> None:
    task_id = opened.tasks["u1"]
    response = act(client, tenant, task_id, action="delegate", actor="u1", delegate_to="u9", data={"days": 3})
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {
            "path": "$.data",
            "message": "Value error, 'data' is not allowed with action 'delegate'; the delegate may send it",
        }
    ]
    assert count(api_engine, RuntimeCommand, kind="action") == 0
    assert queued_messages() == 0


def test_reject_on_a_to_do_is_409_and_stores_nothing(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session], api_engine: Engine
) -> None:
    """A to-do is work to do or to send back, not a decision: there is nothing to reject."""
    definition = zoned_definition()
    definition["nodes"][1]["action"] = "todo"
    task_id = open_runtime(session_factory, tenant, definition=definition).tasks["u1"]
    response = act(client, tenant, task_id, action="reject", actor="u1")
    assert response.status_code == 409, response.text
    assert response.json()["error"] == {
        "code": "conflict",
        "message": "'reject' does not apply to a todo task; expected approve, return or delegate",
        "details": {"allowed": ["approve", "return", "delegate"]},
    }
    assert count(api_engine, RuntimeCommand, kind="action") == 0
    assert queued_messages() == 0
    assert act(client, tenant, task_id, action="return", actor="u1").status_code == 202


@pytest.mark.parametrize("action", ["approve", "reject", "return"])
def test_delegate_to_on_any_action_but_delegate_is_422_and_stores_nothing(
    action: str, client: TestClient, tenant: Tenant, opened: OpenRuntime, api_engine: Engine
) -> None:
    task_id = opened.tasks["u1"]
    response = act(client, tenant, task_id, action=action, actor="u1", delegate_to="u9")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["details"] == [
        {
            "path": "$.delegate_to",
            "message": f"Value error, 'delegate_to' is only allowed with action 'delegate', not '{action}'",
        }
    ]
    assert count(api_engine, RuntimeCommand, kind="action") == 0
    assert queued_messages() == 0
    # An explicit null carries nothing: the action goes through, with nothing stored for it.
    assert act(client, tenant, task_id, action=action, actor="u1", delegate_to=None).status_code == 202
    stored = select(RuntimeCommand.payload).where(RuntimeCommand.kind == "action")
    with api_engine.connect() as connection:
        payload = connection.scalars(stored).one()
    assert payload["action"] == action and payload["delegate_to"] is None


def test_unknown_action_is_422(client: TestClient, tenant: Tenant, opened: OpenRuntime) -> None:
    response = act(client, tenant, opened.tasks["u1"], action="shrug", actor="u1")
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "$.action"


def test_another_tenants_task_is_not_found(
    client: TestClient, tenant: Tenant, other_tenant: Tenant, opened: OpenRuntime
) -> None:
    response = act(client, other_tenant, opened.tasks["u1"], action="approve", actor="u1")
    assert response.status_code == 404
    listed = client.get(f"{API}/tasks?assignee=u1", headers=other_tenant.headers).json()
    assert listed["count"] == 0 and listed["results"] == []


def test_unknown_task_is_404(client: TestClient, tenant: Tenant, api_engine: Engine) -> None:
    response = act(client, tenant, "00000000-0000-0000-0000-000000000000", action="approve", actor="u1")
    assert response.status_code == 404
    assert_no_runtime_rows(api_engine)


def test_list_filters_by_assignee_status_and_runtime(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session], opened: OpenRuntime
) -> None:
    second = open_runtime(session_factory, tenant, document_id="LR-2")
    mine = client.get(f"{API}/tasks?assignee=u1&status=pending", headers=tenant.headers).json()
    assert mine["count"] == 2
    assert {t["runtime_id"] for t in mine["results"]} == {opened.runtime_id, second.runtime_id}
    task = next(t for t in mine["results"] if t["runtime_id"] == opened.runtime_id)
    assert task == {
        "id": opened.tasks["u1"],
        "runtime_id": opened.runtime_id,
        "node_key": "manager_review",
        "user": "u1",
        "status": "pending",
        "action_taken": None,
        "due_at": None,
        "created_at": task["created_at"],
        "workflow_name": "Leave request",
        "stage_name": "Manager review",
        "document_type": "leave_request",
        "document_id": "LR-1",
    }
    url = f"{API}/tasks?runtime_id={second.runtime_id}&status=pending"
    by_runtime = client.get(url, headers=tenant.headers).json()
    assert sorted(t["user"] for t in by_runtime["results"]) == ["u1", "u2", "u3"]
    # The create stage's record of who submitted is nobody's task.
    created = client.get(f"{API}/tasks?assignee=alice", headers=tenant.headers).json()
    assert created["count"] == 0
    done = client.get(f"{API}/tasks?assignee=u1&status=completed", headers=tenant.headers).json()
    assert done["count"] == 0
    paged = client.get(f"{API}/tasks?status=pending&page_size=4", headers=tenant.headers).json()
    assert paged["count"] == 6 and len(paged["results"]) == 4 and paged["next"] is not None
    assert client.get(f"{API}/tasks?status=nonsense", headers=tenant.headers).status_code == 422


def test_open_lists_pending_and_overdue_tasks_the_assignee_can_still_act_on(
    client: TestClient, tenant: Tenant, api_engine: Engine, opened: OpenRuntime
) -> None:
    with api_engine.begin() as connection:
        connection.execute(
            update(RuntimeAssignee).where(RuntimeAssignee.id == opened.tasks["u2"]).values(status="overdue")
        )
    act(client, tenant, opened.tasks["u3"], action="approve", actor="u3")  # accepted, not yet applied
    listed = client.get(f"{API}/tasks?runtime_id={opened.runtime_id}&status=open", headers=tenant.headers)
    assert sorted((t["user"], t["status"]) for t in listed.json()["results"]) == [
        ("u1", "pending"),
        ("u2", "overdue"),
        ("u3", "pending"),
    ]
    pending = client.get(f"{API}/tasks?runtime_id={opened.runtime_id}&status=pending", headers=tenant.headers)
    assert [t["user"] for t in pending.json()["results"]] == ["u1", "u3"]
