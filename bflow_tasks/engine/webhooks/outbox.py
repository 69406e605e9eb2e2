"""The webhook outbox: fan events out to subscribed endpoints in the transition's transaction.

Each event becomes one `webhook_delivery` row per active endpoint of the tenant that
subscribes to its type, with the exact body every attempt will send. The (endpoint,
runtime) streams a transaction touched are noted in its `AfterCommit` box; whoever owns the
unit of work enqueues them after commit, and the sweep finds any it missed.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from bflow_tasks import after_commit
from bflow_tasks.after_commit import Stream
from bflow_tasks.engine import clock
from bflow_tasks.models import RuntimeEvent, WebhookDelivery, WebhookEndpoint, new_id

EVENT_TYPES = (
    "runtime.created",
    "stage.started",
    "task.assigned",
    "task.completed",
    "task.delegated",
    "task.overdue",
    "task.escalated",
    # Beyond the Standard Webhooks set: Bflow sends no mail, so a reminder must reach the ERP.
    "task.reminded",
    "stage.completed",
    "runtime.returned",
    "runtime.completed",
    "runtime.rejected",
    "runtime.cancelled",
    "runtime.error",
)
# Not a runtime event: told to a tenant's other endpoints when one of its endpoints is disabled.
ENDPOINT_DISABLED = "endpoint.disabled"
SUBSCRIBABLE = (*EVENT_TYPES, ENDPOINT_DISABLED)
ALL = "*"

# Deliveries still to be sent; `delivered` and `failed` (the dead letter) are done.
ACTIVE = ("pending", "retrying")
STATUSES = (*ACTIVE, "delivered", "failed")
MAX_BODY_BYTES = 64 * 1024
SWEEP_BATCH = 500
# A tenant's active endpoints, read once per transaction: (transaction, {tenant id: endpoints}).
_ENDPOINTS_KEY = "bflow.webhooks.endpoints"


def subscribes(events: list[str], event_type: str) -> bool:
    """Tell whether an endpoint's event filter takes this type."""
    return ALL in events or event_type in events


def render_body(*, event_type: str, timestamp: datetime, sequence: int | None, data: dict[str, Any]) -> str:
    """Render the thin JSON body once; every attempt sends exactly these bytes."""
    body = _dump(event_type, timestamp, sequence, data)
    if len(body.encode()) > MAX_BODY_BYTES:
        # Only the ids are essential: consumers fetch details from the API.
        kept = {k: v for k, v in data.items() if k.endswith("_id") or k in ("status", "updated_at")}
        body = _dump(event_type, timestamp, sequence, {**kept, "truncated": True})
    return body


def fan_out(session: Session, event: RuntimeEvent) -> None:
    """Add a delivery of `event` for every active endpoint of its tenant that subscribes to it."""
    targets = [
        endpoint_id
        for endpoint_id, events in _tenant_endpoints(session, event.tenant_id)
        if subscribes(events, event.type)
    ]
    if not targets:
        return
    body = render_body(
        event_type=event.type, timestamp=event.created_at, sequence=event.sequence, data=event.data
    )
    for endpoint_id in targets:
        _add_delivery(
            session,
            endpoint_id=endpoint_id,
            event_id=event.id,
            event_type=event.type,
            runtime_id=event.runtime_id,
            sequence=event.sequence,
            body=body,
            now=event.created_at,
        )


def notify(
    session: Session, *, tenant_id: str, event_type: str, data: dict[str, Any], exclude: str | None = None
) -> int:
    """Send a tenant-level notification (no runtime, no sequence) to its subscribed endpoints."""
    now = clock.now()
    targets = [
        eid
        for eid, events in _tenant_endpoints(session, tenant_id)
        if eid != exclude and subscribes(events, event_type)
    ]
    body = render_body(event_type=event_type, timestamp=now, sequence=None, data=data)
    event_id = new_id()
    for endpoint_id in targets:
        _add_delivery(
            session,
            endpoint_id=endpoint_id,
            event_id=event_id,
            event_type=event_type,
            runtime_id=None,
            sequence=None,
            body=body,
            now=now,
        )
    return len(targets)


def touch(session: Session, stream: Stream) -> None:
    """Note that a stream has something to send once this transaction commits."""
    after_commit.of(session).touch(stream)


def due_streams(session: Session, *, grace: timedelta, limit: int = SWEEP_BATCH) -> list[Stream]:
    """Return streams with a due, unlocked delivery that nobody has touched for `grace`.

    The grace leaves fresh deliveries and short (countdown) retries to the message already
    on its way; what is older than that lost its message (broker down at commit, worker
    killed) or waited out a long retry, which is never a message.
    """
    now = clock.now()
    rows = session.execute(
        select(WebhookDelivery.endpoint_id, WebhookDelivery.runtime_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status.in_(ACTIVE),
            WebhookDelivery.next_attempt_at <= now,
            WebhookDelivery.updated_at <= now - grace,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now),
            WebhookEndpoint.is_active.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit * 4)
    ).all()
    streams = dict.fromkeys((endpoint_id, runtime_id) for endpoint_id, runtime_id in rows)
    return list(streams)[:limit]


# --- helpers -------------------------------------------------------------------------------


def _dump(event_type: str, timestamp: datetime, sequence: int | None, data: dict[str, Any]) -> str:
    payload = {
        "type": event_type,
        "timestamp": timestamp.isoformat() + "Z",
        "sequence": sequence,
        "data": data,
    }
    return json.dumps(payload, separators=(",", ":"))


def _tenant_endpoints(session: Session, tenant_id: str) -> list[tuple[str, list[str]]]:
    """The tenant's active endpoints and their filters, read once per transaction."""
    if session.get_transaction() is None:
        session.connection()  # begin now: the cache belongs to this transaction
    transaction, endpoints = session.info.get(_ENDPOINTS_KEY, (None, {}))
    if transaction is not session.get_transaction():
        transaction, endpoints = session.info[_ENDPOINTS_KEY] = (session.get_transaction(), {})
    if tenant_id not in endpoints:
        # No autoflush: flushing the transition's pending rows here would move where its
        # constraint errors surface.
        with session.no_autoflush:
            rows = session.execute(
                select(WebhookEndpoint.id, WebhookEndpoint.events).where(
                    WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.is_active.is_(True)
                )
            ).all()
        endpoints[tenant_id] = [(endpoint_id, list(events)) for endpoint_id, events in rows]
    return endpoints[tenant_id]


def _add_delivery(
    session: Session,
    *,
    endpoint_id: str,
    event_id: str,
    event_type: str,
    runtime_id: str | None,
    sequence: int | None,
    body: str,
    now: datetime,
) -> None:
    session.add(
        WebhookDelivery(
            endpoint_id=endpoint_id,
            event_id=event_id,
            event_type=event_type,
            runtime_id=runtime_id,
            sequence=sequence,
            body=body,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    touch(session, (endpoint_id, runtime_id))
