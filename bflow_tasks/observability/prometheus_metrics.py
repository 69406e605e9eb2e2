"""Prometheus counters and histograms; domain events are counted after their transaction commits.

Workers and the shim are separate processes: with `PROMETHEUS_MULTIPROC_DIR` set (the same
directory for all of them) each process writes its samples to files there and the shim's
`/metrics` adds them up (prometheus_client multiprocess mode). Without it (the embedded
default, one process) the default registry holds everything.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from celery.signals import worker_process_shutdown
from prometheus_client import Counter, Histogram, values
from prometheus_client import multiprocess as prometheus_multiprocess

ENDED = {"runtime.completed", "runtime.rejected", "runtime.cancelled", "runtime.error"}


def multiprocess_dir() -> str | None:
    """The shared samples directory, when multiprocess mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_identity() -> str:
    """Name this process's sample files by host and pid.

    Containers all number their first processes 1, 7, 8...: pids alone would make the shim and
    two worker containers sharing one volume write the same files. No `_`: the collector
    splits file names on it.
    """
    return f"{socket.gethostname()}-{os.getpid()}".replace("_", "-")


if multiprocess_dir():
    os.makedirs(multiprocess_dir() or ".", exist_ok=True)
    # Must be in place before the first metric below is built.
    values.ValueClass = values.MultiProcessValue(process_identifier=process_identity)

HTTP_REQUESTS = Counter(
    "bflow_http_requests", "HTTP requests the shim answered", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "bflow_http_request_duration_seconds",
    "Time the shim took to answer, by route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS = Counter("bflow_events", "Domain events committed, by type", ["type"])
RUNTIMES_STARTED = Counter("bflow_runtimes_started", "Runtimes started, by workflow", ["workflow_id"])
RUNTIMES_ENDED = Counter(
    "bflow_runtimes_ended", "Runtimes that ended, by workflow and final status", ["workflow_id", "status"]
)
STAGE_SECONDS = Histogram(
    "bflow_stage_duration_seconds",
    "Time from a stage's opening to its completion, by workflow and node key",
    ["workflow_id", "node"],
    # Approvals take minutes to days.
    buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 8 * 3600, 24 * 3600, 3 * 86400, 7 * 86400),
)
WEBHOOK_ATTEMPTS = Counter(
    "bflow_webhook_delivery_attempts",
    "Webhook delivery attempts by outcome: delivered, retrying (will be retried) or failed (dead letter)",
    ["outcome"],
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request."""
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_SECONDS.labels(method, route).observe(seconds)


def count_events(events: Iterable[dict[str, Any]]) -> None:
    """Count one committed transaction's domain events (noted in its `AfterCommit` box)."""
    for item in events:
        kind = item["type"]
        EVENTS.labels(kind).inc()
        workflow_id = item.get("workflow_id") or "unknown"
        if kind == "runtime.created":
            RUNTIMES_STARTED.labels(workflow_id).inc()
        elif kind in ENDED:
            RUNTIMES_ENDED.labels(workflow_id, kind.removeprefix("runtime.")).inc()
        elif kind == "stage.completed" and item.get("seconds") is not None:
            STAGE_SECONDS.labels(workflow_id, item.get("node") or "unknown").observe(item["seconds"])


def count_attempt(outcome: str) -> None:
    """Count one committed webhook delivery attempt by the delivery's status after it."""
    WEBHOOK_ATTEMPTS.labels(outcome).inc()


@worker_process_shutdown.connect(weak=False)
def _mark_process_dead(**_: Any) -> None:
    # A prefork child exits: drop its live-gauge files (counters and histograms stay summed).
    if multiprocess_dir():
        prometheus_multiprocess.mark_process_dead(process_identity())
