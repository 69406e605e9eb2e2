"""The declarative base, the column types and the keys every model shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, String, TypeDecorator
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
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


def exact_string(length: int) -> String:
    """A name compared as Python compares it, character for character: a user, an actor, a
    document id, a node key. Under the tables' utf8mb4_unicode_ci, MariaDB would take "Bob",
    "bob" and "bob " for one value in every unique key and lookup, where the engine sees three."""
    return String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")


def id_column() -> Mapped[str]:
    """The primary key of every table: a new_id() string."""
    return mapped_column(String(36), primary_key=True, default=new_id)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
