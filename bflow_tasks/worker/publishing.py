"""Hand messages to the broker after commit, or say that it could not be done.

Every message is built by task name, so a process that only publishes (the shim, the
command line) never imports a task module. `unit_of_work` is the worker's session scope:
once it commits, `send` does what its transaction noted (`bflow_tasks.after_commit`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from celery import Signature
from sqlalchemy.orm import Session

from bflow_tasks import after_commit, db
from bflow_tasks.after_commit import AfterCommit
from bflow_tasks.models import RuntimeCommand
from bflow_tasks.observability import prometheus_metrics
from bflow_tasks.worker.celery_app import app

log = logging.getLogger(__name__)

# A publish that cannot reach the broker gives up quickly: the caller answers 503 rather
# than holding the HTTP request while kombu reconnects forever.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
# Webhook messages are only a nudge (the sweep finds whatever is due): one quick try.
WEBHOOK_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


# Nobody reads these tasks' results: a chain hands a task's return value to the next task in
# its message. Storing them would cost every publisher a SUBSCRIBE (a message built by name
# must say so itself) and every task two writes to the result backend (STARTED, SUCCESS).
UNSTORED = {"ignore_result": True}


class BrokerUnavailable(Exception):
    """The broker did not take the message; the command was not handed over."""


def command_signature(command: RuntimeCommand) -> Signature:
    """Return the chain that applies a command and opens the stages it unlocks."""
    ids = {"command_id": command.id, "runtime_id": command.runtime_id}
    if command.kind == "start":
        first = _task("workflow.start_runtime", **ids)
    elif command.kind == "action":
        first = _task(
            "workflow.record_action",
            **ids,
            task_id=command.assignee_id,
            action=command.payload.get("action", ""),
        )
    elif command.kind == "resubmit":
        first = _task("workflow.resubmit", **ids)
    elif command.kind == "cancel":
        first = _task("workflow.cancel", **ids)
    else:
        raise ValueError(f"unknown command kind {command.kind!r}")
    # open_stages takes the stage ids the first task returns.
    return first | app.signature("workflow.open_stages", options=UNSTORED)


def publish_command(command: RuntimeCommand) -> None:
    """Send a committed command's chain; raise BrokerUnavailable if the broker refused it."""
    try:
        command_signature(command).apply_async(retry=True, retry_policy=PUBLISH_RETRY)
    except Exception as exc:  # kombu raises transport-specific errors
        log.warning("broker refused command %s: %s", command.id, exc)
        raise BrokerUnavailable(str(exc)) from exc


def publish_opening(stage_ids: list[str]) -> None:
    """Send the opening of stages (the sweep's way to finish a lost chord)."""
    app.send_task(
        "workflow.open_stages", args=(stage_ids,), retry=True, retry_policy=PUBLISH_RETRY, **UNSTORED
    )


def publish_streams(streams: Iterable[tuple[str, str | None]], *, countdown: float | None = None) -> int:
    """Enqueue `webhooks.deliver` for each (endpoint, runtime) stream; return how many went out.

    A refusal is logged, not raised: the deliveries are committed rows, and the sweep
    enqueues them once the broker is back.
    """
    sent = 0
    for endpoint_id, runtime_id in streams:
        try:
            app.send_task(
                "webhooks.deliver",
                args=(endpoint_id, runtime_id),
                countdown=countdown,
                retry=True,
                retry_policy=WEBHOOK_PUBLISH_RETRY,
                **UNSTORED,
            )
        except Exception as exc:  # kombu raises transport-specific errors
            log.warning("webhook stream %s/%s left to the sweep: %s", endpoint_id, runtime_id, exc)
            break  # the broker is down: the others would wait for the same refusal
        sent += 1
    return sent


@contextmanager
def unit_of_work() -> Iterator[Session]:
    """A session scope that, once it has committed, does what the transaction noted (`send`)."""
    with db.session_scope() as session:
        yield session
    send(after_commit.take(session))  # reached only when the scope committed


def send(box: AfterCommit) -> None:
    """Do a committed transaction's after-commit work: nudge its webhook streams, count its events."""
    if box.streams:
        publish_streams(box.streams)
    try:
        prometheus_metrics.count_events(box.events)
    except Exception:  # metrics must never fail the work they describe
        log.exception("could not count the committed events")


def _task(name: str, **kwargs: object) -> Signature:
    """An immutable signature of a workflow task, built by name (no task module imported)."""
    return app.signature(name, kwargs=kwargs, immutable=True, options=UNSTORED)


__all__ = [
    "BrokerUnavailable",
    "app",
    "command_signature",
    "publish_command",
    "publish_opening",
    "publish_streams",
    "send",
    "unit_of_work",
]
