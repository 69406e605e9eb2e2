"""Render a definition as a Mermaid flowchart (for `bflow workflow show --mermaid`)."""

from __future__ import annotations

from typing import Any

from bflow_tasks.engine.definitions.language import WorkflowDefinition

_SHAPES = {
    "create": ('(["', '"])'),
    "end": ('(("', '"))'),
    "approve": ('["', '"]'),
    "todo": ('["', '"]'),
    "receive": ('["', '"]'),
}


def to_mermaid(definition: WorkflowDefinition) -> str:
    """Return a `flowchart TD` of the nodes and associations, conditions on the edges."""
    lines = ["flowchart TD"]
    for node in definition.nodes:
        opening, closing = _SHAPES[node.action]
        label = node.name
        if node.approvers is not None:
            mode = node.approvers.mode
            label += f"<br/>{mode}" + (f" {node.approvers.quorum}" if mode == "quorum" else "")
        lines.append(f"    {node.key}{opening}{_escape(label)}{closing}")
    for association in definition.associations:
        parts: list[str] = [association.on] if association.on else []
        if association.condition:
            parts.append(describe(association.condition))
        edge = f'-->|"{_escape(" / ".join(parts))}"|' if parts else "-->"
        lines.append(f"    {association.source} {edge} {association.dest}")
    return "\n".join(lines)


def describe(condition: dict[str, Any]) -> str:
    """Return a short human reading of a condition, e.g. `amount >= 1000 and dept in [IT, HR]`."""
    if "all" in condition:
        return " and ".join(f"({describe(c)})" if "any" in c else describe(c) for c in condition["all"])
    if "any" in condition:
        return " or ".join(describe(c) for c in condition["any"])
    if "not" in condition:
        return f"not ({describe(condition['not'])})"
    value = condition.get("value")
    shown = "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else value
    if condition.get("op") == "exists":
        return f"{condition['var']} exists" if value in (None, True) else f"{condition['var']} missing"
    return f"{condition.get('var')} {condition.get('op')} {shown}"


def _escape(text: str) -> str:
    return text.replace('"', "#quot;")
