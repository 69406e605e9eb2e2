"""Tenants and their API tokens (stored as hashes, shown once)."""

from __future__ import annotations

import hashlib
import secrets
import threading
from datetime import datetime, timedelta

from cachetools import TTLCache
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from bflow_tasks.engine.domain_errors import InvalidInput, NotFound
from bflow_tasks.models import ApiToken, Tenant, utcnow

TOKEN_PREFIX = "bflow_"
# Every request carries a token: a valid one is remembered for this long, so a revocation
# takes up to this long to reach every shim process. An expiry is exact: the cache keeps the
# token's expires_at and refuses it from that instant on.
TOKEN_CACHE_SECONDS = 30

# sha256 of a token -> (tenant id, expires_at or None)
_tenant_by_digest: TTLCache[str, tuple[str, datetime | None]] = TTLCache(
    maxsize=10_000, ttl=TOKEN_CACHE_SECONDS
)
_cache_lock = threading.Lock()


def create_tenant(session: Session, *, name: str) -> tuple[Tenant, str]:
    """Create a tenant with one API token; return the tenant and the token in clear, once."""
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant, issue_token(session, tenant_id=tenant.id)


def issue_token(session: Session, *, tenant_id: str, name: str = "default") -> str:
    """Issue a new API token for a tenant and return it in clear (only its hash is kept)."""
    return create_token(session, tenant_id=tenant_id, name=name)[1]


def create_token(
    session: Session, *, tenant_id: str, name: str = "default", expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """Issue a token for an existing tenant, expiring after `expires_in_days` (None: never).

    Return the row and the token in clear (only its hash is kept). Raise NotFound for an
    unknown tenant, InvalidInput for a lifetime under one day.
    """
    if expires_in_days is not None and expires_in_days < 1:
        raise InvalidInput(f"a token must live at least 1 day, not {expires_in_days}")
    if session.get(Tenant, tenant_id) is None:
        raise NotFound(f"unknown tenant {tenant_id}")
    expires_at = None if expires_in_days is None else utcnow() + timedelta(days=expires_in_days)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(tenant_id=tenant_id, name=name, token_hash=hash_token(token), expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session, *, tenant_id: str) -> list[ApiToken]:
    """A tenant's tokens, oldest first, revoked and expired ones included. Raise NotFound."""
    if session.get(Tenant, tenant_id) is None:
        raise NotFound(f"unknown tenant {tenant_id}")
    return list(
        session.scalars(
            select(ApiToken).where(ApiToken.tenant_id == tenant_id).order_by(ApiToken.created_at, ApiToken.id)
        )
    )


def revoke_token(session: Session, *, token_id: str) -> ApiToken:
    """Revoke a token (a revoked one keeps its first revoked_at). Raise NotFound.

    Shim processes that saw the token valid keep accepting it for up to TOKEN_CACHE_SECONDS.
    """
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"unknown token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def list_tenants(session: Session) -> list[tuple[Tenant, int]]:
    """Every tenant, oldest first, with its number of live (unrevoked, unexpired) tokens."""
    live = (
        select(ApiToken.tenant_id, func.count().label("live"))
        .where(_is_live(utcnow()))
        .group_by(ApiToken.tenant_id)
        .subquery()
    )
    rows = session.execute(
        select(Tenant, func.coalesce(live.c.live, 0))
        .outerjoin(live, live.c.tenant_id == Tenant.id)
        .order_by(Tenant.created_at, Tenant.id)
    )
    return [(found, int(count)) for found, count in rows]


def _is_live(now: datetime) -> ColumnElement[bool]:
    return ApiToken.revoked_at.is_(None) & or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now)


def cached_tenant_for_token(token: str) -> str | None:
    """Return the tenant id of a token seen valid in the last few seconds and not expired since, or None."""
    with _cache_lock:
        cached = _tenant_by_digest.get(hash_token(token))
    if cached is None:
        return None
    tenant_id, expires_at = cached
    if expires_at is not None and utcnow() >= expires_at:
        return None
    return tenant_id


def tenant_for_token(session: Session, token: str) -> str | None:
    """Return the tenant id a live (unrevoked, unexpired) token belongs to, or None (cached briefly)."""
    cached = cached_tenant_for_token(token)
    if cached is not None:
        return cached
    digest = hash_token(token)
    found = session.execute(
        select(ApiToken.tenant_id, ApiToken.expires_at).where(
            ApiToken.token_hash == digest, _is_live(utcnow())
        )
    ).one_or_none()
    if found is None:
        return None
    tenant_id, expires_at = found
    with _cache_lock:
        _tenant_by_digest[digest] = (tenant_id, expires_at)
    return tenant_id


def clear_token_cache() -> None:
    """Forget every token seen valid (tests; a revocation then counts at the next request)."""
    with _cache_lock:
        _tenant_by_digest.clear()


def hash_token(token: str) -> str:
    # Tokens are 256-bit random, so a plain SHA-256 is enough (no password stretching needed).
    return hashlib.sha256(token.encode()).hexdigest()
