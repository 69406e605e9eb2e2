"""Hand admitted commands to the broker, after commit, or say that it could not be done."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Signature
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from bflow_tasks.celery_app import app
from bflow_tasks.engine import webhooks as webhook_outbox
from bflow_tasks.models import RuntimeCommand
from bflow_tasks.tasks import workflow

log = logging.getLogger(__name__)

# A publish that cannot reach the broker gives up quickly: the caller answers 503 rather
# than holding the HTTP request while kombu reconnects forever.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
# Webhook messages are only a nudge (the sweep finds whatever is due): one quick try.
WEBHOOK_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class BrokerUnavailable(Exception):
    """The broker did not take the message; the command was not handed over."""


def command_signature(command: RuntimeCommand) -> Signature:
    """Return the chain that applies a command and opens the stages it unlocks."""
    ids = {"command_id": command.id, "runtime_id": command.runtime_id}
    if command.kind == "start":
        first = workflow.start_runtime.si(**ids)
    elif command.kind == "action":
        first = workflow.record_action.si(
            **ids, task_id=command.assignee_id, action=command.payload.get("action", "")
        )
    elif command.kind == "resubmit":
        first = workflow.resubmit.si(**ids)
    elif command.kind == "cancel":
        first = workflow.cancel.si(**ids)
    else:
        raise ValueError(f"unknown command kind {command.kind!r}")
    return first | workflow.open_stages.s()


def publish_command(command: RuntimeCommand) -> None:
    """Send a committed command's chain; raise BrokerUnavailable if the broker refused it."""
    try:
        command_signature(command).apply_async(retry=True, retry_policy=PUBLISH_RETRY)
    except Exception as exc:  # kombu raises transport-specific errors
        log.warning("broker refused command %s: %s", command.id, exc)
        raise BrokerUnavailable(str(exc)) from exc


def publish_opening(stage_ids: list[str]) -> None:
    """Send the opening of stages (the sweep's way to finish a lost chord)."""
    workflow.open_stages.apply_async(args=(stage_ids,), retry=True, retry_policy=PUBLISH_RETRY)


def publish_streams(streams: Iterable[tuple[str, str | None]], *, countdown: float | None = None) -> int:
    """Enqueue `webhooks.deliver` for each (endpoint, runtime) stream; return how many went out.

    A refusal is logged, not raised: the deliveries are committed rows, and the sweep
    enqueues them once the broker is back.
    """
    sent = 0
    for endpoint_id, runtime_id in streams:
        try:
            # By name: the task module imports this one.
            app.send_task(
                "webhooks.deliver",
                args=(endpoint_id, runtime_id),
                countdown=countdown,
                ignore_result=True,  # send_task by name cannot read the task's own setting
                retry=True,
                retry_policy=WEBHOOK_PUBLISH_RETRY,
            )
        except Exception as exc:  # kombu raises transport-specific errors
            log.warning("webhook stream %s/%s left to the sweep: %s", endpoint_id, runtime_id, exc)
            break  # the broker is down: the others would wait for the same refusal
        sent += 1
    return sent


@event.listens_for(Session, "after_commit")
def _publish_touched_streams(session: Session) -> None:
    # after_commit also fires when a savepoint is released: only the real commit publishes.
    if session.get_nested_transaction() is not None:
        return
    streams = webhook_outbox.take_touched(session)
    if streams:
        publish_streams(streams)


@event.listens_for(Session, "after_transaction_end")
def _forget_touched_streams(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        webhook_outbox.forget(session, transaction)


__all__ = [
    "BrokerUnavailable",
    "app",
    "command_signature",
    "publish_command",
    "publish_opening",
    "publish_streams",
]
