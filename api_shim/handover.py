"""Commit an admitted command, then hand it to the broker; undo it if the broker refuses."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from api_shim.error_responses import ApiError
from bflow_tasks import after_commit
from bflow_tasks.engine.runtimes import admission
from bflow_tasks.models import RuntimeCommand
from bflow_tasks.worker import publishing

log = logging.getLogger(__name__)


def commit(session: Session) -> None:
    """Commit the request's writes, then do what they noted for after the commit (webhook nudges)."""
    session.commit()
    publishing.send(after_commit.take(session))


def commit_and_publish(session: Session, command: RuntimeCommand | None) -> None:
    """Commit the request's writes and publish its command; 503 if the broker refused it.

    The command row is committed first so that the worker can see it when the message
    arrives. If the broker refuses the message, the command is
    withdrawn in a new transaction and the caller answers 503: a 202 always means the work
    was durably handed over.
    """
    commit(session)
    if command is None:
        return
    try:
        publishing.publish_command(command)
    except publishing.BrokerUnavailable as exc:
        _withdraw(session, command)
        raise ApiError(
            503,
            "broker_unavailable",
            "the message broker is unavailable; the request was not accepted, retry later",
            details={"reason": str(exc)},
            headers={"Retry-After": "5"},
        ) from exc


def _withdraw(session: Session, command: RuntimeCommand) -> None:
    try:
        admission.withdraw(session, command_id=command.id)
        commit(session)
    except Exception:
        # The command stays `requested`: the sweep will publish it once the broker is back,
        # so the work may still happen although this request answers 503.
        session.rollback()
        after_commit.discard(session)
        log.exception("could not withdraw command %s after the broker refused it", command.id)
