"""Maintenance tasks run by Beat; each fires at most once per time slot (`engine.jobs`).

Beat passes `scheduled_at` (when it sent the job, see beat_schedule.py); the slot is that
time floored to the job's period, so a second Beat's copy of the same firing is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bflow_tasks import dispatch
from bflow_tasks.celery_app import app
from bflow_tasks.db import session_scope
from bflow_tasks.engine import archive as archive_engine
from bflow_tasks.engine import jobs, sla
from bflow_tasks.engine import sweep as sweep_engine
from bflow_tasks.settings import settings

log = logging.getLogger(__name__)


def _once(
    job: str, period: float, scheduled_at: str | None, work: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    slot = jobs.slot_of(jobs.sent_at(scheduled_at), period)
    return jobs.run_once(session_scope, job=job, slot=slot, work=work)


@app.task(name="maintenance.sweep", acks_late=True)
def sweep(scheduled_at: str | None = None) -> dict[str, Any]:
    """Re-enqueue commands and stage openings whose messages were lost."""
    return _once("maintenance.sweep", settings.sweep_seconds, scheduled_at, _resend_lost)


@app.task(name="maintenance.sla_scan", acks_late=True)
def sla_scan(scheduled_at: str | None = None) -> dict[str, Any]:
    """Mark overdue tasks, escalate them, and send the reminders that are due."""
    return _once(
        "maintenance.sla_scan",
        settings.sla_scan_seconds,
        scheduled_at,
        lambda: sla.scan(session_scope, batch=settings.sla_batch_size),
    )


@app.task(name="maintenance.archive", acks_late=True)
def archive(scheduled_at: str | None = None) -> dict[str, Any]:
    """Move runtimes that ended more than BFLOW_ARCHIVE_AFTER_DAYS ago into the archive tables."""
    return _once("maintenance.archive", jobs.DAY_SECONDS, scheduled_at, _archive)


def _resend_lost() -> dict[str, Any]:
    with session_scope() as session:
        commands = sweep_engine.stale_commands(session, grace=settings.sweep_grace)
        stage_ids = sweep_engine.unstarted_stages(session, grace=settings.sweep_grace)
    for command in commands:
        dispatch.publish_command(command)  # after commit, never before
    if stage_ids:
        dispatch.publish_opening(stage_ids)
    if commands or stage_ids:
        log.info("sweep re-enqueued %d command(s) and %d stage opening(s)", len(commands), len(stage_ids))
    return {"commands": len(commands), "stages": len(stage_ids)}


def _archive() -> dict[str, Any]:
    before = archive_engine.cutoff(settings.archive_after_days)
    moved = archive_engine.run(session_scope, before=before, batch_size=settings.archive_batch_size)
    with session_scope() as session:
        moved["job_runs_pruned"] = jobs.prune(session)
    return moved
