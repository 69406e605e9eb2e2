"""GET /workflows/{id}/metrics on a small data set whose times the test set with the clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine import tenants
from tests.api.helpers import API
from tests.beat.conftest import T0, FakeClock
from tests.engine.driver import Driver


def approve(key: str, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": key.title(),
        "action": "approve",
        "approvers": {"mode": "all", "sources": [{"users": [user]}]},
        **extra,
    }


def two_stages() -> dict[str, Any]:
    """submit -> review (r1, 1 h SLA) -> finance (f1, 1 h SLA) -> done; a rejection ends it."""
    return {
        "name": "Purchase",
        "document_type": "leave_request",
        "nodes": [
            {"key": "submit", "name": "Submit", "action": "create"},
            approve("review", "r1", sla_hours=1),
            approve("finance", "f1", sla_hours=1),
            {"key": "done", "name": "Done", "action": "end"},
        ],
        "associations": [
            {"source": "submit", "dest": "review"},
            {"source": "review", "dest": "finance"},
            {"source": "finance", "dest": "done"},
        ],
    }


def at(minutes: float) -> Any:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def headers(d: Driver, session_factory: sessionmaker[Session]) -> dict[str, str]:
    with session_factory.begin() as s:
        return {"Authorization": f"Bearer {tenants.issue_token(s, tenant_id=d.tenant_id)}"}


def metrics(client: TestClient, headers: dict[str, str], workflow_id: str, **query: str) -> dict[str, Any]:
    response = client.get(f"{API}/workflows/{workflow_id}/metrics", params=query, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_metrics_of_a_known_data_set(
    d: Driver, client: TestClient, headers: dict[str, str], fake_clock: FakeClock
) -> None:
    workflow_id = d.workflow(two_stages())

    def run(doc: str, submitted: float, *steps: tuple[float, str, str]) -> str:
        fake_clock.set(at(submitted))
        rid = d.submit(workflow_id, {}, document_id=doc)
        for minutes, user, action in steps:
            fake_clock.set(at(minutes))
            d.act(rid, user, action)
        return rid

    # Completed in 2 h: review 30 min (in time), finance 90 min (30 min late).
    run("A", 0, (30, "r1", "approve"), (120, "f1", "approve"))
    # Completed in 20 min: both stages in time.
    run("B", 60, (70, "r1", "approve"), (80, "f1", "approve"))
    # Rejected after 2 h at review (an hour late).
    run("C", 120, (240, "r1", "reject"))
    # Still at review, and past its due time (4 h) when the metrics are read (5 h).
    run("D", 180)
    # Before the window: a very slow one that must not count.
    run("X", -2 * 24 * 60, (-2 * 24 * 60 + 600, "r1", "approve"), (-2 * 24 * 60 + 1200, "f1", "approve"))

    fake_clock.set(at(300))
    body = metrics(
        client, headers, workflow_id, **{"from": "2030-01-07T09:00:00Z", "to": "2030-01-08T09:00:00Z"}
    )
    assert body == {
        "workflow_id": workflow_id,
        "from": "2030-01-07T09:00:00Z",
        "to": "2030-01-08T09:00:00Z",
        "executions": 4,
        "completed": 2,
        "rejected": 1,
        "cancelled": 0,
        "error": 0,
        "running": 1,
        "success_rate": 0.6667,  # 2 of the 3 that ended
        "avg_completion_seconds": 4200.0,  # (7200 + 1200) / 2
        "p90_completion_seconds": 7200.0,
        # Met: A.review, B.review, B.finance. Breached: A.finance, C.review (late), D.review (open, past due).
        "sla_tasks": 6,
        "sla_met": 3,
        "sla_compliance": 0.5,
        "slowest_stage": {"node_key": "review", "avg_seconds": 3200.0, "count": 3},  # (1800+600+7200)/3
        "stages": [
            {"node_key": "review", "avg_seconds": 3200.0, "count": 3},
            {"node_key": "finance", "avg_seconds": 3000.0, "count": 2},  # (5400+600)/2
        ],
    }
    # Without a window: the last 30 days up to now, X included.
    assert metrics(client, headers, workflow_id)["executions"] == 5


def test_p90_is_the_nearest_rank_of_the_completion_times(
    d: Driver, client: TestClient, headers: dict[str, str], fake_clock: FakeClock
) -> None:
    single = two_stages()
    single["nodes"] = [node for node in single["nodes"] if node["key"] != "finance"]
    single["associations"] = [{"source": "submit", "dest": "review"}, {"source": "review", "dest": "done"}]
    workflow_id = d.workflow(single)
    for k in range(1, 11):
        fake_clock.set(at(k * 100))
        rid = d.submit(workflow_id, {}, document_id=f"D{k}")
        fake_clock.advance(minutes=k)  # completion times 60, 120, ... 600 s
        d.act(rid, "r1")
    body = metrics(
        client, headers, workflow_id, **{"from": "2030-01-07T00:00:00", "to": "2030-01-09T00:00:00"}
    )
    assert (body["completed"], body["avg_completion_seconds"], body["p90_completion_seconds"]) == (
        10,
        330.0,
        540.0,
    )
    assert body["slowest_stage"] == {"node_key": "review", "avg_seconds": 330.0, "count": 10}
    assert (body["sla_tasks"], body["sla_compliance"]) == (10, 1.0)  # every review within its hour


def test_metrics_are_tenant_scoped_and_the_window_is_checked(
    d: Driver, client: TestClient, headers: dict[str, str], other_tenant: Any
) -> None:
    workflow_id = d.workflow(two_stages())
    url = f"{API}/workflows/{workflow_id}/metrics"
    assert client.get(url, headers=other_tenant.headers).status_code == 404
    assert client.get(f"{API}/workflows/nope/metrics", headers=headers).status_code == 404
    backwards = client.get(
        url, params={"from": "2030-01-08T00:00:00", "to": "2030-01-07T00:00:00"}, headers=headers
    )
    assert backwards.status_code == 400
    assert backwards.json()["error"]["code"] == "invalid_input"
    assert client.get(url, params={"from": "yesterday"}, headers=headers).status_code == 422
    empty = metrics(client, headers, workflow_id)
    assert (
        empty["executions"],
        empty["success_rate"],
        empty["p90_completion_seconds"],
        empty["slowest_stage"],
    ) == (
        0,
        None,
        None,
        None,
    )
