"""Shared setup for the shim's tests: tenants, workflows, runtimes with open tasks, row counts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks import after_commit, db
from bflow_tasks.engine import tenants
from bflow_tasks.engine.definitions import workflow_store
from bflow_tasks.engine.runtimes import admission, transitions
from bflow_tasks.models import (
    Runtime,
    RuntimeAssignee,
    RuntimeCommand,
    RuntimeEvent,
    RuntimeLog,
    RuntimeViewer,
)
from bflow_tasks.worker import celery_app, publishing
from tests.factories import leave_request_definition

API = "/api/v1"
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"
# Transaction control, not work: left out of statement counts (as bench/queries.py does).
UNCOUNTED = ("BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT", "PRAGMA")
RUNTIME_TABLES = (Runtime, RuntimeCommand, RuntimeLog, RuntimeEvent, RuntimeViewer, RuntimeAssignee)


@dataclass(frozen=True)
class Tenant:
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_tenant(session_factory: sessionmaker[Session], name: str) -> Tenant:
    """Create a tenant and its API token, committed."""
    with session_factory.begin() as session:
        tenant, token = tenants.create_tenant(session, name=name)
        return Tenant(id=tenant.id, token=token)


def zoned_definition() -> dict[str, Any]:
    """The leave request, where the manager review may edit `reason` only."""
    raw = leave_request_definition()
    raw["zones"] = ["amount", "reason"]
    raw["nodes"][1]["zones"] = ["reason"]
    return raw


def post_workflow(
    client: TestClient, tenant: Tenant, definition: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Create a workflow over HTTP and return its body (asserting 201)."""
    response = client.post(
        f"{API}/workflows", json=definition or leave_request_definition(), headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def execute(
    client: TestClient,
    tenant: Tenant,
    workflow_id: str,
    *,
    document_id: str = "LR-1",
    key: str | None = None,
    data: dict[str, Any] | None = None,
) -> Response:
    """Submit a leave request over HTTP."""
    headers = dict(tenant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    body = {
        "workflow_id": workflow_id,
        "document_type": "leave_request",
        "document_id": document_id,
        "data": {"amount": 500, "reason": "holiday"} if data is None else data,
        "submitted_by": "alice",
    }
    return client.post(f"{API}/runtime/execute", json=body, headers=headers)


@dataclass(frozen=True)
class OpenRuntime:
    runtime_id: str
    workflow_id: str
    tasks: dict[str, str]  # user -> task (assignee) id of the open stage


def commit_as_the_worker(session: Session) -> None:
    """Commit, then do what the transaction noted for after its commit, as the worker's unit of work does."""
    session.commit()
    publishing.send(after_commit.take(session))


def open_runtime(
    session_factory: sessionmaker[Session],
    tenant: Tenant,
    *,
    definition: dict[str, Any] | None = None,
    document_id: str = "LR-1",
) -> OpenRuntime:
    """Drive the engine directly (as the worker would) up to the first approval stage's tasks."""
    raw = definition or zoned_definition()
    with session_factory() as session:
        workflow, _ = workflow_store.create_workflow(session, tenant_id=tenant.id, raw=raw)
        runtime, command = admission.submit(
            session,
            tenant_id=tenant.id,
            workflow_id=workflow.id,
            document_type=raw["document_type"],
            document_id=document_id,
            data={"amount": 500, "reason": "holiday"},
            submitted_by="alice",
        )
        assert command is not None
        commit_as_the_worker(session)
        stage_ids = transitions.start(session, command_id=command.id)
        commit_as_the_worker(session)
        for stage_id, user in transitions.opening_plan(session, stage_ids=stage_ids):
            transitions.assign(session, stage_id=stage_id, user=user)
            commit_as_the_worker(session)
        transitions.mark_started(session, stage_ids=stage_ids)
        commit_as_the_worker(session)
        rows = session.scalars(select(RuntimeAssignee).where(RuntimeAssignee.runtime_id == runtime.id)).all()
        return OpenRuntime(
            runtime_id=runtime.id, workflow_id=workflow.id, tasks={row.user: row.id for row in rows}
        )


def apply_pending_commands(session_factory: sessionmaker[Session], runtime_id: str) -> None:
    """Apply the runtime's admitted action commands, as the worker would."""
    with session_factory() as session:
        ids = session.scalars(
            select(RuntimeCommand.id).where(
                RuntimeCommand.runtime_id == runtime_id,
                RuntimeCommand.status == "requested",
                RuntimeCommand.kind == "action",
            )
        ).all()
        commit_as_the_worker(session)
        for command_id in ids:
            transitions.apply_action(session, command_id=command_id)
            commit_as_the_worker(session)


def count(engine: Engine, model: type[Any], **where: Any) -> int:
    """Count a table's rows matching the given column values."""
    query = select(func.count()).select_from(model)
    for column, value in where.items():
        query = query.where(getattr(model, column) == value)
    with engine.connect() as connection:
        return connection.scalar(query) or 0


def assert_no_runtime_rows(engine: Engine) -> None:
    """Nothing about any runtime was written."""
    assert {m.__tablename__: count(engine, m) for m in RUNTIME_TABLES} == dict.fromkeys(
        (m.__tablename__ for m in RUNTIME_TABLES), 0
    )


def queued_messages(queue: str = "workflow") -> int:
    """How many messages wait in a broker queue (the in-memory broker: nothing consumes)."""
    with celery_app.app.connection_for_write() as connection:
        return connection.default_channel.queue_declare(queue=queue, passive=True).message_count


def purge_queues() -> None:
    """Drop every message the tests left in the in-memory broker's queues."""
    with celery_app.app.connection_for_write() as connection:
        for queue in ("workflow", "webhooks", "maintenance"):
            connection.default_channel.queue_purge(queue)


def switch_broker(url: str) -> None:
    """Point the Celery app at another broker, dropping its cached connection and producer pools.

    The pools are not closed: kombu keeps them in a process-wide registry keyed by broker
    URL, and the app picks the same (open) pool up again when it switches back.
    """
    celery_app.app.conf.broker_url = url
    celery_app.app._pool = None
    celery_app.app.amqp._producer_pool = None


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs inside the block (the token lookup too)."""
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().split(None, 1)[0].upper() not in UNCOUNTED:
            statements.append(statement)

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
