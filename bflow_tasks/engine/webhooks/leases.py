"""Webhook delivery bookkeeping: claim a stream's head, record an attempt, schedule the retry.

A runtime's events reach an endpoint in `sequence` order: the head of an (endpoint,
runtime) stream is its lowest pending or retrying delivery, and nothing behind it is sent
until it is delivered or dead-lettered. Claiming is a compare-and-set on `locked_until`
(a lease), committed before the HTTP call; the outcome is recorded in a new transaction and
only if the lease is still ours. No HTTP here: the sending side does that in between.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.webhooks import endpoints, outbox
from bflow_tasks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

# After the immediate first attempt (docs/api.md, webhooks); then the delivery is dead-lettered.
RETRY_DELAYS = tuple(
    timedelta(seconds=s) for s in (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
)
MAX_ATTEMPTS = 1 + len(RETRY_DELAYS)
JITTER = 0.2
# The receiver may slow retries down with Retry-After, up to the schedule's longest step.
RETRY_AFTER_STATUSES = frozenset({429, 502, 504})
RETRY_AFTER_MAX = max(RETRY_DELAYS).total_seconds()
DISABLE_AFTER = timedelta(days=5)
# How late a due retry may be attempted (the sweep's pass, a busy worker, the attempt itself)
# and still continue its endpoint's failing run.
RETRY_LATENESS = timedelta(minutes=5)
MAX_STORED_TEXT = 2048


@dataclass(frozen=True)
class Claim:
    """A delivery this worker may send until `lease`, with what it needs to send it."""

    delivery_id: str
    endpoint_id: str
    runtime_id: str | None
    url: str
    body: str
    lease: datetime
    # The current secret first; during a rotation the previous ones sign too.
    secrets_encrypted: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """What one HTTP attempt did: a status code, or an error class and message."""

    attempted_at: datetime
    latency_ms: int
    status_code: int | None = None
    response_body: str | None = None
    error_class: str | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Next:
    """What the sender does next: go on with the stream, or stop (a retry is `retry_in` away)."""

    go_on: bool
    retry_in: float | None = None
    recorded: str | None = field(default=None, compare=False)
    """The delivery's status after a counted attempt (delivered, retrying, failed), for the metrics."""


def claim_head(
    session: Session, *, endpoint_id: str, runtime_id: str | None, lease_seconds: float
) -> Claim | None:
    """Lease the stream's head if it is due and free; None when there is nothing to send now."""
    now = clock.now()
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or not endpoint.is_active:
        return None
    head = _head(session, endpoint_id, runtime_id, now)
    if head is None or head.next_attempt_at is None:
        return None
    if head.next_attempt_at > now:
        _hold_behind(session, head)
        return None
    lease = now + timedelta(seconds=lease_seconds)
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == head.id,
            WebhookDelivery.status.in_(outbox.ACTIVE),
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now),
        )
        .values(locked_until=lease, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], result).rowcount != 1:
        return None  # another worker holds it: that worker goes on with the stream
    previous = endpoints.live_previous_secrets(endpoint, now=now)
    secrets = [endpoint.secret_encrypted, *(entry["secret_encrypted"] for entry in previous)]
    return Claim(
        delivery_id=head.id,
        endpoint_id=endpoint_id,
        runtime_id=runtime_id,
        url=endpoint.url,
        body=head.body,
        lease=lease,
        secrets_encrypted=tuple(secrets),
    )


def record_attempt(
    session: Session,
    *,
    claim: Claim,
    outcome: Outcome,
    scale: float,
    rand: Callable[[], float] = random.random,
) -> Next:
    """Log the attempt and move the delivery on: delivered, retrying later, or dead-lettered."""
    delivery = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == claim.delivery_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if delivery is None:
        return Next(go_on=False)  # the endpoint was deleted meanwhile
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempted_at=outcome.attempted_at,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            error_class=outcome.error_class,
            error=_clip(outcome.error),
            response_body=_clip(outcome.response_body),
        )
    )
    if delivery.locked_until != claim.lease:
        return Next(go_on=False)  # our lease ran out and another worker took the delivery over
    now = clock.now()
    endpoint = session.get_one(WebhookEndpoint, delivery.endpoint_id, populate_existing=True)
    delivery.attempts += 1
    delivery.locked_until = None
    delivery.last_status_code = outcome.status_code
    delivery.last_error = _clip(outcome.error or (None if outcome.ok else f"HTTP {outcome.status_code}"))
    if outcome.ok:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = "delivered", now, None
        if endpoint.failing_since is not None:
            endpoint.failing_since = None
        return Next(go_on=True, recorded=delivery.status)
    if not endpoint.is_active:
        # Disabled while this attempt was in flight (another stream's 410): parked with the
        # rest, not dead-lettered nor disabled twice, so enabling sends it first again.
        delivery.status, delivery.next_attempt_at = "retrying", None
        return Next(go_on=False, recorded=delivery.status)
    endpoint.failing_since = failing_run_start(endpoint, now=now, scale=scale)
    endpoint.last_failure_at = now
    if outcome.status_code == 410 or now - endpoint.failing_since >= DISABLE_AFTER:
        # Parked with the rest, not dead-lettered: enabling the endpoint again sends it first,
        # before the later events of its runtime.
        delivery.status, delivery.next_attempt_at = "retrying", None
        reason = "the endpoint answered 410 Gone" if outcome.status_code == 410 else "failing for 5 days"
        disable_endpoint(session, endpoint, reason=reason)
        return Next(go_on=False, recorded=delivery.status)
    retry_after = outcome.retry_after if outcome.status_code in RETRY_AFTER_STATUSES else None
    delay = retry_delay(delivery.attempts, retry_after=retry_after, scale=scale, rand=rand)
    if delay is None:
        delivery.status, delivery.next_attempt_at = "failed", None
        return Next(go_on=True, recorded=delivery.status)  # a dead letter no longer holds the stream up
    delivery.status, delivery.next_attempt_at = "retrying", now + timedelta(seconds=delay)
    _hold_behind(session, delivery)
    return Next(go_on=False, retry_in=delay, recorded=delivery.status)


def failing_run_start(endpoint: WebhookEndpoint, *, now: datetime, scale: float) -> datetime:
    """When the run of nothing-but-failures that a failure at `now` belongs to began.

    While an endpoint keeps failing, no two of its failures are further apart than the
    longest retry wait. A failure after a longer quiet spell (say, a week after a dead letter,
    with no events meanwhile) starts a new run: the old one says nothing about the endpoint now.
    """
    previous, started = endpoint.last_failure_at, endpoint.failing_since
    if started is None or previous is None or now - previous > longest_retry_gap(scale):
        return now
    return started


def longest_retry_gap(scale: float) -> timedelta:
    """The longest a failing delivery can wait for its next attempt, with some slack."""
    return max(RETRY_DELAYS) * (1 + JITTER) * scale + RETRY_LATENESS


def retry_delay(
    attempts: int, *, retry_after: float | None, scale: float, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds to wait after `attempts` failed attempts, or None when retries are exhausted."""
    if attempts >= MAX_ATTEMPTS:
        return None
    base = RETRY_DELAYS[attempts - 1].total_seconds() * (1 + JITTER * (2 * rand() - 1))
    if retry_after is not None:
        # Retry-After may slow us down, never hurry us.
        base = max(base, min(retry_after, RETRY_AFTER_MAX))
    return base * scale


def disable_endpoint(session: Session, endpoint: WebhookEndpoint, *, reason: str) -> None:
    """Disable an endpoint, park its unsent deliveries, and tell the tenant's other endpoints.

    The deliveries are locked before the endpoint row, the order every outcome takes too
    (its delivery, then its endpoint), so that disabling cannot deadlock with one.
    """
    # Parked (no next attempt) until the endpoint is enabled again; the sweep skips them.
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status.in_(outbox.ACTIVE))
        .values(next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    endpoint.is_active, endpoint.disabled_reason = False, reason
    outbox.notify(
        session,
        tenant_id=endpoint.tenant_id,
        event_type=outbox.ENDPOINT_DISABLED,
        data={
            "endpoint_id": endpoint.id,
            "url": endpoint.url,
            "status": "disabled",
            "reason": reason,
            "updated_at": clock.now().isoformat() + "Z",
        },
        exclude=endpoint.id,
    )


# --- helpers -------------------------------------------------------------------------------


def _head(
    session: Session, endpoint_id: str, runtime_id: str | None, now: datetime
) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status.in_(outbox.ACTIVE)
    )
    if runtime_id is None:
        # Tenant-level notifications have no order to keep: the earliest due one goes first.
        query = query.where(WebhookDelivery.runtime_id.is_(None), WebhookDelivery.next_attempt_at <= now)
        query = query.order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
    else:
        query = query.where(WebhookDelivery.runtime_id == runtime_id).order_by(WebhookDelivery.sequence)
    return session.scalars(query.limit(1).execution_options(populate_existing=True)).first()


def _hold_behind(session: Session, head: WebhookDelivery) -> None:
    """Make the deliveries waiting behind a retrying head due no earlier than it is.

    Otherwise they look due to the sweep, which would enqueue the stream at every pass
    (and fill its batch with them) while the head waits hours for its next attempt.
    """
    if head.runtime_id is None or head.next_attempt_at is None:
        return
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == head.endpoint_id,
            WebhookDelivery.runtime_id == head.runtime_id,
            WebhookDelivery.sequence > head.sequence,
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at < head.next_attempt_at,
        )
        .values(next_attempt_at=head.next_attempt_at)
        .execution_options(synchronize_session=False)
    )


def _clip(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_STORED_TEXT else text[:MAX_STORED_TEXT]
