"""Webhook tasks: drain one (endpoint, runtime) stream; sweep for streams whose message was lost."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DBAPIError

from bflow_tasks.engine.timers import job_slots
from bflow_tasks.engine.webhooks import outbox
from bflow_tasks.settings import settings
from bflow_tasks.worker import publishing, webhook_sender
from bflow_tasks.worker.celery_app import app
from bflow_tasks.worker.publishing import unit_of_work


@app.task(
    name="webhooks.deliver",
    acks_late=True,
    autoretry_for=(DBAPIError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=12,
    **publishing.UNSTORED,  # nothing reads its result
)
def deliver(endpoint_id: str, runtime_id: str | None = None) -> None:
    """Send a stream's due deliveries in order; a short retry rides a countdown, a long one the sweep."""
    retry_in = webhook_sender.drain(endpoint_id=endpoint_id, runtime_id=runtime_id)
    if retry_in is not None and retry_in <= settings.webhook_countdown_max_seconds:
        publishing.publish_streams([(endpoint_id, runtime_id)], countdown=retry_in)


@app.task(name="webhooks.sweep", acks_late=True)
def sweep(scheduled_at: str | None = None) -> dict[str, Any]:
    """Enqueue every stream with a due delivery whose message was lost (once per Beat slot)."""
    slot = job_slots.slot_of(job_slots.sent_at(scheduled_at), settings.sweep_seconds)
    return job_slots.run_once(unit_of_work, job="webhooks.sweep", slot=slot, work=_enqueue_due_streams)


def _enqueue_due_streams() -> dict[str, Any]:
    with unit_of_work() as session:
        streams = outbox.due_streams(session, grace=settings.sweep_grace)
    return {"due": len(streams), "enqueued": publishing.publish_streams(streams)}
