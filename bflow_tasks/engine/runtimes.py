"""Runtimes: admit requests as commands, then apply each command as one locked transition.

A request (`submit`, `request_action`, ...) checks everything a caller can get wrong and
writes a RuntimeCommand in the caller's transaction; nothing else changes. Applying a
command (`start`, `apply_action`, ...) locks the runtime row, is a no-op when the command
was already applied (a redelivered message), and returns the ids of the stages it opened
so the caller can enqueue their opening after commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from bflow_tasks.engine import clock, escalation, journal, stages
from bflow_tasks.engine.approvers import ApproversUnresolved
from bflow_tasks.engine.errors import Conflict, Forbidden, InvalidInput, NotFound
from bflow_tasks.engine.workflows import AdmissionTarget, admission_target, load_definition
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeCommand, RuntimeStage, RuntimeViewer, new_id

ACTIONS = ("approve", "reject", "return", "delegate")


def lock(session: Session, runtime_id: str) -> Runtime:
    """Load a runtime with its row locked until the transaction ends (SQLite: BEGIN IMMEDIATE)."""
    runtime = session.scalars(
        select(Runtime)
        .where(Runtime.id == runtime_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if runtime is None:
        raise NotFound(f"runtime {runtime_id} not found")
    return runtime


def get_runtime(session: Session, *, tenant_id: str, runtime_id: str) -> Runtime:
    """Return the tenant's runtime, or NotFound (another tenant's id is not found either)."""
    runtime = session.scalars(
        select(Runtime).where(Runtime.id == runtime_id, Runtime.tenant_id == tenant_id)
    ).one_or_none()
    if runtime is None:
        raise NotFound(f"runtime {runtime_id} not found")
    return runtime


# --- requests (the shim's side) -------------------------------------------------------------


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
            created_at=now,
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
    request = {"workflow_id": workflow_id, "document_type": document_type, "document_id": document_id}
    earlier = _earlier_submission(session, tenant_id, idempotency_key, document_type, document_id)
    if earlier is not None and idempotency_key is not None and earlier.idempotency_key == idempotency_key:
        return _replayed(earlier, request), None  # a retry gets its first answer, whatever changed since
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
        select(RuntimeAssignee, Runtime)
        .join(Runtime, Runtime.id == RuntimeAssignee.runtime_id)
        .where(RuntimeAssignee.id == task_id, RuntimeAssignee.tenant_id == tenant_id)
    ).one_or_none()
    if found is None:
        raise NotFound(f"task {task_id} not found")
    assignee, runtime = found
    if action not in ACTIONS:
        raise InvalidInput(f"unknown action '{action}'; expected one of {', '.join(ACTIONS)}")
    if assignee.user != actor:
        raise Forbidden(f"'{actor}' may not act on a task assigned to another user")
    if assignee.status not in ("pending", "overdue"):
        raise Conflict(f"task {task_id} is already {assignee.status}")
    if runtime.status != "in_progress":
        raise Conflict(f"runtime {runtime.id} is {runtime.status}")
    if action == "delegate":
        if not delegate_to:
            raise InvalidInput(
                "delegate needs 'delegate_to'", details=[{"path": "$.delegate_to", "message": "required"}]
            )
        if delegate_to == actor:
            raise InvalidInput("a task cannot be delegated to its own assignee")
        # Anyone who ever held a task on this stage (a former delegator, an escalation
        # stand-in) keeps its row, and a user has one row per stage.
        holders = session.scalars(
            select(RuntimeAssignee.user).where(RuntimeAssignee.runtime_stage_id == assignee.runtime_stage_id)
        )
        if delegate_to in set(holders):
            raise Conflict(f"'{delegate_to}' already has a task on this stage")
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
    if runtime.status in stages.FINAL_STATUSES:
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
        session.execute(delete(Runtime).where(Runtime.id == command.runtime_id))
    else:
        session.execute(delete(RuntimeCommand).where(RuntimeCommand.id == command_id))


# --- commands (the worker's side) -----------------------------------------------------------


def start(session: Session, *, command_id: str) -> list[str]:
    """Start a pending runtime: pass the create node and open what follows it."""
    command, runtime = _claim(session, command_id)
    if command is None or runtime is None or runtime.status != "pending":
        return _unopened(session, runtime)
    journal.emit(session, runtime, "runtime.created", actor=runtime.submitted_by, status="pending")
    # The first transition of this runtime: nobody can be a viewer yet.
    session.add(RuntimeViewer(runtime_id=runtime.id, user=runtime.submitted_by))
    runtime.status = "in_progress"
    journal.log(session, runtime, "runtime.started", actor=runtime.submitted_by)
    return _pass_create_node(session, runtime)


def apply_action(session: Session, *, command_id: str) -> list[str]:
    """Apply an admitted action; complete the stage when its mode is satisfied and route on."""
    command, runtime = _claim(session, command_id)
    if command is None or runtime is None:
        return _unopened(session, runtime)
    stage, assignee = next(
        (stage, task)
        for stage in runtime.stages
        for task in stage.assignees
        if task.id == command.assignee_id
    )
    payload = command.payload
    action, actor = payload["action"], command.actor or assignee.user
    if (
        runtime.status != "in_progress"
        or stage.status != "open"
        or assignee.status not in ("pending", "overdue")
    ):
        # The stage moved on between admission and now (a quorum reached, a cancel).
        command.status, command.error = "refused", f"task is {assignee.status}, stage {stage.status}"
        journal.log(session, runtime, "action.refused", actor=actor, assignee=assignee, message=command.error)
        return []
    if action == "delegate":
        stages.delegate(session, runtime, stage, assignee, to_user=payload["delegate_to"])
        journal.log(
            session,
            runtime,
            "task.delegated",
            actor=actor,
            stage=stage,
            assignee=assignee,
            details={"to": payload["delegate_to"]},
        )
        return []
    assignee.status, assignee.action_taken, assignee.completed_at = "completed", action, clock.now()
    escalation.release_stand_ins(session, runtime, stage, assignee)  # one approval per approver place
    assignee.comments = payload.get("comments")
    if payload.get("data"):
        runtime.data = {**runtime.data, **payload["data"]}
        journal.log(
            session,
            runtime,
            "document.updated",
            actor=actor,
            stage=stage,
            details={"fields": sorted(payload["data"])},
        )
    journal.log(
        session,
        runtime,
        f"task.{action}",
        actor=actor,
        stage=stage,
        assignee=assignee,
        message=assignee.comments,
    )
    journal.emit(
        session, runtime, "task.completed", stage=stage, assignee=assignee, actor=actor, status=action
    )
    outcome = stages.outcome_reached(stage, action=action)
    if outcome is None:
        return []
    stages.complete_stage(session, runtime, stage, outcome=outcome)
    return _route_or_fail(session, runtime, stage, outcome=outcome, actor=actor)


def resubmit(session: Session, *, command_id: str) -> list[str]:
    """Continue a returned runtime with revised data, from its create node, in a new round."""
    command, runtime = _claim(session, command_id)
    if command is None or runtime is None or runtime.status != "returned":
        return _unopened(session, runtime)
    runtime.status = "in_progress"
    runtime.round += 1
    if command.payload.get("data") is not None:
        runtime.data = command.payload["data"]
    journal.log(session, runtime, "runtime.resubmitted", actor=command.actor)
    return _pass_create_node(session, runtime)


def cancel(session: Session, *, command_id: str) -> list[str]:
    """Cancel a runtime that has not ended yet."""
    command, runtime = _claim(session, command_id)
    if command is not None and runtime is not None and runtime.status not in stages.FINAL_STATUSES:
        stages.finish(session, runtime, "cancelled", actor=command.actor)
    return []


def opening_plan(session: Session, *, stage_ids: list[str]) -> list[tuple[str, str]]:
    """Return (stage id, user) for every approver of the given stages still being opened."""
    rows = session.scalars(
        select(RuntimeStage).where(
            RuntimeStage.id.in_(stage_ids), RuntimeStage.status == "open", RuntimeStage.started_at.is_(None)
        )
    ).all()
    return [(stage.id, planned["user"]) for stage in rows for planned in stage.approvers]


def assign(session: Session, *, stage_id: str, user: str) -> str | None:
    """Create one approver's task on a stage being opened (a chord header); return its id."""
    stage, runtime = _lock_stage(session, stage_id)
    if stage is None or runtime is None:
        return None
    assignee = stages.add_assignee(session, runtime, stage, user=user)
    # The last approver's task starts the stage: a chord body queued behind a long backlog
    # (or lost with a killed worker) then holds nothing up, and the sweep stops re-sending
    # an opening that is done. The chord body confirms it (a no-op) or finishes it.
    stages.mark_started(session, runtime, stage)
    return assignee.id if assignee else None


def mark_started(session: Session, *, stage_ids: list[str]) -> None:
    """Record that the given stages' opening chord finished (the chord body)."""
    # Usually the last header task has started them all: one read, no lock, nothing to write.
    still_opening = session.scalars(
        select(RuntimeStage.id).where(
            RuntimeStage.id.in_(stage_ids), RuntimeStage.status == "open", RuntimeStage.started_at.is_(None)
        )
    ).all()
    for stage_id in sorted(still_opening):
        stage, runtime = _lock_stage(session, stage_id)
        if stage is not None and runtime is not None:
            stages.mark_started(session, runtime, stage)


# --- helpers -------------------------------------------------------------------------------


def _claim(session: Session, command_id: str) -> tuple[RuntimeCommand | None, Runtime | None]:
    """Lock the command's runtime; return the command only if it still has to be applied.

    A command that does not exist was withdrawn after the broker refused it (or its runtime
    was archived): its late message changes nothing.
    """
    # One statement locks the command and its runtime (FOR UPDATE covers both joined rows;
    # SQLite's BEGIN IMMEDIATE already serialises the whole transaction); a second loads the
    # runtime's stages with their tasks, which the transition then decides on in memory.
    row = session.execute(
        select(RuntimeCommand, Runtime)
        .join(Runtime, Runtime.id == RuntimeCommand.runtime_id)
        .where(RuntimeCommand.id == command_id)
        .with_for_update()
        .options(selectinload(Runtime.stages).joinedload(RuntimeStage.assignees))
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        return None, None
    command, runtime = row
    if command.status != "requested":
        return None, runtime
    command.status, command.applied_at = "applied", clock.now()
    if runtime.log_sequence == 0:
        # The shim writes only the runtime and its command; the audit trail's first line,
        # the submission at its own time, is written by the first command applied.
        journal.log(session, runtime, "runtime.submitted", actor=runtime.submitted_by, at=runtime.created_at)
    return command, runtime


def _lock_stage(session: Session, stage_id: str) -> tuple[RuntimeStage | None, Runtime | None]:
    """Lock a stage's runtime, then load the stage with its tasks.

    Only the runtime row is locked (a locking read does not lock a subquery's rows), so
    every transition takes its locks in the same order: the runtime first.
    """
    runtime = session.scalars(
        select(Runtime)
        .where(
            Runtime.id == select(RuntimeStage.runtime_id).where(RuntimeStage.id == stage_id).scalar_subquery()
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if runtime is None:
        return None, None
    stage = (
        session.scalars(
            select(RuntimeStage)
            .where(RuntimeStage.id == stage_id)
            .options(joinedload(RuntimeStage.assignees))
            .execution_options(populate_existing=True)
        )
        .unique()
        .one()
    )
    return stage, runtime


def _unopened(session: Session, runtime: Runtime | None) -> list[str]:
    """Ids of stages still waiting for their opening chord: a replay re-sends them, harmlessly."""
    if runtime is None:
        return []
    return [stage.id for stage in stages.open_stages(session, runtime)]


def _pass_create_node(session: Session, runtime: Runtime) -> list[str]:
    stage = stages.pass_create_node(session, runtime)
    return _route_or_fail(session, runtime, stage, outcome="complete", actor=runtime.submitted_by)


def _route_or_fail(
    session: Session, runtime: Runtime, stage: RuntimeStage, *, outcome: str, actor: str | None
) -> list[str]:
    """Route on; if the document cannot go on, end the runtime in `error` and say why."""
    try:
        return stages.route(session, runtime, stage, outcome=outcome, actor=actor)
    except (stages.RuntimeFailed, ApproversUnresolved) as exc:
        stages.finish(session, runtime, "error", actor=actor, reason=str(exc))
        return []


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
    columns = {c.key: getattr(row, c.key) for c in row.__mapper__.column_attrs}
    session.execute(insert(type(row)).values({k: v for k, v in columns.items() if v is not None}))


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


def _replayed(earlier: Runtime, request: dict[str, str]) -> Runtime:
    same = (earlier.workflow_id, earlier.document_type, earlier.document_id) == tuple(request.values())
    if not same:
        raise Conflict("Idempotency-Key was already used for another document")
    return earlier
