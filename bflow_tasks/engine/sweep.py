"""Reconciliation: find work whose message was lost, so the sweep can enqueue it again."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.models import RuntimeCommand, RuntimeStage

BATCH = 500


def stale_commands(session: Session, *, grace: timedelta) -> list[RuntimeCommand]:
    """Return commands admitted more than `grace` ago and still not applied."""
    return list(
        session.scalars(
            select(RuntimeCommand)
            .where(RuntimeCommand.status == "requested", RuntimeCommand.created_at < clock.now() - grace)
            .order_by(RuntimeCommand.created_at)
            .limit(BATCH)
        )
    )


def unstarted_stages(session: Session, *, grace: timedelta) -> list[str]:
    """Return stages opened more than `grace` ago whose opening chord never finished."""
    return list(
        session.scalars(
            select(RuntimeStage.id)
            .where(
                RuntimeStage.status == "open",
                RuntimeStage.started_at.is_(None),
                RuntimeStage.created_at < clock.now() - grace,
            )
            .order_by(RuntimeStage.created_at)
            .limit(BATCH)
        )
    )
