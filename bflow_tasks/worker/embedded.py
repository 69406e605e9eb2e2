"""The embedded default: a Celery worker and Beat running as threads of this process.

With `memory://` and `cache+memory://` the broker and the result backend live inside the
process, so the shim, the worker and Beat must share it (`bflow dev`, `bflow demo`). The
solo pool is the one that runs chords in-process (the threads pool hung in our checks).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import beat
from celery.utils import timer2
from celery.worker import WorkController
from celery.worker import state as worker_state

from bflow_tasks.worker.celery_app import app

log = logging.getLogger(__name__)

QUEUES = ["workflow", "webhooks", "maintenance"]

# The workers running in this process, for /health on the in-process broker.
_running: dict[threading.Thread, WorkController] = {}


def has_workers() -> bool:
    """Tell whether this process started an in-process worker (alive or not)."""
    return bool(_running)


def running_queues() -> dict[str, list[str]]:
    """Map each queue consumed by a live in-process worker to those workers' names."""
    consumed: dict[str, list[str]] = {}
    for thread, worker in list(_running.items()):
        consumer = getattr(worker, "consumer", None)
        task_consumer = getattr(consumer, "task_consumer", None)
        if not thread.is_alive() or task_consumer is None:
            continue
        for queue in task_consumer.queues:
            consumed.setdefault(queue.name, []).append(str(worker.hostname))
    return consumed


# How long the in-process worker waits for a message (and Beat sleeps) before it looks at its
# stop flag again.
STOP_CHECK_SECONDS = 0.1


def stop_promptly(consumer: Any) -> None:
    """Make a worker on the in-process broker notice its stop flag within STOP_CHECK_SECONDS.

    memory:// has no event loop, so the worker runs Celery's blocking loop, which waits up to
    2 s for a message before it looks at `should_terminate`, and after seeing it runs one
    more such wait: stopping took 2-4 s of doing nothing. Capping each wait (the transport
    still polls every `polling_interval` inside it) makes the loop look every 0.1 s.
    Call it before the loop starts: from `on_consumer_ready`.
    """
    connection = consumer.connection
    drain = connection.drain_events

    def drain_briefly(timeout: float | None = None, **kwargs: Any) -> Any:
        cap = STOP_CHECK_SECONDS if timeout is None else min(timeout, STOP_CHECK_SECONDS)
        return drain(timeout=cap, **kwargs)

    connection.drain_events = drain_briefly


def _nothing() -> None:
    pass


class PromptTimer(timer2.Timer):
    """The worker's timer thread (countdowns, ETAs), stopping within its tick.

    Celery's waits up to 1 s at a time for an entry when it has none, and only then looks at
    its stop flag. A far entry added on stop wakes it, and from then on it sleeps at most
    `max_interval` (the worker's timer_precision) between looks.
    """

    def stop(self) -> None:
        if self.running:
            self.call_after(3600, _nothing)
        super().stop()


# What a WorkController on the in-process broker takes to stop within STOP_CHECK_SECONDS, with
# `stop_promptly` called from its on_consumer_ready.
PROMPT_STOP: dict[str, Any] = {"timer_cls": PromptTimer, "timer_precision": STOP_CHECK_SECONDS}


class _Worker(WorkController):
    """A WorkController that says when its consumer is ready to take messages, and stops promptly."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer):  # type: ignore[no-untyped-def]
        stop_promptly(consumer)
        self.ready.set()


@contextmanager
def worker_and_beat(*, with_beat: bool = True, loglevel: str = "WARNING") -> Iterator[None]:
    """Run a solo-pool worker on every queue (and Beat) in daemon threads until the block exits."""
    worker = _Worker(
        app=app,
        pool="solo",
        concurrency=1,
        loglevel=loglevel,
        queues=QUEUES,
        hostname="embedded@localhost",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        **PROMPT_STOP,
    )
    worker_thread = threading.Thread(target=worker.start, daemon=True, name="bflow-worker")
    worker_thread.start()
    if not worker.ready.wait(timeout=30):
        raise RuntimeError("the embedded Celery worker did not start within 30 s")
    _running[worker_thread] = worker
    beat_service = None
    if with_beat:
        # An in-memory schedule: nothing to write next to the database file. Celery's own
        # threaded EmbeddedService ticks every second (stopping waited up to 1 s); Beat looks
        # at its stop flag only between ticks, so this one ticks every STOP_CHECK_SECONDS.
        beat_service = beat.Service(
            app,
            max_interval=STOP_CHECK_SECONDS,
            scheduler_cls="celery.beat:Scheduler",
            remote_control=False,
        )
        threading.Thread(target=beat_service.start, daemon=True, name="bflow-beat").start()
    try:
        yield
    finally:
        _running.pop(worker_thread, None)
        if beat_service is not None:
            beat_service.stop(wait=True)
        worker_state.should_terminate = 0
        worker_thread.join(timeout=15)
        worker_state.should_terminate = None
        if worker_thread.is_alive():
            log.warning("the embedded worker did not stop within 15 s")
