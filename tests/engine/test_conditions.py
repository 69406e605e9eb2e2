"""The condition evaluator and its static checker."""

from __future__ import annotations

from typing import Any

import pytest

from bflow_tasks.engine.definitions import conditions
from bflow_tasks.engine.definitions.conditions import ConditionError, check_condition, evaluate

DOC: dict[str, Any] = {
    "amount": 1500,
    "ratio": 0.5,
    "dept": "IT",
    "title": "New laptop for QA",
    "tags": ["urgent", "hardware"],
    "urgent": True,
    "note": None,
    "requester": {"dept": "HR", "manager": {"id": "m1"}},
}


def cmp(var: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"var": var, "op": op, "value": value}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cmp("amount", "==", 1500), True),
        (cmp("amount", "==", 1500.0), True),
        (cmp("amount", "==", "1500"), False),
        (cmp("amount", "!=", 1000), True),
        (cmp("amount", "!=", 1500), False),
        (cmp("amount", ">", 1000), True),
        (cmp("amount", ">", 1500), False),
        (cmp("amount", ">=", 1500), True),
        (cmp("amount", "<", 1500), False),
        (cmp("amount", "<=", 1500), True),
        (cmp("ratio", "<", 1), True),
        (cmp("dept", ">", "HR"), True),
        (cmp("dept", "in", ["IT", "HR"]), True),
        (cmp("dept", "in", ["Sales"]), False),
        (cmp("dept", "not_in", ["Sales"]), True),
        (cmp("dept", "not_in", ["IT"]), False),
        (cmp("title", "contains", "laptop"), True),
        (cmp("title", "contains", "desk"), False),
        (cmp("tags", "contains", "urgent"), True),
        (cmp("tags", "contains", "cheap"), False),
        (cmp("amount", "contains", 1), False),
        (cmp("title", "contains", 5), False),
        ({"var": "amount", "op": "exists"}, True),
        (cmp("amount", "exists", True), True),
        (cmp("amount", "exists", False), False),
        (cmp("urgent", "==", True), True),
    ],
)
def test_every_op(condition: dict[str, Any], expected: bool) -> None:
    assert evaluate(condition, DOC) is expected


@pytest.mark.parametrize(
    ("var", "expected"),
    [
        ("requester.dept", "HR"),
        ("data.requester.dept", "HR"),
        ("requester.manager.id", "m1"),
        ("data.amount", 1500),
    ],
)
def test_dotted_paths_and_data_prefix(var: str, expected: Any) -> None:
    assert evaluate(cmp(var, "==", expected), DOC)


@pytest.mark.parametrize("op", ["==", "!=", ">", ">=", "<", "<=", "in", "not_in", "contains"])
@pytest.mark.parametrize("var", ["missing", "requester.missing", "dept.deeper", "note"])
def test_missing_field_is_false_for_every_comparison(op: str, var: str) -> None:
    value: Any = ["x"] if op in ("in", "not_in") else "x"
    assert evaluate(cmp(var, op, value), DOC) is False


@pytest.mark.parametrize("var", ["missing", "requester.missing", "note"])
def test_exists_tests_presence_and_absence(var: str) -> None:
    assert evaluate({"var": var, "op": "exists"}, DOC) is False
    assert evaluate(cmp(var, "exists", False), DOC) is True


@pytest.mark.parametrize(
    "condition",
    [
        cmp("dept", ">", 5),
        cmp("amount", "<", "abc"),
        cmp("tags", ">=", 1),
        cmp("requester", "<=", "a"),
        cmp("urgent", ">", 0),
        cmp("urgent", "==", 1),
        cmp("amount", "in", "1500"),
        cmp("dept", "in", {"IT": 1}),
    ],
)
def test_type_mismatches_are_false_not_errors(condition: dict[str, Any]) -> None:
    assert evaluate(condition, DOC) is False


def test_not_in_with_a_non_list_value_is_false() -> None:
    assert evaluate(cmp("dept", "not_in", "Sales"), DOC) is False


def test_bool_and_number_are_different_values() -> None:
    assert evaluate(cmp("urgent", "in", [1]), DOC) is False
    assert evaluate(cmp("amount", "in", [True, 1500]), DOC) is True
    assert evaluate(cmp("urgent", "!=", 1), DOC) is True


def test_none_condition_always_holds() -> None:
    assert evaluate(None, {}) is True


def test_empty_combinators() -> None:
    assert evaluate({"all": []}, DOC) is True
    assert evaluate({"any": []}, DOC) is False


def test_nested_combinators() -> None:
    big_it_purchase = {
        "all": [
            cmp("amount", ">=", 1000),
            {"any": [cmp("dept", "==", "IT"), cmp("requester.dept", "==", "Finance")]},
            {"not": cmp("tags", "contains", "cheap")},
        ]
    }
    assert evaluate(big_it_purchase, DOC) is True
    assert evaluate(big_it_purchase, {**DOC, "dept": "Sales"}) is False
    assert evaluate(big_it_purchase, {**DOC, "tags": ["cheap"]}) is False
    assert evaluate({"not": {"not": cmp("amount", ">", 1)}}, DOC) is True


def test_not_inverts_a_missing_field() -> None:
    # Documented: `not` is plain negation, so it holds when the inner comparison cannot.
    assert evaluate({"not": cmp("missing", "==", 1)}, DOC) is True


@pytest.mark.parametrize(
    "condition",
    [[cmp("amount", ">", 1)], {"var": "amount", "op": "like", "value": 1}, {"all": {}}, {"not": []}, {}],
)
def test_malformed_conditions_raise(condition: Any) -> None:
    with pytest.raises(ConditionError):
        evaluate(condition, DOC)


def test_resolve_reports_missing() -> None:
    assert conditions.resolve(DOC, "requester.manager.id") == "m1"
    assert conditions.is_missing(conditions.resolve(DOC, "requester.nobody"))


def problems_of(condition: Any, path: str = "$.c") -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check_condition(condition, path)]


def test_valid_conditions_have_no_problems() -> None:
    valid = {
        "all": [
            cmp("amount", ">=", 1000),
            cmp("dept", "in", ["IT", "HR"]),
            {"any": []},
            {"not": {"var": "data.requester.dept", "op": "exists"}},
            cmp("note", "exists", False),
            cmp("title", "contains", "laptop"),
        ]
    }
    assert problems_of(valid) == []
    assert problems_of(None) == []


@pytest.mark.parametrize(
    ("condition", "path", "fragment"),
    [
        ("amount > 5", "$.c", "must be an object, got string"),
        ({}, "$.c", "empty condition"),
        ({"var": "a", "op": "==", "value": 1, "vaule": 2}, "$.c.vaule", "unknown key 'vaule'"),
        ({"op": "==", "value": 1}, "$.c.var", "missing 'var'"),
        ({"var": "a", "value": 1}, "$.c.op", "missing 'op'"),
        ({"var": "a", "op": "like", "value": 1}, "$.c.op", "unknown op 'like'; expected one of ==, !="),
        ({"var": "", "op": "exists"}, "$.c.var", "empty var"),
        ({"var": "data.", "op": "exists"}, "$.c.var", "empty var"),
        ({"var": "a..b", "op": "exists"}, "$.c.var", "empty path segment"),
        ({"var": 5, "op": "exists"}, "$.c.var", "must be a string, got number"),
        ({"var": "a", "op": "in", "value": "IT"}, "$.c.value", "op 'in' needs a list value, got string"),
        ({"var": "a", "op": "not_in", "value": 3}, "$.c.value", "op 'not_in' needs a list value"),
        ({"var": "a", "op": "=="}, "$.c.value", "missing 'value' for op '=='"),
        ({"var": "a", "op": "exists", "value": "yes"}, "$.c.value", "takes true or false"),
        ({"var": "a", "op": ">", "value": [1]}, "$.c.value", "needs a number or string value"),
        ({"all": {"var": "a"}}, "$.c.all", "'all' takes a list of conditions, got object"),
        ({"any": "x"}, "$.c.any", "'any' takes a list of conditions, got string"),
        ({"not": [cmp("a", "==", 1)]}, "$.c.not", "'not' takes one condition object, got array"),
        ({"all": [], "any": []}, "$.c", "use exactly one of all, any, not"),
        ({"all": [], "var": "a"}, "$.c.var", "unknown key 'var' beside a combinator"),
        ({"all": [5]}, "$.c.all[0]", "must be an object, got number"),
    ],
)
def test_static_problems(condition: Any, path: str, fragment: str) -> None:
    found = problems_of(condition)
    assert any(p == path and fragment in m for p, m in found), found


def test_nested_problems_carry_full_paths_and_are_all_reported() -> None:
    condition = {
        "all": [
            cmp("amount", ">=", 1000),
            {"var": "dept", "op": "like", "value": "I%"},
            {"any": [cmp("a", "in", "x"), {"not": {"op": "exists"}}]},
        ]
    }
    found = problems_of(condition, "$.associations[2].condition")
    assert [p for p, _ in found] == [
        "$.associations[2].condition.all[1].op",
        "$.associations[2].condition.all[2].any[0].value",
        "$.associations[2].condition.all[2].any[1].not.var",
    ]
    assert found[0][1].startswith("unknown op 'like'; expected one of ==, !=, >, >=, <, <=, in, not_in")
