"""Bearer-token authentication: every request but /health acts for exactly one tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header
from starlette.concurrency import run_in_threadpool

from api_shim.deps import SessionDep
from api_shim.error_responses import ApiError
from bflow_tasks.engine import tenants
from bflow_tasks.observability import context

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def current_tenant(
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
    # Async, so that a cached token costs no hop to a worker thread; a lookup runs in one.
    tenant_id = tenants.cached_tenant_for_token(token)
    if tenant_id is None:
        tenant_id = await run_in_threadpool(tenants.tenant_for_token, session, token)
    if tenant_id is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API token", headers=_CHALLENGE)
    context.bind(tenant_id=tenant_id)  # into the request's log lines and Celery messages
    return tenant_id


TenantDep = Annotated[str, Depends(current_tenant)]
