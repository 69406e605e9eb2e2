"""A tenant's webhook endpoints: register, list, rotate, enable, delete; replay and recover.

Registering checks the URL (`address_policy`) and mints the endpoint's secret, which is
stored encrypted (`endpoint_secrets`) and shown once. Every lookup is scoped to the tenant,
so another tenant's id is simply not found.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, func, select, update
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.domain_errors import Conflict, InvalidField, NotFound
from bflow_tasks.engine.webhooks import address_policy, endpoint_secrets, outbox, signatures
from bflow_tasks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from bflow_tasks.settings import settings

ROTATION_OVERLAP = timedelta(hours=24)
# Streams enqueued at once by recover/enable; the sweep picks up any beyond this.
TOUCH_LIMIT = 1000
ATTEMPTS_SHOWN = 10


def register(session: Session, *, tenant_id: str, url: str, events: list[str]) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint whose URL may receive webhooks; return it and its secret, shown this once."""
    try:
        address_policy.check_url(url, allow_private=settings.webhook_allow_private)
    except address_policy.UnsafeUrl as exc:
        raise InvalidField(
            f"the URL may not receive webhooks: {exc}", details=[{"path": "$.url", "message": str(exc)}]
        ) from exc
    secret = signatures.new_secret()
    endpoint = create_endpoint(
        session,
        tenant_id=tenant_id,
        url=url,
        events=list(dict.fromkeys(events)),
        secret_encrypted=endpoint_secrets.encrypt(secret),
    )
    return endpoint, secret


def rotate(session: Session, *, tenant_id: str, endpoint_id: str) -> tuple[WebhookEndpoint, str]:
    """Give an endpoint a new secret (see `rotate_secret`); return it and the secret, shown this once."""
    secret = signatures.new_secret()
    endpoint = rotate_secret(
        session,
        tenant_id=tenant_id,
        endpoint_id=endpoint_id,
        secret_encrypted=endpoint_secrets.encrypt(secret),
    )
    return endpoint, secret


def create_endpoint(
    session: Session, *, tenant_id: str, url: str, events: list[str], secret_encrypted: str
) -> WebhookEndpoint:
    """Register an endpoint that receives the given event types (`*` for all)."""
    endpoint = WebhookEndpoint(
        tenant_id=tenant_id,
        url=url,
        events=events,
        secret_encrypted=secret_encrypted,
        is_active=True,
        created_at=clock.now(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, *, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Return the tenant's endpoint, or NotFound."""
    endpoint = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id
        )
    ).one_or_none()
    if endpoint is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return endpoint


def list_endpoints(
    session: Session, *, tenant_id: str, offset: int, limit: int
) -> tuple[int, list[WebhookEndpoint]]:
    """Return the count of the tenant's endpoints and one page of them, oldest first."""
    where = WebhookEndpoint.tenant_id == tenant_id
    count = session.scalar(select(func.count()).select_from(WebhookEndpoint).where(where)) or 0
    rows = session.scalars(
        select(WebhookEndpoint)
        .where(where)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return count, list(rows)


def delete_endpoint(session: Session, *, tenant_id: str, endpoint_id: str) -> None:
    """Remove an endpoint with its deliveries and their attempts."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id))


def rotate_secret(
    session: Session, *, tenant_id: str, endpoint_id: str, secret_encrypted: str
) -> WebhookEndpoint:
    """Install a new secret; the current one keeps signing too for ROTATION_OVERLAP.

    Every earlier secret still within its own overlap keeps signing as well: receivers may
    not have switched to it yet when the next rotation comes.
    """
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    now = clock.now()
    replaced = {
        "secret_encrypted": endpoint.secret_encrypted,
        "expires_at": (now + ROTATION_OVERLAP).isoformat(),
    }
    # A new list, not an in-place change: the JSON column only notices reassignment.
    endpoint.previous_secrets = [replaced, *live_previous_secrets(endpoint, now=now)]
    endpoint.secret_encrypted = secret_encrypted
    session.flush()
    return endpoint


def live_previous_secrets(endpoint: WebhookEndpoint, *, now: datetime) -> list[dict[str, str]]:
    """The endpoint's previous secrets that still sign at `now`, newest first."""
    return [
        entry
        for entry in endpoint.previous_secrets or []
        if datetime.fromisoformat(entry["expires_at"]) > now
    ]


def enable_endpoint(session: Session, *, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Re-enable a disabled endpoint and resume the deliveries parked when it was disabled."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    if endpoint.is_active:
        return endpoint
    parked = (
        WebhookDelivery.endpoint_id == endpoint.id,
        WebhookDelivery.status.in_(outbox.ACTIVE),
        WebhookDelivery.next_attempt_at.is_(None),
    )
    _touch_streams(session, endpoint.id, *parked)
    # Deliveries before the endpoint row: the lock order outcomes take (see disable_endpoint).
    # A fresh retry schedule, as a replay gets: one parked on its last attempt would
    # otherwise be dead-lettered by the first failure after enabling, out of order again.
    session.execute(
        update(WebhookDelivery)
        .where(*parked)
        .values(next_attempt_at=clock.now(), attempts=0)
        .execution_options(synchronize_session=False)
    )
    endpoint.is_active, endpoint.disabled_reason, endpoint.failing_since = True, None, None
    session.flush()
    return endpoint


def list_deliveries(
    session: Session, *, tenant_id: str, endpoint_id: str, status: str | None, offset: int, limit: int
) -> tuple[int, list[WebhookDelivery], dict[str, tuple[int, list[WebhookAttempt]]]]:
    """Return the count, one page of an endpoint's deliveries (newest first) and their attempts.

    Attempts come as (how many in all, the latest ATTEMPTS_SHOWN, oldest first) per delivery.
    """
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = list(
        session.scalars(
            query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .offset(offset)
            .limit(limit)
        )
    )
    grouped: dict[str, list[WebhookAttempt]] = defaultdict(list)
    if page:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_([d.id for d in page]))
            .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
        ):
            grouped[attempt.delivery_id].append(attempt)
    attempts = {d.id: (len(grouped[d.id]), grouped[d.id][-ATTEMPTS_SHOWN:]) for d in page}
    return count, page, attempts


def replay(session: Session, *, tenant_id: str, delivery_id: str) -> WebhookDelivery:
    """Send a delivery again (same webhook-id, same body) with a fresh retry schedule."""
    delivery = session.scalars(
        select(WebhookDelivery)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id, WebhookEndpoint.tenant_id == tenant_id)
    ).one_or_none()
    if delivery is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    _require_active(session.get_one(WebhookEndpoint, delivery.endpoint_id))
    delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, clock.now()
    delivery.delivered_at = None
    outbox.touch(session, (delivery.endpoint_id, delivery.runtime_id))
    session.flush()
    return delivery


def recover(session: Session, *, tenant_id: str, endpoint_id: str, since: datetime) -> int:
    """Replay every dead-lettered delivery of an endpoint created since `since`; return how many."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    _require_active(endpoint)
    failed = (
        WebhookDelivery.endpoint_id == endpoint.id,
        WebhookDelivery.status == "failed",
        WebhookDelivery.created_at >= since,
    )
    _touch_streams(session, endpoint.id, *failed)
    result = session.execute(
        update(WebhookDelivery)
        .where(*failed)
        .values(status="pending", attempts=0, next_attempt_at=clock.now(), delivered_at=None)
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], result).rowcount


def _require_active(endpoint: WebhookEndpoint) -> None:
    if not endpoint.is_active:
        raise Conflict(
            f"webhook endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); enable it first"
        )


def _touch_streams(session: Session, endpoint_id: str, *where: ColumnElement[bool]) -> None:
    runtime_ids = session.scalars(
        select(WebhookDelivery.runtime_id).where(*where).distinct().limit(TOUCH_LIMIT)
    ).all()
    for runtime_id in runtime_ids:
        outbox.touch(session, (endpoint_id, runtime_id))
