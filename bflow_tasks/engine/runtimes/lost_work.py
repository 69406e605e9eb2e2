"""Reconciliation: find work whose message was lost, so the sweep can enqueue it again.

An item is first re-sent a grace period after it was created. Each re-send sets
`next_sweep_at`, after a wait that doubles each time (at least the grace period, and at
least as long as it had already waited), so a backlog that takes longer than the grace to
drain is not re-published over and over. Only due items are read, through an index, and
the longest-due go first: items still waiting never fill a batch and hold back the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.models import RuntimeCommand, RuntimeStage

BATCH = 500

Swept = TypeVar("Swept", bound=RuntimeCommand | RuntimeStage)


# What is still unfinished, as the sweep's indexes lead with it.
UNAPPLIED = (RuntimeCommand.status == "requested",)
UNSTARTED = (RuntimeStage.status == "open", RuntimeStage.started_at.is_(None))


def stale_commands(session: Session, *, grace: timedelta) -> list[RuntimeCommand]:
    """Return (and schedule the next re-send of) commands still not applied that are due."""
    return _due(session, RuntimeCommand, UNAPPLIED, grace=grace)


def unstarted_stages(session: Session, *, grace: timedelta) -> list[str]:
    """Return (and schedule the next re-send of) due stages whose opening chord has not finished."""
    return [stage.id for stage in _due(session, RuntimeStage, UNSTARTED, grace=grace)]


def first_send_query(
    model: type[Swept], unfinished: Sequence[ColumnElement[bool]], *, now: datetime, grace: timedelta
) -> Select[Swept]:
    """Unfinished items never re-sent and older than the grace, oldest first."""
    return (
        select(model)
        .where(*unfinished, model.next_sweep_at.is_(None), model.created_at < now - grace)
        .order_by(model.created_at)
        .limit(BATCH)
    )


def resend_query(
    model: type[Swept], unfinished: Sequence[ColumnElement[bool]], *, now: datetime
) -> Select[Swept]:
    """Unfinished items re-sent before and due again, longest due first."""
    return (
        select(model)
        .where(*unfinished, model.next_sweep_at <= now)
        .order_by(model.next_sweep_at)
        .limit(BATCH)
    )


def _due(
    session: Session, model: type[Swept], unfinished: Sequence[ColumnElement[bool]], *, grace: timedelta
) -> list[Swept]:
    now = clock.now()
    found = [
        *session.scalars(first_send_query(model, unfinished, now=now, grace=grace)),
        *session.scalars(resend_query(model, unfinished, now=now)),
    ]
    due = sorted(found, key=lambda row: _due_at(row, grace))[:BATCH]
    for row in due:
        row.next_sweep_at = now + max(grace, now - row.created_at)
    return due


def _due_at(row: RuntimeCommand | RuntimeStage, grace: timedelta) -> datetime:
    return row.next_sweep_at or row.created_at + grace
