"""Maintenance tasks run by Beat; each fires at most once per time slot (`engine.jobs`).

Beat passes `scheduled_at` (when it sent the job, see beat_schedule.py); the slot is that
time floored to the job's period, so a second Beat's copy of the same firing is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bflow_tasks.engine.runtimes import lost_work
from bflow_tasks.engine.timers import archiving, job_slots, sla
from bflow_tasks.settings import settings
from bflow_tasks.worker import publishing
from bflow_tasks.worker.celery_app import app
from bflow_tasks.worker.publishing import unit_of_work

log = logging.getLogger(__name__)


def _once(
    job: str, period: float, scheduled_at: str | None, work: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    slot = job_slots.slot_of(job_slots.sent_at(scheduled_at), period)
    return job_slots.run_once(unit_of_work, job=job, slot=slot, work=work)


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
        lambda: sla.scan(unit_of_work, batch=settings.sla_batch_size),
    )


@app.task(name="maintenance.archive", acks_late=True)
def archive(scheduled_at: str | None = None) -> dict[str, Any]:
    """Move runtimes that ended more than BFLOW_ARCHIVE_AFTER_DAYS ago into the archive tables."""
    return _once("maintenance.archive", job_slots.DAY_SECONDS, scheduled_at, _archive)


def _resend_lost() -> dict[str, Any]:
    with unit_of_work() as session:
        commands = lost_work.stale_commands(session, grace=settings.sweep_grace)
        stage_ids = lost_work.unstarted_stages(session, grace=settings.sweep_grace)
    for command in commands:
        publishing.publish_command(command)  # after commit, never before
    if stage_ids:
        publishing.publish_opening(stage_ids)
    if commands or stage_ids:
        log.info("sweep re-enqueued %d command(s) and %d stage opening(s)", len(commands), len(stage_ids))
    return {"commands": len(commands), "stages": len(stage_ids)}


def _archive() -> dict[str, Any]:
    before = archiving.cutoff(settings.archive_after_days)
    moved = archiving.run(unit_of_work, before=before, batch_size=settings.archive_batch_size)
    with unit_of_work() as session:
        moved["job_runs_pruned"] = job_slots.prune(session)
    return moved
