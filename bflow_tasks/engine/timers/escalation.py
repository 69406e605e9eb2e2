"""Escalation: an overdue task gets a stand-in, the node's `escalate_to`, on the same stage.

The stand-in is an extra task (`assign_type="escalation"`) whose `delegated_from_id` names
the task it stands in for. Either of them may act, and the first approval counts for both:
it cancels the other, so a stage never counts two approvals for one approver's place (an
`all` stage of three still needs three distinct places approved). Delegation keeps the
link: a delegate stands in the same place as the task it came from.

Callers hold the runtime's row lock (`runtimes.lock`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.runtimes import journal, stage_lifecycle
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage


def add_stand_in(
    session: Session, runtime: Runtime, stage: RuntimeStage, task: RuntimeAssignee, *, to_user: str
) -> RuntimeAssignee | None:
    """Give `to_user` a task standing in for the overdue `task`; None if they already have one."""
    taken = any(other.user == to_user for other in stage.assignees)
    if taken or stage.status != "open" or runtime.status != "in_progress":
        return None
    # A fresh SLA window (not the overdue task's past due time): the stand-in just got it.
    stand_in = stage_lifecycle._assign(session, runtime, stage, user=to_user, assign_type="escalation")
    stand_in.delegated_from_id = task.id
    return stand_in


def release_stand_ins(
    session: Session, runtime: Runtime, stage: RuntimeStage, approved: RuntimeAssignee
) -> list[RuntimeAssignee]:
    """Cancel the open tasks that stand in the same place as a task just approved."""
    if approved.action_taken != "approve":
        return []  # a reject or return closes the whole stage anyway
    tasks = {task.id: task for task in stage.assignees}
    if not any(task.assign_type == "escalation" for task in tasks.values()):
        return []
    place = _place(tasks, approved)
    released = [
        task
        for task in tasks.values()
        if task.id != approved.id
        and task.status in stage_lifecycle.OPEN_TASK_STATUSES
        and _place(tasks, task) == place
    ]
    for task in released:
        task.status, task.completed_at = "cancelled", clock.now()
        journal.log(
            session,
            runtime,
            "task.released",
            stage=stage,
            assignee=task,
            actor=approved.user,
            message=f"covered by {approved.user}'s approval",
        )
    return released


def _place(tasks: dict[str, RuntimeAssignee], task: RuntimeAssignee) -> str:
    """The approver place a task fills: follow delegations and stand-ins back to the first task."""
    seen = {task.id}
    while task.delegated_from_id in tasks and task.delegated_from_id not in seen:
        task = tasks[task.delegated_from_id]
        seen.add(task.id)
    return task.id
