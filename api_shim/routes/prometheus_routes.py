"""Prometheus metrics (no auth): every process's counters plus gauges read from the database."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from bflow_tasks.observability import database_gauges

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus_metrics() -> Response:
    """Expose the metrics in the Prometheus text format."""
    return Response(database_gauges.render(), media_type=CONTENT_TYPE_LATEST)
