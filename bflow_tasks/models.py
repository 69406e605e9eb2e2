"""SQLAlchemy 2 models: the seed schema plus commands (the transition outbox) and events.

Every table the engine touches in a transition is reached through an index; the unique
constraints are the last line of defence against a transition applied twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    DefaultClause,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from uuid6 import uuid7

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Return the current time in UTC, without tzinfo (how it is stored)."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    """Return a new key: a UUIDv7, ordered by time, so that rows written together share index
    pages. With uuid4 every row sat on a page of its own, and the archive read them one by one."""
    return str(uuid7())


class UTCDateTime(TypeDecorator[datetime]):
    """Store naive UTC; hand back naive UTC, whatever tz-aware value came in."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        # MySQL's plain DATETIME drops fractions of a second: the audit log and the sweep's
        # grace periods need microseconds.
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value


def _id_column() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True, default=new_id)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- tenancy -------------------------------------------------------------------------


class Tenant(Timestamped, Base):
    __tablename__ = "tenant"

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(String(255))


class Company(Timestamped, Base):
    __tablename__ = "company"

    id: Mapped[str] = _id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))


class ApiToken(Timestamped, Base):
    __tablename__ = "api_token"

    id: Mapped[str] = _id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255), default="default")
    # sha256 of the token: a leaked table does not leak credentials.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]


# --- definitions ---------------------------------------------------------------------


class Workflow(Timestamped, Base):
    __tablename__ = "workflow"
    __table_args__ = (
        Index("idx_workflow_tenant_company", "tenant_id", "company_id"),
        Index("idx_workflow_tenant_doc_type", "tenant_id", "document_type", "is_active"),
    )

    id: Mapped[str] = _id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    company_id: Mapped[str | None] = mapped_column(ForeignKey("company.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(255))
    document_type: Mapped[str] = mapped_column(String(100))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WorkflowVersion(Timestamped, Base):
    """One immutable version of a definition; runtimes point at the version they started on."""

    __tablename__ = "workflow_version"
    __table_args__ = (UniqueConstraint("workflow_id", "version"),)

    id: Mapped[str] = _id_column()
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflow.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    # The validated definition as submitted: the engine reads this, the node and
    # association rows below serve relational queries (metrics, reports).
    definition: Mapped[dict[str, Any]]
    zones: Mapped[list[Any] | None]


class Node(Timestamped, Base):
    __tablename__ = "node"
    __table_args__ = (
        UniqueConstraint("workflow_version_id", "key"),
        Index("idx_node_workflow_initial", "workflow_id", "is_initial"),
        Index("idx_node_workflow_action", "workflow_id", "action"),
    )

    id: Mapped[str] = _id_column()
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflow.id", ondelete="CASCADE"))
    workflow_version_id: Mapped[str] = mapped_column(ForeignKey("workflow_version.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(20))
    collaborator_option: Mapped[dict[str, Any] | None]
    is_initial: Mapped[bool] = mapped_column(Boolean, default=False)
    is_end: Mapped[bool] = mapped_column(Boolean, default=False)


class Association(Timestamped, Base):
    __tablename__ = "association"

    id: Mapped[str] = _id_column()
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflow.id", ondelete="CASCADE"), index=True)
    workflow_version_id: Mapped[str] = mapped_column(ForeignKey("workflow_version.id", ondelete="CASCADE"))
    source_node_id: Mapped[str] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"), index=True)
    dest_node_id: Mapped[str] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"), index=True)
    on_action: Mapped[str | None] = mapped_column(String(20))
    condition: Mapped[dict[str, Any] | None]


# --- runtimes ------------------------------------------------------------------------


class Runtime(Base):
    __tablename__ = "runtime"
    __table_args__ = (
        Index("idx_runtime_tenant_company", "tenant_id", "company_id"),
        Index("idx_runtime_document", "document_type", "document_id"),
        Index("idx_runtime_workflow_status", "workflow_id", "status"),
        Index("idx_runtime_created_at", "created_at"),
        Index("idx_runtime_status_ended", "status", "ended_at"),
        Index("idx_runtime_ended_at", "ended_at"),
        Index("idx_runtime_workflow_created", "workflow_id", "created_at"),
        # At most one runtime in flight per document; in_flight is NULL once it has ended
        # and NULLs never collide, so finished runtimes of the same document coexist.
        UniqueConstraint(
            "tenant_id", "document_type", "document_id", "in_flight", name="uq_runtime_in_flight"
        ),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_runtime_idempotency_key"),
    )

    id: Mapped[str] = _id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    company_id: Mapped[str | None] = mapped_column(String(36))
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflow.id"))
    workflow_version_id: Mapped[str] = mapped_column(ForeignKey("workflow_version.id"))
    document_type: Mapped[str] = mapped_column(String(100))
    document_id: Mapped[str] = mapped_column(String(255))
    data: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    submitted_by: Mapped[str] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    in_flight: Mapped[bool | None] = mapped_column(Boolean, default=True)
    # Bumped on every resubmit: stages of an earlier round never block a later one.
    round: Mapped[int] = mapped_column(Integer, default=1)
    # Per-runtime counters: webhook event order and stage creation order.
    event_sequence: Mapped[int] = mapped_column(Integer, default=0)
    stage_sequence: Mapped[int] = mapped_column(Integer, default=0)
    log_sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    ended_at: Mapped[datetime | None]

    # A transition loads these once (one SELECT each) and decides on them in memory; the
    # engine adds new rows through them, so they stay current until the transaction ends.
    stages: Mapped[list[RuntimeStage]] = relationship(order_by="RuntimeStage.sequence", passive_deletes=True)
    viewers: Mapped[list[RuntimeViewer]] = relationship(passive_deletes=True)


class RuntimeStage(Base):
    __tablename__ = "runtime_stage"
    __table_args__ = (
        Index("idx_runtime_stage_runtime_status", "runtime_id", "status"),
        Index("idx_runtime_stage_node", "node_id"),
        Index("idx_runtime_stage_created_at", "created_at"),
        # Sweep: stages whose opening chord never finished.
        Index("idx_runtime_stage_status_started", "status", "started_at"),
        # The same node is opened at most once per visit: two racing transitions that both
        # decide to open it cannot both commit.
        UniqueConstraint("runtime_id", "node_key", "visit", name="uq_runtime_stage_visit"),
        UniqueConstraint("runtime_id", "sequence", name="uq_runtime_stage_sequence"),
    )

    id: Mapped[str] = _id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(ForeignKey("node.id"))
    node_key: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(20))
    round: Mapped[int] = mapped_column(Integer)
    visit: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="open")
    # Approvers resolved when the stage was planned; the opening chord creates one
    # assignee per entry. mode/quorum decide when the stage is done.
    approvers: Mapped[list[Any]]
    mode: Mapped[str] = mapped_column(String(10), default="all")
    quorum: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by the opening chord's body; NULL means "opening" (the sweep finishes it).
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    # When the sweep last re-sent this stage's opening: it waits a full grace period again.
    swept_at: Mapped[datetime | None]

    assignees: Mapped[list[RuntimeAssignee]] = relationship(
        order_by="(RuntimeAssignee.created_at, RuntimeAssignee.id)", passive_deletes=True
    )


class RuntimeAssignee(Base):
    __tablename__ = "runtime_assignee"
    __table_args__ = (
        Index("idx_runtime_assignee_runtime_user", "runtime_id", "user"),
        Index("idx_runtime_assignee_stage_status", "runtime_stage_id", "status"),
        Index("idx_runtime_assignee_user_status", "user", "status"),
        Index("idx_runtime_assignee_status_due", "status", "due_at"),
        Index("idx_runtime_assignee_status_reminder", "status", "next_reminder_at"),
        UniqueConstraint("runtime_stage_id", "user", name="uq_runtime_assignee_stage_user"),
    )

    id: Mapped[str] = _id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    runtime_stage_id: Mapped[str] = mapped_column(ForeignKey("runtime_stage.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    node_key: Mapped[str] = mapped_column(String(100))
    user: Mapped[str] = mapped_column(String(255))
    assign_type: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    action_taken: Mapped[str | None] = mapped_column(String(20))
    comments: Mapped[str | None] = mapped_column(Text)
    delegated_from_id: Mapped[str | None] = mapped_column(String(36))
    due_at: Mapped[datetime | None]
    # SLA bookkeeping (Beat's SLA scan): each is set once, so each event goes out once.
    overdue_at: Mapped[datetime | None]
    escalated_at: Mapped[datetime | None]
    next_reminder_at: Mapped[datetime | None]
    last_reminded_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]


class RuntimeLog(Base):
    """The audit trail: one row for every change the engine makes to a runtime."""

    __tablename__ = "runtime_log"
    __table_args__ = (
        Index("idx_runtime_log_runtime_created", "runtime_id", "created_at"),
        Index("idx_runtime_log_runtime_sequence", "runtime_id", "sequence"),
    )

    id: Mapped[str] = _id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    # Order within a runtime: several lines are often written in the same microsecond.
    sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stage_id: Mapped[str | None] = mapped_column(String(36))
    assignee_id: Mapped[str | None] = mapped_column(String(36))
    actor: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(50))
    message: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RuntimeViewer(Base):
    __tablename__ = "runtime_viewer"
    __table_args__ = (
        UniqueConstraint("runtime_id", "user", name="uq_runtime_viewer_runtime_user"),
        Index("idx_runtime_viewer_user", "user"),
    )

    id: Mapped[str] = _id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    user: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RuntimeCommand(Base):
    """A request that changes a runtime (submit, action, resubmit, cancel): the outbox.

    The shim commits the command before it publishes the message that applies it; the
    sweep re-publishes any command still `requested` after a grace period, and applying a
    command twice is a no-op. `dedupe_key` makes "one action per task" and "one resubmit
    per round" a unique constraint rather than a hope.
    """

    __tablename__ = "runtime_command"
    __table_args__ = (
        Index("idx_runtime_command_status_created", "status", "created_at"),
        Index("idx_runtime_command_runtime", "runtime_id"),
    )

    id: Mapped[str] = _id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    dedupe_key: Mapped[str] = mapped_column(String(120), unique=True)
    assignee_id: Mapped[str | None] = mapped_column(String(36))
    actor: Mapped[str | None] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="requested")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None]
    # When the sweep last re-sent this command: it waits a full grace period again.
    swept_at: Mapped[datetime | None]


class RuntimeEvent(Base):
    """A domain event, written in the transaction of the change it describes."""

    __tablename__ = "runtime_event"
    __table_args__ = (
        UniqueConstraint("runtime_id", "sequence", name="uq_runtime_event_sequence"),
        Index("idx_runtime_event_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[str] = _id_column()
    tenant_id: Mapped[str] = mapped_column(String(36))
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(50))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- webhooks (delivery lands with the webhooks issue) ---------------------------------


class WebhookEndpoint(Timestamped, Base):
    __tablename__ = "webhook_endpoint"

    id: Mapped[str] = _id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    # Event types this endpoint receives; ["*"] means all.
    events: Mapped[list[Any]]
    secret_encrypted: Mapped[str] = mapped_column(Text)
    # During a rotation the old secret signs too, until it expires.
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    # Start of the current run of nothing-but-failures (reset by any success).
    failing_since: Mapped[datetime | None]


class WebhookDelivery(Timestamped, Base):
    """One event for one endpoint: the exact body to send, and where its retries stand."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery_endpoint_event"),
        Index("idx_webhook_delivery_status_next", "status", "next_attempt_at"),
        # A runtime's events reach an endpoint in sequence order: the stream's head is found here.
        Index("idx_webhook_delivery_stream", "endpoint_id", "runtime_id", "sequence"),
        Index("idx_webhook_delivery_endpoint_status", "endpoint_id", "status", "created_at"),
    )

    id: Mapped[str] = _id_column()
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoint.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(50))
    runtime_id: Mapped[str | None] = mapped_column(String(36))
    sequence: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    # A claimed delivery is being sent until then; past it, another worker may take it over.
    locked_until: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery, kept for the deliveries log."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (Index("idx_webhook_attempt_delivery", "delivery_id", "attempted_at"),)

    id: Mapped[str] = _id_column()
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_delivery.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)


# --- scheduled jobs ---------------------------------------------------------------------


class JobRun(Base):
    """One firing of a Beat job for one time slot; the unique key makes a second firing a no-op."""

    __tablename__ = "job_run"
    __table_args__ = (UniqueConstraint("job", "slot", name="uq_job_run_job_slot"),)

    id: Mapped[str] = _id_column()
    job: Mapped[str] = mapped_column(String(100))
    slot: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None]


# --- archive twins ----------------------------------------------------------------------

ARCHIVED_TABLES = ("runtime", "runtime_stage", "runtime_assignee", "runtime_log", "runtime_event")


def _copy(default: object) -> DefaultClause | None:
    return DefaultClause(default.arg) if isinstance(default, DefaultClause) else None  # type: ignore[arg-type]


def _archive_twin(source: Table) -> Table:
    """Same columns as `source`, no foreign keys or uniques: archived rows never change."""
    columns = [
        Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            nullable=c.nullable,
            server_default=_copy(c.server_default),
        )
        for c in source.columns
    ]
    twin = Table(f"{source.name}_archive", Base.metadata, *columns)
    if "runtime_id" in source.columns:
        Index(f"idx_{source.name}_archive_runtime", twin.c.runtime_id)
    return twin


ARCHIVE_TWINS = {name: _archive_twin(Base.metadata.tables[name]) for name in ARCHIVED_TABLES}
