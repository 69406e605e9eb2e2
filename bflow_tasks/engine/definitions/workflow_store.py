"""Workflow definitions in the database: create, version, deactivate, load."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bflow_tasks.engine.definitions.language import WorkflowDefinition, parse_definition
from bflow_tasks.engine.domain_errors import NotFound
from bflow_tasks.models import Association, Node, Workflow, WorkflowVersion

_CACHE_SIZE = 512
ADMISSION_CACHE_SECONDS = 5
_admissions: TTLCache[tuple[str, str], AdmissionTarget] = TTLCache(maxsize=4096, ttl=ADMISSION_CACHE_SECONDS)
_cache_lock = threading.Lock()
_definitions: dict[str, WorkflowDefinition] = {}
_node_ids: dict[str, dict[str, str]] = {}


def create_workflow(
    session: Session, *, tenant_id: str, raw: Any, company_id: str | None = None
) -> tuple[Workflow, WorkflowVersion]:
    """Validate a definition and store it as version 1 of a new workflow."""
    definition = parse_definition(raw)
    workflow = Workflow(
        tenant_id=tenant_id,
        company_id=company_id,
        name=definition.name,
        document_type=definition.document_type,
        current_version=1,
    )
    session.add(workflow)
    session.flush()
    version = _store_version(session, workflow=workflow, definition=definition, number=1)
    return workflow, version


def update_workflow(
    session: Session, *, tenant_id: str, workflow_id: str, raw: Any
) -> tuple[Workflow, WorkflowVersion]:
    """Store a new version; runtimes already running keep the version they started on."""
    definition = parse_definition(raw)
    workflow = get_workflow(session, tenant_id=tenant_id, workflow_id=workflow_id, for_update=True)
    workflow.current_version += 1
    workflow.name = definition.name
    workflow.document_type = definition.document_type
    version = _store_version(
        session, workflow=workflow, definition=definition, number=workflow.current_version
    )
    _forget_admission(tenant_id, workflow_id)
    return workflow, version


def deactivate_workflow(session: Session, *, tenant_id: str, workflow_id: str) -> Workflow:
    """Stop accepting submissions for a workflow; runtimes in flight go on."""
    workflow = get_workflow(session, tenant_id=tenant_id, workflow_id=workflow_id, for_update=True)
    workflow.is_active = False
    _forget_admission(tenant_id, workflow_id)
    return workflow


@dataclass(frozen=True)
class AdmissionTarget:
    """What a submission needs to know about its workflow."""

    workflow_id: str
    company_id: str | None
    document_type: str
    is_active: bool
    version_id: str


def admission_target(session: Session, *, tenant_id: str, workflow_id: str) -> AdmissionTarget:
    """Return the workflow a submission starts on, at its current version (cached briefly).

    Every submit needs this; one joined query, remembered for ADMISSION_CACHE_SECONDS. A
    new version or a deactivation made in another process reaches this one within that
    time (in this process, at once).
    """
    key = (tenant_id, workflow_id)
    with _cache_lock:
        cached = _admissions.get(key)
    if cached is not None:
        return cached
    row = session.execute(
        select(
            Workflow.id, Workflow.company_id, Workflow.document_type, Workflow.is_active, WorkflowVersion.id
        )
        .join(
            WorkflowVersion,
            (WorkflowVersion.workflow_id == Workflow.id)
            & (WorkflowVersion.version == Workflow.current_version),
        )
        .where(Workflow.id == workflow_id, Workflow.tenant_id == tenant_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"workflow {workflow_id} not found")
    target = AdmissionTarget(*row)
    with _cache_lock:
        _admissions[key] = target
    return target


def _forget_admission(tenant_id: str, workflow_id: str) -> None:
    with _cache_lock:
        _admissions.pop((tenant_id, workflow_id), None)


def get_workflow(session: Session, *, tenant_id: str, workflow_id: str, for_update: bool = False) -> Workflow:
    """Return the tenant's workflow, or NotFound (another tenant's id is not found either)."""
    query = select(Workflow).where(Workflow.id == workflow_id, Workflow.tenant_id == tenant_id)
    if for_update:
        query = query.with_for_update()
    workflow = session.scalars(query).one_or_none()
    if workflow is None:
        raise NotFound(f"workflow {workflow_id} not found")
    return workflow


def list_workflows(
    session: Session,
    *,
    tenant_id: str,
    offset: int,
    limit: int,
    document_type: str | None = None,
    active: bool | None = None,
) -> tuple[int, list[Workflow]]:
    """Return the tenant's workflow count and one page of them, newest first.

    `document_type` and `active` narrow the list when given; by default it holds active and
    deactivated workflows alike.
    """
    where = [Workflow.tenant_id == tenant_id]
    if document_type is not None:
        where.append(Workflow.document_type == document_type)
    if active is not None:
        where.append(Workflow.is_active.is_(active))
    count = session.scalar(select(func.count()).select_from(Workflow).where(*where)) or 0
    page = session.scalars(
        select(Workflow)
        .where(*where)
        .order_by(Workflow.created_at.desc(), Workflow.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return count, list(page)


def current_version(session: Session, workflow: Workflow) -> WorkflowVersion:
    """Return the version new submissions of this workflow start on."""
    return session.scalars(
        select(WorkflowVersion).where(
            WorkflowVersion.workflow_id == workflow.id, WorkflowVersion.version == workflow.current_version
        )
    ).one()


def load_definition(session: Session, version_id: str) -> WorkflowDefinition:
    """Return the parsed definition of a version; versions never change, so it is cached."""
    definition = _definitions.get(version_id)
    if definition is None:
        raw = session.scalar(select(WorkflowVersion.definition).where(WorkflowVersion.id == version_id))
        if raw is None:
            raise NotFound(f"workflow version {version_id} not found")
        definition = WorkflowDefinition.model_validate(raw)
        if len(_definitions) >= _CACHE_SIZE:
            _definitions.pop(next(iter(_definitions)))
        _definitions[version_id] = definition
    return definition


def node_ids(session: Session, version_id: str) -> dict[str, str]:
    """Return node key -> node row id for a version (cached: a version's nodes never change)."""
    ids = _node_ids.get(version_id)
    if ids is None:
        rows = session.execute(select(Node.key, Node.id).where(Node.workflow_version_id == version_id)).all()
        ids = dict(rows)
        if len(_node_ids) >= _CACHE_SIZE:
            _node_ids.pop(next(iter(_node_ids)))
        _node_ids[version_id] = ids
    return ids


def _store_version(
    session: Session, *, workflow: Workflow, definition: WorkflowDefinition, number: int
) -> WorkflowVersion:
    version = WorkflowVersion(
        workflow_id=workflow.id,
        version=number,
        definition=definition.model_dump(mode="json", exclude_none=True),
        zones=list(definition.zones),
    )
    session.add(version)
    session.flush()
    nodes = {
        node.key: Node(
            workflow_id=workflow.id,
            workflow_version_id=version.id,
            key=node.key,
            name=node.name,
            action=node.action,
            collaborator_option=node.approvers.model_dump(mode="json") if node.approvers else None,
            is_initial=node.action == "create",
            is_end=node.action == "end",
        )
        for node in definition.nodes
    }
    session.add_all(nodes.values())
    session.flush()
    session.add_all(
        Association(
            workflow_id=workflow.id,
            workflow_version_id=version.id,
            source_node_id=nodes[a.source].id,
            dest_node_id=nodes[a.dest].id,
            on_action=a.on,
            condition=a.condition,
        )
        for a in definition.associations
    )
    return version
