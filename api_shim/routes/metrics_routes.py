"""Workflow metrics: executions, outcomes, completion times, SLA compliance, bottleneck."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api_shim import schemas
from api_shim.auth import TenantDep
from api_shim.deps import SessionDep
from bflow_tasks.engine import workflow_metrics

router = APIRouter(prefix="/workflows", tags=["workflows"])

From = Annotated[
    schemas.QueryTime | None,
    Query(alias="from", description="window start (ISO 8601); default: 30 days before `to`"),
]
To = Annotated[schemas.QueryTime | None, Query(description="window end, exclusive (ISO 8601); default: now")]


@router.get("/{workflow_id}/metrics", response_model=schemas.WorkflowMetricsRead)
def read_workflow_metrics(
    workflow_id: str, session: SessionDep, tenant_id: TenantDep, from_: From = None, to: To = None
) -> schemas.WorkflowMetricsRead:
    """Return metrics over the workflow's runtimes submitted in [from, to)."""
    found = workflow_metrics.compute(
        session, tenant_id=tenant_id, workflow_id=workflow_id, start=from_, end=to
    )
    return schemas.WorkflowMetricsRead.model_validate({**vars(found), "from_": found.start, "to": found.end})
