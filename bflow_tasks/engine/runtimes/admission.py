"""Admission: check a request against everything a caller can get wrong, then write it as a command.

A request (`submit`, `request_action`, ...) writes one RuntimeCommand (a submit: also the
pending runtime) in the caller's transaction and changes nothing else; `runtimes` applies
the command later, in a worker. A refused request raises a domain error and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.definitions.workflow_store import AdmissionTarget, admission_target, load_definition
from bflow_tasks.engine.domain_errors import Conflict, Forbidden, InvalidInput, NotFound
from bflow_tasks.engine.runtimes import stage_lifecycle
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeCommand, RuntimeStage, new_id

ACTIONS = ("approve", "reject", "return", "delegate")


def get_runtime(session: Session, *, tenant_id: str, runtime_id: str) -> Runtime:
    """Return the tenant's runtime, or NotFound (another tenant's id is not found either)."""
    runtime = session.scalars(
        select(Runtime).where(Runtime.id == runtime_id, Runtime.tenant_id == tenant_id)
    ).one_or_none()
    if runtime is None:
        raise NotFound(f"runtime {runtime_id} not found")
    return runtime


def submit(
    session: Session,
    *,
    tenant_id: str,
    workflow_id: str,
    document_type: str,
    document_id: str,
    data: dict[str, Any],
    submitted_by: str,
    idempotency_key: str | None = None,
) -> tuple[Runtime, RuntimeCommand | None]:
    """Admit a document: a pending runtime and its start command, or the earlier one for a replayed key.

    Returns the command to publish, or None when the Idempotency-Key names a runtime that
    was already accepted (nothing new to enqueue). The rows are written with Core INSERTs,
    so the returned objects are not in the session.
    """
    target = admission_target(session, tenant_id=tenant_id, workflow_id=workflow_id)
    refusal = _refusal(target, workflow_id, document_type)
    fingerprint = None
    if idempotency_key is not None:
        request = (workflow_id, document_type, document_id, data, submitted_by)
        fingerprint = _fingerprint(request)
    if refusal is None:
        now = clock.now()
        runtime = Runtime(
            id=new_id(),
            tenant_id=tenant_id,
            company_id=target.company_id,
            workflow_id=target.workflow_id,
            workflow_version_id=target.version_id,
            document_type=document_type,
            document_id=document_id,
            data=data,
            status="pending",
            submitted_by=submitted_by,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            created_at=now,
            updated_at=now,  # equal until something touches the runtime (see `withdraw`)
        )
        command = RuntimeCommand(
            id=new_id(),
            runtime_id=runtime.id,
            kind="start",
            dedupe_key=f"start:{runtime.id}",
            actor=submitted_by,
            payload={},
            status="requested",
            created_at=now,
        )
        # Two INSERTs and no read: a repeated Idempotency-Key or a document already in
        # flight is caught by the unique constraints. No event and no log line yet: the
        # worker writes both when it starts the runtime, so a submission withdrawn after a
        # broker refusal (503) left no trace.
        try:
            _insert(session, runtime)
        except IntegrityError:
            # MariaDB and SQLite undo only the failed statement; the transaction goes on.
            pass
        else:
            _insert(session, command)
            return runtime, command
    earlier = _earlier_submission(session, tenant_id, idempotency_key, document_type, document_id)
    if earlier is not None and idempotency_key is not None and earlier.idempotency_key == idempotency_key:
        # A retry gets its first answer, whatever changed since, and keeps the runtime from
        # being withdrawn by a first request still waiting on the broker.
        return _kept(_replayed(earlier, (workflow_id, document_type, document_id), fingerprint)), None
    if earlier is not None:
        raise Conflict(
            f"document {document_type}/{document_id} is already in flight", details={"runtime_id": earlier.id}
        )
    if refusal is not None:
        raise refusal
    # The runtime we collided with ended (or was withdrawn) before we could read it.
    raise Conflict(f"document {document_type}/{document_id} was submitted concurrently; retry")


def request_action(
    session: Session,
    *,
    tenant_id: str,
    task_id: str,
    action: str,
    actor: str,
    comments: str | None = None,
    delegate_to: str | None = None,
    data: dict[str, Any] | None = None,
) -> RuntimeCommand:
    """Admit a person's action on their task, refusing anything that could not be applied."""
    found = session.execute(
        select(RuntimeAssignee, Runtime, RuntimeStage.action)
        .join(Runtime, Runtime.id == RuntimeAssignee.runtime_id)
        .join(RuntimeStage, RuntimeStage.id == RuntimeAssignee.runtime_stage_id)
        .where(RuntimeAssignee.id == task_id, RuntimeAssignee.tenant_id == tenant_id)
    ).one_or_none()
    if found is None:
        raise NotFound(f"task {task_id} not found")
    assignee, runtime, node_action = found
    if action not in ACTIONS:
        raise InvalidInput(f"unknown action '{action}'; expected one of {', '.join(ACTIONS)}")
    if assignee.user != actor:
        raise Forbidden(f"'{actor}' may not act on a task assigned to another user")
    if assignee.status not in stage_lifecycle.OPEN_TASK_STATUSES:
        raise Conflict(f"task {task_id} is already {assignee.status}")
    if runtime.status != "in_progress":
        raise Conflict(f"runtime {runtime.id} is {runtime.status}")
    refusal = stage_lifecycle.action_refusal(node_action, action)
    if refusal:
        raise Conflict(refusal, details={"allowed": list(stage_lifecycle.TASK_ACTIONS[node_action])})
    if action == "delegate":
        if not delegate_to:
            raise InvalidInput(
                "delegate needs 'delegate_to'", details=[{"path": "$.delegate_to", "message": "required"}]
            )
        if delegate_to == actor:
            raise InvalidInput("a task cannot be delegated to its own assignee")
        holders = session.scalars(
            select(RuntimeAssignee.user).where(RuntimeAssignee.runtime_stage_id == assignee.runtime_stage_id)
        )
        planned = session.scalar(
            select(RuntimeStage.approvers).where(RuntimeStage.id == assignee.runtime_stage_id)
        )
        conflict = stage_lifecycle.delegation_conflict(delegate_to, holders=holders, approvers=planned or [])
        if conflict:
            raise Conflict(conflict)
    if data:
        _check_zones(session, runtime, assignee.node_key, data)
    payload = {"action": action, "comments": comments, "delegate_to": delegate_to, "data": data or {}}
    return _command(
        session,
        runtime,
        kind="action",
        dedupe_key=f"action:{task_id}",
        actor=actor,
        assignee_id=task_id,
        payload=payload,
        conflict=f"an action on task {task_id} was already accepted",
    )


def request_resubmit(
    session: Session, *, tenant_id: str, runtime_id: str, actor: str, data: dict[str, Any] | None
) -> RuntimeCommand:
    """Admit the submitter's resubmission of a returned runtime."""
    runtime = get_runtime(session, tenant_id=tenant_id, runtime_id=runtime_id)
    if runtime.status != "returned":
        raise Conflict(f"runtime {runtime_id} is {runtime.status}, not returned")
    if actor != runtime.submitted_by:
        raise Forbidden("only the submitter may resubmit")
    return _command(
        session,
        runtime,
        kind="resubmit",
        dedupe_key=f"resubmit:{runtime.id}:{runtime.round}",
        actor=actor,
        payload={"data": data},
        conflict=f"runtime {runtime_id} was already resubmitted",
    )


def request_cancel(session: Session, *, tenant_id: str, runtime_id: str, actor: str | None) -> RuntimeCommand:
    """Admit the cancellation of a runtime that has not ended."""
    runtime = get_runtime(session, tenant_id=tenant_id, runtime_id=runtime_id)
    if runtime.status in stage_lifecycle.FINAL_STATUSES:
        raise Conflict(f"runtime {runtime_id} has already ended ({runtime.status})")
    return _command(
        session,
        runtime,
        kind="cancel",
        dedupe_key=f"cancel:{runtime.id}",
        actor=actor,
        conflict=f"runtime {runtime_id} is already being cancelled",
    )


def withdraw(session: Session, *, command_id: str) -> None:
    """Undo an admitted command whose message the broker refused (the caller answers 503)."""
    command = session.get(RuntimeCommand, command_id)
    if command is None:
        return
    if command.kind == "start":
        # Only a runtime nothing has touched since it was admitted: not one the worker has
        # started (the sweep may have sent the command), nor one a retry with the same
        # Idempotency-Key was told is accepted. Those stay, and their command goes ahead.
        session.execute(
            delete(Runtime).where(
                Runtime.id == command.runtime_id,
                Runtime.status == "pending",
                Runtime.updated_at == Runtime.created_at,
            )
        )
    else:
        session.execute(delete(RuntimeCommand).where(RuntimeCommand.id == command_id))


# --- helpers -------------------------------------------------------------------------------


def _command(
    session: Session,
    runtime: Runtime,
    *,
    kind: str,
    dedupe_key: str,
    actor: str | None,
    assignee_id: str | None = None,
    payload: dict[str, Any] | None = None,
    conflict: str = "a conflicting request was already accepted",
) -> RuntimeCommand:
    command = RuntimeCommand(
        runtime_id=runtime.id,
        kind=kind,
        dedupe_key=dedupe_key,
        actor=actor,
        assignee_id=assignee_id,
        payload=payload or {},
        created_at=clock.now(),
    )
    session.add(command)
    try:
        session.flush()
    except IntegrityError:
        # The dedupe key is taken: that request was already accepted. The caller's
        # transaction is rolled back with the refusal, so nothing else was written.
        raise Conflict(conflict) from None
    return command


def _check_zones(session: Session, runtime: Runtime, node_key: str, data: dict[str, Any]) -> None:
    allowed = set(load_definition(session, runtime.workflow_version_id).node(node_key).zones)
    outside = sorted(set(data) - allowed)
    if outside:
        raise Forbidden(
            f"stage '{node_key}' may not edit {', '.join(outside)}",
            details=[
                {"path": f"$.data.{field}", "message": "outside this stage's zones"} for field in outside
            ],
        )


def _insert(session: Session, row: Runtime | RuntimeCommand) -> None:
    # Executed on the session's connection with the values as parameters, so it takes the
    # Core path and its compiled form is cached per column set. Through `session.execute`
    # with `.values(...)` every call was a new ORM statement to analyse, which cost a
    # submit more CPU than both round trips.
    mapper = row.__mapper__
    values = {prop.columns[0].key: getattr(row, prop.key) for prop in mapper.column_attrs}
    session.connection().execute(
        insert(type(row)), {key: value for key, value in values.items() if value is not None}
    )


def _refusal(target: AdmissionTarget, workflow_id: str, document_type: str) -> Conflict | InvalidInput | None:
    """Why this workflow cannot take the document now, or None."""
    if not target.is_active:
        return Conflict(f"workflow {workflow_id} is deactivated")
    if target.document_type != document_type:
        return InvalidInput(
            f"document_type '{document_type}' does not match the workflow's '{target.document_type}'",
            details=[{"path": "$.document_type", "message": "does not match the workflow"}],
        )
    return None


def _earlier_submission(
    session: Session, tenant_id: str, key: str | None, document_type: str, document_id: str
) -> Runtime | None:
    """Return the runtime this submission repeats (same Idempotency-Key) or collides with (in flight)."""
    in_flight = (
        (Runtime.document_type == document_type)
        & (Runtime.document_id == document_id)
        & Runtime.in_flight.is_(True)
    )
    matches = in_flight if key is None else in_flight | (Runtime.idempotency_key == key)
    rows = session.scalars(select(Runtime).where(Runtime.tenant_id == tenant_id, matches)).all()
    # The replayed key wins over the collision: the client is retrying the same request.
    return next((r for r in rows if key is not None and r.idempotency_key == key), rows[0] if rows else None)


def _kept(runtime: Runtime) -> Runtime:
    """Touch a runtime not started yet, so that the request that admitted it cannot withdraw it."""
    if runtime.status == "pending":
        runtime.updated_at = max(clock.now(), runtime.created_at + timedelta(microseconds=1))
    return runtime


def _replayed(earlier: Runtime, document: tuple[str, str, str], fingerprint: str | None) -> Runtime:
    if (earlier.workflow_id, earlier.document_type, earlier.document_id) != document:
        raise Conflict("Idempotency-Key was already used for another document")
    # Runtimes admitted before fingerprints were kept have none: their document must do.
    if earlier.request_fingerprint is not None and earlier.request_fingerprint != fingerprint:
        raise Conflict("Idempotency-Key was already used for this document with other data or submitter")
    return earlier


def _fingerprint(request: tuple[Any, ...]) -> str:
    """The SHA-256 of a request in canonical JSON, the same for equal JSON values.

    Keys are sorted, and a number is written as JSON means it (1, 1.0 and 1e0 are one value),
    as in RFC 8785, so a client that re-serialises its retry is not refused.
    """
    canonical = json.dumps(_same_numbers(request), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # also makes -0.0 a 0
    if isinstance(value, dict):
        return {key: _same_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_same_numbers(item) for item in value]
    return value
