"""The engine's transitions on a real database (SQLite and MariaDB), driven like the tasks drive them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from bflow_tasks.engine import clock
from bflow_tasks.engine.definitions import workflow_store
from bflow_tasks.engine.domain_errors import Conflict, Forbidden, InvalidInput
from bflow_tasks.engine.runtimes import admission, lost_work, transitions
from bflow_tasks.engine.timers import sla
from bflow_tasks.models import (
    Runtime,
    RuntimeAssignee,
    RuntimeCommand,
    RuntimeEvent,
    RuntimeLog,
    RuntimeStage,
)
from tests.engine.driver import Driver
from tests.factories import leave_request_definition


def approve_node(key: str, sources: list[dict[str, Any]], mode: str = "all", **extra: Any) -> dict[str, Any]:
    approvers: dict[str, Any] = {"mode": mode, "sources": sources}
    if "quorum" in extra:
        approvers["quorum"] = extra.pop("quorum")
    return {"key": key, "name": key.title(), "action": "approve", "approvers": approvers, **extra}


def definition(
    nodes: list[dict[str, Any]], associations: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "name": "Test flow",
        "document_type": "leave_request",
        "nodes": [
            {"key": "submit", "name": "Submit", "action": "create"},
            *nodes,
            {"key": "done", "name": "Done", "action": "end"},
        ],
        "associations": associations,
        **extra,
    }


def single_stage(sources: list[dict[str, Any]], mode: str = "all", **extra: Any) -> dict[str, Any]:
    return definition(
        [approve_node("review", sources, mode, **extra)],
        [{"source": "submit", "dest": "review"}, {"source": "review", "dest": "done"}],
    )


@pytest.fixture
def d(session_factory) -> Driver:
    return Driver(session_factory)


# --- the main path and conditional routing -------------------------------------------------


def test_small_amount_skips_finance(d):
    rid = d.submit(d.workflow(leave_request_definition()), {"amount": 200})
    for user in ("u1", "u2", "u3"):
        d.act(rid, user)
    assert d.status(rid) == "completed"
    assert [key for key, _, _ in d.stages(rid)] == ["submit", "manager_review", "done"]


def test_large_amount_goes_through_finance(d):
    rid = d.submit(d.workflow(leave_request_definition()), {"amount": 5000})
    for user in ("u1", "u2", "u3"):
        d.act(rid, user)
    assert d.stages(rid)[-1] == ("finance", "open", None)
    d.act(rid, "fin1")
    assert d.status(rid) == "completed"
    assert d.runtime(rid).in_flight is None  # the document may be submitted again


def test_no_matching_route_ends_in_error(d):
    rid = d.submit(d.workflow(leave_request_definition()), {"amount": "not a number"})
    for user in ("u1", "u2", "u3"):
        d.act(rid, user)
    runtime = d.runtime(rid)
    assert runtime.status == "error"
    assert "no association out of 'manager_review'" in runtime.error


# --- approval modes --------------------------------------------------------------------------


def test_mode_all_waits_for_every_approver(d):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    d.act(rid, "a")
    assert d.stages(rid)[-1] == ("review", "open", None)
    d.act(rid, "b")
    assert d.status(rid) == "completed"


def test_mode_any_completes_on_first_approval_and_cancels_the_rest(d):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b", "c"]}], "any")), {})
    d.act(rid, "b")
    assert d.status(rid) == "completed"
    assert d.tasks(rid) == {"alice": "completed", "a": "cancelled", "b": "completed", "c": "cancelled"}


def test_mode_quorum_needs_n_approvals(d):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b", "c"]}], "quorum", quorum=2)), {})
    d.act(rid, "a")
    assert d.status(rid) == "in_progress"
    d.act(rid, "c")
    assert d.status(rid) == "completed"
    assert d.tasks(rid)["b"] == "cancelled"


def test_a_reject_rejects_the_runtime(d):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    d.act(rid, "a")
    d.act(rid, "b", "reject", comments="no budget")
    assert d.status(rid) == "rejected"
    assert d.stages(rid)[-1] == ("review", "completed", "reject")


def test_reject_follows_an_on_reject_association(d):
    flow = definition(
        [approve_node("review", [{"users": ["a"]}]), approve_node("appeal", [{"users": ["boss"]}])],
        [
            {"source": "submit", "dest": "review"},
            {"source": "review", "dest": "done"},
            {"source": "review", "dest": "appeal", "on": "reject"},
            {"source": "appeal", "dest": "done"},
        ],
    )
    rid = d.submit(d.workflow(flow), {})
    d.act(rid, "a", "reject")
    assert d.stages(rid)[-1] == ("appeal", "open", None)
    d.act(rid, "boss")
    assert d.status(rid) == "completed"


# --- approver sources -------------------------------------------------------------------------


def test_approvers_from_field_actor_of_and_submitter(d):
    flow = definition(
        [
            approve_node("manager", [{"field": "data.manager_id"}]),
            approve_node("second", [{"actor_of": "manager"}, {"submitter": True}, {"field": "data.extra"}]),
        ],
        [
            {"source": "submit", "dest": "manager"},
            {"source": "manager", "dest": "second"},
            {"source": "second", "dest": "done"},
        ],
    )
    rid = d.submit(d.workflow(flow), {"manager_id": "m7", "extra": ["x1", "x2"]})
    assert set(d.tasks(rid)) == {"alice", "m7"}
    d.act(rid, "m7")
    assert {u for u, s in d.tasks(rid).items() if s == "pending"} == {"m7", "alice", "x1", "x2"}


def test_missing_field_approver_is_a_runtime_error(d):
    rid = d.submit(d.workflow(single_stage([{"field": "data.manager_id"}])), {"amount": 1})
    runtime = d.runtime(rid)
    assert runtime.status == "error"
    assert "no approver could be resolved" in runtime.error


def test_quorum_larger_than_resolved_approvers_is_a_runtime_error(d):
    rid = d.submit(
        d.workflow(single_stage([{"field": "data.people"}], "quorum", quorum=3)), {"people": ["a", "b"]}
    )
    assert d.status(rid) == "error"


# --- parallel branches -------------------------------------------------------------------------


def split_join(join: str) -> dict[str, Any]:
    return definition(
        [
            approve_node("legal", [{"users": ["l1"]}]),
            approve_node("it", [{"users": ["i1"]}]),
            approve_node("ceo", [{"users": ["boss"]}], join=join),
        ],
        [
            {"source": "submit", "dest": "legal"},
            {"source": "submit", "dest": "it"},
            {"source": "legal", "dest": "ceo"},
            {"source": "it", "dest": "ceo"},
            {"source": "ceo", "dest": "done"},
        ],
    )


def test_and_split_opens_both_branches_and_join_all_waits(d):
    rid = d.submit(d.workflow(split_join("all")), {})
    assert {k for k, s, _ in d.stages(rid) if s == "open"} == {"legal", "it"}
    d.act(rid, "l1")
    assert "ceo" not in [k for k, _, _ in d.stages(rid)]
    d.act(rid, "i1")
    assert d.stages(rid)[-1] == ("ceo", "open", None)
    d.act(rid, "boss")
    assert d.status(rid) == "completed"
    assert [k for k, _, _ in d.stages(rid)].count("ceo") == 1


def test_join_any_opens_on_first_arrival_and_cancels_the_branch_it_overtook(d):
    rid = d.submit(d.workflow(split_join("any")), {})
    late = d.request(rid, "i1", "reject")  # admitted while it was still open
    d.act(rid, "l1")
    assert d.stages(rid)[1:] == [
        ("legal", "completed", "approve"),
        ("it", "cancelled", None),
        ("ceo", "open", None),
    ]
    assert d.tasks(rid)["i1"] == "cancelled"
    d.apply(late, "action")  # its only way on was the join that has opened: refused, no reject
    assert d.status(rid) == "in_progress"
    d.act(rid, "boss")
    assert d.status(rid) == "completed"  # did not wait for the branch it overtook
    with d.sf() as s:
        assert s.get_one(RuntimeCommand, late).status == "refused"
    events, logs = events_and_log(d, rid)
    assert stage_events(events, "it")[-1] == ("stage.completed", "cancelled")  # consumers can close its items
    assert "stage.cancelled" in logs


def events_and_log(d: Driver, runtime_id: str) -> tuple[list[RuntimeEvent], list[str]]:
    """The runtime's events in order, and its audit log's actions."""
    with d.sf() as s:
        events = s.scalars(
            select(RuntimeEvent).where(RuntimeEvent.runtime_id == runtime_id).order_by(RuntimeEvent.sequence)
        ).all()
        logs = s.scalars(select(RuntimeLog.action).where(RuntimeLog.runtime_id == runtime_id)).all()
    return list(events), list(logs)


def stage_events(events: list[RuntimeEvent], node: str) -> list[tuple[str, str | None]]:
    """(type, status) of the events about the stage of `node`."""
    stage_id = next(e.data["stage_id"] for e in events if e.data.get("node") == node)
    return [(e.type, e.data.get("status")) for e in events if e.data.get("stage_id") == stage_id]


@pytest.mark.parametrize("end", ["reject", "return", "cancel"])
def test_a_runtimes_end_reports_every_stage_it_cancels(d, end):
    rid = d.submit(d.workflow(split_join("all")), {})  # legal and it open side by side
    if end == "cancel":
        d.cancel(rid)
    else:
        d.act(rid, "l1", end)
    events, logs = events_and_log(d, rid)
    assert stage_events(events, "it")[-1] == ("stage.completed", "cancelled")
    assert [e.type for e in events][-1] == {"reject": "runtime.rejected", "return": "runtime.returned"}.get(
        end, "runtime.cancelled"
    )
    assert logs.count("stage.cancelled") == (2 if end == "cancel" else 1)


def test_join_any_leaves_open_a_branch_that_has_another_way_on(d):
    flow = split_join("any")
    flow["nodes"].insert(-1, approve_node("audit", [{"users": ["aud"]}]))
    flow["associations"].append({"source": "it", "dest": "audit", "on": "reject"})
    flow["associations"].append({"source": "audit", "dest": "done"})
    rid = d.submit(d.workflow(flow), {})
    d.act(rid, "l1")
    assert ("it", "open", None) in d.stages(rid)  # a reject there still has somewhere to go
    d.act(rid, "boss")
    assert d.status(rid) == "in_progress"
    d.act(rid, "i1", "reject")
    assert d.stages(rid)[-1] == ("audit", "open", None)


def test_join_any_opening_with_a_release_keeps_the_overtaken_all_join_closed(d):
    # submit -> a, b; a + b -> both (join all) -> ceo (join any); b -reject-> ceo
    flow = definition(
        [
            approve_node("a", [{"users": ["ua"]}]),
            approve_node("b", [{"users": ["ub"]}]),
            approve_node("both", [{"users": ["ubo"]}], join="all"),
            approve_node("ceo", [{"users": ["boss"]}], join="any"),
        ],
        [
            {"source": "submit", "dest": "a"},
            {"source": "submit", "dest": "b"},
            {"source": "a", "dest": "both"},
            {"source": "b", "dest": "both"},
            {"source": "b", "dest": "ceo", "on": "reject"},
            {"source": "both", "dest": "ceo"},
            {"source": "ceo", "dest": "done"},
        ],
    )
    rid = d.submit(d.workflow(flow), {})
    d.act(rid, "ua")  # both waits for b
    d.act(rid, "ub", "reject")  # b routes to ceo, which opens: both, behind it, stays closed
    assert "both" not in [k for k, _, _ in d.stages(rid)]
    d.act(rid, "boss")
    assert d.status(rid) == "completed"
    assert [k for k, _, _ in d.stages(rid)].count("ceo") == 1


def test_join_any_opening_with_a_branch_that_leads_only_to_it_does_not_open_that_branch(d):
    flow = definition(
        [
            approve_node("ceo", [{"users": ["boss"]}], join="any"),
            approve_node("legal", [{"users": ["l1"]}]),
        ],
        [
            {"source": "submit", "dest": "ceo"},
            {"source": "submit", "dest": "legal"},
            {"source": "legal", "dest": "ceo"},
            {"source": "ceo", "dest": "done"},
        ],
    )
    rid = d.submit(d.workflow(flow), {})
    assert [k for k, _, _ in d.stages(rid)] == ["submit", "ceo"]
    d.act(rid, "boss")
    assert d.status(rid) == "completed"


def test_join_any_overtaking_a_stage_still_opening_starts_it_before_cancelling_it(d, session_factory):
    workflow_id = d.workflow(split_join("any"))
    with session_factory.begin() as s:
        runtime, command = admission.submit(
            s,
            tenant_id=d.tenant_id,
            workflow_id=workflow_id,
            document_type="leave_request",
            document_id="overtaken-early",
            data={},
            submitted_by="alice",
        )
        rid, start_id = runtime.id, command.id
    with session_factory.begin() as s:
        legal_id, it_id = transitions.start(s, command_id=start_id)
        transitions.assign(s, stage_id=legal_id, user="l1")  # it's header task is still queued
    d.act(rid, "l1")
    with session_factory.begin() as s:
        assert transitions.assign(s, stage_id=it_id, user="i1") is None  # late: nothing to add
    events, _ = events_and_log(d, rid)
    assert stage_events(events, "it") == [("stage.started", "open"), ("stage.completed", "cancelled")]


def test_join_any_overtaking_a_waiting_all_join_does_not_open_it_later(d):
    # submit -> a, b, fast; a + b -> both (join all) -> ceo; fast -> ceo (join any)
    flow = definition(
        [
            approve_node("a", [{"users": ["ua"]}]),
            approve_node("b", [{"users": ["ub"]}]),
            approve_node("fast", [{"users": ["uf"]}]),
            approve_node("both", [{"users": ["ubo"]}], join="all"),
            approve_node("ceo", [{"users": ["boss"]}], join="any"),
        ],
        [
            {"source": "submit", "dest": "a"},
            {"source": "submit", "dest": "b"},
            {"source": "submit", "dest": "fast"},
            {"source": "a", "dest": "both"},
            {"source": "b", "dest": "both"},
            {"source": "both", "dest": "ceo"},
            {"source": "fast", "dest": "ceo"},
            {"source": "ceo", "dest": "done"},
        ],
    )
    rid = d.submit(d.workflow(flow), {})
    d.act(rid, "ua")  # both waits for b
    d.act(rid, "uf")  # ceo opens and overtakes b (and the wave waiting at both)
    assert ("b", "cancelled", None) in d.stages(rid)
    d.act(rid, "boss")
    assert d.status(rid) == "completed"
    assert "both" not in [k for k, _, _ in d.stages(rid)]


def test_join_all_does_not_wait_for_a_branch_whose_condition_was_false(d):
    flow = split_join("all")
    flow["associations"][1]["condition"] = {"var": "needs_it", "op": "==", "value": True}
    rid = d.submit(d.workflow(flow), {"needs_it": False})
    d.act(rid, "l1")
    assert d.stages(rid)[-1] == ("ceo", "open", None)


def test_join_all_opens_once_the_branch_it_waited_for_routes_elsewhere(d):
    flow = split_join("all")
    small = {"var": "amount", "op": "<", "value": 1000}
    flow["associations"][3]["condition"] = {"var": "amount", "op": ">=", "value": 1000}  # it -> ceo
    flow["associations"].append({"source": "it", "dest": "done", "condition": small})
    rid = d.submit(d.workflow(flow), {"amount": 10})
    d.act(rid, "l1")  # legal reaches ceo, which waits: it is open and may still come
    assert "ceo" not in [k for k, _, _ in d.stages(rid)]
    d.act(rid, "i1")  # it goes to done instead: nothing can reach ceo now but legal did
    assert ("ceo", "open", None) in d.stages(rid)
    assert d.status(rid) == "in_progress"
    d.act(rid, "boss")
    assert d.status(rid) == "completed"
    keys = [k for k, _, _ in d.stages(rid)]
    assert keys.count("ceo") == 1
    assert keys.count("done") == 1  # done, a join too, waited for ceo once ceo was coming


# --- return, resubmit, delegate, cancel, zones --------------------------------------------------------


def test_return_then_resubmit_continues_the_same_runtime(d):
    rid = d.submit(d.workflow(leave_request_definition()), {"amount": 5000})
    d.act(rid, "u1")
    d.act(rid, "u2", "return", comments="attach the receipt")
    assert d.status(rid) == "returned"
    assert d.tasks(rid)["u3"] == "cancelled"
    d.resubmit(rid, data={"amount": 500, "receipt": "r.pdf"})
    assert d.status(rid) == "in_progress"
    assert d.runtime(rid).round == 2
    for user in ("u1", "u2", "u3"):
        d.act(rid, user)
    assert d.status(rid) == "completed"  # 500 < 1000: no finance
    assert [k for k, _, _ in d.stages(rid)].count("manager_review") == 2


@pytest.mark.parametrize("outcome", ["return", "reject"])
def test_an_association_back_to_the_create_node_returns_the_runtime_to_its_submitter(d, outcome):
    flow = single_stage([{"users": ["a"]}])
    flow["associations"].append({"source": "review", "dest": "submit", "on": outcome})
    rid = d.submit(d.workflow(flow), {})
    d.act(rid, "a", outcome)
    assert d.status(rid) == "returned"
    assert [(key, status) for key, status, _ in d.stages(rid)] == [
        ("submit", "completed"),
        ("review", "completed"),
    ]
    d.resubmit(rid)
    d.act(rid, "a")
    assert d.status(rid) == "completed"
    assert d.runtime(rid).round == 2


def test_resubmit_is_refused_unless_returned_and_by_the_submitter(d, session_factory):
    rid = d.submit(d.workflow(leave_request_definition()), {"amount": 5})
    with session_factory() as s, pytest.raises(Conflict):
        admission.request_resubmit(s, tenant_id=d.tenant_id, runtime_id=rid, actor="alice", data=None)
    d.act(rid, "u1", "return")
    with session_factory() as s, pytest.raises(Forbidden):
        admission.request_resubmit(s, tenant_id=d.tenant_id, runtime_id=rid, actor="mallory", data=None)


def test_a_resubmit_applied_after_a_cancel_is_refused_in_the_audit_log(d, session_factory):
    rid = d.submit(d.workflow(leave_request_definition()), {"amount": 5})
    d.act(rid, "u1", "return")
    with session_factory.begin() as s:  # both admitted while the runtime was returned
        resubmit_id = admission.request_resubmit(
            s, tenant_id=d.tenant_id, runtime_id=rid, actor="alice", data={"amount": 6}
        ).id
    with session_factory.begin() as s:
        cancel_id = admission.request_cancel(s, tenant_id=d.tenant_id, runtime_id=rid, actor="alice").id
    d.apply(cancel_id, "cancel")
    assert d.apply(resubmit_id, "resubmit") == []
    d.apply(resubmit_id, "resubmit")  # a redelivered message adds nothing
    runtime = d.runtime(rid)
    assert (runtime.status, runtime.round, runtime.data) == ("cancelled", 1, {"amount": 5})
    reason = "runtime is cancelled, not returned"
    assert refusal(session_factory, rid, resubmit_id) == (
        ("refused", reason),
        [("runtime.cancelled", "alice", None), ("action.refused", "alice", reason)],
    )


def test_a_cancel_applied_after_the_last_approval_is_refused_in_the_audit_log(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}], "all")), {})
    with session_factory.begin() as s:  # admitted while the runtime was still in progress
        cancel_id = admission.request_cancel(s, tenant_id=d.tenant_id, runtime_id=rid, actor="alice").id
    d.act(rid, "a", "approve")
    assert d.apply(cancel_id, "cancel") == []
    d.apply(cancel_id, "cancel")  # a redelivered message adds nothing
    assert d.runtime(rid).status == "completed"
    reason = "runtime is completed already"
    assert refusal(session_factory, rid, cancel_id) == (
        ("refused", reason),
        [("runtime.completed", None, None), ("action.refused", "alice", reason)],
    )


Refusal = tuple[tuple[Any, ...], list[tuple[Any, ...]]]


def refusal(session_factory, runtime_id: str, command_id: str) -> Refusal:
    """A command's (status, error), and the runtime's last two audit lines (action, actor, message)."""
    with session_factory() as s:
        command = s.get_one(RuntimeCommand, command_id)
        lines = s.execute(
            select(RuntimeLog.action, RuntimeLog.actor, RuntimeLog.message)
            .where(RuntimeLog.runtime_id == runtime_id)
            .order_by(RuntimeLog.sequence)
        ).all()
    return (command.status, command.error), [tuple(line) for line in lines[-2:]]


def test_delegate_hands_the_task_over(d):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    d.act(rid, "a", "delegate", delegate_to="deputy")
    assert d.tasks(rid)["a"] == "delegated"
    assert d.tasks(rid)["deputy"] == "pending"
    d.act(rid, "b")
    assert d.status(rid) == "in_progress"  # still one approval missing: the deputy's
    d.act(rid, "deputy")
    assert d.status(rid) == "completed"


def test_delegate_keeps_its_comments(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    task_id = d.task_of(rid, "a")
    d.act(rid, "a", "delegate", delegate_to="deputy", comments="on leave until Monday")
    with session_factory() as s:
        assert s.get(RuntimeAssignee, task_id).comments == "on leave until Monday"
        logged = s.scalars(select(RuntimeLog).where(RuntimeLog.action == "task.delegated")).one()
    assert logged.message == "on leave until Monday"


def test_delegate_needs_a_new_user(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    task = d.task_of(rid, "a")
    with session_factory() as s:
        with pytest.raises(InvalidInput):
            admission.request_action(s, tenant_id=d.tenant_id, task_id=task, action="delegate", actor="a")
        with pytest.raises(Conflict):
            admission.request_action(
                s, tenant_id=d.tenant_id, task_id=task, action="delegate", actor="a", delegate_to="b"
            )


def test_cancel_cancels_open_work(d):
    rid = d.submit(d.workflow(leave_request_definition()), {"amount": 5})
    d.cancel(rid)
    assert d.status(rid) == "cancelled"
    assert d.stages(rid)[-1] == ("manager_review", "cancelled", None)
    assert set(d.tasks(rid).values()) == {"completed", "cancelled"}


def test_a_runtime_cancelled_before_it_started_still_announces_itself_first(d, session_factory):
    rid, start_id = d.admit(d.workflow(single_stage([{"users": ["a"]}])), {})
    with session_factory.begin() as s:
        cancel_id = admission.request_cancel(s, tenant_id=d.tenant_id, runtime_id=rid, actor="alice").id
    with session_factory.begin() as s:  # the cancel's message overtook the start's
        transitions.cancel(s, command_id=cancel_id)
    with session_factory.begin() as s:
        assert transitions.start(s, command_id=start_id) == []
    with session_factory() as s:
        events = s.scalars(
            select(RuntimeEvent.type).where(RuntimeEvent.runtime_id == rid).order_by(RuntimeEvent.sequence)
        ).all()
    assert events == ["runtime.created", "runtime.cancelled"]
    assert d.status(rid) == "cancelled"


def test_zones_limit_what_an_action_may_edit(d, session_factory):
    flow = single_stage([{"users": ["a"]}], zones=["approved_days"])
    flow["zones"] = ["approved_days", "amount"]
    rid = d.submit(d.workflow(flow), {"amount": 3, "approved_days": 0})
    task = d.task_of(rid, "a")
    with session_factory() as s, pytest.raises(Forbidden) as refused:
        admission.request_action(
            s, tenant_id=d.tenant_id, task_id=task, action="approve", actor="a", data={"amount": 9}
        )
    assert refused.value.details == [{"path": "$.data.amount", "message": "outside this stage's zones"}]
    d.act(rid, "a", data={"approved_days": 2})
    assert d.runtime(rid).data == {"amount": 3, "approved_days": 2}


def test_wrong_actor_and_double_action_are_refused(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    task = d.task_of(rid, "a")
    with session_factory() as s, pytest.raises(Forbidden):
        admission.request_action(s, tenant_id=d.tenant_id, task_id=task, action="approve", actor="b")
    d.request(rid, "a", "approve")  # admitted, not yet applied
    with session_factory() as s, pytest.raises(Conflict):
        admission.request_action(s, tenant_id=d.tenant_id, task_id=task, action="reject", actor="a")


def to_do(node_action: str) -> dict[str, Any]:
    """submit -> a to-do (or receipt) for `a` -> done."""
    node = {
        "key": "work",
        "name": "Work",
        "action": node_action,
        "approvers": {"sources": [{"users": ["a"]}]},
    }
    return definition([node], [{"source": "submit", "dest": "work"}, {"source": "work", "dest": "done"}])


@pytest.mark.parametrize("node_action", ["todo", "receive"])
def test_a_to_do_cannot_be_rejected_only_done_or_returned(d, session_factory, node_action):
    rid = d.submit(d.workflow(to_do(node_action)), {})
    task = d.task_of(rid, "a")
    with session_factory() as s, pytest.raises(Conflict) as refused:
        admission.request_action(s, tenant_id=d.tenant_id, task_id=task, action="reject", actor="a")
    assert refused.value.message == (
        f"'reject' does not apply to a {node_action} task; expected approve, return or delegate"
    )
    with session_factory() as s:
        assert s.scalar(select(func.count()).where(RuntimeCommand.kind == "action")) == 0
    d.act(rid, "a", "return")  # back to the submitter, as from an approval
    assert d.status(rid) == "returned"
    d.resubmit(rid)
    d.act(rid, "a")  # approve: the to-do is done
    assert d.status(rid) == "completed"


def test_a_reject_on_a_to_do_admitted_before_the_rule_is_refused_when_applied(d, session_factory):
    rid = d.submit(d.workflow(to_do("todo")), {})
    command_id = d.request(rid, "a", "approve")
    with session_factory.begin() as s:  # as an older shim admitted it
        command = s.get_one(RuntimeCommand, command_id)
        command.payload = {**command.payload, "action": "reject"}
    d.apply(command_id, "action")
    with session_factory() as s:
        refused = s.get_one(RuntimeCommand, command_id)
        assert refused.status == "refused"
        assert refused.error == "'reject' does not apply to a todo task; expected approve, return or delegate"
        logged = s.scalars(select(RuntimeLog.action).where(RuntimeLog.runtime_id == rid)).all()
        assert "action.refused" in logged and "task.reject" not in logged
    assert d.status(rid) == "in_progress"
    d.act(rid, "a")  # the refusal freed the task
    assert d.status(rid) == "completed"


def test_another_tenant_cannot_see_the_task(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    other, task = Driver(session_factory), d.task_of(rid, "a")
    with session_factory() as s, pytest.raises(transitions.NotFound):
        admission.request_action(s, tenant_id=other.tenant_id, task_id=task, action="approve", actor="a")


# --- submit: idempotency and documents in flight ------------------------------------------------------


def test_idempotency_key_replays_and_in_flight_document_conflicts(d, session_factory):
    wf = d.workflow(leave_request_definition())
    args = {
        "tenant_id": d.tenant_id,
        "workflow_id": wf,
        "document_type": "leave_request",
        "data": {"amount": 1},
        "submitted_by": "alice",
    }
    with session_factory.begin() as s:
        first, command = admission.submit(s, document_id="D9", idempotency_key="k1", **args)
        first_id = first.id
        assert command is not None
    with session_factory.begin() as s:
        again, command = admission.submit(s, document_id="D9", idempotency_key="k1", **args)
        assert (again.id, command) == (first_id, None)
    with session_factory() as s, pytest.raises(Conflict) as in_flight:
        admission.submit(s, document_id="D9", **args)
    assert in_flight.value.details == {"runtime_id": first_id}
    with session_factory() as s, pytest.raises(Conflict):
        admission.submit(s, document_id="D10", idempotency_key="k1", **args)
    for changed in ({"data": {"amount": 2}}, {"data": {"amount": 1.5}}, {"submitted_by": "bob"}):
        with session_factory() as s, pytest.raises(Conflict, match="other data or submitter"):
            admission.submit(s, document_id="D9", idempotency_key="k1", **{**args, **changed})
    for same_json in ({"amount": 1.0}, {"amount": 1e0}):  # one JSON number, however it is written
        with session_factory.begin() as s:
            again, command = admission.submit(
                s, document_id="D9", idempotency_key="k1", **{**args, "data": same_json}
            )
            assert (again.id, command) == (first_id, None)
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(RuntimeCommand)) == 1


def test_a_replay_of_a_runtime_admitted_without_a_fingerprint_is_checked_by_document(d, session_factory):
    wf = d.workflow(leave_request_definition())
    args = {
        "tenant_id": d.tenant_id,
        "workflow_id": wf,
        "document_type": "leave_request",
        "submitted_by": "a",
    }
    with session_factory.begin() as s:
        first, _ = admission.submit(s, document_id="D9", idempotency_key="k1", data={"amount": 1}, **args)
        first_id = first.id
    with session_factory.begin() as s:  # as admitted before migration 0008
        s.execute(update(Runtime).where(Runtime.id == first_id).values(request_fingerprint=None))
    with session_factory.begin() as s:
        again, command = admission.submit(
            s, document_id="D9", idempotency_key="k1", data={"amount": 2}, **args
        )
        assert (again.id, command) == (first_id, None)


def test_withdraw_removes_only_a_submission_nothing_has_touched(d, session_factory):
    """A 503 after a broker refusal withdraws the submission, unless it was started, or a retry
    with the same Idempotency-Key was already told it is accepted (that 202 must hold)."""
    wf = d.workflow(single_stage([{"users": ["a"]}]))

    def withdraw(command_id: str | None) -> None:
        with session_factory.begin() as s:
            admission.withdraw(s, command_id=str(command_id))

    def live(runtime_id: str) -> tuple[str | None, int]:
        with session_factory() as s:
            status = s.scalar(select(Runtime.status).where(Runtime.id == runtime_id))
            commands = s.scalar(select(func.count()).where(RuntimeCommand.runtime_id == runtime_id))
            return status, commands or 0

    untouched, command_id = d.admit(wf, {}, document_id="D1")
    withdraw(command_id)
    assert live(untouched) == (None, 0)

    kept, command_id = d.admit(wf, {}, document_id="D2", key="k2")
    # The client's retry, while the first request still waits on the broker: a replay.
    assert d.admit(wf, {}, document_id="D2", key="k2") == (kept, None)
    withdraw(command_id)
    assert live(kept) == ("pending", 1)  # the sweep sends its start command

    started, command_id = d.admit(wf, {}, document_id="D3")
    with session_factory.begin() as s:
        transitions.start(s, command_id=str(command_id))
    withdraw(command_id)
    assert live(started) == ("in_progress", 1)


def test_a_finished_document_can_be_submitted_again(d):
    wf = d.workflow(single_stage([{"users": ["a"]}]))
    first = d.submit(wf, {}, document_id="D1")
    d.act(first, "a")
    second = d.submit(wf, {}, document_id="D1")
    assert second != first and d.status(second) == "in_progress"


def test_submit_refuses_a_mismatched_document_type_and_writes_nothing(d, session_factory):
    wf = d.workflow(leave_request_definition())
    with session_factory() as s, pytest.raises(InvalidInput):
        admission.submit(
            s,
            tenant_id=d.tenant_id,
            workflow_id=wf,
            document_type="invoice",
            document_id="X",
            data={},
            submitted_by="alice",
        )
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(RuntimeCommand)) == 0


# --- redelivery: applying the same command twice is a no-op -------------------------------------------


def test_replayed_commands_change_nothing(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    command_id = d.request(rid, "a", "approve")
    d.apply(command_id, "action")
    with session_factory() as s:
        before = (
            s.scalar(select(func.count()).select_from(RuntimeLog)),
            s.scalar(select(func.count()).select_from(RuntimeEvent)),
        )
    d.apply(command_id, "action")  # the message redelivered after a worker died
    with session_factory() as s:
        start = s.scalars(select(RuntimeCommand.id).where(RuntimeCommand.kind == "start")).one()
    d.apply(start, "start")
    with session_factory() as s:
        after = (
            s.scalar(select(func.count()).select_from(RuntimeLog)),
            s.scalar(select(func.count()).select_from(RuntimeEvent)),
        )
        assert s.scalar(select(func.count()).select_from(RuntimeStage)) == 2
    assert before == after


def test_opening_a_stage_twice_creates_each_task_once(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    with session_factory() as s:
        stage_id = s.scalars(select(RuntimeStage.id).where(RuntimeStage.node_key == "review")).one()
    with session_factory.begin() as s:
        s.get_one(RuntimeStage, stage_id).started_at = None  # as if the chord body was lost
    d.open([stage_id])
    d.open([stage_id])
    assert d.tasks(rid) == {"alice": "completed", "a": "pending", "b": "pending"}


def test_events_are_sequenced_per_runtime(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    d.act(rid, "a")
    with session_factory() as s:
        events = s.execute(
            select(RuntimeEvent.sequence, RuntimeEvent.type)
            .where(RuntimeEvent.runtime_id == rid)
            .order_by(RuntimeEvent.sequence)
        ).all()
    assert [t for _, t in events] == [
        "runtime.created",
        "task.assigned",
        "stage.started",
        "task.completed",
        "stage.completed",
        "runtime.completed",
    ]
    assert [n for n, _ in events] == list(range(1, len(events) + 1))


def test_audit_log_records_every_change(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    d.act(rid, "a", comments="ok")
    with session_factory() as s:
        actions = s.scalars(
            select(RuntimeLog.action)
            .where(RuntimeLog.runtime_id == rid)
            .order_by(RuntimeLog.created_at, RuntimeLog.id)
        ).all()
    assert {
        "runtime.submitted",
        "runtime.started",
        "stage.opened",
        "task.assigned",
        "stage.started",
        "task.approve",
        "stage.completed",
        "runtime.completed",
    } <= set(actions)


# --- versioning ------------------------------------------------------------------------------------


def test_a_new_version_does_not_change_a_running_runtime(d, session_factory):
    wf = d.workflow(single_stage([{"users": ["a"]}]))
    old = d.submit(wf, {}, document_id="old")
    with session_factory.begin() as s:
        _, version = workflow_store.update_workflow(
            s, tenant_id=d.tenant_id, workflow_id=wf, raw=single_stage([{"users": ["z"]}])
        )
        assert version.version == 2
    new = d.submit(wf, {}, document_id="new")
    assert set(d.tasks(old)) == {"alice", "a"}
    assert set(d.tasks(new)) == {"alice", "z"}
    d.act(old, "a")
    assert d.status(old) == "completed"


def test_a_stage_is_not_started_while_a_task_is_missing(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {"amount": 1})
    with session_factory() as s:
        stage_id = s.scalars(select(RuntimeStage.id).where(RuntimeStage.node_key == "review")).one()
    with session_factory.begin() as s:
        s.get_one(RuntimeStage, stage_id).started_at = None
        s.execute(delete(RuntimeAssignee).where(RuntimeAssignee.user == "b"))  # a lost header task
    with session_factory.begin() as s:
        transitions.mark_started(s, stage_ids=[stage_id])  # the chord body runs anyway
    with session_factory() as s:
        assert s.get_one(RuntimeStage, stage_id).started_at is None
        assert transitions.opening_plan(s, stage_ids=[stage_id]) == [(stage_id, "a"), (stage_id, "b")]
    d.open([stage_id])  # what the sweep does
    assert d.tasks(rid) == {"alice": "completed", "a": "pending", "b": "pending"}


def started_but_unopened(d, session_factory, workflow_id: str, document_id: str) -> tuple[str, str]:
    """Submit and start a runtime without running its opening chord; return it and its stage."""
    with session_factory.begin() as s:
        runtime, command = admission.submit(
            s,
            tenant_id=d.tenant_id,
            workflow_id=workflow_id,
            document_type="leave_request",
            document_id=document_id,
            data={},
            submitted_by="alice",
        )
        rid, start_id = runtime.id, command.id
    with session_factory.begin() as s:
        (stage_id,) = transitions.start(s, command_id=start_id)
    return rid, stage_id


def test_the_last_header_task_starts_the_stage_and_a_late_chord_body_adds_nothing(d, session_factory):
    workflow_id = d.workflow(single_stage([{"users": ["a", "b"]}], "all"))
    rid, stage_id = started_but_unopened(d, session_factory, workflow_id, "late-body")

    def started() -> tuple[object, list[str]]:
        with session_factory() as s:
            by_sequence = select(RuntimeEvent.type).order_by(RuntimeEvent.sequence)
            events = s.scalars(by_sequence.where(RuntimeEvent.runtime_id == rid)).all()
            return s.get_one(RuntimeStage, stage_id).started_at, list(events)

    with session_factory.begin() as s:
        transitions.assign(s, stage_id=stage_id, user="a")
    assert started()[0] is None  # b has no task yet
    with session_factory.begin() as s:
        transitions.assign(s, stage_id=stage_id, user="b")
    started_at, events = started()
    assert started_at is not None
    assert events == ["runtime.created", "task.assigned", "task.assigned", "stage.started"]
    with session_factory.begin() as s:
        transitions.mark_started(s, stage_ids=[stage_id])  # the chord body, behind a backlog
    assert started() == (started_at, events)
    with session_factory() as s:
        assert transitions.opening_plan(s, stage_ids=[stage_id]) == []  # the sweep has nothing to re-send


def test_a_stage_completed_before_its_opening_finished_still_reports_its_start(d, session_factory):
    workflow_id = d.workflow(single_stage([{"users": ["a", "b"]}], "any"))
    rid, stage_id = started_but_unopened(d, session_factory, workflow_id, "early")
    with session_factory.begin() as s:
        transitions.assign(s, stage_id=stage_id, user="a")  # b's header task was lost with its worker
    d.act(rid, "a")
    assert d.status(rid) == "completed"
    with session_factory() as s:
        types = s.scalars(
            select(RuntimeEvent.type).where(RuntimeEvent.runtime_id == rid).order_by(RuntimeEvent.sequence)
        ).all()
    assert types.index("stage.started") < types.index("stage.completed")
    assert types.count("stage.started") == 1


def test_an_action_on_a_stage_still_opening_finishes_the_opening_first(d, session_factory):
    workflow_id = d.workflow(single_stage([{"users": ["a", "b"]}], "all"))
    rid, stage_id = started_but_unopened(d, session_factory, workflow_id, "acted-early")
    with session_factory.begin() as s:
        transitions.assign(s, stage_id=stage_id, user="a")  # b's header task is still queued
    d.act(rid, "a")
    with session_factory.begin() as s:
        transitions.assign(s, stage_id=stage_id, user="b")  # it runs late: nothing to add
        transitions.mark_started(s, stage_ids=[stage_id])  # and so does the chord body
    events, _ = events_and_log(d, rid)
    assert [(e.type, e.data.get("assignee")) for e in events] == [
        ("runtime.created", None),
        ("task.assigned", "a"),
        ("task.assigned", "b"),
        ("stage.started", None),
        ("task.completed", "a"),
    ]
    assert d.tasks(rid) == {"alice": "completed", "a": "completed", "b": "pending"}
    d.act(rid, "b")
    assert d.status(rid) == "completed"


def test_the_sweep_resends_lost_work_with_a_doubling_wait(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    d.request(rid, "a", "approve")  # admitted; its message is lost
    with session_factory.begin() as s:
        s.execute(update(RuntimeStage).where(RuntimeStage.node_key == "review").values(started_at=None))
    grace = timedelta(seconds=30)
    start = datetime.now(UTC).replace(tzinfo=None)
    try:
        # Re-sent after the grace (31 s), then after waiting as long again (just past 62 s),
        # then just past 126 s: the rows were created a few ms before `start`.
        for offset, expected in ((0, 0), (31, 1), (40, 0), (61, 0), (63, 1), (100, 0), (127, 1)):
            clock.set_clock(lambda offset=offset: start + timedelta(seconds=offset))
            with session_factory.begin() as s:
                found = (
                    len(lost_work.stale_commands(s, grace=grace)),
                    len(lost_work.unstarted_stages(s, grace=grace)),
                )
            assert found == (expected, expected), offset
    finally:
        clock.set_clock(None)


def test_commands_still_waiting_do_not_fill_the_sweeps_batch(d, session_factory, monkeypatch):
    monkeypatch.setattr(lost_work, "BATCH", 2)
    workflow_id = d.workflow(single_stage([{"users": ["a"]}]))
    stuck = [d.request(d.submit(workflow_id, {}, document_id=f"S{n}"), "a", "approve") for n in range(2)]
    late = d.request(d.submit(workflow_id, {}, document_id="L"), "a", "approve")
    grace = timedelta(seconds=30)
    start = datetime.now(UTC).replace(tzinfo=None)

    def sweep_at(offset: int) -> list[str]:
        clock.set_clock(lambda: start + timedelta(seconds=offset))
        with session_factory.begin() as s:
            return [command.id for command in lost_work.stale_commands(s, grace=grace)]

    try:
        with session_factory.begin() as s:  # lost a minute after the two stuck ones
            s.execute(
                update(RuntimeCommand)
                .where(RuntimeCommand.id == late)
                .values(created_at=start + timedelta(seconds=64))
            )
        assert sorted(sweep_at(31)) == sorted(stuck)  # re-sent, next at 62 s
        assert sorted(sweep_at(63)) == sorted(stuck)  # re-sent, next at 126 s
        # The late command is due since 94 s; the stuck ones, older, are not due yet.
        assert sweep_at(100) == [late]
        assert sweep_at(101) == []
    finally:
        clock.set_clock(None)


def test_two_delegations_to_one_user_refuse_the_second_and_free_its_task(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    first = d.request(rid, "a", "delegate", delegate_to="x")
    second = d.request(rid, "b", "delegate", delegate_to="x")  # admitted: x has no task yet
    d.apply(first, "action")
    d.apply(second, "action")  # x now holds a's place: b's delegation cannot be applied
    with session_factory() as s:
        refused = s.get_one(RuntimeCommand, second)
        assert (refused.status, refused.error) == ("refused", "'x' already has a task on this stage")
        assert (
            s.scalar(
                select(func.count()).where(
                    RuntimeLog.runtime_id == rid, RuntimeLog.action == "action.refused"
                )
            )
            == 1
        )
    assert d.tasks(rid) == {"alice": "completed", "a": "delegated", "b": "pending", "x": "pending"}
    d.act(rid, "b")  # the refusal freed b's task for its next action
    d.act(rid, "x")
    assert d.status(rid) == "completed"


def test_a_task_cannot_be_delegated_to_an_approver_still_being_assigned(d, session_factory):
    wf = d.workflow(single_stage([{"users": ["a", "y"]}], "all"))
    rid, command_id = d.admit(wf, {})
    with session_factory.begin() as s:
        (stage_id,) = transitions.start(s, command_id=command_id)
        transitions.assign(s, stage_id=stage_id, user="a")  # y's chord task has not run yet
    task = d.task_of(rid, "a")
    with session_factory() as s, pytest.raises(Conflict, match="'y' is already an approver on this stage"):
        admission.request_action(
            s, tenant_id=d.tenant_id, task_id=task, action="delegate", actor="a", delegate_to="y"
        )


def test_a_delegation_admitted_before_an_escalation_to_the_same_user_is_refused(d, session_factory):
    start = datetime(2030, 1, 7, 9, 0)
    now = [start]
    clock.set_clock(lambda: now[0])
    try:
        rid = d.submit(
            d.workflow(single_stage([{"users": ["a"]}], "all", sla_hours=1, escalate_to="boss")), {}
        )
        command_id = d.request(rid, "a", "delegate", delegate_to="boss")
        now[0] = start + timedelta(hours=2)
        assert sla.scan(session_factory.begin)["escalated"] == 1  # boss stands in for a
        d.apply(command_id, "action")
        with session_factory() as s:
            assert s.get_one(RuntimeCommand, command_id).status == "refused"
        assert d.tasks(rid) == {"alice": "completed", "a": "overdue", "boss": "pending"}
        d.act(rid, "a")
        assert d.status(rid) == "completed"
    finally:
        clock.set_clock(None)


def test_a_task_cannot_be_delegated_back_to_a_former_holder(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "all")), {})
    d.act(rid, "a", "delegate", delegate_to="deputy")
    task = d.task_of(rid, "deputy")
    with session_factory() as s, pytest.raises(Conflict):
        admission.request_action(
            s, tenant_id=d.tenant_id, task_id=task, action="delegate", actor="deputy", delegate_to="a"
        )
