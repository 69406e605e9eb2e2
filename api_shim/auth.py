"""Bearer-token authentication: every request but /health acts for exactly one tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from api_shim.deps import SessionDep
from api_shim.errors import ApiError
from bflow_tasks.engine import tenants

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def current_tenant(
    session: SessionDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """Return the tenant id the request's `Authorization: Bearer <token>` belongs to, or 401."""
    if not authorization:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token>", headers=_CHALLENGE)
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "expected Authorization: Bearer <token>", headers=_CHALLENGE)
    tenant_id = tenants.tenant_for_token(session, token)
    if tenant_id is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API token", headers=_CHALLENGE)
    return tenant_id


TenantDep = Annotated[str, Depends(current_tenant)]
