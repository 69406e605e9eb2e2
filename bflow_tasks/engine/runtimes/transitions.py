"""Runtimes: apply each admitted command (see `admission`) as one locked transition.

Applying a command (`start`, `apply_action`, ...) locks the runtime row, is a no-op when
the command was already applied (a redelivered message), and returns the ids of the stages
it opened so the caller can enqueue their opening after commit.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, joinedload, selectinload

from bflow_tasks.engine import clock
from bflow_tasks.engine.domain_errors import NotFound
from bflow_tasks.engine.runtimes import journal, routing, stage_lifecycle
from bflow_tasks.engine.runtimes.approvers import ApproversUnresolved
from bflow_tasks.engine.timers import escalation
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeCommand, RuntimeStage, RuntimeViewer


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


def lock_command(session: Session, command_id: str) -> tuple[RuntimeCommand | None, Runtime | None]:
    """Load a command and its runtime (with stages and tasks), both rows locked; (None, None) if gone.

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
    return command, runtime


def lock_stage(session: Session, stage_id: str) -> tuple[RuntimeStage | None, Runtime | None]:
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
        or assignee.status not in stage_lifecycle.OPEN_TASK_STATUSES
    ):
        # The stage moved on between admission and now (a quorum reached, a cancel).
        return _refuse(
            session, runtime, command, assignee, f"task is {assignee.status}, stage {stage.status}"
        )
    if stage.started_at is None:
        # Acted on before the stage's opening chord finished (a header task behind a backlog,
        # or lost with a killed worker): finish the opening first, so its events come first.
        stage_lifecycle.finish_opening(session, runtime, stage)
    refusal = stage_lifecycle.action_refusal(stage.action, action)
    if refusal:  # admitted by a shim that did not check it yet
        return _refuse(session, runtime, command, assignee, refusal)
    if action == "delegate":
        # Admission checked this too, but another delegation or an escalation stand-in
        # may have given the same user a place on this stage since.
        conflict = stage_lifecycle.delegation_conflict(
            payload["delegate_to"], holders=(task.user for task in stage.assignees), approvers=stage.approvers
        )
        if conflict:
            return _refuse(session, runtime, command, assignee, conflict)
        stage_lifecycle.delegate(session, runtime, stage, assignee, to_user=payload["delegate_to"])
        assignee.comments = payload.get("comments")
        journal.log(
            session,
            runtime,
            "task.delegated",
            actor=actor,
            stage=stage,
            assignee=assignee,
            message=assignee.comments,
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
    outcome = stage_lifecycle.outcome_reached(stage, action=action)
    if outcome is None:
        return []
    stage_lifecycle.complete_stage(session, runtime, stage, outcome=outcome)
    return _route_or_fail(session, runtime, stage, outcome=outcome, actor=actor)


def resubmit(session: Session, *, command_id: str) -> list[str]:
    """Continue a returned runtime with revised data, from its create node, in a new round."""
    command, runtime = _claim(session, command_id)
    if command is None or runtime is None:
        return _unopened(session, runtime)
    if runtime.status != "returned":
        # A cancel admitted at the same time was applied first.
        return _refuse(session, runtime, command, None, f"runtime is {runtime.status}, not returned")
    runtime.status = "in_progress"
    runtime.round += 1
    if command.payload.get("data") is not None:
        runtime.data = command.payload["data"]
    journal.log(session, runtime, "runtime.resubmitted", actor=command.actor)
    return _pass_create_node(session, runtime)


def cancel(session: Session, *, command_id: str) -> list[str]:
    """Cancel a runtime that has not ended yet."""
    command, runtime = _claim(session, command_id)
    if command is None or runtime is None:
        return []
    if runtime.status in stage_lifecycle.FINAL_STATUSES:
        # The last approval (or a reject) admitted at the same time was applied first.
        return _refuse(session, runtime, command, None, f"runtime is {runtime.status} already")
    if runtime.status == "pending":
        # Cancelled before its start command ran (which will then do nothing): every
        # runtime's event stream still begins with runtime.created.
        journal.emit(session, runtime, "runtime.created", actor=runtime.submitted_by, status="pending")
    stage_lifecycle.finish(session, runtime, "cancelled", actor=command.actor)
    return []


def opening_plan(session: Session, *, stage_ids: list[str]) -> list[tuple[str, str]]:
    """Return (stage id, user) for every approver of the given stages still being opened."""
    rows = session.scalars(select(RuntimeStage).where(*_still_opening(stage_ids))).all()
    return [(stage.id, planned["user"]) for stage in rows for planned in stage.approvers]


def assign(session: Session, *, stage_id: str, user: str) -> str | None:
    """Create one approver's task on a stage being opened (a chord header); return its id."""
    stage, runtime = lock_stage(session, stage_id)
    if stage is None or runtime is None:
        return None
    assignee = stage_lifecycle.add_assignee(session, runtime, stage, user=user)
    # The last approver's task starts the stage: a chord body queued behind a long backlog
    # (or lost with a killed worker) then holds nothing up, and the sweep stops re-sending
    # an opening that is done. The chord body confirms it (a no-op) or finishes it.
    stage_lifecycle.mark_started(session, runtime, stage)
    return assignee.id if assignee else None


def mark_started(session: Session, *, stage_ids: list[str]) -> None:
    """Record that the given stages' opening chord finished (the chord body)."""
    # Usually the last header task has started them all: one read, no lock, nothing to write.
    still_opening = session.scalars(select(RuntimeStage.id).where(*_still_opening(stage_ids))).all()
    for stage_id in sorted(still_opening):
        stage, runtime = lock_stage(session, stage_id)
        if stage is not None and runtime is not None:
            stage_lifecycle.mark_started(session, runtime, stage)


# --- helpers -------------------------------------------------------------------------------


def _refuse(
    session: Session,
    runtime: Runtime,
    command: RuntimeCommand,
    assignee: RuntimeAssignee | None,
    reason: str,
) -> list[str]:
    """Refuse an admitted command that can no longer be applied, and say so in the audit log."""
    command.status, command.error = "refused", reason
    # Free "one action per task" for the task's next action (if it is still open).
    command.dedupe_key = f"refused:{command.id}"
    actor = command.actor or (assignee.user if assignee else None)
    journal.log(session, runtime, "action.refused", actor=actor, assignee=assignee, message=reason)
    return []


def _claim(session: Session, command_id: str) -> tuple[RuntimeCommand | None, Runtime | None]:
    """Lock the command's runtime; return the command only if it still has to be applied."""
    command, runtime = lock_command(session, command_id)
    if command is None or runtime is None:
        return None, None
    if command.status != "requested":
        return None, runtime
    command.status, command.applied_at = "applied", clock.now()
    if runtime.log_sequence == 0:
        # The shim writes only the runtime and its command; the audit trail's first line,
        # the submission at its own time, is written by the first command applied.
        journal.log(session, runtime, "runtime.submitted", actor=runtime.submitted_by, at=runtime.created_at)
    return command, runtime


def _still_opening(stage_ids: list[str]) -> tuple[ColumnElement[bool], ...]:
    """Which of these stages are open with their opening not finished (started_at unset)."""
    return RuntimeStage.id.in_(stage_ids), RuntimeStage.status == "open", RuntimeStage.started_at.is_(None)


def _unopened(session: Session, runtime: Runtime | None) -> list[str]:
    """Ids of stages still waiting for their opening chord: a replay re-sends them, harmlessly."""
    if runtime is None:
        return []
    return [stage.id for stage in routing.open_stages(session, runtime)]


def _pass_create_node(session: Session, runtime: Runtime) -> list[str]:
    stage = routing.pass_create_node(session, runtime)
    return _route_or_fail(session, runtime, stage, outcome="complete", actor=runtime.submitted_by)


def _route_or_fail(
    session: Session, runtime: Runtime, stage: RuntimeStage, *, outcome: str, actor: str | None
) -> list[str]:
    """Route on; if the document cannot go on, end the runtime in `error` and say why."""
    try:
        return routing.route(session, runtime, stage, outcome=outcome, actor=actor)
    except (routing.RuntimeFailed, ApproversUnresolved) as exc:
        stage_lifecycle.finish(session, runtime, "error", actor=actor, reason=str(exc))
        return []
