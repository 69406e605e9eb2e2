"""The one settings object: every knob comes from a BFLOW_* environment variable."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration (docs/operations.md); the defaults are the embedded, server-less setup."""

    model_config = SettingsConfigDict(env_prefix="BFLOW_", extra="ignore")

    database_url: str = "sqlite:///./bflow.db"
    # memory:// and cache+memory:// live inside one process: the embedded default runs the
    # shim, the worker and Beat in that process (`bflow dev`, `bflow demo`).
    broker_url: str = "memory://"
    result_backend: str = "cache+memory://"

    webhook_allow_private: bool = False
    webhook_retry_scale: float = Field(default=1.0, ge=0)
    # 15 s for the whole attempt, of which connecting may take a short part.
    webhook_timeout_seconds: float = Field(default=15.0, gt=0)
    webhook_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    # A claimed delivery is someone's for this long; it must outlast an attempt's timeout.
    webhook_lease_seconds: float = Field(default=60.0, gt=0)
    # Retries due sooner than this ride a countdown message; later ones wait for the sweep.
    webhook_countdown_max_seconds: float = Field(default=60.0, ge=0)
    # Encrypts webhook secrets at rest. Unset (the embedded default): a random key is created
    # once in `secret_key_file`; several hosts must share one key, so set it in production.
    secret_key: SecretStr | None = None
    secret_key_file: Path = Path("./bflow-secret.key")
    archive_after_days: int = Field(default=365, ge=0, le=36500)  # a century: the cutoff stays a date
    sla_scan_seconds: float = Field(default=60, gt=0)
    sweep_seconds: float = Field(default=30, gt=0)
    # Beat jobs work in bounded batches, so one run never holds many locks or rows at once.
    sla_batch_size: int = Field(default=500, ge=1)
    archive_batch_size: int = Field(default=500, ge=1)
    # The daily archive runs at this hour (UTC), when approvals are quiet.
    archive_hour_utc: int = Field(default=3, ge=0, le=23)

    # A command or stage whose message has not been acted on after this long is re-enqueued
    # by the sweep; long enough that a healthy worker has always picked it up first.
    sweep_grace: timedelta = timedelta(seconds=30)
    # Redis redelivers unacked messages after this; it must exceed the longest task.
    visibility_timeout_seconds: int = Field(default=3600, gt=0)
    # How long a publish waits on the broker, per try, before the shim answers 503.
    publish_timeout_seconds: float = Field(default=5.0, gt=0)
    max_body_bytes: int = Field(default=256 * 1024, ge=1)
    sql_echo: bool = False
    # Connections each process keeps open to MySQL. The shim serves up to 40 requests at once
    # (Starlette's thread pool); a pool smaller than its concurrency opens and closes a
    # connection (TCP, handshake, TLS setup) for most requests under load.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)

    # Operations. `json` log lines carry the correlation id and tenant/runtime/task ids;
    # `text` (the default) reads better at a terminal (`bflow dev`, `bflow demo`).
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # /health answers from a cache this fresh, so a probe storm costs one control broadcast.
    health_cache_seconds: float = Field(default=5.0, ge=0)
    # How long /health waits for workers to answer the `active_queues` broadcast (it always
    # waits this long: it cannot know how many workers there are).
    health_worker_timeout_seconds: float = Field(default=0.5, gt=0)
    # /metrics reads its database gauges at most this often.
    metrics_cache_seconds: float = Field(default=5.0, ge=0)

    @field_validator("sweep_grace", mode="before")
    @classmethod
    def _bare_seconds(cls, value: object) -> object:
        """Accept a bare number of seconds (BFLOW_SWEEP_GRACE=3) as well as ISO 8601 (PT3S)."""
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @field_validator("sweep_grace")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Settings:
        """Refuse a lease that can run out while its attempt is still being sent.

        Another worker would then take the delivery over and send it a second time.
        """
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError(
                f"BFLOW_WEBHOOK_LEASE_SECONDS ({self.webhook_lease_seconds:g}) must exceed "
                f"BFLOW_WEBHOOK_TIMEOUT_SECONDS ({self.webhook_timeout_seconds:g})"
            )
        return self

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("memory://")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


settings = Settings()
