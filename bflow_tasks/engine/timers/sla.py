"""The SLA scan (Beat): mark overdue tasks, escalate them, and send reminders.

Every event goes out exactly once because each is tied to a change of bookkeeping made in
the same transaction, under the runtime's row lock: `task.overdue` to the task leaving
`pending` (and `overdue_at` being set), `task.escalated` to `escalated_at` being set,
`task.reminded` to `next_reminder_at` moving past now. A scan run twice, or two scans at
once, finds nothing left to do the second time.

Candidates are found through `idx_runtime_assignee_status_due` and
`idx_runtime_assignee_status_reminder`, at most `batch` of each per run; whatever is left
waits for the next run. Runtimes are handled `RUNTIMES_PER_TRANSACTION` at a time, locked in
id order by one statement, so the scan holds few locks at once, cannot deadlock with itself,
and pays one commit per group rather than per runtime. A group that fails is retried one
runtime per transaction, so that one broken runtime never holds back the others; the tasks of
a runtime that still fails (other than for a lock wait, a lost connection or a full pool) get
`sla_retry_at`, as long after now as they have been due, and are left out until then, so that
broken runtimes never fill a batch and hold back everyone else's.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from bflow_tasks import db
from bflow_tasks.engine import clock
from bflow_tasks.engine.definitions.workflow_store import load_definition
from bflow_tasks.engine.runtimes import journal, stage_lifecycle
from bflow_tasks.engine.timers import escalation
from bflow_tasks.engine.timers.job_slots import SessionScope
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage

log = logging.getLogger(__name__)

# Enough to pay one commit for many runtimes' events, few enough to keep row locks short.
RUNTIMES_PER_TRANSACTION = 50
# A runtime the scan could not handle is tried again after as long as its task has been due
# (so the wait doubles, as the sweep's), within these bounds, and logged each time.
RETRY_BROKEN_AFTER = (timedelta(minutes=1), timedelta(days=1))
# Per runtime: the ids of its tasks found overdue, and of those with a reminder due.
Work = Mapping[str, tuple[list[str], list[str]]]


def overdue_query(now: datetime, limit: int) -> Select[str, str]:
    """Pending tasks past their due time, oldest first (a range on idx_runtime_assignee_status_due)."""
    return (
        select(RuntimeAssignee.id, RuntimeAssignee.runtime_id)
        .where(RuntimeAssignee.status == "pending", RuntimeAssignee.due_at <= now, _not_held_back(now))
        .order_by(RuntimeAssignee.due_at)
        .limit(limit)
    )


def reminder_query(now: datetime, limit: int) -> Select[str, str]:
    """Open tasks whose next reminder is due (a range on idx_runtime_assignee_status_reminder)."""
    # No ORDER BY: with two statuses it would sort every due reminder before LIMIT applies;
    # each task sent drops out of the range, so every due one is reached in a later run.
    return (
        select(RuntimeAssignee.id, RuntimeAssignee.runtime_id)
        .where(
            RuntimeAssignee.status.in_(stage_lifecycle.OPEN_TASK_STATUSES),
            RuntimeAssignee.next_reminder_at <= now,
            _not_held_back(now),
        )
        .limit(limit)
    )


def _not_held_back(now: datetime) -> ColumnElement[bool]:
    # Checked on the index entries the range reads (sla_retry_at is their last column), so
    # held-back tasks cost no row reads and never count towards the batch.
    return or_(RuntimeAssignee.sla_retry_at.is_(None), RuntimeAssignee.sla_retry_at <= now)


def scan(scope: SessionScope, *, batch: int = 500) -> dict[str, Any]:
    """Run one SLA scan: overdue marking with escalation, then reminders; return the counts."""
    now = clock.now()
    with scope() as session:
        overdue = session.execute(overdue_query(now, batch)).all()
        reminders = session.execute(reminder_query(now, batch)).all()
    work: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for task_id, runtime_id in overdue:
        work[runtime_id][0].append(task_id)
    for task_id, runtime_id in reminders:
        work[runtime_id][1].append(task_id)
    counts = _no_counts()
    ordered = sorted(work)
    for start in range(0, len(ordered), RUNTIMES_PER_TRANSACTION):
        group = {
            runtime_id: work[runtime_id] for runtime_id in ordered[start : start + RUNTIMES_PER_TRANSACTION]
        }
        try:
            with scope() as session:
                done = _scan_runtimes(session, group, now=now)
        except Exception:
            log.warning("SLA scan of %d runtimes failed; retrying them one by one", len(group), exc_info=True)
            done = _scan_one_by_one(scope, group, now=now)
        counts.update(done)
    return {**counts, "more": int(len(overdue) == batch or len(reminders) == batch)}


def _scan_one_by_one(scope: SessionScope, work: Work, *, now: datetime) -> Counter[str]:
    counts = _no_counts()
    for runtime_id, tasks in work.items():
        try:
            with scope() as session:
                done = _scan_runtimes(session, {runtime_id: tasks}, now=now)
        except Exception as exc:
            counts["errors"] += 1
            if isinstance(exc, SQLAlchemyError) and db.is_unavailable(exc):
                # A lock wait, a deadlock, a lost connection, a full pool: the next run tries again.
                log.warning("SLA scan of runtime %s failed for now: %s", runtime_id, exc)
            else:
                # One broken runtime must not stop the others' reminders, now or in later runs.
                log.exception("SLA scan failed for runtime %s; holding back its tasks", runtime_id)
                _hold_back(scope, [*tasks[0], *tasks[1]], now=now)
        else:
            counts.update(done)  # once committed
    return counts


def _hold_back(scope: SessionScope, task_ids: list[str], *, now: datetime) -> None:
    """Leave these tasks out of the scan until their retry time: as long again as they were due."""
    shortest, longest = RETRY_BROKEN_AFTER
    try:
        with scope() as session:
            for task in session.scalars(select(RuntimeAssignee).where(RuntimeAssignee.id.in_(task_ids))):
                due = [at for at in (task.due_at, task.next_reminder_at) if at is not None and at <= now]
                task.sla_retry_at = now + min(max(now - min(due, default=now), shortest), longest)
    except Exception:
        log.exception("could not hold back the tasks of a runtime the SLA scan failed on")


def _no_counts() -> Counter[str]:
    return Counter(overdue=0, escalated=0, reminded=0, errors=0)


def _scan_runtimes(session: Session, work: Work, *, now: datetime) -> Counter[str]:
    """Handle these runtimes' due tasks under their locks, re-checking each against fresh rows."""
    escalating = [runtime_id for runtime_id, (overdue_ids, _) in work.items() if overdue_ids]
    locked = _lock(session, list(work), viewers_of=escalating)
    # Only escalation reads a stage's other tasks (and adds a viewer); a reminder needs its own.
    # Siblings last, so that no reload of a stage comes after the load escalation reads.
    tasks = _tasks(session, [task_id for _, ids in work.values() for task_id in ids], with_siblings=False)
    tasks |= _tasks(session, [task_id for ids, _ in work.values() for task_id in ids], with_siblings=True)
    done = _no_counts()
    for runtime_id, (overdue_ids, reminder_ids) in work.items():
        runtime = locked.get(runtime_id)
        if runtime is None:
            continue  # archived since the candidates were read
        for stage, task in _in_order(tasks, overdue_ids):
            if task.status == "pending" and task.due_at is not None and task.due_at <= now:
                done["overdue"] += 1
                done["escalated"] += _mark_overdue(session, runtime, stage, task, now=now)
        for stage, task in _in_order(tasks, reminder_ids):
            if (
                task.status in stage_lifecycle.OPEN_TASK_STATUSES
                and task.next_reminder_at is not None
                and task.next_reminder_at <= now
            ):
                done["reminded"] += _remind(session, runtime, stage, task, now=now)
    return done


def _lock(session: Session, runtime_ids: list[str], *, viewers_of: list[str]) -> dict[str, Runtime]:
    """Lock the runtimes' rows in id order (the order every scan takes them in).

    The viewers of the runtimes in `viewers_of` are loaded too (an escalation adds one).
    """
    # populate_existing: what a concurrent action committed before we took the lock wins.
    runtimes = session.scalars(
        select(Runtime)
        .where(Runtime.id.in_(runtime_ids))
        .order_by(Runtime.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    if viewers_of:
        # The rows are ours now: a plain read, not a second lock (which could interleave with
        # another scan's and deadlock). Its rows must be fetched for the viewers to load.
        session.scalars(
            select(Runtime).where(Runtime.id.in_(viewers_of)).options(selectinload(Runtime.viewers))
        ).all()
    return {runtime.id: runtime for runtime in runtimes}


def _tasks(
    session: Session, task_ids: list[str], *, with_siblings: bool
) -> dict[str, tuple[RuntimeStage, RuntimeAssignee]]:
    """Load the tasks with their stages, and with every task on those stages if `with_siblings`."""
    if not task_ids:
        return {}
    if not with_siblings:
        pairs = session.execute(
            select(RuntimeStage, RuntimeAssignee)
            .join(RuntimeAssignee, RuntimeAssignee.runtime_stage_id == RuntimeStage.id)
            .where(RuntimeAssignee.id.in_(task_ids))
            .execution_options(populate_existing=True)
        )
        return {task.id: (stage, task) for stage, task in pairs}
    stage_ids = select(RuntimeAssignee.runtime_stage_id).where(RuntimeAssignee.id.in_(task_ids))
    loaded = session.scalars(
        select(RuntimeStage)
        .where(RuntimeStage.id.in_(stage_ids))
        .options(selectinload(RuntimeStage.assignees))
        .execution_options(populate_existing=True)
    )
    wanted = set(task_ids)
    return {task.id: (stage, task) for stage in loaded for task in stage.assignees if task.id in wanted}


def _in_order(
    tasks: dict[str, tuple[RuntimeStage, RuntimeAssignee]], task_ids: list[str]
) -> list[tuple[RuntimeStage, RuntimeAssignee]]:
    """The runtime's tasks in the order they were assigned, which orders their events."""
    found = [tasks[task_id] for task_id in task_ids if task_id in tasks]
    return sorted(found, key=lambda pair: (pair[1].created_at, pair[1].id))


def _mark_overdue(
    session: Session, runtime: Runtime, stage: RuntimeStage, task: RuntimeAssignee, *, now: datetime
) -> int:
    """Mark a task overdue (task.overdue), then escalate it if its node says so; 1 if escalated."""
    task.status, task.overdue_at = "overdue", now
    if task.next_reminder_at is not None and task.next_reminder_at <= now:
        # The overdue notice stands for a reminder falling due at the same time.
        task.next_reminder_at = _next_reminder(session, runtime, task, now=now)
    journal.log(session, runtime, "task.overdue", stage=stage, assignee=task, details=_due(task))
    journal.emit(session, runtime, "task.overdue", stage=stage, assignee=task, status="overdue")
    escalate_to = load_definition(session, runtime.workflow_version_id).node(stage.node_key).escalate_to
    # A stand-in that runs late is not escalated again: it is already the escalation.
    if not escalate_to or task.escalated_at is not None or task.assign_type == "escalation":
        return 0
    task.escalated_at = now
    stand_in = escalation.add_stand_in(session, runtime, stage, task, to_user=escalate_to)
    if stand_in is None:
        journal.log(
            session,
            runtime,
            "task.escalation_skipped",
            stage=stage,
            assignee=task,
            message=f"no stand-in added: {escalate_to} already has a task on this stage",
        )
        return 0
    journal.log(
        session,
        runtime,
        "task.escalated",
        stage=stage,
        assignee=task,
        details={"to": escalate_to, "stand_in_task_id": stand_in.id},
    )
    journal.emit(session, runtime, "task.escalated", stage=stage, assignee=task, status="escalated")
    return 1


def _remind(
    session: Session, runtime: Runtime, stage: RuntimeStage, task: RuntimeAssignee, *, now: datetime
) -> int:
    """Send the reminder that is due (task.reminded) and schedule the next; 1 if sent."""
    task.next_reminder_at = _next_reminder(session, runtime, task, now=now)
    if stage.status != "open" or runtime.status != "in_progress":
        return 0
    task.last_reminded_at = now
    journal.log(session, runtime, "task.reminded", stage=stage, assignee=task, details=_due(task))
    journal.emit(session, runtime, "task.reminded", stage=stage, assignee=task, status=task.status)
    return 1


def _next_reminder(
    session: Session, runtime: Runtime, task: RuntimeAssignee, *, now: datetime
) -> datetime | None:
    """The first reminder time after now on the task's grid (missed ones are not sent late)."""
    hours = load_definition(session, runtime.workflow_version_id).node(task.node_key).reminder_hours
    if not hours or task.next_reminder_at is None:
        return None
    every = timedelta(hours=hours)
    return task.next_reminder_at + every * ((now - task.next_reminder_at) // every + 1)


def _due(task: RuntimeAssignee) -> dict[str, Any]:
    return {"due_at": task.due_at.isoformat() + "Z" if task.due_at else None}
