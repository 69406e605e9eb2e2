"""Secret rotation: every secret replaced within the last 24 h keeps signing, older ones do not."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine.webhooks import endpoint_secrets, endpoints, leases, signatures
from tests.engine.driver import Driver
from tests.factories import leave_request_definition
from tests.webhooks.support import add_endpoint

URL = "http://127.0.0.1:9/hook"


def _rotate(session_factory: sessionmaker[Session], tenant_id: str, endpoint_id: str) -> str:
    """Rotate the endpoint's secret; return the new one, encrypted."""
    new = endpoint_secrets.encrypt(signatures.new_secret())
    with session_factory.begin() as session:
        endpoints.rotate_secret(session, tenant_id=tenant_id, endpoint_id=endpoint_id, secret_encrypted=new)
    return new


def _signing_secrets(
    session_factory: sessionmaker[Session], driver: Driver, endpoint_id: str
) -> tuple[str, ...]:
    """The secrets a delivery sent now would be signed with, current first."""
    document_id = str(uuid.uuid4())  # a fresh runtime, hence a fresh delivery, at each call
    runtime_id = driver.submit(
        driver.workflow(leave_request_definition()), {"amount": 10}, document_id=document_id
    )
    with session_factory.begin() as session:
        claim = leases.claim_head(session, endpoint_id=endpoint_id, runtime_id=runtime_id, lease_seconds=60)
    assert claim is not None
    return claim.secrets_encrypted


def test_a_second_rotation_within_24_hours_keeps_the_secret_receivers_still_use(
    session_factory: sessionmaker[Session], at: list[datetime]
) -> None:
    driver = Driver(session_factory)
    endpoint_id, _ = add_endpoint(session_factory, driver.tenant_id, URL, ["runtime.created"])
    with session_factory.begin() as session:
        original = endpoints.get_endpoint(
            session, tenant_id=driver.tenant_id, endpoint_id=endpoint_id
        ).secret_encrypted
    second = _rotate(session_factory, driver.tenant_id, endpoint_id)
    at[0] += timedelta(hours=1)
    third = _rotate(session_factory, driver.tenant_id, endpoint_id)
    at[0] += timedelta(hours=1)

    assert _signing_secrets(session_factory, driver, endpoint_id) == (third, second, original)


def test_a_secret_stops_signing_24_hours_after_it_was_replaced(
    session_factory: sessionmaker[Session], at: list[datetime]
) -> None:
    driver = Driver(session_factory)
    endpoint_id, _ = add_endpoint(session_factory, driver.tenant_id, URL, ["runtime.created"])
    second = _rotate(session_factory, driver.tenant_id, endpoint_id)  # the original expires in 24 h
    at[0] += timedelta(hours=20)
    third = _rotate(session_factory, driver.tenant_id, endpoint_id)  # the second expires in 24 h
    at[0] += timedelta(hours=4, seconds=1)

    assert _signing_secrets(session_factory, driver, endpoint_id) == (third, second)
    at[0] += timedelta(hours=20)
    assert _signing_secrets(session_factory, driver, endpoint_id) == (third,)

    fourth = _rotate(session_factory, driver.tenant_id, endpoint_id)  # expired secrets are pruned
    with session_factory.begin() as session:
        row = endpoints.get_endpoint(session, tenant_id=driver.tenant_id, endpoint_id=endpoint_id)
        assert [entry["secret_encrypted"] for entry in row.previous_secrets] == [third]
        assert row.previous_secret_expires_at == at[0] + timedelta(hours=24)
    assert _signing_secrets(session_factory, driver, endpoint_id) == (fourth, third)
