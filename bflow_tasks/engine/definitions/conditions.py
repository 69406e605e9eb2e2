"""Association conditions: a safe evaluator over document data and its static checker.

A condition is a comparison ``{"var": "amount", "op": ">=", "value": 1000}`` or a
combinator ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": {...}}``. Nothing is ever
passed to ``eval``; the grammar is interpreted by hand.

Semantics, chosen so that a missing value never satisfies a condition by accident:

- ``var`` is a dotted path into the document data (``"requester.dept"``); a leading
  ``"data."`` is stripped. A path that does not resolve, or resolves to ``null``, is missing.
- On a missing field every op is false, ``!=`` and ``not_in`` included, except ``exists``:
  ``{"op": "exists"}`` (``value`` defaults to true) holds when the field is present and
  ``{"op": "exists", "value": false}`` holds when it is missing.
- Comparing incomparable types (``"abc" > 5``) is false, never an exception. Booleans are
  not numbers here: ``true == 1`` is false and ``true > 0`` is false.
- ``in`` / ``not_in`` need a list value; ``contains`` is a substring test on strings and a
  membership test on lists (false on anything else).
- ``all([])`` is true and ``any([])`` is false. ``not`` simply inverts, so ``not`` over a
  comparison on a missing field is true; write ``exists`` into the condition when that matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bflow_tasks.engine.definitions.problems import DefinitionProblem

OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in", "contains", "exists")
COMBINATORS = ("all", "any", "not")
COMPARISON_KEYS = ("var", "op", "value")
_ORDERING = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
_MISSING = object()


class ConditionError(ValueError):
    """A condition is malformed; definitions are checked before storage, so this is a bug."""


def evaluate(condition: Mapping[str, Any] | None, data: Mapping[str, Any]) -> bool:
    """Return whether the condition holds for the document data (None always holds)."""
    if condition is None:
        return True
    if not isinstance(condition, Mapping):
        raise ConditionError(f"condition must be an object, got {_json_type(condition)}")
    for name in COMBINATORS:
        if name in condition:
            operand = condition[name]
            if name == "not":
                if not isinstance(operand, Mapping):
                    raise ConditionError("'not' takes one condition object")
                return not evaluate(operand, data)
            if not isinstance(operand, list):
                raise ConditionError(f"'{name}' takes a list of conditions")
            results = (evaluate(item, data) for item in operand)
            return all(results) if name == "all" else any(results)
    if not isinstance(condition.get("var"), str) or condition.get("op") not in OPS:
        raise ConditionError(f"malformed comparison {condition!r}")
    actual = resolve(data, condition["var"])
    return _compare(actual, condition["op"], condition.get("value", _MISSING))


def resolve(data: Mapping[str, Any], var: str) -> Any:
    """Return the value at a dotted path in the data, or the module's missing sentinel."""
    current: Any = data
    for part in _path_parts(var):
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    # A JSON null is "no value" as far as routing is concerned.
    return _MISSING if current is None else current


def is_missing(value: Any) -> bool:
    """Return whether a value returned by `resolve` means the field is absent."""
    return value is _MISSING


def _path_parts(var: str) -> list[str]:
    return var.removeprefix("data.").split(".")


def _compare(actual: Any, op: str, value: Any) -> bool:
    if op == "exists":
        wanted = True if value is _MISSING else value
        return (actual is not _MISSING) == wanted
    if actual is _MISSING or value is _MISSING:
        return False
    if op == "==":
        return _equal(actual, value)
    if op == "!=":
        return not _equal(actual, value)
    if op in _ORDERING:
        return _comparable(actual, value) and _ORDERING[op](actual, value)
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            return False
        found = any(_equal(actual, item) for item in value)
        return found if op == "in" else not found
    # op == "contains"
    if isinstance(actual, str):
        return isinstance(value, str) and value in actual
    if isinstance(actual, list):
        return any(_equal(item, value) for item in actual)
    return False


def _equal(a: Any, b: Any) -> bool:
    # Python says True == 1; a document flag and a count are not the same thing.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _comparable(a: Any, b: Any) -> bool:
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def check_condition(condition: Any, path: str) -> list[DefinitionProblem]:
    """Return every structural problem of a condition, each with its JSON path."""
    if condition is None:
        return []
    if not isinstance(condition, Mapping):
        return [_problem(path, f"a condition must be an object, got {_json_type(condition)}")]
    combinators = [key for key in condition if key in COMBINATORS]
    if combinators:
        return _check_combinator(condition, combinators, path)
    if not condition:
        return [_problem(path, "empty condition; expected 'var'/'op'/'value' or one of all, any, not")]
    return _check_comparison(condition, path)


def _check_combinator(condition: Mapping[str, Any], names: list[str], path: str) -> list[DefinitionProblem]:
    problems = []
    if len(names) > 1:
        problems.append(_problem(path, f"use exactly one of all, any, not per object, got {_listed(names)}"))
    for key in condition:
        if key not in COMBINATORS:
            problems.append(_problem(f"{path}.{key}", f"unknown key '{key}' beside a combinator"))
    for name in names:
        operand = condition[name]
        if name == "not":
            if isinstance(operand, Mapping):
                problems += check_condition(operand, f"{path}.not")
            else:
                problems.append(
                    _problem(f"{path}.not", f"'not' takes one condition object, got {_json_type(operand)}")
                )
        elif isinstance(operand, list):
            for index, item in enumerate(operand):
                problems += check_condition(item, f"{path}.{name}[{index}]")
        else:
            problems.append(
                _problem(f"{path}.{name}", f"'{name}' takes a list of conditions, got {_json_type(operand)}")
            )
    return problems


def _check_comparison(condition: Mapping[str, Any], path: str) -> list[DefinitionProblem]:
    problems = [
        _problem(f"{path}.{key}", f"unknown key '{key}'; expected {_listed(COMPARISON_KEYS + COMBINATORS)}")
        for key in condition
        if key not in COMPARISON_KEYS
    ]
    var = condition.get("var")
    if "var" not in condition:
        problems.append(_problem(f"{path}.var", "missing 'var'"))
    elif not isinstance(var, str):
        problems.append(_problem(f"{path}.var", f"'var' must be a string, got {_json_type(var)}"))
    elif not all(_path_parts(var)):
        problems.append(_problem(f"{path}.var", f"empty var or empty path segment in {var!r}"))
    op = condition.get("op")
    if "op" not in condition:
        problems.append(_problem(f"{path}.op", "missing 'op'"))
    elif op not in OPS:
        problems.append(_problem(f"{path}.op", f"unknown op {op!r}; expected one of {_listed(OPS)}"))
    else:
        problems += _check_value(op, condition, f"{path}.value")
    return problems


def _check_value(op: str, condition: Mapping[str, Any], path: str) -> list[DefinitionProblem]:
    if "value" not in condition:
        return [] if op == "exists" else [_problem(path, f"missing 'value' for op '{op}'")]
    value = condition["value"]
    if op == "exists" and not isinstance(value, bool):
        return [_problem(path, f"op 'exists' takes true or false, got {_json_type(value)}")]
    if op in ("in", "not_in") and not isinstance(value, list):
        return [_problem(path, f"op '{op}' needs a list value, got {_json_type(value)}")]
    if op in _ORDERING and not (_is_number(value) or isinstance(value, str)):
        return [_problem(path, f"op '{op}' needs a number or string value, got {_json_type(value)}")]
    return []


def _problem(path: str, message: str) -> DefinitionProblem:
    return DefinitionProblem(path=path, message=message)


def _listed(names: Any) -> str:
    return ", ".join(str(name) for name in names)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
