"""Routing: where a completed stage leads (AND-splits, joins, conditions), and opening those nodes.

Every function here runs with the runtime row locked by the caller (`transitions.lock`), so
decisions about one runtime are serialised; the unique constraints on stage visits and
assignees stop anything that slips past the lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.definitions import conditions
from bflow_tasks.engine.definitions.graph import only_through, reachable_from
from bflow_tasks.engine.definitions.language import WorkflowDefinition
from bflow_tasks.engine.definitions.workflow_store import load_definition, node_ids
from bflow_tasks.engine.runtimes import approvers, journal, stage_lifecycle
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage, new_id


class RuntimeFailed(Exception):
    """The workflow cannot go on for this document (no route, nobody to approve)."""


def open_stages(session: Session, runtime: Runtime) -> list[RuntimeStage]:
    """Return the runtime's stages that are open but whose opening chord has not finished."""
    return [stage for stage in runtime.stages if stage.status == "open" and stage.started_at is None]


def route(
    session: Session, runtime: Runtime, stage: RuntimeStage, *, outcome: str, actor: str | None
) -> list[str]:
    """Follow the associations that match a completed stage's outcome; return stages to open."""
    definition = load_definition(session, runtime.workflow_version_id)
    targets = _targets(definition, stage.node_key, outcome, runtime.data)
    if definition.create_node.key in targets:
        # Back to the create node is back to the submitter: nobody could act on a create stage,
        # so the runtime is returned, and a resubmit continues it from there in a new round.
        stage_lifecycle.send_back(session, runtime, actor=actor)
        return []
    if not targets:
        if outcome == "reject":
            stage_lifecycle.finish(session, runtime, "rejected", actor=actor)
            return []
        if outcome == "return":
            stage_lifecycle.send_back(session, runtime, actor=actor)
            return []
        raise RuntimeFailed(f"no association out of '{stage.node_key}' matches outcome '{outcome}'")
    # Decide every branch before writing any: a branch whose approvers cannot be resolved
    # fails the runtime with nothing half-opened (and without a savepoint).
    # Joins this route stops waiting for come first: the targets' own joins wait for them.
    released = _joins_no_longer_waiting(runtime, definition, opening=targets)
    keys: list[str] = []
    for key in [*dict.fromkeys(targets), *released]:  # an AND-split: every matching branch at once
        joining = len(definition.incoming(key)) > 1
        opening = [k for k in [*keys, *released] if k != key]
        if joining and not _join_passes(runtime, definition, key, stage, opening=opening):
            continue
        keys.append(key)
    any_joins = [key for key in keys if _is_any_join(definition, key)]
    # A branch whose only way on is an `any` join opening now would only be absorbed there.
    planned: list[tuple[str, list[dict[str, str]]]] = []
    for key in keys:
        if _overtaken_by(definition, key, any_joins):
            continue
        node = definition.node(key)
        planned.append(
            (key, approvers.resolve(session, runtime=runtime, node=node) if node.needs_people else [])
        )
    opened = [_open_node(session, runtime, definition, key, people) for key, people in planned]
    for join in any_joins:
        _cancel_overtaken(session, runtime, definition, join=join)
    _complete_if_done(session, runtime)
    return [new_stage.id for new_stage in opened if new_stage.status == "open"]


def _open_node(
    session: Session, runtime: Runtime, definition: WorkflowDefinition, key: str, people: list[dict[str, str]]
) -> RuntimeStage:
    node = definition.node(key)
    stage = _new_stage(session, runtime, key=key, action=node.action, approvers=people)
    if node.approvers:
        stage.mode, stage.quorum = node.approvers.mode, node.approvers.quorum
    if node.action == "end":
        stage.status, stage.outcome, stage.started_at, stage.completed_at = (
            "completed",
            "complete",
            stage.created_at,
            stage.created_at,
        )
    journal.log(session, runtime, "stage.opened" if stage.status == "open" else "stage.reached", stage=stage)
    return stage


def pass_create_node(session: Session, runtime: Runtime) -> RuntimeStage:
    """Record the submitter's pass through the create node (a stage completed on arrival)."""
    key = load_definition(session, runtime.workflow_version_id).create_node.key
    submitter = runtime.submitted_by
    stage = _new_stage(
        session, runtime, key=key, action="create", approvers=[{"user": submitter, "type": "submitter"}]
    )
    stage.status, stage.outcome = "completed", "complete"
    stage.started_at = stage.completed_at = stage.created_at
    stage.assignees.append(
        RuntimeAssignee(
            id=new_id(),
            runtime_id=runtime.id,
            runtime_stage_id=stage.id,
            tenant_id=runtime.tenant_id,
            node_key=key,
            user=submitter,
            assign_type="creator",  # not a task: the record of who submitted this round
            status="completed",
            action_taken="submit",
            created_at=stage.created_at,
            completed_at=stage.created_at,
        )
    )
    journal.log(session, runtime, "stage.reached", stage=stage, actor=submitter)
    return stage


def _new_stage(
    session: Session, runtime: Runtime, *, key: str, action: str, approvers: list[dict[str, str]]
) -> RuntimeStage:
    """Add the next visit of a node; the runtime's lock makes visit and sequence unique."""
    last_visit = max((stage.visit for stage in runtime.stages if stage.node_key == key), default=0)
    runtime.stage_sequence += 1
    stage = RuntimeStage(
        id=new_id(),
        runtime_id=runtime.id,
        node_id=node_ids(session, runtime.workflow_version_id)[key],
        node_key=key,
        action=action,
        round=runtime.round,
        visit=last_visit + 1,
        sequence=runtime.stage_sequence,
        approvers=approvers,
        status="open",
        mode="all",
        created_at=clock.now(),
    )
    runtime.stages.append(stage)
    return stage


def _join_passes(
    runtime: Runtime, definition: WorkflowDefinition, key: str, arriving: RuntimeStage, *, opening: list[str]
) -> bool:
    """Decide whether a branch arriving at a join opens it now.

    A join already opened after the arriving branch began has absorbed this wave. `any`
    opens on the first arrival; `all` waits while another open branch (or one this route
    is opening) can still reach it, so branches whose conditions were false never block it.
    """
    if any(s.node_key == key and s.sequence > arriving.sequence for s in runtime.stages):
        return False
    if definition.node(key).join == "any":
        return True
    still_open = [
        s.node_key
        for s in runtime.stages
        if s.status == "open" and s.round == runtime.round and s is not arriving
    ]
    return not any(key in reachable_from(definition, other) for other in [*still_open, *opening])


def _is_any_join(definition: WorkflowDefinition, key: str) -> bool:
    return definition.node(key).join == "any" and len(definition.incoming(key)) > 1


def _overtaken_by(definition: WorkflowDefinition, key: str, any_joins: Iterable[str]) -> bool:
    """True if every way on from `key` passes one of these `any` joins (other than itself)."""
    return any(join != key and only_through(definition, key, join) for join in any_joins)


def _cancel_overtaken(
    session: Session, runtime: Runtime, definition: WorkflowDefinition, *, join: str
) -> None:
    """Cancel the open stages whose only way on was the `any` join that has just opened.

    The first branch to arrive decides for the join: an approval still asked of another
    branch could only arrive there too (absorbed), yet its reject would still end the
    document, and the runtime would wait for it before completing.
    """
    this_round = [s for s in runtime.stages if s.round == runtime.round and s.status == "open"]
    for stage in this_round:
        if _overtaken_by(definition, stage.node_key, [join]):
            stage_lifecycle.cancel_stage(session, runtime, stage, message=f"overtaken at the join '{join}'")


def _targets(definition: WorkflowDefinition, node_key: str, outcome: str, data: dict[str, Any]) -> list[str]:
    """The nodes a stage of `node_key` routes to with this outcome, in definition order."""
    wanted = [outcome] + (["approve", "complete", None] if outcome in ("approve", "complete") else [])
    return [
        a.dest
        for a in definition.outgoing(node_key)
        if a.on in wanted and conditions.evaluate(a.condition, data)
    ]


def _joins_no_longer_waiting(
    runtime: Runtime, definition: WorkflowDefinition, *, opening: list[str]
) -> list[str]:
    """`all` joins that a branch reached while another could still come, and none can now.

    A branch that arrives at an `all` join while another open branch may still reach it
    opens nothing. If that other branch then routes elsewhere (a condition, an `on`
    association), the join would wait for ever: once no open branch can reach it, it opens.
    """
    this_round = [s for s in runtime.stages if s.round == runtime.round]
    reachable = [s.node_key for s in this_round if s.status == "open"] + opening
    any_join_openings = [s for s in this_round if _is_any_join(definition, s.node_key)]
    ready = []
    for node in definition.nodes:
        if node.join != "all" or len(definition.incoming(node.key)) < 2 or node.key in opening:
            continue
        # Arrivals since the join last opened (each opening absorbs the wave before it), or
        # since an `any` join that every path from it leads to opened (it overtook them).
        opened = [s for s in this_round if s.node_key == node.key] + [
            s for s in any_join_openings if _overtaken_by(definition, node.key, [s.node_key])
        ]
        last_opened = max((s.sequence for s in opened), default=0)
        arrived = any(
            s.status == "completed"
            and s.sequence > last_opened
            and s.outcome is not None
            and node.key in _targets(definition, s.node_key, s.outcome, runtime.data)
            for s in this_round
        )
        if arrived and not any(node.key in reachable_from(definition, key) for key in reachable):
            ready.append(node.key)
    return ready


def _complete_if_done(session: Session, runtime: Runtime) -> None:
    """Complete the runtime once an end was reached and no branch is still open."""
    if runtime.status != "in_progress":
        return
    this_round = [stage for stage in runtime.stages if stage.round == runtime.round]
    if any(stage.status == "open" for stage in this_round):
        return
    if any(stage.action == "end" for stage in this_round):
        stage_lifecycle.finish(session, runtime, "completed")
