"""The shim and the token lifecycle: a revoked or expired token is refused (401)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine import tenants
from bflow_tasks.models import ApiToken, utcnow
from tests.api.helpers import API, Tenant


@pytest.fixture(autouse=True)
def empty_token_cache() -> Iterator[None]:
    tenants.clear_token_cache()
    yield
    tenants.clear_token_cache()


def _status(client: TestClient, token: str) -> int:
    return client.get(f"{API}/workflows", headers={"Authorization": f"Bearer {token}"}).status_code


def _token(session_factory: sessionmaker[Session], tenant: Tenant, days: int | None) -> tuple[str, str]:
    with session_factory.begin() as session:
        row, secret = tenants.create_token(session, tenant_id=tenant.id, name="ci", expires_in_days=days)
        return row.id, secret


def test_a_revoked_token_is_refused_once_the_cache_forgets_it(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    token_id, secret = _token(session_factory, tenant, None)
    assert _status(client, secret) == 200  # now cached
    with session_factory.begin() as session:
        tenants.revoke_token(session, token_id=token_id)
    # The documented delay: a shim that saw it valid accepts it until its cache entry goes.
    assert _status(client, secret) == 200
    tenants.clear_token_cache()
    response = client.get(f"{API}/workflows", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    # The tenant's other token still works.
    assert _status(client, tenant.token) == 200


def test_an_expired_token_is_refused(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session]
) -> None:
    token_id, secret = _token(session_factory, tenant, 1)
    assert _status(client, secret) == 200
    tenants.clear_token_cache()
    with session_factory.begin() as session:
        session.execute(
            update(ApiToken).where(ApiToken.id == token_id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert _status(client, secret) == 401


def test_the_cache_never_accepts_a_token_after_it_expired(
    client: TestClient,
    tenant: Tenant,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_id, secret = _token(session_factory, tenant, 1)
    assert _status(client, secret) == 200  # cached with its expiry, a day away
    with session_factory() as session:
        expires_at = session.get_one(ApiToken, token_id).expires_at
    assert expires_at is not None
    monkeypatch.setattr(tenants, "utcnow", lambda: expires_at - timedelta(microseconds=1))
    assert tenants.cached_tenant_for_token(secret) == tenant.id
    assert _status(client, secret) == 200
    monkeypatch.setattr(tenants, "utcnow", lambda: expires_at)
    assert tenants.cached_tenant_for_token(secret) is None
    assert _status(client, secret) == 401
