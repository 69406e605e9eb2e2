"""Delivery bookkeeping: the retry schedule, head-of-line order, leases, dead letters, disabling."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine import clock
from bflow_tasks.engine.webhooks import endpoints, leases
from bflow_tasks.engine.webhooks.leases import Claim, Outcome
from bflow_tasks.models import WebhookDelivery, WebhookEndpoint
from tests.engine.driver import Driver
from tests.factories import leave_request_definition
from tests.webhooks.support import add_endpoint, attempts, deliveries, endpoint

URL = "http://127.0.0.1:9/hook"
HOURS = 3600


@pytest.mark.parametrize(
    ("attempts_made", "seconds"),
    [(1, 5), (2, 300), (3, 1800), (4, 2 * HOURS), (5, 5 * HOURS), (6, 10 * HOURS), (7, 10 * HOURS)],
)
def test_the_retry_schedule_with_jitter_and_scale(attempts_made: int, seconds: float) -> None:
    def delay(rand: float, scale: float = 1.0) -> float | None:
        return leases.retry_delay(attempts_made, retry_after=None, scale=scale, rand=lambda: rand)

    assert delay(0.5) == pytest.approx(seconds)
    assert delay(0.0) == pytest.approx(seconds * 0.8)
    assert delay(1.0) == pytest.approx(seconds * 1.2)
    assert delay(0.5, scale=0.001) == pytest.approx(seconds * 0.001)


def test_retries_end_after_the_eighth_attempt_and_retry_after_only_slows_them_down() -> None:
    assert leases.MAX_ATTEMPTS == 8
    assert leases.retry_delay(8, retry_after=None, scale=1.0) is None

    def delay(retry_after: float) -> float | None:
        return leases.retry_delay(1, retry_after=retry_after, scale=1.0, rand=lambda: 0.5)

    assert delay(120) == pytest.approx(120)
    assert delay(1) == pytest.approx(5)  # never sooner than the schedule
    assert delay(7 * 24 * HOURS) == pytest.approx(10 * HOURS)  # bounded


@pytest.fixture
def driver(session_factory: sessionmaker[Session]) -> Driver:
    return Driver(session_factory)


def _claim(session_factory: sessionmaker[Session], endpoint_id: str, runtime_id: str | None) -> Claim | None:
    with session_factory.begin() as session:
        return leases.claim_head(session, endpoint_id=endpoint_id, runtime_id=runtime_id, lease_seconds=60)


def _record(
    session_factory: sessionmaker[Session], claim: Claim, status_code: int, scale: float = 1.0
) -> leases.Next:
    outcome = Outcome(attempted_at=clock.now(), latency_ms=3, status_code=status_code, response_body="x")
    with session_factory.begin() as session:
        return leases.record_attempt(session, claim=claim, outcome=outcome, scale=scale)


def test_a_runtimes_events_go_out_in_sequence_and_a_retrying_head_holds_its_stream_only(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    endpoint_id, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    workflow_id = driver.workflow(leave_request_definition())
    first = driver.submit(workflow_id, {"amount": 10}, document_id="D1")
    second = driver.submit(workflow_id, {"amount": 10}, document_id="D2")
    stream = deliveries(engine, endpoint_id=endpoint_id, runtime_id=first)
    assert [d.sequence for d in stream] == list(range(1, len(stream) + 1)) and len(stream) > 2

    head = _claim(session_factory, endpoint_id, first)
    assert head is not None and head.delivery_id == stream[0].id
    assert json.loads(head.body)["sequence"] == 1
    # Leased: a second worker gets nothing from this stream, and nothing behind the head.
    assert _claim(session_factory, endpoint_id, first) is None
    # The other runtime's stream does not wait.
    other = _claim(session_factory, endpoint_id, second)
    assert other is not None and json.loads(other.body)["sequence"] == 1

    step = _record(session_factory, head, 500)
    assert step == leases.Next(go_on=False, retry_in=pytest.approx(5, rel=0.21))
    assert _claim(session_factory, endpoint_id, first) is None  # the head is not due for 5 s
    rows = deliveries(engine, endpoint_id=endpoint_id, runtime_id=first)
    assert rows[0].status == "retrying" and rows[0].attempts == 1 and rows[0].last_status_code == 500
    # Those behind it are not due before it is (so the sweep leaves the stream alone).
    assert all(
        r.next_attempt_at is not None and r.next_attempt_at >= rows[0].next_attempt_at for r in rows[1:]
    )

    _make_due(session_factory, rows[0].id, attempts=7)  # the last retry
    head = _claim(session_factory, endpoint_id, first)
    assert head is not None and head.delivery_id == rows[0].id
    assert _record(session_factory, head, 503) == leases.Next(go_on=True)
    assert deliveries(engine, id=rows[0].id)[0].status == "failed"  # the dead letter
    _make_due(session_factory, rows[1].id)
    following = _claim(session_factory, endpoint_id, first)  # a dead letter no longer blocks
    assert following is not None and following.delivery_id == rows[1].id
    assert _record(session_factory, following, 204) == leases.Next(go_on=True)
    delivered = deliveries(engine, id=rows[1].id)[0]
    assert delivered.status == "delivered" and delivered.delivered_at is not None
    assert endpoint(engine, endpoint_id).failing_since is None  # a success ends the failing run
    assert [a.status_code for a in attempts(engine, rows[0].id)] == [500, 503]


def test_an_outcome_after_the_lease_ran_out_is_logged_but_changes_nothing(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    endpoint_id, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    slow = _claim(session_factory, endpoint_id, runtime_id)
    assert slow is not None
    with session_factory.begin() as session:
        session.get_one(WebhookDelivery, slow.delivery_id).locked_until = clock.now() - timedelta(seconds=1)
    takeover = _claim(session_factory, endpoint_id, runtime_id)
    assert takeover is not None and takeover.delivery_id == slow.delivery_id
    assert _record(session_factory, slow, 500) == leases.Next(go_on=False)
    assert deliveries(engine, id=slow.delivery_id)[0].status == "pending"
    assert _record(session_factory, takeover, 200) == leases.Next(go_on=True)
    assert deliveries(engine, id=slow.delivery_id)[0].status == "delivered"
    assert [a.status_code for a in attempts(engine, slow.delivery_id)] == [500, 200]


def test_five_days_of_failures_disable_the_endpoint_and_tell_the_others(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    failing, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    watcher, _ = add_endpoint(session_factory, driver.tenant_id, URL, ["endpoint.disabled"])
    deaf, _ = add_endpoint(session_factory, driver.tenant_id, URL, ["runtime.completed"])
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    with session_factory.begin() as session:
        row = session.get_one(WebhookEndpoint, failing)
        # Five days of failures, the latest an hour ago: the run goes on.
        row.failing_since, row.last_failure_at = (
            clock.now() - timedelta(days=5),
            clock.now() - timedelta(hours=1),
        )
    claim = _claim(session_factory, failing, runtime_id)
    assert claim is not None
    assert _record(session_factory, claim, 500) == leases.Next(go_on=False)

    disabled = endpoint(engine, failing)
    assert not disabled.is_active and disabled.disabled_reason == "failing for 5 days"
    rows = deliveries(engine, endpoint_id=failing)
    # All are parked until the endpoint is enabled again, the one that failed last too.
    assert rows[0].status == "retrying" and rows[0].next_attempt_at is None
    assert all(r.status == "pending" and r.next_attempt_at is None for r in rows[1:])
    assert _claim(session_factory, failing, runtime_id) is None
    (notice,) = deliveries(engine, endpoint_id=watcher)
    body = json.loads(notice.body)
    assert notice.runtime_id is None and body["type"] == "endpoint.disabled" and body["sequence"] is None
    assert body["data"]["endpoint_id"] == failing and body["data"]["reason"] == "failing for 5 days"
    assert deliveries(engine, endpoint_id=deaf) == []
    notice_claim = _claim(session_factory, watcher, None)
    assert notice_claim is not None and notice_claim.delivery_id == notice.id
    with session_factory.begin() as session:
        endpoints.enable_endpoint(session, tenant_id=driver.tenant_id, endpoint_id=failing)
    resumed = _claim(session_factory, failing, runtime_id)
    assert resumed is not None and resumed.delivery_id == rows[0].id


def _make_due(session_factory: sessionmaker[Session], delivery_id: str, attempts: int | None = None) -> None:
    with session_factory.begin() as session:
        row = session.get_one(WebhookDelivery, delivery_id)
        row.next_attempt_at = clock.now() - timedelta(seconds=1)
        if attempts is not None:
            row.attempts = attempts


def test_a_delivery_parked_on_its_last_attempt_gets_a_fresh_schedule_when_enabled(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine
) -> None:
    failing, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    runtime_id = driver.submit(driver.workflow(leave_request_definition()), {"amount": 10})
    rows = deliveries(engine, endpoint_id=failing, runtime_id=runtime_id)
    _make_due(session_factory, rows[0].id, attempts=7)  # its 8th and last attempt is next
    claim = _claim(session_factory, failing, runtime_id)
    assert claim is not None and claim.delivery_id == rows[0].id
    _record(session_factory, claim, 410)  # the endpoint answers 410 on it: disabled, parked
    parked = deliveries(engine, id=rows[0].id)[0]
    assert (parked.status, parked.next_attempt_at) == ("retrying", None)

    with session_factory.begin() as session:  # the consumer fixes its endpoint and enables it
        endpoints.enable_endpoint(session, tenant_id=driver.tenant_id, endpoint_id=failing)
    resumed = _claim(session_factory, failing, runtime_id)
    assert resumed is not None and resumed.delivery_id == rows[0].id
    _record(session_factory, resumed, 503)  # one hiccup right after enabling
    after = deliveries(engine, id=rows[0].id)[0]
    # A fresh schedule, as a replay gets: retried, not dead-lettered with the stream moving on.
    assert (after.status, after.attempts) == ("retrying", 1)


@pytest.mark.parametrize("its_outcome", [410, 503])
def test_an_in_flight_delivery_failing_after_the_disable_is_parked_and_disables_nothing_again(
    driver: Driver, session_factory: sessionmaker[Session], engine: Engine, its_outcome: int
) -> None:
    failing, _ = add_endpoint(session_factory, driver.tenant_id, URL)
    watcher, _ = add_endpoint(session_factory, driver.tenant_id, URL, ["endpoint.disabled"])
    workflow_id = driver.workflow(leave_request_definition())
    first = driver.submit(workflow_id, {"amount": 10}, document_id="D1")
    second = driver.submit(workflow_id, {"amount": 10}, document_id="D2")
    head2 = deliveries(engine, endpoint_id=failing, runtime_id=second)[0]
    _make_due(session_factory, head2.id, attempts=7)
    a = _claim(session_factory, failing, first)
    b = _claim(session_factory, failing, second)  # both in flight (two workers)
    assert a is not None and b is not None
    _record(session_factory, a, 410)  # disables the endpoint, parks everything unsent
    _record(session_factory, b, its_outcome)  # the other worker's attempt, its last, fails meanwhile
    row = deliveries(engine, id=head2.id)[0]
    # Parked with the rest (the endpoint is disabled), so enabling sends it first.
    assert (row.status, row.next_attempt_at) == ("retrying", None)
    assert len(deliveries(engine, endpoint_id=watcher)) == 1  # one endpoint.disabled notice
