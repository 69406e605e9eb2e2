"""Runtimes: stages, tasks (assignees), the audit log, viewers, commands and events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bflow_tasks.models.base import Base, exact_string, id_column, utcnow


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

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    company_id: Mapped[str | None] = mapped_column(String(36))
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflow.id"))
    workflow_version_id: Mapped[str] = mapped_column(ForeignKey("workflow_version.id"))
    document_type: Mapped[str] = mapped_column(exact_string(100))
    document_id: Mapped[str] = mapped_column(exact_string(255))
    data: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    submitted_by: Mapped[str] = mapped_column(exact_string(255))
    idempotency_key: Mapped[str | None] = mapped_column(exact_string(255))
    # SHA-256 of the request an Idempotency-Key was first sent with: a replay must match it.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
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
        # Sweep: stages whose opening chord never finished, first sent or due again.
        Index("idx_runtime_stage_status_sweep", "status", "started_at", "next_sweep_at", "created_at"),
        # The same node is opened at most once per visit: two racing transitions that both
        # decide to open it cannot both commit.
        UniqueConstraint("runtime_id", "node_key", "visit", name="uq_runtime_stage_visit"),
        UniqueConstraint("runtime_id", "sequence", name="uq_runtime_stage_sequence"),
    )

    id: Mapped[str] = id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(ForeignKey("node.id"))
    node_key: Mapped[str] = mapped_column(exact_string(100))
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
    # When the sweep may re-send this stage's opening again (NULL: never re-sent yet).
    next_sweep_at: Mapped[datetime | None]
    # Failed attempts to create its tasks that a retry would not fix (engine.failures), and
    # when the last was counted: every approver's task of one try fails, and counts once.
    opening_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    opening_failed_at: Mapped[datetime | None]

    assignees: Mapped[list[RuntimeAssignee]] = relationship(
        order_by="(RuntimeAssignee.created_at, RuntimeAssignee.id)", passive_deletes=True
    )


class RuntimeAssignee(Base):
    __tablename__ = "runtime_assignee"
    __table_args__ = (
        Index("idx_runtime_assignee_runtime_user", "runtime_id", "user"),
        Index("idx_runtime_assignee_stage_status", "runtime_stage_id", "status"),
        Index("idx_runtime_assignee_user_status", "user", "status"),
        # The SLA scan's: tasks it holds back (sla_retry_at) are skipped within the index.
        Index("idx_runtime_assignee_status_due", "status", "due_at", "sla_retry_at"),
        Index("idx_runtime_assignee_status_reminder", "status", "next_reminder_at", "sla_retry_at"),
        UniqueConstraint("runtime_stage_id", "user", name="uq_runtime_assignee_stage_user"),
    )

    id: Mapped[str] = id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    runtime_stage_id: Mapped[str] = mapped_column(ForeignKey("runtime_stage.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    node_key: Mapped[str] = mapped_column(exact_string(100))
    user: Mapped[str] = mapped_column(exact_string(255))
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
    # Set when the SLA scan could not handle the task's runtime: left out until then.
    sla_retry_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]


class RuntimeLog(Base):
    """The audit trail: one row for every change the engine makes to a runtime."""

    __tablename__ = "runtime_log"
    __table_args__ = (
        Index("idx_runtime_log_runtime_created", "runtime_id", "created_at"),
        Index("idx_runtime_log_runtime_sequence", "runtime_id", "sequence"),
    )

    id: Mapped[str] = id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    # Order within a runtime: several lines are often written in the same microsecond.
    sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stage_id: Mapped[str | None] = mapped_column(String(36))
    assignee_id: Mapped[str | None] = mapped_column(String(36))
    actor: Mapped[str | None] = mapped_column(exact_string(255))
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

    id: Mapped[str] = id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    user: Mapped[str] = mapped_column(exact_string(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RuntimeCommand(Base):
    """A request that changes a runtime (submit, action, resubmit, cancel): the outbox.

    The shim commits the command before it publishes the message that applies it; the
    sweep re-publishes any command still `requested` after a grace period, and applying a
    command twice is a no-op. Status: `requested`, then `applied`, `refused` (no longer
    applicable) or `failed` (it kept failing: see `engine.failures`). `dedupe_key` makes
    "one action per task" and "one resubmit per round" a unique constraint rather than a hope.
    """

    __tablename__ = "runtime_command"
    __table_args__ = (
        Index("idx_runtime_command_status_created", "status", "created_at"),
        # Sweep: commands never re-sent (NULL, by age) or due again (by next_sweep_at).
        Index("idx_runtime_command_status_sweep", "status", "next_sweep_at", "created_at"),
        Index("idx_runtime_command_runtime", "runtime_id"),
    )

    id: Mapped[str] = id_column()
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    dedupe_key: Mapped[str] = mapped_column(String(120), unique=True)
    assignee_id: Mapped[str | None] = mapped_column(String(36))
    actor: Mapped[str | None] = mapped_column(exact_string(255))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="requested")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None]
    # When the sweep may re-send this command again (NULL: never re-sent yet).
    next_sweep_at: Mapped[datetime | None]
    # Failed attempts to apply it that a retry would not fix (engine.failures): at the
    # limit the command is `failed` and its runtime ends in `error`.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RuntimeEvent(Base):
    """A domain event, written in the transaction of the change it describes."""

    __tablename__ = "runtime_event"
    __table_args__ = (
        UniqueConstraint("runtime_id", "sequence", name="uq_runtime_event_sequence"),
        Index("idx_runtime_event_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(String(36))
    runtime_id: Mapped[str] = mapped_column(ForeignKey("runtime.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(50))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
