"""Definition shape (pydantic) and graph checks, each problem with its JSON path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bflow_tasks.engine.definitions import problems
from bflow_tasks.engine.definitions.language import (
    DefinitionError,
    DefinitionProblem,
    WorkflowDefinition,
    check_graph,
    parse_definition,
)
from tests.factories import leave_request_definition

Raw = dict[str, Any]


def problems_of(raw: Any) -> list[tuple[str, str]]:
    """Return (path, message) for every problem parse_definition reports."""
    with pytest.raises(DefinitionError) as caught:
        parse_definition(raw)
    return [(p.path, p.message) for p in caught.value.problems]


def assert_problem(raw: Raw, path: str, fragment: str) -> None:
    found = problems_of(raw)
    assert any(p == path and fragment in m for p, m in found), found


def node(key: str, action: str = "approve", **extra: Any) -> dict[str, Any]:
    if action in ("approve", "todo", "receive") and "approvers" not in extra:
        extra["approvers"] = {"sources": [{"users": ["x"]}]}
    return {"key": key, "name": key.title(), "action": action, **extra}


def test_leave_request_definition_is_valid() -> None:
    definition = parse_definition(leave_request_definition())
    assert [n.key for n in definition.nodes] == ["submit", "manager_review", "finance", "done"]
    assert definition.node("manager_review").approvers.static_count() == 3  # type: ignore[union-attr]
    assert check_graph(definition) == []


def test_problem_type_is_shared() -> None:
    assert DefinitionProblem is problems.DefinitionProblem


def test_valid_definition_with_every_feature() -> None:
    raw = leave_request_definition()
    raw["zones"] = ["amount", "reason"]
    raw["nodes"][1]["zones"] = ["reason"]
    raw["nodes"][1]["approvers"] = {"mode": "quorum", "quorum": 2, "sources": [{"users": ["u1", "u2", "u3"]}]}
    raw["nodes"][2]["approvers"]["sources"].append({"actor_of": "manager_review"})
    raw["nodes"].insert(3, node("archive", "receive", join="any"))
    raw["associations"] += [
        {"source": "manager_review", "dest": "submit", "on": "return"},
        {"source": "finance", "dest": "archive", "on": "reject"},
        {"source": "archive", "dest": "done", "on": "complete"},
    ]
    assert check_graph(parse_definition(raw)) == []


def mutate(change: Callable[[Raw], object]) -> Raw:
    raw = leave_request_definition()
    change(raw)
    return raw


GRAPH_CASES: list[tuple[str, Callable[[Raw], object], str, str]] = [
    (
        "no create node",
        lambda r: r["nodes"][0].update(action="todo", approvers={"sources": [{"submitter": True}]}),
        "$.nodes",
        "no 'create' node",
    ),
    (
        "two create nodes",
        lambda r: r["nodes"].insert(3, node("again", "create")),
        "$.nodes[3].action",
        "second 'create'",
    ),
    ("no end node", lambda r: r["nodes"].pop(), "$.nodes", "no 'end' node"),
    (
        "duplicate key",
        lambda r: r["nodes"].append(node("finance")),
        "$.nodes[4].key",
        "duplicate node key 'finance'",
    ),
    (
        "unknown source",
        lambda r: r["associations"].append({"source": "ghost", "dest": "done"}),
        "$.associations[4].source",
        "unknown node key 'ghost'",
    ),
    (
        "unknown dest",
        lambda r: r["associations"][1].update(dest="finanse"),
        "$.associations[1].dest",
        "unknown node key 'finanse'",
    ),
    (
        "unreachable node",
        lambda r: (
            r["nodes"].append(node("orphan")),
            r["associations"].append({"source": "orphan", "dest": "done"}),
        ),
        "$.nodes[4]",
        "node 'orphan' cannot be reached from 'submit'",
    ),
    (
        "no way out",
        lambda r: r["associations"].pop(),
        "$.nodes[2]",
        "node 'finance' has no outgoing association",
    ),
    (
        "end node with an exit",
        lambda r: r["associations"].append({"source": "done", "dest": "finance"}),
        "$.associations[4].source",
        "end node 'done' cannot have outgoing associations",
    ),
    (
        "approve without approvers",
        lambda r: r["nodes"][2].pop("approvers"),
        "$.nodes[2].approvers",
        "approve node 'finance' needs approvers",
    ),
    (
        "create with approvers",
        lambda r: r["nodes"][0].update(approvers={"sources": [{"users": ["a"]}]}),
        "$.nodes[0].approvers",
        "create node 'submit' takes no approvers",
    ),
    (
        "end with approvers",
        lambda r: r["nodes"][3].update(approvers={"sources": [{"users": ["a"]}]}),
        "$.nodes[3].approvers",
        "end node 'done' takes no approvers",
    ),
    (
        "quorum above count",
        lambda r: r["nodes"][1].update(
            approvers={"mode": "quorum", "quorum": 4, "sources": [{"users": ["u1", "u2", "u3", "u3"]}]}
        ),
        "$.nodes[1].approvers.quorum",
        "quorum 4 exceeds the number of approvers named (3)",
    ),
    (
        "actor_of unknown",
        lambda r: r["nodes"][2]["approvers"]["sources"].append({"actor_of": "boss"}),
        "$.nodes[2].approvers.sources[1].actor_of",
        "unknown node key 'boss'",
    ),
    (
        "quorum over the same users named twice",
        lambda r: r["nodes"][1]["approvers"].update(
            mode="quorum", quorum=3, sources=[{"users": ["u1", "u2"]}, {"users": ["u2", "u1"]}]
        ),
        "$.nodes[1].approvers.quorum",
        "quorum 3 exceeds the number of approvers named (2)",
    ),
    (
        "actor_of an end node",
        lambda r: r["nodes"][2]["approvers"].update(sources=[{"actor_of": "done"}]),
        "$.nodes[2].approvers.sources[0].actor_of",
        "nobody acts on end node 'done'",
    ),
    (
        "actor_of itself",
        lambda r: r["nodes"][2]["approvers"].update(sources=[{"actor_of": "finance"}]),
        "$.nodes[2].approvers.sources[0].actor_of",
        "cannot take its approvers from itself",
    ),
    (
        "zone outside the workflow",
        lambda r: (r.update(zones=["amount"]), r["nodes"][1].update(zones=["amount", "salary"])),
        "$.nodes[1].zones[1]",
        "zone 'salary' is not among the workflow zones",
    ),
    (
        "bad condition op",
        lambda r: r["associations"][2].update(
            condition={"all": [{"var": "amount", "op": "like", "value": 1}]}
        ),
        "$.associations[2].condition.all[0].op",
        "unknown op 'like'",
    ),
    (
        "reject from a todo node",
        lambda r: (
            r["nodes"].insert(3, node("fix", "todo")),
            r["associations"].extend(
                [{"source": "finance", "dest": "fix"}, {"source": "fix", "dest": "done", "on": "reject"}]
            ),
        ),
        "$.associations[5].on",
        "'on: reject' only applies to approve nodes; 'fix' has action 'todo'",
    ),
    (
        "return from the create node",
        lambda r: r["associations"].append({"source": "submit", "dest": "done", "on": "return"}),
        "$.associations[4].on",
        "'on: return' only applies to approve nodes",
    ),
    (
        "complete from an approve node",
        lambda r: r["associations"][3].update(on="complete"),
        "$.associations[3].on",
        "'on: complete' only applies to todo or receive nodes; 'finance' has action 'approve'",
    ),
    (
        "duplicate association",
        lambda r: r["associations"].append({"source": "finance", "dest": "done"}),
        "$.associations[4]",
        "duplicate of $.associations[3] (same source, dest and on)",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "fragment"), [case[1:] for case in GRAPH_CASES], ids=[c[0] for c in GRAPH_CASES]
)
def test_graph_rule_rejected(change: Callable[[Raw], object], path: str, fragment: str) -> None:
    assert_problem(mutate(change), path, fragment)


def test_same_route_with_a_different_outcome_is_not_a_duplicate() -> None:
    raw = leave_request_definition()
    raw["associations"].append({"source": "finance", "dest": "done", "on": "reject"})
    assert check_graph(parse_definition(raw)) == []


def test_quorum_against_dynamic_sources_is_not_judged() -> None:
    raw = leave_request_definition()
    raw["nodes"][1]["approvers"] = {
        "mode": "quorum",
        "quorum": 5,
        "sources": [{"users": ["u1"]}, {"field": "data.reviewers"}],
    }
    assert check_graph(parse_definition(raw)) == []


def test_several_problems_reported_at_once() -> None:
    raw = leave_request_definition()
    raw["nodes"][0]["action"] = "end"  # no create node left
    raw["nodes"][2]["key"] = "manager_review"  # duplicate
    raw["nodes"][1]["approvers"] = {"mode": "quorum", "quorum": 9, "sources": [{"users": ["u1"]}]}
    raw["associations"][3]["dest"] = "nowhere"
    raw["associations"][1]["condition"] = {"var": "amount", "op": "in", "value": 1000}
    found = problems_of(raw)
    paths = [p for p, _ in found]
    for expected in (
        "$.nodes",
        "$.nodes[2].key",
        "$.nodes[1].approvers.quorum",
        "$.associations[3].dest",
        "$.associations[1].condition.value",
        "$.associations[0].source",  # submit is now an end node with an exit
    ):
        assert expected in paths, found
    assert len(found) >= 6


def test_graph_checks_run_on_a_model_directly() -> None:
    raw = leave_request_definition()
    raw["associations"].pop(0)
    problems = check_graph(WorkflowDefinition.model_validate(raw))
    assert [(p.path, p.message) for p in problems] == [
        ("$.nodes[0]", "node 'submit' has no outgoing association; only end nodes may stop"),
        ("$.nodes[1]", "node 'manager_review' cannot be reached from 'submit'"),
        ("$.nodes[2]", "node 'finance' cannot be reached from 'submit'"),
        ("$.nodes[3]", "node 'done' cannot be reached from 'submit'"),
    ]


SHAPE_CASES: list[tuple[str, Callable[[Raw], object], str, str]] = [
    ("unknown top-level key", lambda r: r.update(owner="me"), "$.owner", "Extra inputs are not permitted"),
    ("unknown node key", lambda r: r["nodes"][1].update(sla=4), "$.nodes[1].sla", "Extra inputs"),
    ("bad action", lambda r: r["nodes"][1].update(action="sign"), "$.nodes[1].action", "Input should be"),
    ("negative sla", lambda r: r["nodes"][1].update(sla_hours=-1), "$.nodes[1].sla_hours", "greater than 0"),
    (
        "unknown source kind",
        lambda r: r["nodes"][1]["approvers"].update(sources=[{"user": ["u1"]}]),
        "$.nodes[1].approvers.sources[0]",
        "exactly one of 'users', 'field', 'actor_of', 'submitter'",
    ),
    (
        "two kinds in one source",
        lambda r: r["nodes"][1]["approvers"].update(sources=[{"users": ["u1"], "submitter": True}]),
        "$.nodes[1].approvers.sources[0]",
        "exactly one of",
    ),
    (
        "bad users list",
        lambda r: r["nodes"][2]["approvers"].update(sources=[{"users": "fin1"}]),
        "$.nodes[2].approvers.sources[0].users",
        "valid list",
    ),
    (
        "extra key in a source",
        lambda r: r["nodes"][2]["approvers"].update(sources=[{"users": ["fin1"], "role": "cfo"}]),
        "$.nodes[2].approvers.sources[0].role",
        "Extra inputs",
    ),
    (
        "field outside data",
        lambda r: r["nodes"][2]["approvers"].update(sources=[{"field": "manager_id"}]),
        "$.nodes[2].approvers.sources[0].field",
        "should match pattern",
    ),
    (
        "quorum without mode",
        lambda r: r["nodes"][2]["approvers"].update(quorum=1),
        "$.nodes[2].approvers",
        "'quorum' is only allowed with mode 'quorum'",
    ),
    (
        "quorum mode without N",
        lambda r: r["nodes"][2]["approvers"].update(mode="quorum"),
        "$.nodes[2].approvers",
        "mode 'quorum' needs 'quorum': N",
    ),
    (
        "bad outcome",
        lambda r: r["associations"][0].update(on="maybe"),
        "$.associations[0].on",
        "Input should be",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "fragment"), [case[1:] for case in SHAPE_CASES], ids=[c[0] for c in SHAPE_CASES]
)
def test_shape_problem_paths(change: Callable[[Raw], object], path: str, fragment: str) -> None:
    assert_problem(mutate(change), path, fragment)


def test_not_an_object_at_all() -> None:
    assert problems_of([1, 2]) == [
        ("$", "Input should be a valid dictionary or instance of WorkflowDefinition")
    ]
