"""Reachability over a definition's associations (graph checks and joins)."""

from __future__ import annotations

from bflow_tasks.engine.definitions.language import WorkflowDefinition


def reachable_from(definition: WorkflowDefinition, key: str) -> set[str]:
    """Return every node key reachable from `key` by one or more associations."""
    seen: set[str] = set()
    frontier = [key]
    while frontier:
        current = frontier.pop()
        for association in definition.associations:
            if association.source == current and association.dest not in seen:
                seen.add(association.dest)
                frontier.append(association.dest)
    return seen


def only_through(definition: WorkflowDefinition, key: str, gate: str) -> bool:
    """True if every path from `key` to an end node passes through `gate` (conditions aside)."""
    seen = {key}
    frontier = [key]
    while frontier:
        current = frontier.pop()
        if definition.node(current).action == "end":
            return False
        for association in definition.outgoing(current):
            if association.dest != gate and association.dest not in seen:
                seen.add(association.dest)
                frontier.append(association.dest)
    return True
