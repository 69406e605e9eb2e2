"""Read models for the shim, always scoped to the caller's tenant, one query per table."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from api_shim import schemas
from bflow_tasks.engine.definitions import workflow_store
from bflow_tasks.engine.domain_errors import NotFound
from bflow_tasks.engine.runtimes import stage_lifecycle
from bflow_tasks.engine.timers import archiving
from bflow_tasks.models import (
    Base,
    Runtime,
    RuntimeAssignee,
    RuntimeLog,
    RuntimeStage,
    Workflow,
    WorkflowVersion,
)


def workflow_read(workflow: Workflow, version: WorkflowVersion) -> schemas.WorkflowRead:
    """Describe a workflow at one version, its nodes and associations as stored."""
    definition = version.definition
    return schemas.WorkflowRead(
        id=workflow.id,
        name=definition.get("name", workflow.name),
        document_type=definition.get("document_type", workflow.document_type),
        version=version.version,
        is_active=workflow.is_active,
        created_at=workflow.created_at,
        updated_at=workflow.updated_at,
        nodes=definition.get("nodes", []),
        associations=definition.get("associations", []),
        zones=definition.get("zones", []),
    )


def workflow_detail(
    session: Session, *, tenant_id: str, workflow_id: str, version: int | None = None
) -> schemas.WorkflowRead:
    """Return the tenant's workflow at `version` (default: the current one), or NotFound."""
    workflow = workflow_store.get_workflow(session, tenant_id=tenant_id, workflow_id=workflow_id)
    number = workflow.current_version if version is None else version
    stored = session.scalars(
        select(WorkflowVersion).where(
            WorkflowVersion.workflow_id == workflow.id, WorkflowVersion.version == number
        )
    ).one_or_none()
    if stored is None:
        raise NotFound(f"workflow {workflow_id} has no version {number}")
    return workflow_read(workflow, stored)


def workflow_summary(workflow: Workflow) -> schemas.WorkflowSummaryRead:
    """Describe a workflow for a list (no definition)."""
    return schemas.WorkflowSummaryRead.model_validate(
        {**_columns(workflow, schemas.WorkflowSummaryRead), "version": workflow.current_version}
    )


def runtime_detail(session: Session, *, tenant_id: str, runtime_id: str) -> schemas.RuntimeRead:
    """Return a runtime with its stages, their assignees and its audit log (four queries)."""
    row = session.execute(
        select(Runtime, WorkflowVersion.version)
        .join(WorkflowVersion, WorkflowVersion.id == Runtime.workflow_version_id)
        .where(Runtime.id == runtime_id, Runtime.tenant_id == tenant_id)
    ).one_or_none()
    if row is None:
        return _archived_runtime_detail(session, tenant_id=tenant_id, runtime_id=runtime_id)
    runtime, version = row
    stage_rows = session.scalars(
        select(RuntimeStage).where(RuntimeStage.runtime_id == runtime.id).order_by(RuntimeStage.sequence)
    ).all()
    assignees: dict[str, list[schemas.AssigneeRead]] = defaultdict(list)
    for assignee in session.scalars(
        select(RuntimeAssignee)
        .where(RuntimeAssignee.runtime_id == runtime.id)
        .order_by(RuntimeAssignee.created_at, RuntimeAssignee.id)
    ):
        assignees[assignee.runtime_stage_id].append(schemas.AssigneeRead.model_validate(assignee))
    log_rows = session.scalars(
        select(RuntimeLog).where(RuntimeLog.runtime_id == runtime.id).order_by(RuntimeLog.sequence)
    ).all()
    stages = [
        schemas.StageRead.model_validate(
            {**_columns(stage, schemas.StageRead), "assignees": assignees.get(stage.id, [])}
        )
        for stage in stage_rows
    ]
    return schemas.RuntimeRead.model_validate(
        {
            **_columns(runtime, schemas.RuntimeRead),
            "workflow_version": version,
            "stages": stages,
            "log": [schemas.LogRead.model_validate(line) for line in log_rows],
        }
    )


def list_tasks(
    session: Session,
    *,
    tenant_id: str,
    assignee: str | None,
    status: str | None,
    runtime_id: str | None,
    offset: int,
    limit: int,
) -> tuple[int, list[RuntimeAssignee]]:
    """Return the count of the tenant's matching tasks and one page of them, oldest first."""
    # The create stage's row only records who submitted; it is nobody's task.
    query = select(RuntimeAssignee).where(
        RuntimeAssignee.tenant_id == tenant_id, RuntimeAssignee.assign_type != "creator"
    )
    if assignee is not None:
        query = query.where(RuntimeAssignee.user == assignee)
    if status == "open":
        query = query.where(RuntimeAssignee.status.in_(stage_lifecycle.OPEN_TASK_STATUSES))
    elif status is not None:
        query = query.where(RuntimeAssignee.status == status)
    if runtime_id is not None:
        query = query.where(RuntimeAssignee.runtime_id == runtime_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = session.scalars(
        query.order_by(RuntimeAssignee.created_at, RuntimeAssignee.id).offset(offset).limit(limit)
    ).all()
    return count, list(page)


def _archived_runtime_detail(session: Session, *, tenant_id: str, runtime_id: str) -> schemas.RuntimeRead:
    """Return an archived runtime as `runtime_detail` shows a live one, marked `archived`."""
    found = archiving.read_archived(session, tenant_id=tenant_id, runtime_id=runtime_id)
    if found is None:
        raise NotFound(f"runtime {runtime_id} not found")
    assignees: dict[str, list[schemas.AssigneeRead]] = defaultdict(list)
    for assignee in found.assignees:
        assignees[assignee.runtime_stage_id].append(schemas.AssigneeRead.model_validate(assignee))
    stages = [
        schemas.StageRead.model_validate(
            {**_columns(stage, schemas.StageRead), "assignees": assignees.get(stage.id, [])}
        )
        for stage in found.stages
    ]
    return schemas.RuntimeRead.model_validate(
        {
            **_columns(found.runtime, schemas.RuntimeRead),
            "workflow_version": found.version,
            "stages": stages,
            "log": [schemas.LogRead.model_validate(line) for line in found.log],
            "archived": True,
        }
    )


def _columns(row: Any, model: type[Any]) -> dict[str, Any]:
    """The row's columns that the response model has a field for (never a lazy relationship)."""
    relationships = inspect(row).mapper.relationships.keys() if isinstance(row, Base) else []
    return {
        name: getattr(row, name)
        for name in model.model_fields
        if name not in relationships and hasattr(row, name)  # hasattr would load a relationship
    }
