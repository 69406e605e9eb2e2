"""The outbox: deliveries written with the events, in the transition's transaction, enqueued after commit."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks import after_commit
from bflow_tasks.engine import clock
from bflow_tasks.engine.runtimes import admission, journal, transitions
from bflow_tasks.engine.webhooks import outbox
from bflow_tasks.models import Runtime, RuntimeEvent, WebhookDelivery, WebhookEndpoint
from bflow_tasks.worker import publishing
from tests.api.helpers import queued_messages
from tests.engine.driver import Driver
from tests.factories import leave_request_definition
from tests.webhooks.support import add_endpoint, deliveries

URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def driver(session_factory: sessionmaker[Session]) -> Driver:
    return Driver(session_factory)


def test_every_event_fans_out_to_each_subscribed_active_endpoint(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    everything, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    completions, _ = add_endpoint(session_factory, driver.tenant_id, URL, ["runtime.completed"])
    disabled, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    with session_factory.begin() as session:
        session.get_one(WebhookEndpoint, disabled).is_active = False
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    for user in ("u1", "u2", "u3"):
        driver.act(runtime_id, user)
    assert driver.status(runtime_id) == "completed"

    with Session(engine) as session:
        events = session.scalars(
            select(RuntimeEvent).where(RuntimeEvent.runtime_id == runtime_id).order_by(RuntimeEvent.sequence)
        ).all()
    rows = deliveries(engine, endpoint_id=everything)
    assert [(d.event_id, d.sequence, d.event_type) for d in rows] == [
        (e.id, e.sequence, e.type) for e in events
    ]
    assert {e.type for e in events} >= {
        "runtime.created", "stage.started", "task.assigned", "task.completed", "stage.completed",
        "runtime.completed",
    }  # fmt: skip
    assert [d.event_type for d in deliveries(engine, endpoint_id=completions)] == ["runtime.completed"]
    assert deliveries(engine, endpoint_id=disabled) == []
    for delivery, source in zip(rows, events, strict=True):
        body = json.loads(delivery.body)
        assert body == {
            "type": source.type,
            "timestamp": source.created_at.isoformat() + "Z",
            "sequence": source.sequence,
            "data": source.data,
        }
        assert delivery.status == "pending" and delivery.next_attempt_at is not None
    completed = json.loads(rows[-1].body)["data"]
    assert completed["runtime_id"] == runtime_id and completed["status"] == "completed"
    approval = next(json.loads(d.body)["data"] for d in rows if d.event_type == "task.completed")
    assert {"workflow_id", "stage_id", "node", "task_id", "actor", "status", "updated_at"} <= set(approval)


def test_a_transaction_reads_the_tenants_endpoints_once(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    add_endpoint(session_factory, driver.tenant_id, URL)
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    endpoint_reads: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM webhook_endpoint" in statement:
            endpoint_reads.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        for _transaction in range(2):
            with session_factory.begin() as session:
                runtime = transitions.lock(session, runtime_id)
                for _ in range(5):
                    journal.emit(session, runtime, "task.overdue", status="overdue")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(endpoint_reads) == 2  # one per transaction, not one per event
    assert len(deliveries(engine, event_type="task.overdue")) == 10


def test_streams_are_enqueued_after_the_unit_of_work_commits_and_never_on_rollback(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine, api_engine: Engine
) -> None:
    add_endpoint(session_factory, driver.tenant_id, URL)
    add_endpoint(session_factory, driver.tenant_id, URL)
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    before = queued_messages("webhooks")

    with pytest.raises(RuntimeError, match="rolled back"), publishing.unit_of_work() as session:
        runtime = transitions.lock(session, runtime_id)
        with after_commit.savepoint(session):  # a released savepoint is not a commit
            journal.emit(session, runtime, "task.overdue")
        journal.emit(session, runtime, "task.overdue")
        assert queued_messages("webhooks") == before
        raise RuntimeError("rolled back")
    assert queued_messages("webhooks") == before
    assert deliveries(engine, event_type="task.overdue") == []

    with publishing.unit_of_work() as session:
        runtime = transitions.lock(session, runtime_id)
        for _ in range(3):
            journal.emit(session, runtime, "task.overdue")
        assert queued_messages("webhooks") == before
    # One message per (endpoint, runtime) stream, however many events it got.
    assert queued_messages("webhooks") == before + 2
    assert len(deliveries(engine, event_type="task.overdue")) == 6


def test_a_session_nobody_owns_sends_nothing_and_the_sweep_finds_its_deliveries(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    # No listener on every session of the process: only a unit of work's owner sends.
    add_endpoint(session_factory, driver.tenant_id, URL)
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    before = queued_messages("webhooks")
    with session_factory() as session:
        journal.emit(session, transitions.lock(session, runtime_id), "task.overdue")
        session.commit()
    assert queued_messages("webhooks") == before
    with session_factory() as session:
        streams = outbox.due_streams(session, grace=timedelta(0))
    assert (deliveries(engine, event_type="task.overdue")[0].endpoint_id, runtime_id) in streams


def test_admission_emits_nothing_so_a_withdrawn_submission_was_never_announced(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    add_endpoint(session_factory, driver.tenant_id, URL)
    workflow_id = driver.workflow(leave_request_definition())
    _runtime_id, command_id = driver.admit(workflow_id, {})
    assert command_id is not None
    # runtime.created waits for the worker to start the runtime (see the next assertion).
    assert deliveries(engine) == []
    with session_factory.begin() as session:
        admission.withdraw(session, command_id=command_id)
    assert deliveries(engine) == []
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Runtime)) == 0


def test_a_body_over_64_kb_keeps_its_ids_only() -> None:
    data = {"runtime_id": "r1", "task_id": "t1", "status": "approve", "actor": "x" * 70_000}
    body = outbox.render_body(event_type="task.completed", timestamp=clock.now(), sequence=3, data=data)
    assert len(body.encode()) <= outbox.MAX_BODY_BYTES
    assert json.loads(body)["data"] == {
        "runtime_id": "r1",
        "task_id": "t1",
        "status": "approve",
        "truncated": True,
    }


def test_the_sweep_finds_due_unlocked_streams_of_active_endpoints_only(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    first, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    second, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    with session_factory() as session:
        # Fresh rows belong to the message sent at commit: not yet the sweep's business.
        assert outbox.due_streams(session, grace=timedelta(seconds=30)) == []
        assert set(outbox.due_streams(session, grace=timedelta(0))) == {
            (first, runtime_id),
            (second, runtime_id),
        }
        session.rollback()
    now = clock.now()
    with session_factory.begin() as session:
        for row in session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == first)):
            row.locked_until = now + timedelta(seconds=60)  # a worker is sending it
        session.get_one(WebhookEndpoint, second).is_active = False
    with session_factory() as session:
        assert outbox.due_streams(session, grace=timedelta(0)) == []
    with session_factory.begin() as session:
        for row in session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == first)):
            row.locked_until = now - timedelta(seconds=1)  # ... and died: the lease ran out
    with session_factory() as session:
        assert outbox.due_streams(session, grace=timedelta(0)) == [(first, runtime_id)]


def test_runtime_created_goes_out_when_the_worker_starts_the_runtime(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    add_endpoint(session_factory, driver.tenant_id, URL)
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 5})
    created = deliveries(engine, event_type="runtime.created")
    assert [(d.runtime_id, d.sequence) for d in created] == [(runtime_id, 1)]
