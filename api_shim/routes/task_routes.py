"""People's tasks: list them, act on one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api_shim import reads, schemas
from api_shim.auth import TenantDep
from api_shim.deps import SessionDep
from api_shim.handover import commit_and_publish
from api_shim.pagination import PageDep
from bflow_tasks.engine.runtimes import admission

router = APIRouter(prefix="/tasks", tags=["tasks"])

TaskStatus = Annotated[
    str | None,
    Query(
        pattern="^(open|pending|completed|delegated|overdue|cancelled)$",
        description="task status; `open` is pending or overdue (what the assignee can still act on)",
    ),
]


@router.get("", response_model=schemas.TaskPage)
def list_tasks(
    request: Request,
    page: PageDep,
    session: SessionDep,
    tenant_id: TenantDep,
    assignee: Annotated[schemas.PlainText | None, Query(min_length=1, max_length=255)] = None,
    status: TaskStatus = None,
    runtime_id: Annotated[str | None, Query(min_length=1, max_length=36)] = None,
    document_type: Annotated[schemas.PlainText | None, Query(min_length=1, max_length=100)] = None,
) -> schemas.TaskPage:
    """List the tenant's tasks (by assignee, status, runtime, document type), soonest due first."""
    count, rows = reads.list_tasks(
        session,
        tenant_id=tenant_id,
        assignee=assignee,
        status=status,
        runtime_id=runtime_id,
        document_type=document_type,
        offset=page.offset,
        limit=page.page_size,
    )
    next_url, previous_url = page.links(request, count)
    return schemas.TaskPage(
        count=count,
        next=next_url,
        previous=previous_url,
        results=rows,
    )


@router.get("/{task_id}", response_model=schemas.TaskRead)
def get_task(task_id: str, session: SessionDep, tenant_id: TenantDep) -> schemas.TaskRead:
    """Return one task with its workflow, stage and document."""
    return reads.task_detail(session, tenant_id=tenant_id, task_id=task_id)


@router.post("/{task_id}/action", status_code=202, response_model=schemas.TaskActionAccepted)
def act(
    task_id: str, body: schemas.TaskActionCreate, session: SessionDep, tenant_id: TenantDep
) -> schemas.TaskActionAccepted:
    """Record a person's action on their task; 202 once it is durably queued."""
    command = admission.request_action(
        session,
        tenant_id=tenant_id,
        task_id=task_id,
        action=body.action,
        actor=body.actor,
        comments=body.comments,
        delegate_to=body.delegate_to,
        data=body.data,
    )
    commit_and_publish(session, command)
    return schemas.TaskActionAccepted(task_id=task_id, action=body.action)
