"""Gauges of the current state, read from the database at scrape time, and the exposition.

Each value is an indexed COUNT (or MIN) over a status column; the answer is cached for
`BFLOW_METRICS_CACHE_SECONDS` so that several Prometheus servers scraping at once cost one
round of queries.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, create_engine, func, select

from bflow_tasks import db
from bflow_tasks.engine import clock
from bflow_tasks.engine.runtimes.stage_lifecycle import OPEN_TASK_STATUSES
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeCommand, WebhookDelivery
from bflow_tasks.observability.prometheus_metrics import multiprocess_dir
from bflow_tasks.settings import settings

log = logging.getLogger(__name__)

DELIVERY_STATUSES = ("pending", "retrying", "failed")
RUNTIME_STATUSES = ("pending", "in_progress", "returned")

Sample = tuple[str, str, dict[str, str], float]  # (family, help, labels, value)


class StateCollector(Collector):
    """Yield the database-backed gauges (tasks open and overdue, outbox backlog, runtimes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._samples: list[Sample] = []

    def describe(self) -> list[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, help_text, labels, value in self._cached():
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, help_text, labels=list(labels))
            family.add_metric(list(labels.values()), value)
        yield from families.values()

    def _cached(self) -> list[Sample]:
        with self._lock:  # one scrape queries; concurrent ones wait for its answer
            if time.monotonic() - self._at >= settings.metrics_cache_seconds:
                self._samples = _read_state()
                self._at = time.monotonic()
            return self._samples


def _read_state() -> list[Sample]:
    started = time.perf_counter()
    try:
        with _read_engine().connect() as conn:
            samples = _queries(conn, clock.now())
    except Exception as exc:  # a database outage must not break the whole scrape
        log.warning("state metrics unavailable: %s", exc)
        return [("bflow_state_up", "1 if the state gauges could be read from the database", {}, 0.0)]
    took = time.perf_counter() - started
    return [
        *samples,
        ("bflow_state_up", "1 if the state gauges could be read from the database", {}, 1.0),
        ("bflow_state_query_seconds", "Time the state gauges' queries took", {}, took),
    ]


def _queries(conn: Connection, now: datetime) -> list[Sample]:
    task = RuntimeAssignee
    tasks = dict.fromkeys(OPEN_TASK_STATUSES, 0) | dict(
        conn.execute(
            select(task.status, func.count()).where(task.status.in_(OPEN_TASK_STATUSES)).group_by(task.status)
        ).all()
    )
    # Past due but not yet marked by the SLA scan: overdue all the same (idx status, due_at).
    late = conn.scalar(select(func.count()).where(task.status == "pending", task.due_at < now)) or 0
    requested, oldest = conn.execute(
        select(func.count(), func.min(RuntimeCommand.created_at)).where(RuntimeCommand.status == "requested")
    ).one()
    deliveries = dict.fromkeys(DELIVERY_STATUSES, 0) | dict(
        conn.execute(
            select(WebhookDelivery.status, func.count())
            .where(WebhookDelivery.status.in_(DELIVERY_STATUSES))
            .group_by(WebhookDelivery.status)
        ).all()
    )
    runtimes = dict.fromkeys(RUNTIME_STATUSES, 0) | dict(
        conn.execute(
            select(Runtime.status, func.count())
            .where(Runtime.status.in_(RUNTIME_STATUSES))
            .group_by(Runtime.status)
        ).all()
    )
    age = (now - oldest).total_seconds() if isinstance(oldest, datetime) else 0.0
    return [
        *(
            ("bflow_tasks_open", "Approval tasks waiting for a person, by status", {"status": s}, float(n))
            for s, n in tasks.items()
        ),
        (
            "bflow_tasks_overdue",
            "Open approval tasks past their due time",
            {},
            float(tasks["overdue"] + late),
        ),
        ("bflow_commands_requested", "Admitted commands not yet applied by a worker", {}, float(requested)),
        ("bflow_commands_requested_oldest_seconds", "Age of the oldest unapplied command", {}, age),
        *(
            (
                "bflow_webhook_deliveries",
                "Webhook deliveries not yet delivered, by status",
                {"status": s},
                float(n),
            )
            for s, n in deliveries.items()
        ),
        *(
            ("bflow_runtimes_active", "Runtimes that have not ended, by status", {"status": s}, float(n))
            for s, n in runtimes.items()
        ),
    ]


def _read_engine() -> Engine:
    """The engine to read from; on SQLite one without BEGIN IMMEDIATE, so a scrape takes no write lock."""
    if not settings.database_url.startswith("sqlite"):
        return db.get_engine()
    return _sqlite_reader(settings.database_url)


@functools.cache
def _sqlite_reader(url: str) -> Engine:
    return create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})


@functools.cache
def registry() -> CollectorRegistry:
    """The registry `/metrics` exposes: every process's samples plus the state gauges."""
    if multiprocess_dir():
        # A fresh registry: the default one would add this process's samples a second time.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    registry.register(StateCollector())
    return registry


def render() -> bytes:
    """The Prometheus text exposition of everything."""
    return generate_latest(registry())
