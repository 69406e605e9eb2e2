"""Workflow definitions: the pydantic shape of the language (docs/definitions.md) and the graph checks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from bflow_tasks.engine.definitions import conditions, documents

# Re-exported: callers know the problem type as definitions.DefinitionProblem.
from bflow_tasks.engine.definitions.problems import DefinitionProblem as DefinitionProblem

NodeAction = Literal["create", "approve", "todo", "receive", "end"]
# Ten years: any due time it gives stays a valid date.
MAX_HOURS = 24 * 366 * 10
Outcome = Literal["approve", "reject", "return", "complete"]


class _Strict(BaseModel):
    # Unknown keys are mistakes in a definition, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class UsersSource(_Strict):
    users: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(min_length=1)


class FieldSource(_Strict):
    field: str = Field(min_length=1, pattern=r"^data(\.[A-Za-z0-9_\-]+)+$")


class ActorOfSource(_Strict):
    actor_of: str = Field(min_length=1)


class SubmitterSource(_Strict):
    submitter: Literal[True]


_SOURCE_KINDS = {
    "users": UsersSource,
    "field": FieldSource,
    "actor_of": ActorOfSource,
    "submitter": SubmitterSource,
}


def _source_kind(value: Any) -> str | None:
    # Pick the member by its one identifying key, so a bad source gets one precise error
    # instead of one error per union member.
    if isinstance(value, dict):
        kinds = [key for key in _SOURCE_KINDS if key in value]
        return kinds[0] if len(kinds) == 1 else None
    return next((key for key, cls in _SOURCE_KINDS.items() if isinstance(value, cls)), None)


ApproverSource = Annotated[
    Annotated[UsersSource, Tag("users")]
    | Annotated[FieldSource, Tag("field")]
    | Annotated[ActorOfSource, Tag("actor_of")]
    | Annotated[SubmitterSource, Tag("submitter")],
    Discriminator(
        _source_kind,
        custom_error_type="approver_source",
        custom_error_message="an approver source is an object with exactly one of "
        "'users', 'field', 'actor_of', 'submitter'",
    ),
]


class Approvers(_Strict):
    mode: Literal["all", "any", "quorum"] = "all"
    quorum: int | None = Field(default=None, ge=1)
    sources: list[ApproverSource] = Field(min_length=1)

    @model_validator(mode="after")
    def _quorum_goes_with_mode(self) -> Approvers:
        if self.mode == "quorum" and self.quorum is None:
            raise ValueError("mode 'quorum' needs 'quorum': N")
        if self.mode != "quorum" and self.quorum is not None:
            raise ValueError("'quorum' is only allowed with mode 'quorum'")
        return self

    def static_count(self) -> int | None:
        """Return how many approvers the sources name, or None if any is known only at run time."""
        named: set[str] = set()
        for source in self.sources:
            if isinstance(source, UsersSource):
                named.update(source.users)  # a user named by two sources is one approver
            elif isinstance(source, SubmitterSource | ActorOfSource | FieldSource):
                # A field may hold a list; an actor or the submitter is one person but may
                # coincide with another source: only static user lists give a sure count.
                return None
        return len(named)


class NodeDef(_Strict):
    key: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_\-]+$")
    name: str = Field(min_length=1, max_length=255)
    action: NodeAction
    sla_hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)
    escalate_to: str | None = Field(default=None, min_length=1, max_length=255)
    reminder_hours: float | None = Field(default=None, gt=0, le=MAX_HOURS)
    zones: list[str] = Field(default_factory=list)
    join: Literal["all", "any"] = "all"
    approvers: Approvers | None = None

    @property
    def needs_people(self) -> bool:
        return self.action in ("approve", "todo", "receive")


class AssociationDef(_Strict):
    source: str = Field(min_length=1)
    dest: str = Field(min_length=1)
    on: Outcome | None = None
    condition: dict[str, Any] | None = None


class WorkflowDefinition(_Strict):
    name: str = Field(min_length=1, max_length=255)
    document_type: str = Field(min_length=1, max_length=100)
    nodes: list[NodeDef] = Field(min_length=1)
    associations: list[AssociationDef] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)

    @field_validator("nodes")
    @classmethod
    def _nodes_not_empty(cls, nodes: list[NodeDef]) -> list[NodeDef]:
        return nodes

    def node(self, key: str) -> NodeDef:
        for node in self.nodes:
            if node.key == key:
                return node
        raise KeyError(key)

    @property
    def create_node(self) -> NodeDef:
        return next(n for n in self.nodes if n.action == "create")

    def outgoing(self, key: str) -> list[AssociationDef]:
        return [a for a in self.associations if a.source == key]

    def incoming(self, key: str) -> list[AssociationDef]:
        return [a for a in self.associations if a.dest == key]


class DefinitionError(Exception):
    """A definition failed validation; `problems` lists every reason with its path."""

    def __init__(self, problems: list[DefinitionProblem]):
        self.problems = problems
        super().__init__("; ".join(f"{p.path}: {p.message}" for p in problems))


def parse_definition(raw: Any) -> WorkflowDefinition:
    """Validate a raw definition (shape, then graph) and return it, or raise DefinitionError."""
    problem = documents.json_problem(raw, max_depth=documents.MAX_STORED_DEPTH)
    if problem:
        raise DefinitionError([DefinitionProblem(path="$", message=problem)])
    try:
        definition = WorkflowDefinition.model_validate(raw)
    except ValidationError as exc:
        raise DefinitionError([_problem_from_pydantic(e) for e in exc.errors()]) from None
    problems = check_graph(definition)
    if problems:
        raise DefinitionError(problems)
    return definition


def _problem_from_pydantic(error: Any) -> DefinitionProblem:
    loc = error["loc"]
    path = "$"
    for index, part in enumerate(loc):
        # pydantic puts the union tag after the list index (sources[0].users.users);
        # the submitted document has no such level.
        if index >= 2 and loc[index - 2] == "sources" and isinstance(loc[index - 1], int):
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    message = error["msg"].removeprefix("Value error, ")
    return DefinitionProblem(path=path, message=message)


def check_graph(definition: WorkflowDefinition) -> list[DefinitionProblem]:
    """Return every graph problem of a shape-valid definition (empty when it is sound)."""
    first_index: dict[str, int] = {}
    problems = _check_node_kinds(definition) + _check_keys(definition, first_index)
    problems += _check_associations(definition, first_index)
    problems += _check_flow(definition, first_index)
    for index, node in enumerate(definition.nodes):
        problems += _check_node(definition, node, f"$.nodes[{index}]", first_index)
    return problems


def _problem(path: str, message: str) -> DefinitionProblem:
    return DefinitionProblem(path=path, message=message)


def _check_node_kinds(definition: WorkflowDefinition) -> list[DefinitionProblem]:
    creates = [i for i, node in enumerate(definition.nodes) if node.action == "create"]
    problems = [
        _problem(f"$.nodes[{i}].action", f"a second 'create' node (first at $.nodes[{creates[0]}])")
        for i in creates[1:]
    ]
    if not creates:
        problems.append(_problem("$.nodes", "no 'create' node; exactly one is required"))
    if not any(node.action == "end" for node in definition.nodes):
        problems.append(_problem("$.nodes", "no 'end' node; at least one is required"))
    return problems


def _check_keys(definition: WorkflowDefinition, first_index: dict[str, int]) -> list[DefinitionProblem]:
    """Fill first_index with each key's first node index; report the later duplicates."""
    problems = []
    for index, node in enumerate(definition.nodes):
        if node.key in first_index:
            first = f"$.nodes[{first_index[node.key]}]"
            problems.append(
                _problem(f"$.nodes[{index}].key", f"duplicate node key '{node.key}' (first at {first})")
            )
        else:
            first_index[node.key] = index
    return problems


def _check_associations(
    definition: WorkflowDefinition, first_index: dict[str, int]
) -> list[DefinitionProblem]:
    problems: list[DefinitionProblem] = []
    seen: dict[tuple[str, str, str | None], int] = {}
    for index, assoc in enumerate(definition.associations):
        path = f"$.associations[{index}]"
        for end in ("source", "dest"):
            key = getattr(assoc, end)
            if key not in first_index:
                problems.append(_problem(f"{path}.{end}", f"unknown node key '{key}'"))
        signature = (assoc.source, assoc.dest, assoc.on)
        if signature in seen:
            problems.append(
                _problem(path, f"duplicate of $.associations[{seen[signature]}] (same source, dest and on)")
            )
        else:
            seen[signature] = index
        problems += conditions.check_condition(assoc.condition, f"{path}.condition")
        if assoc.source in first_index:
            problems += _check_outgoing(definition.nodes[first_index[assoc.source]], assoc, path)
    return problems


# Which node actions can produce each outcome an association may wait for.
_OUTCOME_SOURCES: dict[str, tuple[str, ...]] = {
    "approve": ("approve",),
    "reject": ("approve",),
    "return": ("approve",),
    "complete": ("todo", "receive"),
}


def _check_outgoing(source: NodeDef, assoc: AssociationDef, path: str) -> list[DefinitionProblem]:
    if source.action == "end":
        return [_problem(f"{path}.source", f"end node '{source.key}' cannot have outgoing associations")]
    allowed = _OUTCOME_SOURCES[assoc.on] if assoc.on else ()
    if assoc.on and source.action not in allowed:
        return [
            _problem(
                f"{path}.on",
                f"'on: {assoc.on}' only applies to {' or '.join(allowed)} nodes; "
                f"'{source.key}' has action '{source.action}'",
            )
        ]
    return []


def _check_flow(definition: WorkflowDefinition, first_index: dict[str, int]) -> list[DefinitionProblem]:
    """Report nodes the create node cannot reach and non-end nodes with no way out."""
    known = [a for a in definition.associations if a.source in first_index and a.dest in first_index]
    problems = []
    for key, index in first_index.items():
        node = definition.nodes[index]
        if node.action != "end" and not any(a.source == key for a in known):
            message = f"node '{key}' has no outgoing association; only end nodes may stop"
            problems.append(_problem(f"$.nodes[{index}]", message))
    start = next((n.key for n in definition.nodes if n.action == "create"), None)
    if start is None:
        return problems  # already reported; reachability has no origin to measure from
    reached, frontier = {start}, [start]
    while frontier:
        current = frontier.pop()
        for assoc in known:
            if assoc.source == current and assoc.dest not in reached:
                reached.add(assoc.dest)
                frontier.append(assoc.dest)
    for key, index in first_index.items():
        if key not in reached:
            problems.append(_problem(f"$.nodes[{index}]", f"node '{key}' cannot be reached from '{start}'"))
    return problems


def _check_node(
    definition: WorkflowDefinition, node: NodeDef, path: str, first_index: dict[str, int]
) -> list[DefinitionProblem]:
    problems = [
        _problem(f"{path}.zones[{i}]", f"zone '{zone}' is not among the workflow zones")
        for i, zone in enumerate(node.zones)
        if zone not in definition.zones
    ]
    approvers = node.approvers
    if approvers is None:
        if node.needs_people:
            problems.append(_problem(f"{path}.approvers", f"{node.action} node '{node.key}' needs approvers"))
        return problems
    if not node.needs_people:
        problems.append(_problem(f"{path}.approvers", f"{node.action} node '{node.key}' takes no approvers"))
    count = approvers.static_count()
    if approvers.quorum is not None and count is not None and approvers.quorum > count:
        problems.append(
            _problem(
                f"{path}.approvers.quorum",
                f"quorum {approvers.quorum} exceeds the number of approvers named ({count})",
            )
        )
    for i, source in enumerate(approvers.sources):
        if not isinstance(source, ActorOfSource):
            continue
        source_path = f"{path}.approvers.sources[{i}].actor_of"
        if source.actor_of == node.key:
            problems.append(_problem(source_path, f"node '{node.key}' cannot take its approvers from itself"))
        elif source.actor_of not in first_index:
            problems.append(_problem(source_path, f"unknown node key '{source.actor_of}'"))
        elif definition.node(source.actor_of).action == "end":
            problems.append(_problem(source_path, f"nobody acts on end node '{source.actor_of}'"))
    return problems
