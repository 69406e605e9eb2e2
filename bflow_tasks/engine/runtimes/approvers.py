"""Resolve who must act on a stage, from the four approver sources (docs/definitions.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bflow_tasks.engine.definitions.language import (
    ActorOfSource,
    FieldSource,
    NodeDef,
    SubmitterSource,
    UsersSource,
)
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage


class ApproversUnresolved(Exception):
    """The node's sources name nobody for this document (a runtime error, not bad input)."""


def resolve(session: Session, *, runtime: Runtime, node: NodeDef) -> list[dict[str, str]]:
    """Return the node's approvers as `{"user", "type"}` dicts, first source first, no repeats."""
    if node.approvers is None:
        return []
    resolved: dict[str, str] = {}
    for source in node.approvers.sources:
        for user in _users_of(session, runtime=runtime, source=source):
            resolved.setdefault(user, _source_type(source))
    if not resolved:
        raise ApproversUnresolved(f"node '{node.key}': no approver could be resolved")
    if node.approvers.mode == "quorum" and (node.approvers.quorum or 0) > len(resolved):
        raise ApproversUnresolved(
            f"node '{node.key}': quorum {node.approvers.quorum} cannot be met by {len(resolved)} approver(s)"
        )
    return [{"user": user, "type": kind} for user, kind in resolved.items()]


def _users_of(session: Session, *, runtime: Runtime, source: Any) -> list[str]:
    if isinstance(source, UsersSource):
        return list(source.users)
    if isinstance(source, SubmitterSource):
        return [runtime.submitted_by]
    if isinstance(source, FieldSource):
        return _users_in_field(runtime.data, source.field)
    if isinstance(source, ActorOfSource):
        return _actors_of(session, runtime_id=runtime.id, node_key=source.actor_of)
    raise TypeError(f"unknown approver source {source!r}")


def _source_type(source: Any) -> str:
    if isinstance(source, UsersSource):
        return "users"
    if isinstance(source, SubmitterSource):
        return "submitter"
    if isinstance(source, FieldSource):
        return "field"
    return "actor_of"


def _users_in_field(data: dict[str, Any], path: str) -> list[str]:
    value: Any = data
    for part in path.split(".")[1:]:  # the path starts with "data."
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if isinstance(v, str | int) and not isinstance(v, bool) and str(v)]


def _actors_of(session: Session, *, runtime_id: str, node_key: str) -> list[str]:
    """Return who acted on the latest completed visit of `node_key` (or submitted, for create)."""
    stage_id = session.scalar(
        select(RuntimeStage.id)
        .where(
            RuntimeStage.runtime_id == runtime_id,
            RuntimeStage.node_key == node_key,
            RuntimeStage.status == "completed",
        )
        .order_by(RuntimeStage.sequence.desc())
        .limit(1)
    )
    if stage_id is None:
        return []
    return list(
        session.scalars(
            select(RuntimeAssignee.user)
            .where(RuntimeAssignee.runtime_stage_id == stage_id, RuntimeAssignee.status == "completed")
            .order_by(RuntimeAssignee.completed_at, RuntimeAssignee.id)
        )
    )
