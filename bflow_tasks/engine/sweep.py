"""Reconciliation: find work whose message was lost, so the sweep can enqueue it again.

Each item found is stamped `swept_at`. It is sent again only after a wait that doubles each
time (at least the grace period, and at least as long as it had already waited), so a
backlog that takes longer than the grace to drain is not re-published over and over.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.models import RuntimeCommand, RuntimeStage

BATCH = 500


def stale_commands(session: Session, *, grace: timedelta) -> list[RuntimeCommand]:
    """Return (and stamp) commands still not applied, each once per backoff period."""
    now = clock.now()
    last_sent = func.coalesce(RuntimeCommand.swept_at, RuntimeCommand.created_at)
    candidates = session.scalars(
        select(RuntimeCommand)
        .where(RuntimeCommand.status == "requested", last_sent < now - grace)
        .order_by(last_sent)
        .limit(BATCH)
    )
    due = [c for c in candidates if _due(now, created=c.created_at, swept=c.swept_at, grace=grace)]
    for command in due:
        command.swept_at = now
    return due


def unstarted_stages(session: Session, *, grace: timedelta) -> list[str]:
    """Return (and stamp) stages whose opening chord has not finished, each once per backoff period."""
    now = clock.now()
    last_sent = func.coalesce(RuntimeStage.swept_at, RuntimeStage.created_at)
    candidates = session.scalars(
        select(RuntimeStage)
        .where(RuntimeStage.status == "open", RuntimeStage.started_at.is_(None), last_sent < now - grace)
        .order_by(last_sent)
        .limit(BATCH)
    )
    due = [s for s in candidates if _due(now, created=s.created_at, swept=s.swept_at, grace=grace)]
    for stage in due:
        stage.swept_at = now
    return [stage.id for stage in due]


def _due(now: datetime, *, created: datetime, swept: datetime | None, grace: timedelta) -> bool:
    if swept is None:
        return True  # the query already waited the grace period
    return now - swept >= max(grace, swept - created)
