"""Drain one (endpoint, runtime) stream: claim its head, send it, record the outcome, repeat.

Each claim and each outcome is its own short transaction; the HTTP call happens between
them, outside any transaction, under the claim's lease.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from bflow_tasks.engine import clock
from bflow_tasks.engine.webhooks import address_policy, endpoint_secrets, leases, signatures
from bflow_tasks.engine.webhooks.leases import Claim, Outcome
from bflow_tasks.observability import prometheus_metrics
from bflow_tasks.settings import settings
from bflow_tasks.worker import http_transport
from bflow_tasks.worker.publishing import unit_of_work

log = logging.getLogger(__name__)

# Deliveries sent per task run before the stream goes back to the queue, so that one busy
# stream cannot hold a worker for long.
BUDGET = 50


def drain(*, endpoint_id: str, runtime_id: str | None) -> float | None:
    """Send the stream's due deliveries in order; return seconds until its head's retry, if any."""
    for _ in range(BUDGET):
        with unit_of_work() as session:
            claim = leases.claim_head(
                session,
                endpoint_id=endpoint_id,
                runtime_id=runtime_id,
                lease_seconds=settings.webhook_lease_seconds,
            )
        if claim is None:
            return None
        outcome = attempt(claim)
        with unit_of_work() as session:
            step = leases.record_attempt(
                session, claim=claim, outcome=outcome, scale=settings.webhook_retry_scale
            )
        if step.recorded is not None:
            prometheus_metrics.count_attempt(step.recorded)
        if not step.go_on:
            return step.retry_in
    return 0.0


def attempt(claim: Claim) -> Outcome:
    """Make one signed HTTP attempt of a claimed delivery (no database access).

    The attempt's time limit covers looking the host up as well as the POST, so that a slow
    resolver cannot hold a worker (and the delivery's lease) beyond it.
    """
    timeout = settings.webhook_timeout_seconds
    attempted_at, started = clock.now(), time.monotonic()

    def failed(error_class: str, error: str) -> Outcome:
        log.warning("webhook delivery %s not sent: %s", claim.delivery_id, error)
        return Outcome(
            attempted_at=attempted_at, latency_ms=_ms(started), error_class=error_class, error=error
        )

    try:
        target = _resolve_within(claim.url, seconds=timeout)
        keys = [endpoint_secrets.decrypt(token) for token in claim.secrets_encrypted]
    except ResolveTimeout as exc:
        return failed("Timeout", str(exc))
    except Exception as exc:  # an unsafe or unresolvable host, a secret the key cannot open
        return failed(type(exc).__name__, str(exc) or type(exc).__name__)
    remaining = timeout - (time.monotonic() - started)
    if remaining <= 0:
        return failed("Timeout", f"no time left to send after looking the host up ({timeout} s in all)")
    # Signed over exactly the bytes sent, with a fresh timestamp at each attempt.
    headers = signatures.signature_headers(msg_id=claim.delivery_id, body=claim.body, keys=keys)
    outcome = http_transport.post(
        claim.url,
        target=target,
        body=claim.body.encode(),
        headers=headers,
        timeout=remaining,
        connect_timeout=settings.webhook_connect_timeout_seconds,
    )
    # The attempt began with the lookup: its time counts too.
    return dataclasses.replace(outcome, attempted_at=attempted_at, latency_ms=_ms(started))


class ResolveTimeout(Exception):
    """Looking the webhook's host up took the whole attempt's time."""


def _resolve_within(url: str, *, seconds: float) -> address_policy.Target:
    """Resolve the URL's host (address_policy.resolve), waiting at most `seconds` for the answer.

    getaddrinfo has no timeout of its own, so it runs in a helper thread; one that overruns
    finishes on its own, and nobody waits for it.
    """
    lookup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-dns")
    answer = lookup.submit(address_policy.resolve, url, allow_private=settings.webhook_allow_private)
    lookup.shutdown(wait=False)
    try:
        return answer.result(timeout=seconds)
    except FutureTimeout:
        raise ResolveTimeout(f"looking the host up took longer than {seconds:g} s") from None


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
