"""Beat job runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bflow_tasks.models.base import Base, id_column, utcnow


class JobRun(Base):
    """One firing of a Beat job for one time slot; the unique key makes a second firing a no-op."""

    __tablename__ = "job_run"
    __table_args__ = (UniqueConstraint("job", "slot", name="uq_job_run_job_slot"),)

    id: Mapped[str] = id_column()
    job: Mapped[str] = mapped_column(String(100))
    slot: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None]
