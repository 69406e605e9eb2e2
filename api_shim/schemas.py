"""The HTTP contract (docs/api.md): request bodies (`XCreate`) and responses (`XRead`)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from bflow_tasks.engine.definitions import documents
from bflow_tasks.engine.webhooks import outbox


def _as_utc(value: datetime) -> datetime:
    # Rows hold naive UTC; answers say so explicitly (serialised with a trailing Z).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _storable(value: dict[str, Any]) -> dict[str, Any]:
    problem = documents.json_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _utc_query(value: datetime) -> datetime:
    try:
        return _as_utc(value)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


def _no_control_characters(value: str) -> str:
    # A NUL or another control character in a name is never meant: MariaDB and SQLite would
    # store it, and every log line, audit line and webhook naming it would carry it on.
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc":
            code = f"U+{ord(char):04X}"
            raise ValueError(f"must not contain a control character ({code} at position {position})")
    return value


UTCDateTime = Annotated[datetime, AfterValidator(_as_utc)]
# A time in a query string, as given (any offset) but within range in UTC.
QueryTime = Annotated[datetime, AfterValidator(_utc_query)]
# A document's fields: stored, then served back by every read of its runtime.
Document = Annotated[dict[str, Any], AfterValidator(_storable)]
# Text a person or a program reads back as a name: no control character (C0, DEL, C1).
PlainText = Annotated[str, AfterValidator(_no_control_characters)]
Name = Annotated[PlainText, Field(min_length=1, max_length=255)]
DocumentType = Annotated[PlainText, Field(min_length=1, max_length=100)]


class _Input(BaseModel):
    # A misspelt field is a mistake the client wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid")


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- errors ------------------------------------------------------------------------------


class ProblemRead(BaseModel):
    """One thing wrong with the request, and where: `$.nodes[1].key` in the body, `query.page_size`."""

    path: str
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(
        description="stable, for programs: invalid_input, not_found, conflict, database_unavailable..."
    )
    message: str = Field(description="for people; may change")
    details: list[ProblemRead] | dict[str, Any] | None = Field(
        description="each problem with its path (invalid_input, invalid_definition); else by code, or null"
    )


class ErrorRead(BaseModel):
    """The body of every error answer (docs/api.md), whatever its status."""

    error: ErrorInfo


# --- workflows ---------------------------------------------------------------------------


class WorkflowSummaryRead(_Output):
    id: str
    name: str
    document_type: str
    version: int
    is_active: bool
    created_at: UTCDateTime
    updated_at: UTCDateTime


class WorkflowRead(WorkflowSummaryRead):
    """A workflow at one version: its definition as validated and stored."""

    nodes: list[dict[str, Any]]
    associations: list[dict[str, Any]]
    zones: list[str] = Field(default_factory=list)


class WorkflowPage(BaseModel):
    count: int
    next: str | None
    previous: str | None
    results: list[WorkflowSummaryRead]


# --- runtimes ----------------------------------------------------------------------------


class RuntimeCreate(_Input):
    workflow_id: Annotated[str, Field(min_length=1, max_length=36)]
    document_type: DocumentType
    document_id: Name
    data: Document = Field(default_factory=dict)
    submitted_by: Name


class RuntimeAccepted(BaseModel):
    runtime_id: str
    status: str


class RuntimeResubmit(_Input):
    actor: Name
    data: Document | None = None


class RuntimeCancel(_Input):
    actor: Name | None = None


class CommandAccepted(BaseModel):
    runtime_id: str
    action: Literal["resubmit", "cancel"]
    status: Literal["accepted"] = "accepted"


class AssigneeRead(_Output):
    id: str
    user: str
    status: str
    action_taken: str | None
    comments: str | None
    due_at: UTCDateTime | None
    completed_at: UTCDateTime | None


class StageRead(_Output):
    id: str
    node_key: str
    status: str
    outcome: str | None
    visit: int
    round: int
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    completed_at: UTCDateTime | None
    assignees: list[AssigneeRead] = Field(default_factory=list)


class LogRead(_Output):
    sequence: int = Field(description="the line's place in its runtime's log: 1, 2, 3...")
    action: str
    actor: str | None
    stage_id: str | None
    task_id: str | None = Field(validation_alias="assignee_id")
    message: str | None
    details: dict[str, Any] | None
    created_at: UTCDateTime


class RuntimeLogPage(BaseModel):
    """Audit lines after a sequence number, in order; `next` asks for the lines after these."""

    results: list[LogRead]
    next: str | None


class RuntimeRead(_Output):
    id: str
    workflow_id: str
    workflow_version: int
    document_type: str
    document_id: str
    status: str
    submitted_by: str
    data: dict[str, Any]
    created_at: UTCDateTime
    updated_at: UTCDateTime
    ended_at: UTCDateTime | None
    error: str | None
    stages: list[StageRead]
    log: list[LogRead] = Field(description="the latest 50 audit lines, oldest first")
    log_truncated: bool = Field(False, description="earlier lines exist: read them at `log_next`")
    log_next: str | None = Field(None, description="GET /runtimes/{id}/log from the first line, if truncated")
    # True once the runtime was moved to the archive tables (read-only history).
    archived: bool = False


# --- tasks -------------------------------------------------------------------------------


class TaskRead(_Output):
    id: str
    runtime_id: str
    node_key: str
    user: str
    status: str
    action_taken: str | None
    due_at: UTCDateTime | None
    created_at: UTCDateTime
    workflow_name: str
    stage_name: str = Field(description="the node's name in the definition version the runtime runs")
    document_type: str
    document_id: str


class TaskPage(BaseModel):
    count: int
    next: str | None
    previous: str | None
    results: list[TaskRead]


class TaskActionCreate(_Input):
    action: Literal["approve", "reject", "return", "delegate"]
    actor: Name
    comments: Annotated[str, Field(max_length=10_000)] | None = None
    delegate_to: Name | None = None
    data: Document | None = None

    @field_validator("delegate_to")
    @classmethod
    def _only_for_delegate(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A stray `delegate_to` would be stored in the command as if it meant something, and
        # the client probably meant `delegate`. (A delegate without one: the engine's 400.)
        action = info.data.get("action")  # absent when the action itself was invalid
        if value is not None and action is not None and action != "delegate":
            raise ValueError(f"'delegate_to' is only allowed with action 'delegate', not '{action}'")
        return value

    @field_validator("data")
    @classmethod
    def _not_for_delegate(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        # A delegation hands the task over and decides nothing: edits to the document are
        # the delegate's to make when they act.
        if value and info.data.get("action") == "delegate":
            raise ValueError("'data' is not allowed with action 'delegate'; the delegate may send it")
        return value


class TaskActionAccepted(BaseModel):
    task_id: str
    action: str
    status: Literal["accepted"] = "accepted"


# --- health ------------------------------------------------------------------------------


class CheckRead(BaseModel):
    status: Literal["ok", "error"]
    latency_ms: float
    error: str | None = None


class HealthRead(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, CheckRead]


# --- metrics -----------------------------------------------------------------------------


class StageDurationRead(_Output):
    node_key: str
    avg_seconds: float
    count: int


class WorkflowMetricsRead(_Output):
    """A workflow's numbers over the runtimes submitted in [from, to)."""

    workflow_id: str
    from_: UTCDateTime = Field(serialization_alias="from")
    to: UTCDateTime
    executions: int
    completed: int
    rejected: int
    cancelled: int
    error: int
    running: int
    success_rate: float | None
    avg_completion_seconds: float | None
    p90_completion_seconds: float | None
    sla_tasks: int
    sla_met: int
    sla_compliance: float | None
    slowest_stage: StageDurationRead | None
    stages: list[StageDurationRead]


# --- webhooks ----------------------------------------------------------------------------


def _subscribable(value: str) -> str:
    if value != outbox.ALL and value not in outbox.SUBSCRIBABLE:
        raise ValueError(
            f"unknown event type '{value}'; expected '*' or one of {', '.join(outbox.SUBSCRIBABLE)}"
        )
    return value


EventType = Annotated[str, AfterValidator(_subscribable)]


class WebhookCreate(_Input):
    url: Annotated[str, Field(min_length=1, max_length=2048, description="http(s) URL that receives POSTs")]
    events: Annotated[list[EventType], Field(min_length=1, max_length=50)] = Field(
        default_factory=lambda: [outbox.ALL], description="event types, or ['*'] for all"
    )


class WebhookRead(_Output):
    id: str
    url: str
    events: list[str]
    is_active: bool
    disabled_reason: str | None
    failing_since: UTCDateTime | None
    previous_secret_expires_at: UTCDateTime | None
    created_at: UTCDateTime


class WebhookCreated(WebhookRead):
    """The endpoint and its signing secret, shown this once."""

    secret: str


class WebhookPage(BaseModel):
    count: int
    next: str | None
    previous: str | None
    results: list[WebhookRead]


class WebhookSecretRead(BaseModel):
    """A new signing secret, shown this once; the previous one signs too until it expires."""

    id: str
    secret: str
    previous_secret_expires_at: UTCDateTime | None


class WebhookAttemptRead(_Output):
    attempted_at: UTCDateTime
    status_code: int | None
    latency_ms: int | None
    error_class: str | None
    error: str | None
    response_body: str | None


class WebhookDeliveryRead(_Output):
    id: str = Field(description="the webhook-id header: one per event and endpoint")
    event_id: str
    event_type: str
    runtime_id: str | None
    sequence: int | None
    status: Literal["pending", "retrying", "delivered", "failed"]
    next_attempt_at: UTCDateTime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: UTCDateTime | None
    created_at: UTCDateTime
    updated_at: UTCDateTime
    attempt_count: int
    attempts: list[WebhookAttemptRead] = Field(description="the latest attempts, oldest first")


class WebhookDeliveryPage(BaseModel):
    count: int
    next: str | None
    previous: str | None
    results: list[WebhookDeliveryRead]


class WebhookReplayAccepted(BaseModel):
    delivery_id: str
    status: Literal["pending"] = "pending"


class WebhookRecoverAccepted(BaseModel):
    endpoint_id: str
    since: UTCDateTime
    replayed: int
