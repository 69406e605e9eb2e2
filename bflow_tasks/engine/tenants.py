"""Tenants and their API tokens (stored as hashes, shown once)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from bflow_tasks.models import ApiToken, Tenant

TOKEN_PREFIX = "bflow_"


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


def tenant_for_token(session: Session, token: str) -> str | None:
    """Return the tenant id a valid, unrevoked token belongs to, or None."""
    return session.scalar(
        select(ApiToken.tenant_id).where(
            ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
        )
    )


def hash_token(token: str) -> str:
    # Tokens are 256-bit random, so a plain SHA-256 is enough (no password stretching needed).
    return hashlib.sha256(token.encode()).hexdigest()
