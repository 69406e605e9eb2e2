"""Workflow definitions: create, list, read, new version, deactivate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BeforeValidator

from api_shim import handover, reads, schemas
from api_shim.auth import TenantDep
from api_shim.deps import SessionDep
from api_shim.pagination import PageDep
from bflow_tasks.engine.definitions import workflow_store
from bflow_tasks.engine.definitions.language import WorkflowDefinition

router = APIRouter(prefix="/workflows", tags=["workflows"])


def _as_is(value: Any) -> Any:
    return value


# The body is the definition itself (docs/definitions.md); the engine validates it and reports every
# problem with its JSON path, so the shim only insists that it is a JSON object. The OpenAPI still
# shows the definition's schema (the WorkflowDefinition component, GET /schemas/workflow-definition).
DefinitionBody = Annotated[
    dict[str, Any],
    BeforeValidator(_as_is, json_schema_input_type=WorkflowDefinition),
    Body(description="a workflow definition (docs/definitions.md)"),
]


@router.post("", status_code=201, response_model=schemas.WorkflowRead)
def create_workflow(body: DefinitionBody, session: SessionDep, tenant_id: TenantDep) -> schemas.WorkflowRead:
    """Validate a definition and store it as version 1 of a new workflow."""
    workflow, version = workflow_store.create_workflow(session, tenant_id=tenant_id, raw=body)
    handover.commit(session)
    return reads.workflow_read(workflow, version)


@router.get("", response_model=schemas.WorkflowPage)
def list_workflows(
    request: Request,
    page: PageDep,
    session: SessionDep,
    tenant_id: TenantDep,
    document_type: Annotated[schemas.PlainText | None, Query(min_length=1, max_length=100)] = None,
    active: Annotated[
        bool | None, Query(description="true: active only; false: deactivated only; default: both")
    ] = None,
) -> schemas.WorkflowPage:
    """List the tenant's workflows (by document type, active or not), newest first, one page at a time."""
    count, rows = workflow_store.list_workflows(
        session,
        tenant_id=tenant_id,
        offset=page.offset,
        limit=page.page_size,
        document_type=document_type,
        active=active,
    )
    next_url, previous_url = page.links(request, count)
    return schemas.WorkflowPage(
        count=count,
        next=next_url,
        previous=previous_url,
        results=[reads.workflow_summary(row) for row in rows],
    )


@router.get("/{workflow_id}", response_model=schemas.WorkflowRead)
def get_workflow(
    workflow_id: str,
    session: SessionDep,
    tenant_id: TenantDep,
    version: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="a past version; default: current")
    ] = None,
) -> schemas.WorkflowRead:
    """Return a workflow with the nodes and associations of its current (or given) version."""
    return reads.workflow_detail(session, tenant_id=tenant_id, workflow_id=workflow_id, version=version)


@router.put("/{workflow_id}", response_model=schemas.WorkflowRead)
def update_workflow(
    workflow_id: str, body: DefinitionBody, session: SessionDep, tenant_id: TenantDep
) -> schemas.WorkflowRead:
    """Store a new version; runtimes already running keep the version they started on."""
    workflow, version = workflow_store.update_workflow(
        session, tenant_id=tenant_id, workflow_id=workflow_id, raw=body
    )
    handover.commit(session)
    return reads.workflow_read(workflow, version)


@router.delete("/{workflow_id}", status_code=204)
def deactivate_workflow(workflow_id: str, session: SessionDep, tenant_id: TenantDep) -> Response:
    """Stop accepting submissions for a workflow; runtimes in flight go on."""
    workflow_store.deactivate_workflow(session, tenant_id=tenant_id, workflow_id=workflow_id)
    handover.commit(session)
    return Response(status_code=204)
