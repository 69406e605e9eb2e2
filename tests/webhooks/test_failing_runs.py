"""A failing run: what "5 days of nothing but failures" counts, and what starts a new run."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine import clock
from bflow_tasks.engine.webhooks import leases
from bflow_tasks.engine.webhooks.leases import Next, Outcome
from bflow_tasks.models import WebhookDelivery
from tests.engine.driver import Driver
from tests.factories import leave_request_definition
from tests.webhooks.support import add_endpoint, deliveries, endpoint

URL = "http://127.0.0.1:9/hook"


Flow = tuple[Driver, str, str]


@pytest.fixture
def flow(session_factory: sessionmaker[Session]) -> Flow:
    """A tenant's driver, its endpoint for `runtime.created` and a workflow to submit to."""
    driver = Driver(session_factory)
    endpoint_id, _ = add_endpoint(session_factory, driver.tenant_id, URL, ["runtime.created"])
    return driver, endpoint_id, driver.workflow(leave_request_definition())


def _attempt(session_factory: sessionmaker[Session], endpoint_id: str, runtime_id: str, status: int) -> Next:
    """Claim the stream's head and record one answer for it, at full scale, without jitter."""
    with session_factory.begin() as session:
        claim = leases.claim_head(session, endpoint_id=endpoint_id, runtime_id=runtime_id, lease_seconds=60)
    assert claim is not None
    outcome = Outcome(attempted_at=clock.now(), latency_ms=1, status_code=status)
    with session_factory.begin() as session:
        return leases.record_attempt(session, claim=claim, outcome=outcome, scale=1.0, rand=lambda: 0.5)


def _fail_until_dead_lettered(
    session_factory: sessionmaker[Session], endpoint_id: str, runtime_id: str, at: list[datetime]
) -> None:
    """Fail every attempt of the runtime's first delivery, each when it falls due."""
    for _ in range(leases.MAX_ATTEMPTS):
        _attempt(session_factory, endpoint_id, runtime_id, 500)
        with session_factory.begin() as session:
            head = session.query(WebhookDelivery).filter_by(runtime_id=runtime_id, sequence=1).one()
            if head.next_attempt_at is not None:
                at[0] = head.next_attempt_at


def test_one_transient_failure_after_a_quiet_week_does_not_disable_the_endpoint(
    session_factory: sessionmaker[Session], engine: Engine, at: list[datetime], flow: Flow
) -> None:
    driver, endpoint_id, workflow_id = flow
    first = driver.submit(workflow_id, {"amount": 10}, document_id="D1")
    _fail_until_dead_lettered(session_factory, endpoint_id, first, at)
    assert deliveries(engine, runtime_id=first)[0].status == "failed"
    assert endpoint(engine, endpoint_id).is_active

    at[0] += timedelta(days=7)
    second = driver.submit(workflow_id, {"amount": 10}, document_id="D2")
    step = _attempt(session_factory, endpoint_id, second, 503)

    row = endpoint(engine, endpoint_id)
    assert row.is_active, row.disabled_reason
    assert row.failing_since == at[0]  # a new run, starting now
    assert deliveries(engine, runtime_id=second)[0].status == "retrying"
    assert step.retry_in == pytest.approx(5)


def test_failures_a_few_hours_apart_for_five_days_still_disable_the_endpoint(
    session_factory: sessionmaker[Session], engine: Engine, at: list[datetime], flow: Flow
) -> None:
    driver, endpoint_id, workflow_id = flow
    started = at[0]
    first = driver.submit(workflow_id, {"amount": 10}, document_id="D1")
    _fail_until_dead_lettered(session_factory, endpoint_id, first, at)  # about 37.6 h of retries

    # Then an event every 10 h (within the longest retry wait), each failing at once.
    for number in range(2, 20):
        at[0] += timedelta(hours=10)
        runtime_id = driver.submit(workflow_id, {"amount": 10}, document_id=f"D{number}")
        _attempt(session_factory, endpoint_id, runtime_id, 500)
        row = endpoint(engine, endpoint_id)
        assert row.failing_since == started
        if at[0] - started >= leases.DISABLE_AFTER:
            break
        assert row.is_active
    assert not row.is_active and row.disabled_reason == "failing for 5 days"
    assert at[0] - started < leases.DISABLE_AFTER + timedelta(hours=10)


def test_a_failure_longer_after_the_last_than_any_retry_waits_starts_a_new_run(
    session_factory: sessionmaker[Session], engine: Engine, at: list[datetime], flow: Flow
) -> None:
    driver, endpoint_id, workflow_id = flow
    started = at[0]
    _attempt(session_factory, endpoint_id, driver.submit(workflow_id, {"amount": 10}, document_id="D1"), 500)

    gap = leases.longest_retry_gap(1.0)
    assert gap >= max(leases.RETRY_DELAYS) * 1.2  # the longest wait, jitter included
    at[0] = started + gap
    _attempt(session_factory, endpoint_id, driver.submit(workflow_id, {"amount": 10}, document_id="D2"), 500)
    assert endpoint(engine, endpoint_id).failing_since == started  # within the gap: the run goes on

    at[0] += gap + timedelta(seconds=1)
    _attempt(session_factory, endpoint_id, driver.submit(workflow_id, {"amount": 10}, document_id="D3"), 500)
    assert endpoint(engine, endpoint_id).failing_since == at[0]
