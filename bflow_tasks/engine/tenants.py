"""Tenants and their API tokens (stored as hashes, shown once)."""

from __future__ import annotations

import hashlib
import secrets
import threading

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from bflow_tasks.models import ApiToken, Tenant

TOKEN_PREFIX = "bflow_"
# Every request carries a token: a valid one is remembered for this long, so a revocation
# takes up to this long to reach every shim process.
TOKEN_CACHE_SECONDS = 30

_tenant_by_digest: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=TOKEN_CACHE_SECONDS)
_cache_lock = threading.Lock()


def create_tenant(session: Session, *, name: str) -> tuple[Tenant, str]:
    """Create a tenant with one API token; return the tenant and the token in clear, once."""
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant, issue_token(session, tenant_id=tenant.id)


def issue_token(session: Session, *, tenant_id: str, name: str = "default") -> str:
    """Issue a new API token for a tenant and return it in clear (only its hash is kept)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(tenant_id=tenant_id, name=name, token_hash=hash_token(token)))
    session.flush()
    return token


def cached_tenant_for_token(token: str) -> str | None:
    """Return the tenant id of a token seen valid in the last few seconds, or None."""
    with _cache_lock:
        return _tenant_by_digest.get(hash_token(token))


def tenant_for_token(session: Session, token: str) -> str | None:
    """Return the tenant id a valid, unrevoked token belongs to, or None (cached briefly)."""
    cached = cached_tenant_for_token(token)
    if cached is not None:
        return cached
    digest = hash_token(token)
    tenant_id = session.scalar(
        select(ApiToken.tenant_id).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    )
    if tenant_id is not None:
        with _cache_lock:
            _tenant_by_digest[digest] = tenant_id
    return tenant_id


def hash_token(token: str) -> str:
    # Tokens are 256-bit random, so a plain SHA-256 is enough (no password stretching needed).
    return hashlib.sha256(token.encode()).hexdigest()
