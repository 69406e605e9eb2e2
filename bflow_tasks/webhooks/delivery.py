"""Drain one (endpoint, runtime) stream: claim its head, send it, record the outcome, repeat.

Each claim and each outcome is its own short transaction; the HTTP call happens between
them, outside any transaction, under the claim's lease.
"""

from __future__ import annotations

import logging

from bflow_tasks.db import session_scope
from bflow_tasks.engine import clock
from bflow_tasks.engine import webhook_delivery as delivery_engine
from bflow_tasks.engine.webhook_delivery import Claim, Outcome
from bflow_tasks.settings import settings
from bflow_tasks.webhooks import crypto, signing, ssrf, transport

log = logging.getLogger(__name__)

# Deliveries sent per task run before the stream goes back to the queue, so that one busy
# stream cannot hold a worker for long.
BUDGET = 50


def drain(*, endpoint_id: str, runtime_id: str | None) -> float | None:
    """Send the stream's due deliveries in order; return seconds until its head's retry, if any."""
    for _ in range(BUDGET):
        with session_scope() as session:
            claim = delivery_engine.claim_head(
                session,
                endpoint_id=endpoint_id,
                runtime_id=runtime_id,
                lease_seconds=settings.webhook_lease_seconds,
            )
        if claim is None:
            return None
        outcome = attempt(claim)
        with session_scope() as session:
            step = delivery_engine.record_attempt(
                session, claim=claim, outcome=outcome, scale=settings.webhook_retry_scale
            )
        if not step.go_on:
            return step.retry_in
    return 0.0


def attempt(claim: Claim) -> Outcome:
    """Make one signed HTTP attempt of a claimed delivery (no database access)."""
    try:
        target = ssrf.resolve(claim.url, allow_private=settings.webhook_allow_private)
        keys = [crypto.decrypt(token) for token in claim.secrets_encrypted]
    except Exception as exc:  # an unsafe or unresolvable host, a secret the key cannot open
        log.warning("webhook delivery %s not sent: %s", claim.delivery_id, exc)
        error = str(exc) or type(exc).__name__
        return Outcome(attempted_at=clock.now(), latency_ms=0, error_class=type(exc).__name__, error=error)
    # Signed over exactly the bytes sent, with a fresh timestamp at each attempt.
    headers = signing.signature_headers(msg_id=claim.delivery_id, body=claim.body, keys=keys)
    return transport.post(
        claim.url,
        target=target,
        body=claim.body.encode(),
        headers=headers,
        timeout=settings.webhook_timeout_seconds,
        connect_timeout=settings.webhook_connect_timeout_seconds,
    )
