"""Maintenance tasks run by Beat."""

from __future__ import annotations

import logging

from bflow_tasks import dispatch
from bflow_tasks.celery_app import app
from bflow_tasks.db import session_scope
from bflow_tasks.engine import sweep as sweep_engine
from bflow_tasks.settings import settings

log = logging.getLogger(__name__)


@app.task(name="maintenance.sweep", acks_late=True)
def sweep() -> dict[str, int]:
    """Re-enqueue commands and stage openings whose messages were lost."""
    with session_scope() as session:
        commands = sweep_engine.stale_commands(session, grace=settings.sweep_grace)
        stage_ids = sweep_engine.unstarted_stages(session, grace=settings.sweep_grace)
    for command in commands:
        dispatch.publish_command(command)
    if stage_ids:
        dispatch.publish_opening(stage_ids)
    if commands or stage_ids:
        log.info("sweep re-enqueued %d command(s) and %d stage opening(s)", len(commands), len(stage_ids))
    return {"commands": len(commands), "stages": len(stage_ids)}
