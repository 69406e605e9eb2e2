"""On MariaDB, the SLA scan's, the sweep's and the archive's selections are index range reads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Select, insert, inspect, select, text

from bflow_tasks.engine.runtimes import lost_work
from bflow_tasks.engine.timers import archiving, sla
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeCommand, RuntimeStage
from tests.beat.conftest import T0
from tests.engine.driver import Driver
from tests.factories import leave_request_definition

pytestmark = pytest.mark.parametrize("database_url", ["mysql"], indirect=True)

ROWS = 3000


def explain(conn: Connection, query: Select[Any], table: str) -> dict[str, Any]:
    """The EXPLAIN row of `table` for the query exactly as the engine sends it."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    plan = conn.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params).mappings().all()
    return dict(next(row for row in plan if row["table"] == table))


def assert_uses_an_index(row: dict[str, Any], index: str) -> None:
    assert row["key"] is not None and row["type"] != "ALL", row
    assert row["key"] == index, row


@pytest.fixture
def populated(engine: Engine, session_factory) -> Engine:
    """Thousands of finished tasks and runtimes around a few that the jobs are after."""
    d = Driver(session_factory)
    workflow_id = d.workflow(leave_request_definition())
    runtime_id = d.submit(workflow_id, {"amount": 10})
    with session_factory() as s:
        runtime = s.get_one(Runtime, runtime_id)
        stage_id = s.scalars(
            select(RuntimeStage.id).where(
                RuntimeStage.runtime_id == runtime_id, RuntimeStage.status == "open"
            )
        ).one()
    assignees = [
        {
            "id": f"a-{n:05d}",
            "runtime_id": runtime_id,
            "runtime_stage_id": stage_id,
            "tenant_id": d.tenant_id,
            "node_key": "manager_review",
            "user": f"user-{n}",
            "assign_type": "user",
            # Most tasks are long done; a few are open, some of those past due.
            "status": "completed" if n % 50 else ("pending" if n % 100 else "overdue"),
            "due_at": T0 + timedelta(hours=n % 7 - 3),
            "next_reminder_at": T0 + timedelta(minutes=n % 11 - 5),
            "created_at": T0 - timedelta(days=1),
        }
        for n in range(ROWS)
    ]
    runtimes = [
        {
            "id": f"r-{n:05d}",
            "tenant_id": d.tenant_id,
            "workflow_id": workflow_id,
            "workflow_version_id": runtime.workflow_version_id,
            "document_type": "leave_request",
            "document_id": f"R{n}",
            "data": {},
            "status": "completed" if n % 10 else "in_progress",
            "submitted_by": "alice",
            "in_flight": None if n % 10 else True,
            "created_at": T0 - timedelta(days=n % 800),
            "updated_at": T0,
            # Only a few ended long enough ago to archive.
            "ended_at": T0 - timedelta(days=(n % 400) if n % 10 else 0) if n % 10 else None,
        }
        for n in range(ROWS)
    ]
    with session_factory() as s:
        node_id = s.scalars(select(RuntimeStage.node_id).where(RuntimeStage.id == stage_id)).one()
    # Most commands are applied and most stages started; a few are lost, some re-sent before,
    # some failed for good (left out by the sweep).
    commands = [
        {
            "id": f"c-{n:05d}",
            "runtime_id": runtime_id,
            "kind": "action",
            "dedupe_key": f"k-{n}",
            "payload": {},
            "status": {0: "requested", 25: "failed"}.get(n % 50, "applied"),
            "created_at": T0 - timedelta(minutes=n % 60),
            "next_sweep_at": T0 + timedelta(minutes=n % 7 - 3) if n % 3 == 0 else None,
        }
        for n in range(ROWS)
    ]
    stages = [
        {
            "id": f"s-{n:05d}",
            "runtime_id": f"r-{n:05d}",
            "node_id": node_id,
            "node_key": "manager_review",
            "action": "approve",
            "round": 1,
            "visit": 1,
            "sequence": 1,
            "status": "completed" if n % 50 else "open",
            "approvers": [],
            "created_at": T0 - timedelta(minutes=n % 60),
            "started_at": T0 if n % 100 else None,
            "next_sweep_at": T0 + timedelta(minutes=n % 7 - 3) if n % 3 == 0 else None,
        }
        for n in range(ROWS)
    ]
    with engine.begin() as conn:
        conn.execute(insert(RuntimeAssignee), assignees)
        conn.execute(insert(Runtime), runtimes)
        conn.execute(insert(RuntimeCommand), commands)
        conn.execute(insert(RuntimeStage), stages)
        conn.execute(text("ANALYZE TABLE runtime_assignee, runtime, runtime_command, runtime_stage"))
    return engine


def assert_skips_held_back_tasks_in_the_index(engine: Engine, row: dict[str, Any]) -> None:
    """sla_retry_at is checked on the index entries (index condition pushdown), not on rows."""
    columns = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("runtime_assignee")}
    assert columns[row["key"]][-1] == "sla_retry_at", columns[row["key"]]
    assert "Using index condition" in (row["Extra"] or ""), row


def test_the_overdue_selection_reads_idx_runtime_assignee_status_due(populated: Engine) -> None:
    with populated.connect() as conn:
        row = explain(conn, sla.overdue_query(T0, 500), "runtime_assignee")
    assert_uses_an_index(row, "idx_runtime_assignee_status_due")
    assert "filesort" not in (row["Extra"] or "")  # the index gives the due_at order
    assert_skips_held_back_tasks_in_the_index(populated, row)


def test_the_reminder_selection_reads_idx_runtime_assignee_status_reminder(populated: Engine) -> None:
    with populated.connect() as conn:
        row = explain(conn, sla.reminder_query(T0, 500), "runtime_assignee")
    assert_uses_an_index(row, "idx_runtime_assignee_status_reminder")
    assert_skips_held_back_tasks_in_the_index(populated, row)


def test_the_archive_selection_reads_idx_runtime_ended_at(populated: Engine) -> None:
    with populated.connect() as conn:
        row = explain(conn, archiving.due_query(T0 - timedelta(days=365), 500), "runtime")
    assert_uses_an_index(row, "idx_runtime_ended_at")
    assert "filesort" not in (row["Extra"] or "")  # LIMIT stops after one batch of the range


@pytest.mark.parametrize(
    ("model", "unfinished", "index"),
    [
        (RuntimeCommand, lost_work.UNAPPLIED, "idx_runtime_command_status_sweep"),
        (RuntimeStage, lost_work.UNSTARTED, "idx_runtime_stage_status_sweep"),
    ],
)
def test_the_sweeps_selections_read_their_index_in_order(
    populated: Engine, model: Any, unfinished: Any, index: str
) -> None:
    grace = timedelta(seconds=30)
    with populated.connect() as conn:
        for query in (
            lost_work.first_send_query(model, unfinished, now=T0, grace=grace),
            lost_work.resend_query(model, unfinished, now=T0),
        ):
            row = explain(conn, query, model.__tablename__)
            assert_uses_an_index(row, index)
            assert "filesort" not in (row["Extra"] or "")  # LIMIT stops after one batch of the range
