"""Stages: open the next nodes (AND-split, joins, conditions), assign, complete, route.

Every function here runs with the runtime row locked by the caller (`runtimes.lock`), so
decisions about one runtime are serialised; the unique constraints on stage visits and
assignees stop anything that slips past the lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from bflow_tasks.engine import approvers, clock, conditions, journal
from bflow_tasks.engine.definitions import WorkflowDefinition
from bflow_tasks.engine.graph import only_through, reachable_from
from bflow_tasks.engine.workflows import load_definition, node_ids
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage, RuntimeViewer, new_id

FINAL_STATUSES = ("completed", "rejected", "cancelled", "error")
# A task its assignee can still act on (overdue is still open).
OPEN_TASK_STATUSES = ("pending", "overdue")


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
        send_back(session, runtime, actor=actor)
        return []
    if not targets:
        if outcome == "reject":
            finish(session, runtime, "rejected", actor=actor)
            return []
        if outcome == "return":
            send_back(session, runtime, actor=actor)
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
            _cancel(session, runtime, stage, message=f"overtaken at the join '{join}'")


def _cancel(session: Session, runtime: Runtime, stage: RuntimeStage, *, message: str) -> None:
    """Cancel an open stage and its open tasks; `stage.completed` (cancelled) lets consumers close them."""
    if stage.started_at is None:
        _start(session, runtime, stage)  # its opening was under way: it did start, in order
    _close_cancelled(stage)
    journal.log(session, runtime, "stage.cancelled", stage=stage, message=message)
    journal.emit(session, runtime, "stage.completed", stage=stage, status="cancelled")


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
        finish(session, runtime, "completed")


def add_assignee(
    session: Session, runtime: Runtime, stage: RuntimeStage, *, user: str
) -> RuntimeAssignee | None:
    """Create one approver's task on an open stage (idempotent: an existing task is returned)."""
    existing = next((task for task in stage.assignees if task.user == user), None)
    if existing is not None or stage.status != "open":
        return existing
    planned = next((p for p in stage.approvers if p["user"] == user), None)
    if planned is None:
        return None
    return _assign(session, runtime, stage, user=user, assign_type=planned["type"])


def _assign(
    session: Session,
    runtime: Runtime,
    stage: RuntimeStage,
    *,
    user: str,
    assign_type: str,
    delegated_from: RuntimeAssignee | None = None,
) -> RuntimeAssignee:
    # First, while nothing of this step is pending: loading the viewers autoflushes, and
    # the step's rows are then written by the one flush at commit.
    add_viewer(runtime, user)
    definition = load_definition(session, runtime.workflow_version_id)
    sla_hours = definition.node(stage.node_key).sla_hours
    reminder_hours = definition.node(stage.node_key).reminder_hours
    now = clock.now()
    assignee = RuntimeAssignee(
        id=new_id(),
        runtime_id=runtime.id,
        runtime_stage_id=stage.id,
        tenant_id=runtime.tenant_id,
        node_key=stage.node_key,
        user=user,
        assign_type=assign_type,
        delegated_from_id=delegated_from.id if delegated_from else None,
        due_at=delegated_from.due_at
        if delegated_from
        else (now + timedelta(hours=sla_hours) if sla_hours else None),
        next_reminder_at=now + timedelta(hours=reminder_hours) if reminder_hours else None,
        status="pending",
        created_at=now,
    )
    stage.assignees.append(assignee)
    journal.log(session, runtime, "task.assigned", stage=stage, assignee=assignee, actor=user)
    journal.emit(session, runtime, "task.assigned", stage=stage, assignee=assignee)
    return assignee


# What a person may do on a task, by its node's action. A to-do or a receipt is work to
# acknowledge (`approve` marks it done) or to send back to the submitter (`return`), not a
# decision: a definition cannot route `on: reject` out of it either (graph checks).
TASK_ACTIONS = {
    "approve": ("approve", "reject", "return", "delegate"),
    "todo": ("approve", "return", "delegate"),
    "receive": ("approve", "return", "delegate"),
}


def action_refusal(node_action: str, action: str) -> str | None:
    """Why `action` does not apply to a task on a `node_action` stage, or None if it does."""
    allowed = TASK_ACTIONS.get(node_action, ())
    if action in allowed:
        return None
    if not allowed:
        return f"a {node_action} stage has no tasks to act on"
    expected = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
    return f"'{action}' does not apply to a {node_action} task; expected {expected}"


def delegation_conflict(to_user: str, *, holders: Iterable[str], approvers: list[Any]) -> str | None:
    """Why `to_user` cannot take over a task on a stage, or None if they can.

    A user holds at most one task per stage (a former delegator and a stand-in keep theirs),
    and an approver whose task is still being created would otherwise fill two places.
    """
    if to_user in set(holders):
        return f"'{to_user}' already has a task on this stage"
    if any(planned["user"] == to_user for planned in approvers):
        return f"'{to_user}' is already an approver on this stage"
    return None


def delegate(
    session: Session, runtime: Runtime, stage: RuntimeStage, assignee: RuntimeAssignee, *, to_user: str
) -> RuntimeAssignee:
    """Hand a pending task to another user; the new task keeps the original due time."""
    assignee.status, assignee.action_taken, assignee.completed_at = "delegated", "delegate", clock.now()
    journal.emit(session, runtime, "task.delegated", stage=stage, assignee=assignee, actor=assignee.user)
    stage.approvers = [
        {"user": to_user, "type": "delegated"} if p["user"] == assignee.user else p for p in stage.approvers
    ]
    return _assign(session, runtime, stage, user=to_user, assign_type="delegated", delegated_from=assignee)


def add_viewer(runtime: Runtime, user: str) -> None:
    """Let a user see the runtime (submitter and every assignee)."""
    if all(viewer.user != user for viewer in runtime.viewers):
        runtime.viewers.append(
            RuntimeViewer(id=new_id(), runtime_id=runtime.id, user=user, created_at=clock.now())
        )


def mark_started(session: Session, runtime: Runtime, stage: RuntimeStage) -> bool:
    """Record that a stage's opening finished, once every planned approver has a task.

    A chord body can run although a header task was lost (a worker killed mid-chord); the
    stage then stays unstarted and the sweep opens it again, creating only what is missing.
    """
    if stage.status != "open" or stage.started_at is not None:
        return False
    assigned = {task.user for task in stage.assignees}
    if not {planned["user"] for planned in stage.approvers} <= assigned:
        return False
    _start(session, runtime, stage)
    return True


def _start(session: Session, runtime: Runtime, stage: RuntimeStage) -> None:
    stage.started_at = clock.now()
    journal.log(session, runtime, "stage.started", stage=stage)
    journal.emit(session, runtime, "stage.started", stage=stage, status="open")


def finish_opening(session: Session, runtime: Runtime, stage: RuntimeStage) -> None:
    """Create whatever tasks a stage's opening chord has not yet created, and start it.

    For an action on a stage still being opened: its events then keep their order (every
    `task.assigned` and `stage.started` before any `task.completed`). The late header tasks
    find their tasks made, and the chord body finds the stage started.
    """
    for planned in stage.approvers:
        add_assignee(session, runtime, stage, user=planned["user"])
    mark_started(session, runtime, stage)


def outcome_reached(stage: RuntimeStage, *, action: str) -> str | None:
    """Return the stage's outcome once its mode is satisfied, or None while it waits."""
    if action in ("reject", "return"):
        return action
    approvals = sum(
        1 for task in stage.assignees if task.status == "completed" and task.action_taken == "approve"
    )
    needed = {"all": len(stage.approvers), "any": 1, "quorum": stage.quorum or 1}[stage.mode]
    if approvals < needed:
        return None
    return "approve" if stage.action == "approve" else "complete"


def complete_stage(session: Session, runtime: Runtime, stage: RuntimeStage, *, outcome: str) -> None:
    """Close a stage with its outcome and cancel the tasks it no longer needs."""
    now = clock.now()
    stage.status, stage.outcome, stage.completed_at = "completed", outcome, now
    _cancel_pending([stage])
    journal.log(session, runtime, "stage.completed", stage=stage, details={"outcome": outcome})
    journal.emit(session, runtime, "stage.completed", stage=stage, status=outcome)


def send_back(session: Session, runtime: Runtime, *, actor: str | None) -> None:
    """Return the runtime to its submitter for revision; a resubmit continues it."""
    _cancel_open(session, runtime, why="the runtime was returned")
    runtime.status = "returned"
    journal.log(session, runtime, "runtime.returned", actor=actor)
    journal.emit(session, runtime, "runtime.returned", actor=actor, status="returned")


def finish(
    session: Session, runtime: Runtime, status: str, *, actor: str | None = None, reason: str | None = None
) -> None:
    """End the runtime in a final status; whatever is still open is cancelled."""
    _cancel_open(session, runtime, why=f"the runtime ended: {status}")
    _mark_ended(runtime, status, reason=reason)
    journal.log(session, runtime, f"runtime.{status}", actor=actor, message=reason)
    journal.emit(session, runtime, f"runtime.{status}", actor=actor, status=status)


def end_without_history(runtime: Runtime, status: str, *, reason: str) -> None:
    """End the runtime and cancel what is open, writing no audit line and no event.

    Only for when writing those is what fails: a runtime must still end rather than run for ever.
    """
    for stage in [stage for stage in runtime.stages if stage.status == "open"]:
        _close_cancelled(stage)
    _mark_ended(runtime, status, reason=reason)


def _mark_ended(runtime: Runtime, status: str, *, reason: str | None) -> None:
    runtime.status = status
    runtime.ended_at = clock.now()
    runtime.in_flight = None  # frees the document for a new submission
    if reason:
        runtime.error = reason


def _close_cancelled(stage: RuntimeStage) -> None:
    stage.status, stage.completed_at = "cancelled", clock.now()
    _cancel_pending([stage])


def _cancel_open(session: Session, runtime: Runtime, *, why: str) -> None:
    for stage in [stage for stage in runtime.stages if stage.status == "open"]:
        _cancel(session, runtime, stage, message=why)


def _cancel_pending(stages: list[RuntimeStage]) -> None:
    for stage in stages:
        for task in stage.assignees:
            if task.status in OPEN_TASK_STATUSES:
                task.status = "cancelled"
