"""Reconciliation: find work whose message was lost, so the sweep can enqueue it again.

Each item found is stamped `swept_at`, so a lost message is re-sent once per grace period,
not on every sweep while the worker catches up.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.models import RuntimeCommand, RuntimeStage

BATCH = 500


def stale_commands(session: Session, *, grace: timedelta) -> list[RuntimeCommand]:
    """Return (and stamp) commands still not applied a grace period after they were last sent."""
    now = clock.now()
    commands = list(
        session.scalars(
            select(RuntimeCommand)
            .where(
                RuntimeCommand.status == "requested",
                func.coalesce(RuntimeCommand.swept_at, RuntimeCommand.created_at) < now - grace,
            )
            .order_by(RuntimeCommand.created_at)
            .limit(BATCH)
        )
    )
    for command in commands:
        command.swept_at = now
    return commands


def unstarted_stages(session: Session, *, grace: timedelta) -> list[str]:
    """Return (and stamp) stages whose opening chord has not finished a grace period after it was sent."""
    now = clock.now()
    stages = list(
        session.scalars(
            select(RuntimeStage)
            .where(
                RuntimeStage.status == "open",
                RuntimeStage.started_at.is_(None),
                func.coalesce(RuntimeStage.swept_at, RuntimeStage.created_at) < now - grace,
            )
            .order_by(RuntimeStage.created_at)
            .limit(BATCH)
        )
    )
    for stage in stages:
        stage.swept_at = now
    return [stage.id for stage in stages]
