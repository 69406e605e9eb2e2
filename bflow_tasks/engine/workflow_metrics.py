"""Workflow metrics, aggregated in SQL over the runtimes submitted in a time window.

Every query starts from `idx_runtime_workflow_created` (workflow_id, created_at) and reaches
stages and tasks through their runtime_id indexes; only aggregates come back to Python. The
p90 is the nearest-rank percentile, read as one row of an ordered query (LIMIT 1 OFFSET k).
Archived runtimes are not included: the window is meant to lie within the live period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, literal_column, or_, select
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.definitions.workflow_store import get_workflow
from bflow_tasks.engine.domain_errors import InvalidInput
from bflow_tasks.engine.runtimes.stage_lifecycle import OPEN_TASK_STATUSES
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage

DEFAULT_WINDOW = timedelta(days=30)
ENDED = ("completed", "rejected", "cancelled", "error")


@dataclass(frozen=True)
class StageDuration:
    node_key: str
    avg_seconds: float
    count: int


@dataclass(frozen=True)
class WorkflowMetrics:
    """A workflow's numbers over runtimes submitted in [start, end)."""

    workflow_id: str
    start: datetime
    end: datetime
    executions: int
    completed: int
    rejected: int
    cancelled: int
    error: int
    running: int
    success_rate: float | None
    avg_completion_seconds: float | None
    p90_completion_seconds: float | None
    sla_tasks: int
    sla_met: int
    sla_compliance: float | None
    slowest_stage: StageDuration | None
    stages: list[StageDuration] = field(default_factory=list)


def compute(
    session: Session,
    *,
    tenant_id: str,
    workflow_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> WorkflowMetrics:
    """Return the tenant's workflow metrics for [start, end) (default: the last 30 days)."""
    get_workflow(session, tenant_id=tenant_id, workflow_id=workflow_id)  # NotFound for others' ids
    end = _naive(end) if end else clock.now()
    try:
        start = _naive(start) if start else end - DEFAULT_WINDOW
    except OverflowError:
        raise InvalidInput(
            "the default window would start before year 1; give 'from'",
            details=[{"path": "query.from", "message": "required this close to year 1"}],
        ) from None
    if start >= end:
        raise InvalidInput(
            "'from' must be before 'to'", details=[{"path": "query.from", "message": "not before 'to'"}]
        )
    seconds = _seconds(session)
    in_window = and_(
        Runtime.workflow_id == workflow_id, Runtime.created_at >= start, Runtime.created_at < end
    )
    completed = Runtime.status == "completed"
    duration = seconds(Runtime.created_at, Runtime.ended_at)

    row: tuple[Any, ...] = tuple(
        session.execute(
            select(
                func.count(),
                *(func.count(case((Runtime.status == status, 1))) for status in ENDED),
                func.avg(case((completed, duration))),
            ).where(in_window)
        ).one()
    )
    executions, done, rejected, cancelled, error, avg_seconds = row
    ended = done + rejected + cancelled + error

    p90 = None
    if done:
        rank = math.ceil(0.9 * done) - 1  # nearest rank, zero-based
        p90 = session.scalar(
            select(duration).where(in_window, completed).order_by(duration).limit(1).offset(rank)
        )

    met, breached = _sla(session, in_window, now=clock.now())
    stages = _stage_durations(session, in_window, seconds)
    return WorkflowMetrics(
        workflow_id=workflow_id,
        start=start,
        end=end,
        executions=executions,
        completed=done,
        rejected=rejected,
        cancelled=cancelled,
        error=error,
        running=executions - ended,
        success_rate=_ratio(done, ended),
        avg_completion_seconds=_round(avg_seconds),
        p90_completion_seconds=_round(p90),
        sla_tasks=met + breached,
        sla_met=met,
        sla_compliance=_ratio(met, met + breached),
        slowest_stage=stages[0] if stages else None,
        stages=stages,
    )


def _sla(session: Session, in_window: ColumnElement[bool], *, now: datetime) -> tuple[int, int]:
    """Tasks with a due time that were met (acted on by then) and breached (late, or still open past it).

    Tasks still within their time, cancelled before it, or delegated (their delegate carries
    the same due time and is counted instead) have no verdict yet and are left out.
    """
    task = RuntimeAssignee
    acted = task.status == "completed"
    met = and_(acted, task.completed_at <= task.due_at)
    breached = or_(
        and_(acted, task.completed_at > task.due_at),
        and_(task.status.in_(OPEN_TASK_STATUSES), task.due_at <= now),
        and_(task.status == "cancelled", task.overdue_at.is_not(None)),
    )
    row = session.execute(
        select(func.count(case((met, 1))), func.count(case((breached, 1))))
        .select_from(Runtime)
        .join(task, task.runtime_id == Runtime.id)
        .where(in_window, task.due_at.is_not(None))
    ).one()
    return int(row[0]), int(row[1])


def _stage_durations(session: Session, in_window: ColumnElement[bool], seconds: Any) -> list[StageDuration]:
    """Average open-to-completed time of each node's completed stages, slowest first."""
    stage = RuntimeStage
    avg = func.avg(seconds(stage.created_at, stage.completed_at))
    rows = session.execute(
        select(stage.node_key, avg.label("avg_seconds"), func.count())
        .select_from(Runtime)
        .join(stage, stage.runtime_id == Runtime.id)
        .where(in_window, stage.status == "completed", stage.action.not_in(("create", "end")))
        .group_by(stage.node_key)
        .order_by(avg.desc(), stage.node_key)
    ).all()
    return [StageDuration(node_key=key, avg_seconds=_round(value) or 0.0, count=n) for key, value, n in rows]


def _seconds(session: Session) -> Any:
    """Return a builder of `end - start` in seconds, in the connected database's dialect."""
    if session.get_bind().dialect.name == "sqlite":
        return lambda start, end: (func.julianday(end) - func.julianday(start)) * literal(86400.0)
    return lambda start, end: func.timestampdiff(literal_column("MICROSECOND"), start, end) / literal(1e6)


def _naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)
