"""Runtimes: submit a document, read its progress, resubmit or cancel it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request

from api_shim import reads, schemas
from api_shim.auth import TenantDep
from api_shim.deps import SessionDep
from api_shim.handover import commit_and_publish
from api_shim.pagination import MAX_PAGE_SIZE
from bflow_tasks.engine.runtimes import admission

router = APIRouter(tags=["runtimes"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="replaying a key answers with the runtime it first created",
    ),
]


@router.post("/runtime/execute", status_code=202, response_model=schemas.RuntimeAccepted)
def execute(
    body: schemas.RuntimeCreate,
    session: SessionDep,
    tenant_id: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> schemas.RuntimeAccepted:
    """Submit a document to a workflow; 202 once its start is durably queued."""
    runtime, command = admission.submit(
        session,
        tenant_id=tenant_id,
        workflow_id=body.workflow_id,
        document_type=body.document_type,
        document_id=body.document_id,
        data=body.data,
        submitted_by=body.submitted_by,
        idempotency_key=idempotency_key,
    )
    # A replayed key returns no command: the earlier request already queued the work.
    commit_and_publish(session, command)
    return schemas.RuntimeAccepted(runtime_id=runtime.id, status=runtime.status)


@router.get("/runtimes/{runtime_id}", response_model=schemas.RuntimeRead)
def get_runtime(
    runtime_id: str, request: Request, session: SessionDep, tenant_id: TenantDep
) -> schemas.RuntimeRead:
    """Return a runtime's status, stages with their assignees, and its latest audit lines."""
    log_url = str(request.url_for("runtime_log", runtime_id=runtime_id))
    return reads.runtime_detail(session, tenant_id=tenant_id, runtime_id=runtime_id, log_url=log_url)


@router.get("/runtimes/{runtime_id}/log", name="runtime_log", response_model=schemas.RuntimeLogPage)
def get_runtime_log(
    runtime_id: str,
    request: Request,
    session: SessionDep,
    tenant_id: TenantDep,
    after: Annotated[int, Query(ge=0, le=2**31 - 1, description="answer the lines after this sequence")] = 0,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> schemas.RuntimeLogPage:
    """Page through a runtime's whole audit log (archived runtimes' too), in order."""
    lines, more = reads.runtime_log(
        session, tenant_id=tenant_id, runtime_id=runtime_id, after=after, limit=page_size
    )
    next_url = str(request.url.include_query_params(after=lines[-1].sequence)) if more else None
    return schemas.RuntimeLogPage(results=lines, next=next_url)


@router.post("/runtimes/{runtime_id}/resubmit", status_code=202, response_model=schemas.CommandAccepted)
def resubmit(
    runtime_id: str, body: schemas.RuntimeResubmit, session: SessionDep, tenant_id: TenantDep
) -> schemas.CommandAccepted:
    """Continue a returned runtime, optionally with revised data."""
    command = admission.request_resubmit(
        session, tenant_id=tenant_id, runtime_id=runtime_id, actor=body.actor, data=body.data
    )
    commit_and_publish(session, command)
    return schemas.CommandAccepted(runtime_id=runtime_id, action="resubmit")


@router.post("/runtimes/{runtime_id}/cancel", status_code=202, response_model=schemas.CommandAccepted)
def cancel(
    runtime_id: str,
    session: SessionDep,
    tenant_id: TenantDep,
    body: schemas.RuntimeCancel | None = None,
) -> schemas.CommandAccepted:
    """Cancel a runtime that has not ended (the body and its `actor` are optional)."""
    actor = body.actor if body is not None else None
    command = admission.request_cancel(session, tenant_id=tenant_id, runtime_id=runtime_id, actor=actor)
    commit_and_publish(session, command)
    return schemas.CommandAccepted(runtime_id=runtime_id, action="cancel")
