"""Reading tasks: one task by id, the list's enrichment, its document_type filter and order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.models import RuntimeAssignee
from tests.api.helpers import API, Tenant, counted_statements, open_runtime, zoned_definition


def expense_definition() -> dict[str, Any]:
    """The zoned leave request under another name and document type."""
    raw = zoned_definition()
    raw["name"] = "Expense claim"
    raw["document_type"] = "expense"
    raw["nodes"][1]["name"] = "Budget holder"
    return raw


def set_due(engine: Engine, task_id: str, due: datetime | None) -> None:
    with engine.begin() as connection:
        connection.execute(update(RuntimeAssignee).where(RuntimeAssignee.id == task_id).values(due_at=due))


def get(client: TestClient, tenant: Tenant, query: str) -> dict[str, Any]:
    response = client.get(f"{API}/tasks{query}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_task_by_id_carries_its_workflow_stage_and_document(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session], api_engine: Engine
) -> None:
    opened = open_runtime(session_factory, tenant, document_id="LR-7")
    set_due(api_engine, opened.tasks["u2"], datetime(2030, 1, 2, 3, 4, 5))
    response = client.get(f"{API}/tasks/{opened.tasks['u2']}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    task = response.json()
    assert task == {
        "id": opened.tasks["u2"],
        "runtime_id": opened.runtime_id,
        "node_key": "manager_review",
        "user": "u2",
        "status": "pending",
        "action_taken": None,
        "due_at": "2030-01-02T03:04:05Z",
        "created_at": task["created_at"],
        "workflow_name": "Leave request",
        "stage_name": "Manager review",
        "document_type": "leave_request",
        "document_id": "LR-7",
    }
    listed = get(client, tenant, f"?runtime_id={opened.runtime_id}&assignee=u2")["results"]
    assert listed == [task]


def test_another_tenants_task_and_an_unknown_one_are_404(
    client: TestClient, tenant: Tenant, other_tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    opened = open_runtime(session_factory, tenant)
    unknown = "00000000-0000-0000-0000-000000000000"
    for who, task_id in ((other_tenant, opened.tasks["u1"]), (tenant, unknown)):
        response = client.get(f"{API}/tasks/{task_id}", headers=who.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert get(client, other_tenant, "")["count"] == 0
    assert get(client, other_tenant, "?document_type=leave_request")["count"] == 0


def test_the_submitters_record_is_no_task(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    opened = open_runtime(session_factory, tenant)
    with session_factory() as session:
        creator = session.scalars(
            select(RuntimeAssignee.id).where(
                RuntimeAssignee.runtime_id == opened.runtime_id, RuntimeAssignee.assign_type == "creator"
            )
        ).one()
    assert client.get(f"{API}/tasks/{creator}", headers=tenant.headers).status_code == 404


def test_document_type_filters_alone_and_with_the_other_filters(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    leave = open_runtime(session_factory, tenant)
    expense = open_runtime(session_factory, tenant, definition=expense_definition(), document_id="EX-1")
    alone = get(client, tenant, "?document_type=expense")
    assert alone["count"] == 3
    assert {t["runtime_id"] for t in alone["results"]} == {expense.runtime_id}
    assert {(t["workflow_name"], t["stage_name"], t["document_id"]) for t in alone["results"]} == {
        ("Expense claim", "Budget holder", "EX-1")
    }
    combined = get(client, tenant, "?document_type=leave_request&assignee=u1&status=open")
    assert [(t["runtime_id"], t["user"]) for t in combined["results"]] == [(leave.runtime_id, "u1")]
    assert combined["count"] == 1
    crossed = get(client, tenant, f"?document_type=leave_request&runtime_id={expense.runtime_id}")
    assert crossed == {"count": 0, "next": None, "previous": None, "results": []}
    assert get(client, tenant, "?document_type=nothing")["count"] == 0
    assert client.get(f"{API}/tasks?document_type=", headers=tenant.headers).status_code == 422


def test_soonest_due_first_then_without_a_due_time_oldest_first(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session], api_engine: Engine
) -> None:
    first = open_runtime(session_factory, tenant)
    second = open_runtime(session_factory, tenant, document_id="LR-2")
    set_due(api_engine, second.tasks["u3"], datetime(2030, 1, 1))
    set_due(api_engine, first.tasks["u2"], datetime(2030, 1, 2))
    set_due(api_engine, second.tasks["u1"], datetime(2030, 1, 2))  # a tie: the older task first
    undated = [first.tasks["u1"], first.tasks["u3"], second.tasks["u2"]]
    expected = [second.tasks["u3"], first.tasks["u2"], second.tasks["u1"], *undated]
    assert [t["id"] for t in get(client, tenant, "")["results"]] == expected
    walked = []
    url: str | None = f"{API}/tasks?page_size=4"
    while url is not None:
        page = client.get(url, headers=tenant.headers).json()
        walked += [t["id"] for t in page["results"]]
        url = page["next"]
    assert walked == expected


def test_a_task_costs_at_most_3_statements(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    opened = open_runtime(session_factory, tenant)
    with counted_statements() as statements:
        assert client.get(f"{API}/tasks/{opened.tasks['u1']}", headers=tenant.headers).status_code == 200
    # The token (unless a request cached it), then the task joined to what it shows.
    assert len(statements) <= 3, statements


def test_a_page_of_tasks_costs_the_same_statements_whatever_its_size(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    open_runtime(session_factory, tenant, document_id="LR-0")

    def cost(page_size: int) -> int:
        with counted_statements() as statements:
            page = get(client, tenant, f"?page_size={page_size}")
        assert len(page["results"]) == min(page_size, page["count"])
        assert all(t["stage_name"] == "Manager review" for t in page["results"])
        return len(statements)

    small = cost(1)
    for n in range(1, 18):  # 54 tasks in all
        open_runtime(session_factory, tenant, document_id=f"LR-{n}")
    large = cost(50)
    assert small <= 3 and large <= 3, (small, large)
    assert large == cost(1)


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("page_size=0", "query.page_size"),
        ("page=0", "query.page"),
        ("status=maybe", "query.status"),
        ("document_type=", "query.document_type"),
        (f"document_type={'x' * 101}", "query.document_type"),
    ],
)
def test_bad_query_values_are_422(client: TestClient, tenant: Tenant, query: str, path: str) -> None:
    response = client.get(f"{API}/tasks?{query}", headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["path"] == path
