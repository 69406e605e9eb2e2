"""Liveness of what the shim needs to admit work: the database and the broker (no auth)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api_shim import schemas
from bflow_tasks import db
from bflow_tasks.celery_app import app as celery_app
from bflow_tasks.settings import settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health", response_model=schemas.HealthRead, responses={503: {"model": schemas.HealthRead}})
def health() -> JSONResponse:
    """Check the database and the broker; 503 naming whichever failed."""
    checks = {"database": _timed(_check_database), "broker": _timed(_check_broker)}
    failing = sorted(name for name, check in checks.items() if check.status != "ok")
    report = schemas.HealthRead(status="unavailable" if failing else "ok", checks=checks)
    body = report.model_dump(mode="json")
    if failing:
        body["error"] = {
            "code": "unhealthy",
            "message": f"failing checks: {', '.join(failing)}",
            "details": {"failing": failing},
        }
    return JSONResponse(body, status_code=503 if failing else 200)


def _timed(check: Callable[[], None]) -> schemas.CheckRead:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure of the dependency is a failed check
        log.warning("health check %s failed: %s", check.__name__, exc)
        return schemas.CheckRead(
            status="error", latency_ms=_since(started), error=f"{type(exc).__name__}: {exc}"
        )
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
    connection = celery_app.connection_for_write(connect_timeout=timeout)
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    finally:
        connection.release()
