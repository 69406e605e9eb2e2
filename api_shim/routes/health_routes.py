"""Liveness of what Bflow needs to run: the database, the broker, a worker on every queue (no auth)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api_shim import schemas
from bflow_tasks import db
from bflow_tasks.settings import settings
from bflow_tasks.worker import celery_app, embedded

log = logging.getLogger(__name__)

# What a failed check says without authentication: no exception text, no address.
_FAILED = "the {name} check failed; the reason is in the server log"

router = APIRouter(tags=["health"])

QUEUES = ("workflow", "webhooks", "maintenance")

# One lock per kind: a readiness probe never waits behind the workers' broadcast.
_locks = {True: threading.Lock(), False: threading.Lock()}
# (broker url, database url, with workers) -> (monotonic time, body, status). Keyed by
# configuration so that a process that switches URLs (tests) never gets another one's answer.
_cache: dict[tuple[str, str, bool], tuple[float, dict[str, Any], int]] = {}


@router.get("/health", response_model=schemas.HealthRead, responses={503: {"model": schemas.HealthRead}})
def health() -> JSONResponse:
    """Check the database, the broker and a live worker per queue; 503 naming whatever failed."""
    body, status = _cached_report(workers=True)
    return JSONResponse(body, status_code=status)


@router.get(
    "/health/ready", response_model=schemas.HealthRead, responses={503: {"model": schemas.HealthRead}}
)
def ready() -> JSONResponse:
    """Check what this shim needs to admit work (database, broker); for load balancers."""
    # A worker outage must not take the shims out of rotation: admitted commands wait in the
    # broker (and the outbox) until a worker is back.
    body, status = _cached_report(workers=False)
    return JSONResponse(body, status_code=status)


def _cached_report(*, workers: bool) -> tuple[dict[str, Any], int]:
    key = (str(celery_app.app.conf.broker_url), settings.database_url, workers)
    # One probe checks; probes arriving meanwhile wait for its answer instead of each sending
    # their own control broadcast (a probe storm would otherwise flood the broker).
    with _locks[workers]:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < settings.health_cache_seconds:
            return hit[1], hit[2]
        body, status = _report(workers=workers)
        _cache[key] = (time.monotonic(), body, status)
        return body, status


def _report(*, workers: bool) -> tuple[dict[str, Any], int]:
    checks = {"database": _timed("database", _check_database), "broker": _timed("broker", _check_broker)}
    consumers: dict[str, list[str]] | None = None
    if workers and checks["broker"].status == "ok":
        # With the broker down no worker can be asked: the broker is what failed.
        worker_checks, consumers = _check_workers()
        checks.update(worker_checks)
    failing = sorted(name for name, check in checks.items() if check.status != "ok")
    report = schemas.HealthRead(status="unavailable" if failing else "ok", checks=checks)
    body = report.model_dump(mode="json")
    body["checked_at"] = datetime.now(UTC).isoformat()
    if consumers is not None:
        body["workers"] = consumers
    if failing:
        body["error"] = {
            "code": "unhealthy",
            "message": f"failing checks: {', '.join(failing)}",
            "details": {"failing": failing},
        }
    return body, 503 if failing else 200


def _timed(name: str, check: Callable[[], None]) -> schemas.CheckRead:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure of the dependency is a failed check
        latency_ms = _since(started)
        # The reason (a driver message, a host and port) is for operators: it goes to the log,
        # once per failed check, never into the unauthenticated answer.
        log.warning("health check %s failed after %s ms", name, latency_ms, exc_info=exc)
        return schemas.CheckRead(status="error", latency_ms=latency_ms, error=_FAILED.format(name=name))
    return schemas.CheckRead(status="ok", latency_ms=_since(started))


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _check_database() -> None:
    # A raw DBAPI connection: on SQLite an ORM transaction would BEGIN IMMEDIATE and take the
    # write lock just to answer a probe.
    connection = db.get_engine().raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        cursor.close()
    finally:
        connection.close()


def _check_broker() -> None:
    timeout = settings.publish_timeout_seconds
    connection = celery_app.app.connection_for_write(connect_timeout=timeout)
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    finally:
        connection.release()


def _check_workers() -> tuple[dict[str, schemas.CheckRead], dict[str, list[str]] | None]:
    """One check per queue: which live workers consume it, and how soon the first one answered."""
    if str(celery_app.app.conf.broker_url).startswith("memory://"):
        return _check_in_process_workers()
    started = time.perf_counter()
    found: dict[str, list[str]] = {}
    answered_ms: dict[str, float] = {}

    def on_reply(reply: dict[str, Any]) -> None:
        for worker, queues in reply.items():
            for queue in queues or []:
                found.setdefault(queue["name"], []).append(worker)
                answered_ms.setdefault(queue["name"], _since(started))

    timeout = settings.health_worker_timeout_seconds
    try:
        celery_app.app.control.inspect(timeout=timeout, callback=on_reply).active_queues()
    except Exception as exc:  # the broadcast itself failed: no queue can be vouched for
        log.warning("health check of the workers failed", exc_info=exc)
        error = _FAILED.format(name="workers")
        return {
            f"workers.{q}": schemas.CheckRead(status="error", latency_ms=_since(started), error=error)
            for q in QUEUES
        }, None
    checks = {
        f"workers.{queue}": schemas.CheckRead(status="ok", latency_ms=answered_ms[queue])
        if queue in found
        else schemas.CheckRead(
            status="error",
            latency_ms=_since(started),
            error=f"no live worker consumes the {queue} queue (none answered within {timeout:g} s)",
        )
        for queue in QUEUES
    }
    return checks, {queue: sorted(found.get(queue, [])) for queue in QUEUES}


def _check_in_process_workers() -> tuple[dict[str, schemas.CheckRead], dict[str, list[str]] | None]:
    # memory:// lives inside this process, so only a worker thread of this process can consume
    # it (`bflow dev`, `bflow demo`). A control broadcast would reach it too, but the solo pool
    # answers only between tasks, so a slow webhook would look like a dead worker: ask the
    # thread directly. A process that runs none (bare `uvicorn` on the embedded default)
    # accepts work that nothing will ever carry: that is a failing check, not a healthy shim.
    started = time.perf_counter()
    found = embedded.running_queues()
    if embedded.has_workers():
        missing = "the in-process worker does not consume {queue}"
    else:
        missing = (
            "no worker consumes {queue}: the memory:// broker lives in this process, which runs no "
            "worker (run `bflow dev`, or set BFLOW_BROKER_URL and start workers)"
        )
    checks = {
        f"workers.{queue}": schemas.CheckRead(status="ok", latency_ms=_since(started))
        if queue in found
        else schemas.CheckRead(status="error", latency_ms=_since(started), error=missing.format(queue=queue))
        for queue in QUEUES
    }
    return checks, {queue: found.get(queue, []) for queue in QUEUES}
