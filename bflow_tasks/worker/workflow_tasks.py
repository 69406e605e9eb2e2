"""Workflow tasks: apply a command, then open the stages it unlocked (a chord per opening)."""

from __future__ import annotations

from celery import chord, group
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from bflow_tasks.engine.runtimes import transitions
from bflow_tasks.worker import publishing
from bflow_tasks.worker.attempts import attempt
from bflow_tasks.worker.celery_app import app

# A database restart or an InnoDB deadlock is worth another try, with backoff; every task
# is idempotent, so a retry after a partial attempt is safe; so is a full connection pool.
# Only such errors reach Celery as these: `attempt` counts any other and raises it as
# StepFailed, for the sweep.
RETRY = {
    "autoretry_for": (DBAPIError, PoolTimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 12,
    "acks_late": True,
}
# The same setting the messages carry (see publishing.UNSTORED).
UNSTORED = {**RETRY, **publishing.UNSTORED}


@app.task(name="workflow.start_runtime", **UNSTORED)
def start_runtime(command_id: str, runtime_id: str) -> list[str]:
    """Start a submitted runtime; return the stages to open."""
    with attempt(command_id=command_id), publishing.unit_of_work() as session:
        return transitions.start(session, command_id=command_id)


@app.task(name="workflow.record_action", **UNSTORED)
def record_action(command_id: str, runtime_id: str, task_id: str, action: str) -> list[str]:
    """Apply a person's action on a task; return the stages it opened."""
    with attempt(command_id=command_id), publishing.unit_of_work() as session:
        return transitions.apply_action(session, command_id=command_id)


@app.task(name="workflow.resubmit", **UNSTORED)
def resubmit(command_id: str, runtime_id: str) -> list[str]:
    """Continue a returned runtime with revised data; return the stages to open."""
    with attempt(command_id=command_id), publishing.unit_of_work() as session:
        return transitions.resubmit(session, command_id=command_id)


@app.task(name="workflow.cancel", **UNSTORED)
def cancel(command_id: str, runtime_id: str) -> list[str]:
    """Cancel a runtime."""
    with attempt(command_id=command_id), publishing.unit_of_work() as session:
        return transitions.cancel(session, command_id=command_id)


@app.task(name="workflow.open_stages", **UNSTORED)
def open_stages(stage_ids: list[str]) -> None:
    """Fan out one assign task per approver, then mark the stages started (a chord)."""
    if not stage_ids:  # most actions open nothing: no transaction for them
        return
    with attempt(), publishing.unit_of_work() as session:
        plan = transitions.opening_plan(session, stage_ids=stage_ids)
    if not plan:
        return
    header = group(assign.si(stage_id=stage_id, user=user) for stage_id, user in plan)
    chord(header)(stages_opened.si(stage_ids=sorted({stage_id for stage_id, _ in plan})))


@app.task(name="workflow.assign", **RETRY)
def assign(stage_id: str, user: str) -> str | None:
    """Create one approver's task (chord header: its result is stored, the chord counts it)."""
    with attempt(stage_id=stage_id), publishing.unit_of_work() as session:
        return transitions.assign(session, stage_id=stage_id, user=user)


@app.task(name="workflow.stages_opened", **UNSTORED)
def stages_opened(stage_ids: list[str]) -> None:
    """Record that the stages' approvers all have their tasks (chord body)."""
    with attempt(), publishing.unit_of_work() as session:
        transitions.mark_started(session, stage_ids=stage_ids)
