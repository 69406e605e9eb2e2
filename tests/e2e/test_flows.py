"""Documents driven over HTTP through real stacks: the embedded default, MariaDB + Redis and
MariaDB + RabbitMQ (results in Redis). Each stack starts once for this module.

Every refused request is checked for leaving no trace: the rows a request writes when it is
admitted (`runtime`, `runtime_command`, `runtime_assignee`) are counted before and after,
the runtime it named stays as it was, and the broker's `workflow` queue drains to empty (a
command is the only thing the shim publishes).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from bflow_tasks.demo_receiver import Receiver
from bflow_tasks.models import Runtime, RuntimeCommand, Workflow
from tests.e2e.stack import E2EClient, Stack, Tenant, launch, unique, wait_until
from tests.factories import leave_request_definition

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

MANAGERS = {"u1", "u2", "u3"}
STACK_IDS = {"embedded": "embedded", "redis": "mariadb-redis", "rabbitmq": "mariadb-rabbitmq-redis"}


def single_stage(mode: str, users: list[str], quorum: int | None = None) -> dict[str, Any]:
    """A workflow with one approval stage of the given mode between submit and done."""
    approvers: dict[str, Any] = {"mode": mode, "sources": [{"users": users}]}
    if quorum is not None:
        approvers["quorum"] = quorum
    return {
        "name": f"{mode} review",
        "document_type": "leave_request",
        "nodes": [
            {"key": "submit", "name": "Submit", "action": "create"},
            {"key": "review", "name": "Review", "action": "approve", "approvers": approvers},
            {"key": "done", "name": "Done", "action": "end"},
        ],
        "associations": [{"source": "submit", "dest": "review"}, {"source": "review", "dest": "done"}],
    }


@dataclass(frozen=True)
class World:
    """One stack with two tenants and the first tenant's workflows."""

    stack: Stack
    client: E2EClient
    other: E2EClient
    tenant: Tenant
    leave: str  # manager_review (all of u1..u3), then finance (fin1) when amount >= 1000
    any: str  # review: any of a1..a3
    quorum: str  # review: 2 of q1..q3


@pytest.fixture(scope="module", params=list(STACK_IDS), ids=list(STACK_IDS.values()))
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with launch(request.param, tmp_path_factory.mktemp(request.param)) as started:
        yield started


@pytest.fixture(scope="module")
def world(stack: Stack) -> World:
    # Two `bflow tenant create` processes at once: each spends a second starting up.
    with ThreadPoolExecutor(2) as pool:
        tenant, other = pool.map(stack.create_tenant, ("Acme", "Globex"))
    client = stack.client(tenant)
    ids = {
        name: client.call("POST", "/workflows", 201, json=definition)["id"]
        for name, definition in {
            "leave": leave_request_definition(),
            "any": single_stage("any", ["a1", "a2", "a3"]),
            "quorum": single_stage("quorum", ["q1", "q2", "q3"], quorum=2),
        }.items()
    }
    return World(stack, client, stack.client(other), tenant, **ids)


# --- helpers -------------------------------------------------------------------------------


def submit(world: World, workflow_id: str, amount: int = 500, **headers: str) -> str:
    body = {
        "workflow_id": workflow_id,
        "document_type": "leave_request",
        "document_id": unique("LR"),
        "data": {"amount": amount},
        "submitted_by": "alice",
    }
    return world.client.call("POST", "/runtime/execute", 202, json=body, headers=headers)["runtime_id"]


def approve(client: E2EClient, task_id: str, actor: str, action: str = "approve", **extra: Any) -> None:
    client.call("POST", f"/tasks/{task_id}/action", 202, json={"action": action, "actor": actor, **extra})


def stages(runtime: dict[str, Any]) -> list[tuple[str, str]]:
    """(node_key, status) of every stage, in order."""
    return [(stage["node_key"], stage["status"]) for stage in runtime["stages"]]


def people(runtime: dict[str, Any], node_key: str, visit: int = 1) -> dict[str, tuple[str, str | None]]:
    """user -> (status, action_taken) on one visit of a node."""
    (stage,) = [s for s in runtime["stages"] if s["node_key"] == node_key and s["visit"] == visit]
    return {a["user"]: (a["status"], a["action_taken"]) for a in stage["assignees"]}


def settled_runtime(world: World, runtime_id: str) -> dict[str, Any]:
    """The runtime as the API shows it once nothing is in flight."""
    world.stack.settle()
    return world.client.call("GET", f"/runtimes/{runtime_id}", 200)


def open_review(world: World, amount: int = 500) -> tuple[str, dict[str, str]]:
    """A leave request whose manager review is open: (runtime id, user -> task id)."""
    runtime_id = submit(world, world.leave, amount)
    return runtime_id, world.client.wait_for_tasks(runtime_id, MANAGERS)


def snapshot(world: World, runtime_id: str | None = None) -> tuple[dict[str, int], Any]:
    """Row counts and the runtime's visible state, once the stack is quiet."""
    world.stack.settle()
    view = None
    if runtime_id is not None:
        runtime = world.client.call("GET", f"/runtimes/{runtime_id}", 200)
        view = (runtime["status"], [(s["node_key"], s["status"], s["assignees"]) for s in runtime["stages"]])
    return world.stack.counts(), view


def assert_nothing_admitted(world: World, before: tuple[dict[str, int], Any], runtime_id: str | None = None):
    """Nothing was written, nothing was enqueued, the runtime did not move."""
    assert snapshot(world, runtime_id) == before
    queued = world.stack.queued()
    assert queued in (None, 0), f"{queued} message(s) left in the workflow queue"


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


# --- approvals -----------------------------------------------------------------------------


def test_all_approvers_must_approve(world: World) -> None:
    runtime_id, tasks = open_review(world)
    approve(world.client, tasks["u1"], "u1")
    approve(world.client, tasks["u2"], "u2")
    halfway = settled_runtime(world, runtime_id)
    assert halfway["status"] == "in_progress"
    assert stages(halfway) == [("submit", "completed"), ("manager_review", "open")]
    assert people(halfway, "manager_review")["u3"] == ("pending", None)

    approve(world.client, tasks["u3"], "u3")
    done = world.client.wait_for_status(runtime_id, "completed")
    assert stages(done) == [("submit", "completed"), ("manager_review", "completed"), ("done", "completed")]
    assert people(done, "manager_review") == dict.fromkeys(MANAGERS, ("completed", "approve"))


def test_any_approver_completes_the_stage(world: World) -> None:
    runtime_id = submit(world, world.any)
    tasks = world.client.wait_for_tasks(runtime_id, {"a1", "a2", "a3"})
    approve(world.client, tasks["a2"], "a2")
    done = world.client.wait_for_status(runtime_id, "completed")
    assert stages(done) == [("submit", "completed"), ("review", "completed"), ("done", "completed")]
    assert people(done, "review") == {
        "a1": ("cancelled", None),
        "a2": ("completed", "approve"),
        "a3": ("cancelled", None),
    }


def test_quorum_of_two_completes_the_stage(world: World) -> None:
    runtime_id = submit(world, world.quorum)
    tasks = world.client.wait_for_tasks(runtime_id, {"q1", "q2", "q3"})
    approve(world.client, tasks["q3"], "q3")
    assert settled_runtime(world, runtime_id)["status"] == "in_progress"
    approve(world.client, tasks["q1"], "q1")
    done = world.client.wait_for_status(runtime_id, "completed")
    assert stages(done) == [("submit", "completed"), ("review", "completed"), ("done", "completed")]
    assert people(done, "review") == {
        "q1": ("completed", "approve"),
        "q2": ("cancelled", None),
        "q3": ("completed", "approve"),
    }


@pytest.mark.parametrize(
    ("amount", "route"),
    [(999, ["submit", "manager_review", "done"]), (1000, ["submit", "manager_review", "finance", "done"])],
    ids=["below-threshold", "at-threshold"],
)
def test_conditional_routing_on_amount(world: World, amount: int, route: list[str]) -> None:
    runtime_id, tasks = open_review(world, amount)
    for user, task_id in tasks.items():
        approve(world.client, task_id, user)
    if "finance" in route:
        (finance_task,) = world.client.wait_for_tasks(runtime_id, {"fin1"}).values()
        approve(world.client, finance_task, "fin1", comments="budget ok")
    done = world.client.wait_for_status(runtime_id, "completed")
    assert stages(done) == [(key, "completed") for key in route]
    if "finance" in route:
        assert people(done, "finance") == {"fin1": ("completed", "approve")}


# --- reject, return, delegate, cancel --------------------------------------------------------


def test_reject_ends_the_runtime(world: World) -> None:
    runtime_id, tasks = open_review(world, 5000)
    approve(world.client, tasks["u1"], "u1")
    approve(world.client, tasks["u2"], "u2", "reject", comments="no budget")
    done = world.client.wait_for_status(runtime_id, "rejected")
    assert stages(done) == [("submit", "completed"), ("manager_review", "completed")]
    assert done["stages"][1]["outcome"] == "reject"
    assert people(done, "manager_review") == {
        "u1": ("completed", "approve"),
        "u2": ("completed", "reject"),
        "u3": ("cancelled", None),
    }


def test_return_then_resubmit_continues_the_runtime(world: World) -> None:
    runtime_id, tasks = open_review(world, 500)
    approve(world.client, tasks["u1"], "u1")
    approve(world.client, tasks["u2"], "u2", "return", comments="attach the receipt")
    returned = world.client.wait_for_status(runtime_id, "returned")
    assert stages(returned) == [("submit", "completed"), ("manager_review", "completed")]
    assert people(returned, "manager_review")["u3"] == ("cancelled", None)

    world.client.call(
        "POST", f"/runtimes/{runtime_id}/resubmit", 202, json={"actor": "alice", "data": {"amount": 1500}}
    )
    again = world.client.wait_for_tasks(runtime_id, MANAGERS)
    assert set(again.values()).isdisjoint(tasks.values())
    for user, task_id in again.items():
        approve(world.client, task_id, user)
    (finance_task,) = world.client.wait_for_tasks(runtime_id, {"fin1"}).values()
    approve(world.client, finance_task, "fin1")
    done = world.client.wait_for_status(runtime_id, "completed")
    assert done["data"] == {"amount": 1500}
    assert [(s["node_key"], s["visit"], s["round"], s["status"], s["outcome"]) for s in done["stages"]] == [
        ("submit", 1, 1, "completed", "complete"),
        ("manager_review", 1, 1, "completed", "return"),
        ("submit", 2, 2, "completed", "complete"),
        ("manager_review", 2, 2, "completed", "approve"),
        ("finance", 1, 2, "completed", "approve"),
        ("done", 1, 2, "completed", "complete"),
    ]
    assert people(done, "manager_review", visit=2) == dict.fromkeys(MANAGERS, ("completed", "approve"))


def test_delegate_hands_the_task_over(world: World) -> None:
    runtime_id, tasks = open_review(world)
    approve(world.client, tasks["u1"], "u1", "delegate", delegate_to="d1")
    now = world.client.wait_for_tasks(runtime_id, {"d1", "u2", "u3"})
    for user, task_id in now.items():
        approve(world.client, task_id, user)
    done = world.client.wait_for_status(runtime_id, "completed")
    assert people(done, "manager_review") == {
        "u1": ("delegated", "delegate"),
        "d1": ("completed", "approve"),
        "u2": ("completed", "approve"),
        "u3": ("completed", "approve"),
    }


def test_cancel_closes_everything(world: World) -> None:
    runtime_id, tasks = open_review(world)
    approve(world.client, tasks["u1"], "u1")
    world.client.call("POST", f"/runtimes/{runtime_id}/cancel", 202, json={"actor": "alice"})
    done = world.client.wait_for_status(runtime_id, "cancelled")
    assert stages(done) == [("submit", "completed"), ("manager_review", "cancelled")]
    assert people(done, "manager_review") == {
        "u1": ("completed", "approve"),
        "u2": ("cancelled", None),
        "u3": ("cancelled", None),
    }
    before = snapshot(world, runtime_id)
    late = world.client.request(
        "POST", f"/tasks/{tasks['u2']}/action", json={"action": "approve", "actor": "u2"}
    )
    assert error_of(late, 409)
    assert_nothing_admitted(world, before, runtime_id)


# --- admission: what the shim refuses leaves no trace ----------------------------------------


def test_idempotent_submit_creates_one_runtime(world: World) -> None:
    world.stack.settle()
    before = world.stack.counts()
    key = unique("idem")
    body = {
        "workflow_id": world.leave,
        "document_type": "leave_request",
        "document_id": unique("LR"),
        "data": {"amount": 10},
        "submitted_by": "alice",
    }
    first = world.client.call("POST", "/runtime/execute", 202, json=body, headers={"Idempotency-Key": key})
    second = world.client.call("POST", "/runtime/execute", 202, json=body, headers={"Idempotency-Key": key})
    assert second["runtime_id"] == first["runtime_id"]
    world.client.wait_for_tasks(first["runtime_id"], MANAGERS)
    world.stack.settle()
    same_document = (
        select(func.count()).select_from(Runtime).where(Runtime.document_id == body["document_id"])
    )
    assert world.stack.scalar(same_document) == 1
    starts = (
        select(func.count())
        .select_from(RuntimeCommand)
        .where(RuntimeCommand.runtime_id == first["runtime_id"], RuntimeCommand.kind == "start")
    )
    assert world.stack.scalar(starts) == 1
    after = world.stack.counts()
    assert (after["runtime"], after["runtime_command"]) == (
        before["runtime"] + 1,
        before["runtime_command"] + 1,
    )

    # The same key for another document is a conflict, and is not admitted either.
    before_reuse = snapshot(world, first["runtime_id"])
    reused = world.client.request(
        "POST",
        "/runtime/execute",
        json={**body, "document_id": unique("LR")},
        headers={"Idempotency-Key": key},
    )
    assert error_of(reused, 409)
    assert_nothing_admitted(world, before_reuse, first["runtime_id"])


def test_another_tenants_ids_are_not_found(world: World) -> None:
    runtime_id, tasks = open_review(world)
    before = snapshot(world, runtime_id)
    other = world.other
    attempts = [
        other.request("GET", f"/workflows/{world.leave}"),
        other.request("PUT", f"/workflows/{world.leave}", json=leave_request_definition()),
        other.request("DELETE", f"/workflows/{world.leave}"),
        other.request("GET", f"/runtimes/{runtime_id}"),
        other.request("POST", f"/runtimes/{runtime_id}/cancel", json={"actor": "alice"}),
        other.request("POST", f"/tasks/{tasks['u1']}/action", json={"action": "approve", "actor": "u1"}),
        other.request(
            "POST",
            "/runtime/execute",
            json={
                "workflow_id": world.leave,
                "document_type": "leave_request",
                "document_id": unique("LR"),
                "data": {"amount": 1},
                "submitted_by": "mallory",
            },
        ),
    ]
    for response in attempts:
        error = error_of(response, 404)
        assert error["code"] == "not_found", response.text
        assert "u1" not in response.text and "Acme" not in response.text
    listed = other.call("GET", "/tasks", 200, params={"runtime_id": runtime_id})
    assert listed["count"] == 0 and listed["results"] == []
    assert_nothing_admitted(world, before, runtime_id)
    assert world.client.call("GET", f"/workflows/{world.leave}", 200)["is_active"] is True


def test_wrong_actor_is_forbidden(world: World) -> None:
    runtime_id, tasks = open_review(world)
    before = snapshot(world, runtime_id)
    response = world.client.request(
        "POST", f"/tasks/{tasks['u1']}/action", json={"action": "approve", "actor": "u2"}
    )
    assert error_of(response, 403)["code"]
    assert_nothing_admitted(world, before, runtime_id)
    assert people(world.client.call("GET", f"/runtimes/{runtime_id}", 200), "manager_review")["u1"] == (
        "pending",
        None,
    )


def test_second_action_on_a_task_conflicts(world: World) -> None:
    runtime_id, tasks = open_review(world)
    body = {"action": "approve", "actor": "u1"}
    approve(world.client, tasks["u1"], "u1")
    # Applying u1's approval completes nothing (u2 and u3 still pending), so the counts
    # taken now stay put unless the second request writes something.
    counts = world.stack.counts()
    racing = world.client.request("POST", f"/tasks/{tasks['u1']}/action", json=body)
    assert error_of(racing, 409)
    world.stack.settle()
    assert world.stack.counts() == counts

    before = snapshot(world, runtime_id)
    late = world.client.request("POST", f"/tasks/{tasks['u1']}/action", json={**body, "action": "reject"})
    assert error_of(late, 409)
    assert_nothing_admitted(world, before, runtime_id)
    applied = (
        select(func.count()).select_from(RuntimeCommand).where(RuntimeCommand.assignee_id == tasks["u1"])
    )
    assert world.stack.scalar(applied) == 1
    runtime = world.client.call("GET", f"/runtimes/{runtime_id}", 200)
    assert runtime["status"] == "in_progress"
    assert people(runtime, "manager_review")["u1"] == ("completed", "approve")


def test_invalid_definition_is_refused_with_paths(world: World) -> None:
    workflows = select(func.count()).select_from(Workflow)
    before, workflow_rows = snapshot(world), world.stack.scalar(workflows)
    bad = leave_request_definition()
    bad["nodes"][1]["approvers"] = {"mode": "quorum", "quorum": 5, "sources": [{"users": ["u1", "u2"]}]}
    bad["associations"][1]["condition"] = {"var": "amount", "op": "~=", "value": 1}
    bad["associations"].append({"source": "submit", "dest": "nowhere"})
    response = world.client.request("POST", "/workflows", json=bad)
    error = error_of(response, 422)
    paths = {problem["path"] for problem in error["details"]}
    assert {
        "$.nodes[1].approvers.quorum",
        "$.associations[1].condition.op",
        "$.associations[4].dest",
    } <= paths, error
    assert all(problem["message"] for problem in error["details"])

    shapeless = world.client.request("POST", "/workflows", json={"name": "x", "nodes": "none"})
    assert all(p["path"].startswith("$") for p in error_of(shapeless, 422)["details"])
    assert_nothing_admitted(world, before)
    assert world.stack.scalar(workflows) == workflow_rows


def test_invalid_submit_is_refused_with_paths(world: World) -> None:
    runtime_id, tasks = open_review(world)
    before = snapshot(world, runtime_id)
    body = {"workflow_id": world.leave, "document_type": "leave_request", "document_id": "", "colour": "red"}
    error = error_of(world.client.request("POST", "/runtime/execute", json=body), 422)
    assert {"$.document_id", "$.submitted_by", "$.colour"} <= {p["path"] for p in error["details"]}, error
    unknown_action = world.client.request(
        "POST", f"/tasks/{tasks['u1']}/action", json={"action": "approve-ish", "actor": "u1"}
    )
    assert "$.action" in {p["path"] for p in error_of(unknown_action, 422)["details"]}
    no_token = requests.post(f"{world.client.base}/runtime/execute", json=body, timeout=10)
    assert error_of(no_token, 401)["code"] == "unauthorized"
    assert_nothing_admitted(world, before, runtime_id)


def test_oversize_body_is_refused(world: World) -> None:
    runtime_id, _tasks = open_review(world)
    before = snapshot(world, runtime_id)
    body = {
        "workflow_id": world.leave,
        "document_type": "leave_request",
        "document_id": unique("LR"),
        "data": {"amount": 1, "blob": "x" * 300_000},
        "submitted_by": "alice",
    }
    declared = world.client.request("POST", "/runtime/execute", json=body)
    assert error_of(declared, 413)["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the shim must count as it reads
        yield b'{"action": "approve", "actor": "u1", "comments": "'
        for _ in range(30):
            yield b"y" * 10_000
        yield b'"}'

    task_id = world.client.pending_tasks(runtime_id)["u1"]
    streamed = world.client.request(
        "POST", f"/tasks/{task_id}/action", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert error_of(streamed, 413)["code"] == "payload_too_large"
    assert_nothing_admitted(world, before, runtime_id)


def test_webhooks_arrive_signed_once_and_in_order(world: World) -> None:
    """A real receiver on loopback verifies every delivery with the endpoint's secret."""
    with Receiver() as receiver:
        hook = world.client.call("POST", "/webhooks", 201, json={"url": receiver.url, "events": ["*"]})
        receiver.secret = hook["secret"]
        try:
            runtime_id = world.client.submit(world.any, unique("WH"), {"amount": 1}, by="alice")
            world.client.act(runtime_id, "a2")
            world.client.wait_for_status(runtime_id, "completed")

            def arrived() -> list[dict[str, Any]] | None:
                mine = [e for e in receiver.events if e["data"].get("runtime_id") == runtime_id]
                return mine if any(e["type"] == "runtime.completed" for e in mine) else None

            events = wait_until(arrived, "the runtime.completed webhook", timeout=30)
        finally:
            world.client.call("DELETE", f"/webhooks/{hook['id']}", 204)
    assert receiver.rejected == 0 and receiver.in_order()
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[0] == "runtime.created" and types[-1] == "runtime.completed"
    for once in ("stage.started", "task.completed", "stage.completed", "runtime.completed"):
        assert types.count(once) == 1, types
    # a2 may approve before the opening chord's body ran (then stage.started is emitted with
    # the completion), and before a1's and a3's tasks existed (then they are never created).
    assert types.index("stage.started") < types.index("stage.completed")
    assigned = [e["data"]["assignee"] for e in events if e["type"] == "task.assigned"]
    assert "a2" in assigned and set(assigned) <= {"a1", "a2", "a3"}
    assert types.index("task.completed") > types.index("task.assigned")
