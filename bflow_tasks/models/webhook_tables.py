"""Webhook endpoints, their deliveries (the event outbox) and each HTTP attempt."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bflow_tasks.models.base import Base, Timestamped, id_column, utcnow


class WebhookEndpoint(Timestamped, Base):
    __tablename__ = "webhook_endpoint"

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    # Event types this endpoint receives; ["*"] means all.
    events: Mapped[list[Any]]
    secret_encrypted: Mapped[str] = mapped_column(Text)
    # Secrets replaced by a rotation, each signing beside the current one until it expires:
    # [{"secret_encrypted": ..., "expires_at": ISO-8601 UTC}, ...], newest first. A list, not
    # one slot, so that a second rotation within the overlap keeps the first old secret too.
    previous_secrets: Mapped[list[Any]] = mapped_column(default=list)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    # Start of the current run of nothing-but-failures (reset by any success, and by a quiet
    # spell longer than any retry waits: see webhook_delivery.record_attempt).
    failing_since: Mapped[datetime | None]
    last_failure_at: Mapped[datetime | None]

    @property
    def previous_secret_expires_at(self) -> datetime | None:
        """When the last of the previous secrets stops signing (None: there never was one)."""
        expiries = [datetime.fromisoformat(entry["expires_at"]) for entry in self.previous_secrets or []]
        return max(expiries, default=None)


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

    id: Mapped[str] = id_column()
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

    id: Mapped[str] = id_column()
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_delivery.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)
