"""The life of a stage and its tasks: assign, delegate, start, complete, cancel; and the runtime's end.

Every function here runs with the runtime row locked by the caller (`transitions.lock`); where a
completed stage leads is `routing`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.definitions.workflow_store import load_definition
from bflow_tasks.engine.runtimes import journal
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage, RuntimeViewer, new_id

FINAL_STATUSES = ("completed", "rejected", "cancelled", "error")
# A task its assignee can still act on (overdue is still open).
OPEN_TASK_STATUSES = ("pending", "overdue")


def cancel_stage(session: Session, runtime: Runtime, stage: RuntimeStage, *, message: str) -> None:
    """Cancel an open stage and its open tasks; `stage.completed` (cancelled) lets consumers close them."""
    if stage.started_at is None:
        _start(session, runtime, stage)  # its opening was under way: it did start, in order
    _close_cancelled(stage)
    journal.log(session, runtime, "stage.cancelled", stage=stage, message=message)
    journal.emit(session, runtime, "stage.completed", stage=stage, status="cancelled")


def add_assignee(
    session: Session, runtime: Runtime, stage: RuntimeStage, *, user: str
) -> RuntimeAssignee | None:
    """Create one approver's task on an open stage (idempotent: an existing task is returned)."""
    existing = next((task for task in stage.assignees if task.user == user), None)
    if existing is not None or stage.status != "open":
        return existing
    planned = next((p for p in stage.approvers if p["user"] == user), None)
    if planned is None:
        return None
    return _assign(session, runtime, stage, user=user, assign_type=planned["type"])


def _assign(
    session: Session,
    runtime: Runtime,
    stage: RuntimeStage,
    *,
    user: str,
    assign_type: str,
    delegated_from: RuntimeAssignee | None = None,
) -> RuntimeAssignee:
    # First, while nothing of this step is pending: loading the viewers autoflushes, and
    # the step's rows are then written by the one flush at commit.
    add_viewer(runtime, user)
    definition = load_definition(session, runtime.workflow_version_id)
    sla_hours = definition.node(stage.node_key).sla_hours
    reminder_hours = definition.node(stage.node_key).reminder_hours
    now = clock.now()
    assignee = RuntimeAssignee(
        id=new_id(),
        runtime_id=runtime.id,
        runtime_stage_id=stage.id,
        tenant_id=runtime.tenant_id,
        node_key=stage.node_key,
        user=user,
        assign_type=assign_type,
        delegated_from_id=delegated_from.id if delegated_from else None,
        due_at=delegated_from.due_at
        if delegated_from
        else (now + timedelta(hours=sla_hours) if sla_hours else None),
        next_reminder_at=now + timedelta(hours=reminder_hours) if reminder_hours else None,
        status="pending",
        created_at=now,
    )
    stage.assignees.append(assignee)
    journal.log(session, runtime, "task.assigned", stage=stage, assignee=assignee, actor=user)
    journal.emit(session, runtime, "task.assigned", stage=stage, assignee=assignee)
    return assignee


# What a person may do on a task, by its node's action. A to-do or a receipt is work to
# acknowledge (`approve` marks it done) or to send back to the submitter (`return`), not a
# decision: a definition cannot route `on: reject` out of it either (graph checks).
TASK_ACTIONS = {
    "approve": ("approve", "reject", "return", "delegate"),
    "todo": ("approve", "return", "delegate"),
    "receive": ("approve", "return", "delegate"),
}


def action_refusal(node_action: str, action: str) -> str | None:
    """Why `action` does not apply to a task on a `node_action` stage, or None if it does."""
    allowed = TASK_ACTIONS.get(node_action, ())
    if action in allowed:
        return None
    if not allowed:
        return f"a {node_action} stage has no tasks to act on"
    expected = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
    return f"'{action}' does not apply to a {node_action} task; expected {expected}"


def delegation_conflict(to_user: str, *, holders: Iterable[str], approvers: list[Any]) -> str | None:
    """Why `to_user` cannot take over a task on a stage, or None if they can.

    A user holds at most one task per stage (a former delegator and a stand-in keep theirs),
    and an approver whose task is still being created would otherwise fill two places.
    """
    if to_user in set(holders):
        return f"'{to_user}' already has a task on this stage"
    if any(planned["user"] == to_user for planned in approvers):
        return f"'{to_user}' is already an approver on this stage"
    return None


def delegate(
    session: Session, runtime: Runtime, stage: RuntimeStage, assignee: RuntimeAssignee, *, to_user: str
) -> RuntimeAssignee:
    """Hand a pending task to another user; the new task keeps the original due time."""
    assignee.status, assignee.action_taken, assignee.completed_at = "delegated", "delegate", clock.now()
    journal.emit(session, runtime, "task.delegated", stage=stage, assignee=assignee, actor=assignee.user)
    stage.approvers = [
        {"user": to_user, "type": "delegated"} if p["user"] == assignee.user else p for p in stage.approvers
    ]
    return _assign(session, runtime, stage, user=to_user, assign_type="delegated", delegated_from=assignee)


def add_viewer(runtime: Runtime, user: str) -> None:
    """Let a user see the runtime (submitter and every assignee)."""
    if all(viewer.user != user for viewer in runtime.viewers):
        runtime.viewers.append(
            RuntimeViewer(id=new_id(), runtime_id=runtime.id, user=user, created_at=clock.now())
        )


def mark_started(session: Session, runtime: Runtime, stage: RuntimeStage) -> bool:
    """Record that a stage's opening finished, once every planned approver has a task.

    A chord body can run although a header task was lost (a worker killed mid-chord); the
    stage then stays unstarted and the sweep opens it again, creating only what is missing.
    """
    if stage.status != "open" or stage.started_at is not None:
        return False
    assigned = {task.user for task in stage.assignees}
    if not {planned["user"] for planned in stage.approvers} <= assigned:
        return False
    _start(session, runtime, stage)
    return True


def _start(session: Session, runtime: Runtime, stage: RuntimeStage) -> None:
    stage.started_at = clock.now()
    journal.log(session, runtime, "stage.started", stage=stage)
    journal.emit(session, runtime, "stage.started", stage=stage, status="open")


def finish_opening(session: Session, runtime: Runtime, stage: RuntimeStage) -> None:
    """Create whatever tasks a stage's opening chord has not yet created, and start it.

    For an action on a stage still being opened: its events then keep their order (every
    `task.assigned` and `stage.started` before any `task.completed`). The late header tasks
    find their tasks made, and the chord body finds the stage started.
    """
    for planned in stage.approvers:
        add_assignee(session, runtime, stage, user=planned["user"])
    mark_started(session, runtime, stage)


def outcome_reached(stage: RuntimeStage, *, action: str) -> str | None:
    """Return the stage's outcome once its mode is satisfied, or None while it waits."""
    if action in ("reject", "return"):
        return action
    approvals = sum(
        1 for task in stage.assignees if task.status == "completed" and task.action_taken == "approve"
    )
    needed = {"all": len(stage.approvers), "any": 1, "quorum": stage.quorum or 1}[stage.mode]
    if approvals < needed:
        return None
    return "approve" if stage.action == "approve" else "complete"


def complete_stage(session: Session, runtime: Runtime, stage: RuntimeStage, *, outcome: str) -> None:
    """Close a stage with its outcome and cancel the tasks it no longer needs."""
    now = clock.now()
    stage.status, stage.outcome, stage.completed_at = "completed", outcome, now
    _cancel_pending([stage])
    journal.log(session, runtime, "stage.completed", stage=stage, details={"outcome": outcome})
    journal.emit(session, runtime, "stage.completed", stage=stage, status=outcome)


def send_back(session: Session, runtime: Runtime, *, actor: str | None) -> None:
    """Return the runtime to its submitter for revision; a resubmit continues it."""
    _cancel_open(session, runtime, why="the runtime was returned")
    runtime.status = "returned"
    journal.log(session, runtime, "runtime.returned", actor=actor)
    journal.emit(session, runtime, "runtime.returned", actor=actor, status="returned")


def finish(
    session: Session, runtime: Runtime, status: str, *, actor: str | None = None, reason: str | None = None
) -> None:
    """End the runtime in a final status; whatever is still open is cancelled."""
    _cancel_open(session, runtime, why=f"the runtime ended: {status}")
    _mark_ended(runtime, status, reason=reason)
    journal.log(session, runtime, f"runtime.{status}", actor=actor, message=reason)
    journal.emit(session, runtime, f"runtime.{status}", actor=actor, status=status)


def end_without_history(runtime: Runtime, status: str, *, reason: str) -> None:
    """End the runtime and cancel what is open, writing no audit line and no event.

    Only for when writing those is what fails: a runtime must still end rather than run for ever.
    """
    for stage in [stage for stage in runtime.stages if stage.status == "open"]:
        _close_cancelled(stage)
    _mark_ended(runtime, status, reason=reason)


def _mark_ended(runtime: Runtime, status: str, *, reason: str | None) -> None:
    runtime.status = status
    runtime.ended_at = clock.now()
    runtime.in_flight = None  # frees the document for a new submission
    if reason:
        runtime.error = reason


def _close_cancelled(stage: RuntimeStage) -> None:
    stage.status, stage.completed_at = "cancelled", clock.now()
    _cancel_pending([stage])


def _cancel_open(session: Session, runtime: Runtime, *, why: str) -> None:
    for stage in [stage for stage in runtime.stages if stage.status == "open"]:
        cancel_stage(session, runtime, stage, message=why)


def _cancel_pending(stages: list[RuntimeStage]) -> None:
    for stage in stages:
        for task in stage.assignees:
            if task.status in OPEN_TASK_STATUSES:
                task.status = "cancelled"
