"""Beat job slots: a job fires at most once per time slot, however many Beats sent it.

Each firing first inserts a `job_run` row keyed by (job, slot); the unique key turns a
second firing of the same slot -- a second Beat started by mistake, a redelivered message --
into a no-op, on SQLite and MariaDB alike. The slot is the send time floored to the job's
period: two Beats on the same interval send within one period of each other, so their
messages land in the same slot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.models import JobRun

log = logging.getLogger(__name__)

# Opens one transaction and commits it on exit: `db.session_scope`, or `sessionmaker.begin`.
SessionScope = Callable[[], AbstractContextManager[Session]]

EPOCH = datetime(1970, 1, 1)
DAY_SECONDS = 86400.0
# job_run is bookkeeping, not history: a week is plenty to see what Beat did.
KEEP_RUNS = timedelta(days=7)


def sent_at(scheduled_at: str | None) -> datetime:
    """Return when Beat sent the job (naive UTC), or now for a message sent by hand."""
    if not scheduled_at:
        return clock.now()
    at = datetime.fromisoformat(scheduled_at)
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


def slot_of(at: datetime, period_seconds: float) -> str:
    """Return the slot `at` falls in: the start of its period, as fixed-width sortable text."""
    # Integer microseconds: every process computes the same boundary, whatever the period.
    period = max(1, round(period_seconds * 1_000_000))
    elapsed = (at - EPOCH) // timedelta(microseconds=1)
    start = EPOCH + timedelta(microseconds=elapsed // period * period)
    return start.isoformat(timespec="microseconds")


def claim(scope: SessionScope, *, job: str, slot: str) -> bool:
    """Record this firing of `job` for `slot`; False if the slot was already fired."""
    try:
        with scope() as session:
            session.add(JobRun(job=job, slot=slot, created_at=clock.now()))
            session.flush()
    except IntegrityError:
        return False
    return True


def finish(scope: SessionScope, *, job: str, slot: str, result: dict[str, Any]) -> None:
    """Record how a claimed firing ended."""
    with scope() as session:
        session.execute(
            update(JobRun)
            .where(JobRun.job == job, JobRun.slot == slot)
            .values(finished_at=clock.now(), result=result)
        )


def run_once(
    scope: SessionScope, *, job: str, slot: str, work: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run `work` if this firing claims the slot; otherwise do nothing and say so.

    A firing that fails keeps its claim (with the error as result): the job is idempotent and
    the next slot picks up whatever this one left, so no retry within the slot is needed.
    """
    if not claim(scope, job=job, slot=slot):
        log.info("job %s slot %s: already fired, skipped", job, slot)
        return {"job": job, "slot": slot, "skipped": True}
    log.info("job %s slot %s: claimed", job, slot)
    try:
        result = work()
    except Exception as exc:
        finish(scope, job=job, slot=slot, result={"error": f"{type(exc).__name__}: {exc}"})
        raise
    finish(scope, job=job, slot=slot, result=result)
    return {"job": job, "slot": slot, **result}


def prune(session: Session, *, before: datetime | None = None) -> int:
    """Delete job_run rows of slots older than `before` (default: a week ago); return how many."""
    cutoff = slot_of(before or clock.now() - KEEP_RUNS, 1e-6)
    removed = 0
    # Per job, so that each delete is a range on the (job, slot) unique index.
    for job in session.scalars(select(JobRun.job).distinct()).all():
        result = session.execute(delete(JobRun).where(JobRun.job == job, JobRun.slot < cutoff))
        removed += cast(CursorResult[Any], result).rowcount
    return removed
