"""Read models for the shim, always scoped to the caller's tenant, one query per table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, inspect, select
from sqlalchemy.orm import Session

from api_shim import schemas
from bflow_tasks.engine.definitions import workflow_store
from bflow_tasks.engine.domain_errors import NotFound
from bflow_tasks.engine.runtimes import stage_lifecycle
from bflow_tasks.engine.timers import archiving
from bflow_tasks.models import (
    Base,
    Node,
    Runtime,
    RuntimeAssignee,
    RuntimeLog,
    RuntimeStage,
    Workflow,
    WorkflowVersion,
)
from bflow_tasks.models.archive_tables import ARCHIVE_TWINS

# GET /runtimes/{id} shows this many of the latest log lines; /runtimes/{id}/log pages the rest.
DETAIL_LOG_LINES = 50


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


def runtime_detail(session: Session, *, tenant_id: str, runtime_id: str, log_url: str) -> schemas.RuntimeRead:
    """Return a runtime with its stages, their assignees and its latest log lines (four queries).

    `log_url` is where the whole log can be paged through (GET /runtimes/{id}/log): the
    answer names it when it holds only the latest DETAIL_LOG_LINES lines.
    """
    row = session.execute(
        select(Runtime, WorkflowVersion.version)
        .join(WorkflowVersion, WorkflowVersion.id == Runtime.workflow_version_id)
        .where(Runtime.id == runtime_id, Runtime.tenant_id == tenant_id)
    ).one_or_none()
    if row is None:
        return _archived_runtime_detail(session, tenant_id=tenant_id, runtime_id=runtime_id, log_url=log_url)
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
    # The latest lines and one more, to know whether any were left out; shown oldest first.
    log_rows = session.scalars(
        select(RuntimeLog)
        .where(RuntimeLog.runtime_id == runtime.id)
        .order_by(RuntimeLog.sequence.desc())
        .limit(DETAIL_LOG_LINES + 1)
    ).all()[::-1]
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
            **_latest_log(log_rows, log_url),
        }
    )


def _latest_log(lines: Sequence[Any], log_url: str) -> dict[str, Any]:
    """The last DETAIL_LOG_LINES of `lines` (in order), and where to read the rest if any."""
    truncated = len(lines) > DETAIL_LOG_LINES
    return {
        "log": [schemas.LogRead.model_validate(line) for line in lines[-DETAIL_LOG_LINES:]],
        "log_truncated": truncated,
        "log_next": log_url if truncated else None,
    }


def runtime_log(
    session: Session, *, tenant_id: str, runtime_id: str, after: int, limit: int
) -> tuple[list[schemas.LogRead], bool]:
    """Return up to `limit` of a runtime's log lines numbered above `after`, in order, and
    whether more follow (two queries; an archived runtime's, three). NotFound if the tenant
    has no such runtime, live or archived."""
    log_t: Any = RuntimeLog.__table__
    live = session.scalar(select(Runtime.id).where(Runtime.id == runtime_id, Runtime.tenant_id == tenant_id))
    if live is None:
        runtime_t, log_t = ARCHIVE_TWINS["runtime"], ARCHIVE_TWINS["runtime_log"]
        archived = session.scalar(
            select(runtime_t.c.id).where(runtime_t.c.id == runtime_id, runtime_t.c.tenant_id == tenant_id)
        )
        if archived is None:
            raise NotFound(f"runtime {runtime_id} not found")
    # (runtime_id, sequence) is indexed on runtime_log; one line more tells whether more follow.
    lines = session.execute(
        select(log_t)
        .where(log_t.c.runtime_id == runtime_id, log_t.c.sequence > after)
        .order_by(log_t.c.sequence, log_t.c.id)
        .limit(limit + 1)
    ).all()
    return [schemas.LogRead.model_validate(line) for line in lines[:limit]], len(lines) > limit


def _task_rows() -> Select[RuntimeAssignee, str, str, str, str]:
    """A task with what an inbox shows beside it: its workflow, stage and document (one SELECT)."""
    return (
        select(
            RuntimeAssignee,
            Workflow.name.label("workflow_name"),
            Node.name.label("stage_name"),
            Runtime.document_type,
            Runtime.document_id,
        )
        .join(Runtime, Runtime.id == RuntimeAssignee.runtime_id)
        .join(Workflow, Workflow.id == Runtime.workflow_id)
        .join(RuntimeStage, RuntimeStage.id == RuntimeAssignee.runtime_stage_id)
        # The node of the definition version the runtime runs, so a later rename does not show.
        .join(Node, Node.id == RuntimeStage.node_id)
    )


def _task_read(row: Any) -> schemas.TaskRead:
    task = row[0]
    return schemas.TaskRead.model_validate(
        {
            **_columns(task, schemas.TaskRead),
            "workflow_name": row.workflow_name,
            "stage_name": row.stage_name,
            "document_type": row.document_type,
            "document_id": row.document_id,
        }
    )


def task_detail(session: Session, *, tenant_id: str, task_id: str) -> schemas.TaskRead:
    """Return one of the tenant's tasks with its workflow, stage and document, or NotFound."""
    row = session.execute(
        _task_rows().where(
            RuntimeAssignee.id == task_id,
            RuntimeAssignee.tenant_id == tenant_id,
            RuntimeAssignee.assign_type != "creator",
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"task {task_id} not found")
    return _task_read(row)


def list_tasks(
    session: Session,
    *,
    tenant_id: str,
    assignee: str | None,
    status: str | None,
    runtime_id: str | None,
    document_type: str | None,
    offset: int,
    limit: int,
) -> tuple[int, list[schemas.TaskRead]]:
    """Return the count of the tenant's matching tasks and one page of them (two SELECTs).

    Soonest due first, tasks without a due time last, then oldest first.
    """
    # The create stage's row only records who submitted; it is nobody's task.
    where = [RuntimeAssignee.tenant_id == tenant_id, RuntimeAssignee.assign_type != "creator"]
    if assignee is not None:
        where.append(RuntimeAssignee.user == assignee)
    if status == "open":
        where.append(RuntimeAssignee.status.in_(stage_lifecycle.OPEN_TASK_STATUSES))
    elif status is not None:
        where.append(RuntimeAssignee.status == status)
    if runtime_id is not None:
        where.append(RuntimeAssignee.runtime_id == runtime_id)
    counted = select(RuntimeAssignee.id)
    if document_type is not None:
        where.append(Runtime.document_type == document_type)
        counted = counted.join(Runtime, Runtime.id == RuntimeAssignee.runtime_id)
    count = session.scalar(select(func.count()).select_from(counted.where(*where).subquery())) or 0
    page = session.execute(
        _task_rows()
        .where(*where)
        .order_by(
            RuntimeAssignee.due_at.is_(None),
            RuntimeAssignee.due_at,
            RuntimeAssignee.created_at,
            RuntimeAssignee.id,
        )
        .offset(offset)
        .limit(limit)
    ).all()
    return count, [_task_read(row) for row in page]


def _archived_runtime_detail(
    session: Session, *, tenant_id: str, runtime_id: str, log_url: str
) -> schemas.RuntimeRead:
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
            **_latest_log(found.log, log_url),
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
