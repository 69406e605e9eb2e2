"""Tenants, their API tokens, and workflow definitions with their versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bflow_tasks.models.base import Base, Timestamped, exact_string, id_column, utcnow


class Tenant(Timestamped, Base):
    __tablename__ = "tenant"

    id: Mapped[str] = id_column()
    name: Mapped[str] = mapped_column(String(255))


class Company(Timestamped, Base):
    __tablename__ = "company"

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))


class ApiToken(Timestamped, Base):
    __tablename__ = "api_token"

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255), default="default")
    # sha256 of the token: a leaked table does not leak credentials.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]
    # None: the token never expires.
    expires_at: Mapped[datetime | None]


class Workflow(Timestamped, Base):
    __tablename__ = "workflow"
    __table_args__ = (
        Index("idx_workflow_tenant_company", "tenant_id", "company_id"),
        Index("idx_workflow_tenant_doc_type", "tenant_id", "document_type", "is_active"),
    )

    id: Mapped[str] = id_column()
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

    id: Mapped[str] = id_column()
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

    id: Mapped[str] = id_column()
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflow.id", ondelete="CASCADE"))
    workflow_version_id: Mapped[str] = mapped_column(ForeignKey("workflow_version.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(exact_string(100))
    name: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(20))
    collaborator_option: Mapped[dict[str, Any] | None]
    is_initial: Mapped[bool] = mapped_column(Boolean, default=False)
    is_end: Mapped[bool] = mapped_column(Boolean, default=False)


class Association(Timestamped, Base):
    __tablename__ = "association"

    id: Mapped[str] = id_column()
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflow.id", ondelete="CASCADE"), index=True)
    workflow_version_id: Mapped[str] = mapped_column(ForeignKey("workflow_version.id", ondelete="CASCADE"))
    source_node_id: Mapped[str] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"), index=True)
    dest_node_id: Mapped[str] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"), index=True)
    on_action: Mapped[str | None] = mapped_column(String(20))
    condition: Mapped[dict[str, Any] | None]
