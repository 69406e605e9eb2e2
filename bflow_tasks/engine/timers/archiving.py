"""Archive: move runtimes that ended long ago into the `*_archive` tables, batch by batch.

Each batch is one transaction: lock up to `batch_size` ended runtimes, copy them with their
stages, tasks, audit log and events (`INSERT INTO x_archive SELECT ... FROM x`, skipping ids
the archive already holds), then delete them and their commands and viewers (operational
data, not history). A crash loses nothing and duplicates nothing: an unfinished batch rolls
back, finished ones stay moved, and the next run resumes with whatever is still live.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, Row, Select, Table, delete, exists, func, insert, select
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.timers.job_slots import SessionScope
from bflow_tasks.models import (
    ARCHIVE_TWINS,
    Base,
    Runtime,
    WorkflowVersion,
)

COPIED = ("runtime", "runtime_stage", "runtime_assignee", "runtime_log", "runtime_event")
DROPPED = ("runtime_command", "runtime_viewer")
# Children first, so that no delete leans on ON DELETE CASCADE (and its row-by-row work).
DELETE_ORDER = (*DROPPED, "runtime_event", "runtime_log", "runtime_assignee", "runtime_stage", "runtime")


@dataclass
class Batch:
    """What one committed batch moved: its number, its runtimes, and rows per table."""

    number: int
    runtimes: int
    copied: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)


# Called with "copied" inside the batch's transaction, and "committed" once it is durable.
Hook = Callable[[Literal["copied", "committed"], Batch], None]


def cutoff(after_days: int) -> datetime:
    """Return the end time before which a runtime is old enough to archive."""
    return clock.now() - timedelta(days=after_days)


def due_query(before: datetime, limit: int) -> Select[str]:
    """The next batch of ended runtimes to move, oldest first (a range on idx_runtime_ended_at)."""
    # Only `stages.finish` sets ended_at, always with a final status: filtering on status too
    # would make MariaDB sort every old runtime before LIMIT on each batch.
    return select(Runtime.id).where(Runtime.ended_at < before).order_by(Runtime.ended_at).limit(limit)


def count_due(session: Session, *, before: datetime) -> dict[str, int]:
    """Count the runtimes (and rows per table) an archive run would move now: the dry run."""
    due = select(Runtime.id).where(Runtime.ended_at < before).subquery()
    counts: dict[str, int] = {}
    for name in (*COPIED, *DROPPED):
        table = _table(name)
        key = table.c.id if name == "runtime" else table.c.runtime_id
        counts[name] = session.scalar(select(func.count()).select_from(table).join(due, due.c.id == key)) or 0
    return counts


def archive_batch(session: Session, *, before: datetime, limit: int, number: int = 1) -> Batch:
    """Move one batch inside the caller's transaction; a batch of 0 runtimes means done."""
    ids = list(session.scalars(due_query(before, limit).with_for_update()))
    batch = Batch(number=number, runtimes=len(ids))
    if not ids:
        return batch
    for name in COPIED:
        batch.copied[name] = _copy(session, name, ids)
    for name in DELETE_ORDER:
        table = _table(name)
        key = table.c.id if name == "runtime" else table.c.runtime_id
        batch.deleted[name] = _rowcount(session.execute(delete(table).where(key.in_(ids))))
    return batch


def run(
    scope: SessionScope, *, before: datetime, batch_size: int = 500, hook: Hook | None = None
) -> dict[str, Any]:
    """Archive batch after batch, each its own transaction, until nothing old is left."""
    totals: dict[str, Any] = {"runtimes": 0, "batches": 0, "copied": {}, "deleted": {}}
    number = 0
    while True:
        number += 1
        with scope() as session:
            batch = archive_batch(session, before=before, limit=batch_size, number=number)
            if batch.runtimes and hook is not None:
                hook("copied", batch)
        if not batch.runtimes:
            return totals
        totals["runtimes"] += batch.runtimes
        totals["batches"] += 1
        for kind in ("copied", "deleted"):
            for name, rows in getattr(batch, kind).items():
                totals[kind][name] = totals[kind].get(name, 0) + rows
        if hook is not None:
            hook("committed", batch)
        if batch.runtimes < batch_size:
            return totals


@dataclass
class ArchivedRuntime:
    """An archived runtime's rows, as `reads` shows a live one."""

    runtime: Row[Any]
    version: int
    stages: Sequence[Row[Any]]
    assignees: Sequence[Row[Any]]
    log: Sequence[Row[Any]]


def read_archived(session: Session, *, tenant_id: str, runtime_id: str) -> ArchivedRuntime | None:
    """Return the tenant's archived runtime with its stages, tasks and log, or None."""
    runtime_t, stage_t = ARCHIVE_TWINS["runtime"], ARCHIVE_TWINS["runtime_stage"]
    assignee_t, log_t = ARCHIVE_TWINS["runtime_assignee"], ARCHIVE_TWINS["runtime_log"]
    found = session.execute(
        select(runtime_t, WorkflowVersion.version.label("workflow_version"))
        .join(WorkflowVersion, WorkflowVersion.id == runtime_t.c.workflow_version_id)
        .where(runtime_t.c.id == runtime_id, runtime_t.c.tenant_id == tenant_id)
    ).one_or_none()
    if found is None:
        return None
    return ArchivedRuntime(
        runtime=found,
        version=found.workflow_version,
        stages=session.execute(
            select(stage_t).where(stage_t.c.runtime_id == runtime_id).order_by(stage_t.c.sequence)
        ).all(),
        assignees=session.execute(
            select(assignee_t)
            .where(assignee_t.c.runtime_id == runtime_id)
            .order_by(assignee_t.c.created_at, assignee_t.c.id)
        ).all(),
        log=session.execute(
            select(log_t).where(log_t.c.runtime_id == runtime_id).order_by(log_t.c.sequence)
        ).all(),
    )


def _copy(session: Session, name: str, ids: list[str]) -> int:
    """INSERT INTO name_archive SELECT ... the batch's rows not already there; return how many."""
    source, twin = _table(name), ARCHIVE_TWINS[name]
    columns = [c.name for c in twin.columns]
    key = source.c.id if name == "runtime" else source.c.runtime_id
    rows = select(*(source.c[c] for c in columns)).where(
        key.in_(ids), ~exists().where(twin.c.id == source.c.id)
    )
    return _rowcount(session.execute(insert(twin).from_select(columns, rows)))


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
