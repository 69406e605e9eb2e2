"""Reachability over a definition's associations (graph checks and `join: all`)."""

from __future__ import annotations

from bflow_tasks.engine.definitions import WorkflowDefinition


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
