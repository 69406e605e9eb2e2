"""Failures a retry will not fix: count them, and at the limit end the runtime in `error`.

A step that fails because the database or the broker cannot serve it for now (down, a lost
connection, a lock wait, a deadlock) is retried by its task and re-sent by the sweep, and
never counted here. Any other failure (a bug, data the database refuses) would fail the same
way at every try, so the task records it here, in a transaction of its own (the failed one
was rolled back), and leaves the next try to the sweep. The `MAX_FAILURES`th failure of a
command marks it `failed`; the `MAX_FAILURES`th failed attempt to create a stage's tasks
does the same to the stage's opening. Either ends the runtime in `error`, which cancels its
open stages and emits `runtime.error`, so that someone is told instead of the sweep retrying
for ever.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session

from bflow_tasks import after_commit
from bflow_tasks.engine import clock
from bflow_tasks.engine.runtimes import journal, stage_lifecycle, transitions
from bflow_tasks.models import Runtime

log = logging.getLogger(__name__)

# Enough tries to outlast a failure that is in fact passing (a worker on a broken release
# being replaced, a row another transaction had not committed yet): with the sweep's
# doubling wait the fifth try comes about 8 grace periods after the first (4 minutes at the
# default 30 s). Few enough that the runtime's owner hears of it within minutes.
MAX_FAILURES = 5
# The error text kept on the command and shown as the runtime's `error`.
ERROR_CHARS = 500


def command_failed(session: Session, *, command_id: str, error: str) -> int:
    """Count a failed attempt to apply a command; the last one fails it, and its runtime.

    Return the count so far, or 0 when there is nothing to count (the command was applied
    by another delivery meanwhile, or withdrawn).
    """
    command, runtime = transitions.lock_command(session, command_id)
    if command is None or runtime is None or command.status != "requested":
        return 0
    command.failures += 1
    command.error = error[:ERROR_CHARS]
    if command.failures >= MAX_FAILURES:
        command.status = "failed"
        if runtime.status not in stage_lifecycle.FINAL_STATUSES:
            reason = f"the {command.kind} command failed {command.failures} times: {command.error}"
            _end_in_error(session, runtime, reason=reason)
    return command.failures


def opening_failed(session: Session, *, stage_id: str, error: str, once_per: timedelta) -> int:
    """Count a failed attempt to create a stage's tasks; the last one ends its runtime in `error`.

    One try sends a task per approver, and each may fail: they count once. The sweep sends
    the next try `once_per` (its grace) after the last at the soonest, so failures closer to
    the last counted one belong to the same try. Return the count so far, or 0 when the
    stage is no longer being opened.
    """
    stage, runtime = transitions.lock_stage(session, stage_id)
    if stage is None or runtime is None or stage.status != "open" or stage.started_at is not None:
        return 0
    now = clock.now()
    if stage.opening_failed_at is not None and now - stage.opening_failed_at < once_per:
        return stage.opening_failures  # another approver's task of the try already counted
    stage.opening_failures += 1
    stage.opening_failed_at = now
    if stage.opening_failures >= MAX_FAILURES and runtime.status not in stage_lifecycle.FINAL_STATUSES:
        # `runtime.stages`, loaded on first use, holds this same stage: the end cancels it.
        reason = f"opening the stage '{stage.node_key}' failed {stage.opening_failures} times: "
        _end_in_error(session, runtime, reason=reason + error[:ERROR_CHARS])
    return stage.opening_failures


def _end_in_error(session: Session, runtime: Runtime, *, reason: str) -> None:
    try:
        with after_commit.savepoint(session):
            _end_with_history(session, runtime, reason=reason)
    except Exception:
        # The bug is in the end's own path (the audit log, the events): end the runtime without
        # them rather than leave it running, and the sweep re-sending its command, for ever.
        log.exception("runtime %s could not end in error with its history; ending it without", runtime.id)
        stage_lifecycle.end_without_history(runtime, "error", reason=reason)


def _end_with_history(session: Session, runtime: Runtime, *, reason: str) -> None:
    # A runtime whose start never applied has neither its first audit line nor its first
    # event (see transitions._claim and transitions.cancel): its history still begins with them.
    submitter = runtime.submitted_by
    if runtime.log_sequence == 0:
        journal.log(session, runtime, "runtime.submitted", actor=submitter, at=runtime.created_at)
    if runtime.status == "pending":
        journal.emit(session, runtime, "runtime.created", actor=submitter, status="pending")
    stage_lifecycle.finish(session, runtime, "error", reason=reason)
