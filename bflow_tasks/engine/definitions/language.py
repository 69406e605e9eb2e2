"""Workflow definitions: the pydantic shape of the language (docs/definitions.md) and the graph checks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

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


# The descriptions and examples below only feed the JSON Schema (GET /api/v1/schemas/
# workflow-definition and the OpenAPI request bodies); they change no validation.


class UsersSource(_Strict):
    """Approvers named in the definition: these user ids."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"users": ["fin1", "fin2", "fin3"]}]})

    users: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        min_length=1,
        description="user ids; a user named twice (here or in another source) is one approver",
        examples=[["fin1", "fin2", "fin3"]],
    )


class FieldSource(_Strict):
    """Approvers read from the document: the user id (or list of ids) at a path of its data."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"field": "data.manager"}]})

    field: str = Field(
        min_length=1,
        pattern=r"^data(\.[A-Za-z0-9_\-]+)+$",
        description="a dotted path into the document, starting with 'data.'",
        examples=["data.manager", "data.requester.approvers"],
    )


class ActorOfSource(_Strict):
    """Approvers who acted on an earlier node of the same runtime."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"actor_of": "manager"}]})

    actor_of: str = Field(
        min_length=1,
        description="the key of another node (not this one, not an end node)",
        examples=["manager"],
    )


class SubmitterSource(_Strict):
    """The user who submitted the document."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"submitter": True}]})

    submitter: Literal[True] = Field(description="always true", examples=[True])


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
    """Who acts on an approve, todo or receive node, and how many of them must."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"sources": [{"field": "data.manager"}]},
                {"mode": "quorum", "quorum": 2, "sources": [{"users": ["fin1", "fin2", "fin3"]}]},
            ]
        }
    )

    mode: Literal["all", "any", "quorum"] = Field(
        default="all",
        description="all: every approver acts; any: the first one decides; quorum: 'quorum' of them",
        examples=["all", "any", "quorum"],
    )
    quorum: int | None = Field(
        default=None,
        ge=1,
        description="how many approvals carry the node; only with mode 'quorum', and at most "
        "the number of approvers",
        examples=[2],
    )
    sources: list[ApproverSource] = Field(
        min_length=1,
        description="where the approvers come from; each source is an object with exactly one of "
        "'users', 'field', 'actor_of', 'submitter'",
        examples=[[{"users": ["fin1", "fin2"]}, {"field": "data.manager"}]],
    )

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
    """A step of the workflow: the one create node, approve/todo/receive nodes, end nodes."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key": "manager",
                    "name": "Manager approves",
                    "action": "approve",
                    "sla_hours": 24,
                    "approvers": {"sources": [{"field": "data.manager"}]},
                }
            ]
        }
    )

    key: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_\-]+$",
        description="the node's id, unique in the definition; associations refer to it",
        examples=["manager"],
    )
    name: str = Field(
        min_length=1, max_length=255, description="a label for people", examples=["Manager approves"]
    )
    action: NodeAction = Field(
        description="create: where a runtime starts (exactly one); approve: approve, reject or return; "
        "todo, receive: mark done; end: where a runtime finishes (at least one)",
        examples=["approve"],
    )
    sla_hours: float | None = Field(
        default=None,
        gt=0,
        le=MAX_HOURS,
        description="hours the node's tasks may stay open before they are overdue",
        examples=[24],
    )
    escalate_to: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="the user id an overdue task is escalated to",
        examples=["director"],
    )
    reminder_hours: float | None = Field(
        default=None,
        gt=0,
        le=MAX_HOURS,
        description="hours after which an open task's assignees are reminded",
        examples=[8],
    )
    zones: list[str] = Field(
        default_factory=list,
        description="the document fields this node's approvers may edit; each one of the workflow zones",
        examples=[["cost_center"]],
    )
    join: Literal["all", "any"] = Field(
        default="all",
        description="when several branches lead here: all: wait for every branch opened; "
        "any: open on the first",
        examples=["all"],
    )
    approvers: Approvers | None = Field(
        default=None,
        description="who acts; required on approve, todo and receive nodes, refused on the others",
        examples=[{"sources": [{"field": "data.manager"}]}],
    )

    @property
    def needs_people(self) -> bool:
        return self.action in ("approve", "todo", "receive")


# Conditions stay plain objects checked by conditions.check_condition (one precise error per
# problem, with its path). These models only describe their grammar in the JSON Schema.
_COMPARISON_EXAMPLE: JsonDict = {"var": "amount", "op": ">=", "value": 1000}


def _no_default(schema: JsonDict) -> None:
    schema.pop("default", None)


class ConditionComparison(_Strict):
    """A comparison of a document field with a value."""

    model_config = ConfigDict(json_schema_extra={"examples": [_COMPARISON_EXAMPLE]})

    var: str = Field(
        min_length=1,
        description="a dotted path into the document data; a leading 'data.' is ignored",
        examples=["amount", "requester.dept"],
    )
    op: Literal[conditions.OPS] = Field(  # type: ignore[valid-type]
        description="==, !=, >, >=, <, <= compare; in, not_in take a list; contains tests a string "
        "or a list; exists tests presence",
        examples=[">=", "in"],
    )
    value: Any = Field(
        default=None,
        description="what the field is compared with (a list for in/not_in; a number or a string "
        "for orderings; true or false for exists, default true)",
        examples=[1000, ["IT", "HR"]],
        # Optional, but with no default of its own: exists defaults to true, the others need one.
        json_schema_extra=_no_default,
    )


class ConditionAll(_Strict):
    """Holds when every condition holds (an empty list holds)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"all": [_COMPARISON_EXAMPLE]}]})

    all_: list[Condition] = Field(
        alias="all", description="the conditions that must all hold", examples=[[_COMPARISON_EXAMPLE]]
    )


class ConditionAny(_Strict):
    """Holds when at least one condition holds (an empty list does not)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"any": [_COMPARISON_EXAMPLE]}]})

    any_: list[Condition] = Field(
        alias="any", description="the conditions of which one must hold", examples=[[_COMPARISON_EXAMPLE]]
    )


class ConditionNot(_Strict):
    """Holds when its condition does not."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"not": _COMPARISON_EXAMPLE}]})

    not_: Condition = Field(alias="not", description="the condition inverted", examples=[_COMPARISON_EXAMPLE])


Condition = ConditionComparison | ConditionAll | ConditionAny | ConditionNot
for _model in (ConditionAll, ConditionAny, ConditionNot):
    _model.model_rebuild()


def _as_is(value: Any) -> Any:
    return value


class AssociationDef(_Strict):
    """An edge: when `source` finishes (with outcome `on`, if given), open `dest` if `condition` holds."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"source": "submit", "dest": "manager"},
                {"source": "manager", "dest": "finance", "on": "approve", "condition": _COMPARISON_EXAMPLE},
            ]
        }
    )

    source: str = Field(min_length=1, description="the key of the node it leaves", examples=["manager"])
    dest: str = Field(min_length=1, description="the key of the node it opens", examples=["finance"])
    on: Outcome | None = Field(
        default=None,
        description="the outcome it waits for: approve, reject, return (approve nodes), complete "
        "(todo and receive nodes); none: any outcome",
        examples=["approve"],
    )
    condition: Annotated[
        dict[str, Any] | None, BeforeValidator(_as_is, json_schema_input_type=Condition | None)
    ] = Field(
        default=None,
        description="a condition on the document data; the association is taken only when it holds",
        examples=[_COMPARISON_EXAMPLE],
    )


class WorkflowDefinition(_Strict):
    """A workflow definition (docs/definitions.md).

    The schema checks the shape; the graph checks (one create node, at least one end node,
    every node reachable, quorum within the approvers named...) are the API's (422 with paths).
    """

    model_config = ConfigDict(
        title="WorkflowDefinition",
        json_schema_extra={
            "examples": [
                {
                    "name": "Leave request",
                    "document_type": "leave_request",
                    "nodes": [
                        {"key": "submit", "name": "Employee submits", "action": "create"},
                        {
                            "key": "manager",
                            "name": "Manager approves",
                            "action": "approve",
                            "approvers": {"sources": [{"field": "data.manager"}]},
                        },
                        {"key": "done", "name": "Approved", "action": "end"},
                    ],
                    "associations": [
                        {"source": "submit", "dest": "manager"},
                        {"source": "manager", "dest": "done", "on": "approve"},
                    ],
                }
            ]
        },
    )

    name: str = Field(
        min_length=1, max_length=255, description="the workflow's name", examples=["Leave request"]
    )
    document_type: str = Field(
        min_length=1,
        max_length=100,
        description="the kind of ERP document it approves",
        examples=["leave_request"],
    )
    nodes: list[NodeDef] = Field(
        min_length=1,
        description="the steps; exactly one create node and at least one end node",
        examples=[[{"key": "submit", "name": "Employee submits", "action": "create"}]],
    )
    associations: list[AssociationDef] = Field(
        default_factory=list,
        description="the edges between nodes",
        examples=[[{"source": "submit", "dest": "manager"}]],
    )
    zones: list[str] = Field(
        default_factory=list,
        description="the document fields that nodes may let their approvers edit",
        examples=[["cost_center", "supplier"]],
    )

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
