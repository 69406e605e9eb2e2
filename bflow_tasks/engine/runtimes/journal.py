"""The audit log and the event outbox, both written inside the transition's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from bflow_tasks import after_commit
from bflow_tasks.engine import clock
from bflow_tasks.engine.webhooks import outbox
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeEvent, RuntimeLog, RuntimeStage, new_id


def log(
    session: Session,
    runtime: Runtime,
    action: str,
    *,
    actor: str | None = None,
    stage: RuntimeStage | None = None,
    assignee: RuntimeAssignee | None = None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Append one line to the runtime's audit trail (at `at`, or now)."""
    runtime.log_sequence = (runtime.log_sequence or 0) + 1
    session.add(
        RuntimeLog(
            runtime_id=runtime.id,
            sequence=runtime.log_sequence,
            stage_id=stage.id if stage else None,
            assignee_id=assignee.id if assignee else None,
            actor=actor,
            action=action,
            message=message,
            details=details,
            created_at=at or clock.now(),
        )
    )


def emit(
    session: Session,
    runtime: Runtime,
    event_type: str,
    *,
    stage: RuntimeStage | None = None,
    assignee: RuntimeAssignee | None = None,
    actor: str | None = None,
    status: str | None = None,
) -> None:
    """Record a domain event (thin: ids, not documents) with the runtime's next sequence.

    The caller holds the runtime row lock, so the sequence increases without gaps or ties.
    The event's webhook deliveries are written with it, in the same transaction.
    """
    runtime.event_sequence += 1
    now = clock.now()
    data: dict[str, Any] = {
        "runtime_id": runtime.id,
        "workflow_id": runtime.workflow_id,
        "document_type": runtime.document_type,
        "document_id": runtime.document_id,
        "runtime_status": runtime.status,
        "updated_at": now.isoformat() + "Z",
    }
    if stage is not None:
        data["stage_id"] = stage.id
        data["node"] = stage.node_key
    if assignee is not None:
        data["task_id"] = assignee.id
        data["assignee"] = assignee.user
    if actor is not None:
        data["actor"] = actor
    if status is not None:
        data["status"] = status
    event = RuntimeEvent(
        id=new_id(),  # the deliveries name it before it is flushed
        tenant_id=runtime.tenant_id,
        runtime_id=runtime.id,
        sequence=runtime.event_sequence,
        type=event_type,
        data=data,
        created_at=now,
    )
    session.add(event)
    outbox.fan_out(session, event)
    seconds = None
    # A cancelled stage (overtaken at an `any` join) did not take that long to decide.
    if event_type == "stage.completed" and stage and stage.completed_at and stage.status == "completed":
        seconds = (stage.completed_at - stage.created_at).total_seconds()
    after_commit.of(session).record_event(
        {"type": event_type, "workflow_id": runtime.workflow_id, "node": data.get("node"), "seconds": seconds}
    )
