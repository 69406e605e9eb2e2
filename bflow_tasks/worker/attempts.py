"""How every workflow task fails: retry what fails for now, count what would fail again.

A failure the database or the broker causes for now (`db.is_unavailable`: down, a lost
connection, a lock wait, a deadlock; a broker or result backend that cannot be reached) is
raised as it is: Celery retries a database error with backoff (`workflow.RETRY`), and the
sweep re-sends whatever is still unfinished. Any other failure is counted on the command, or
on the stage being opened (`engine.failures`), in a short transaction of its own, and raised
as `StepFailed`, which Celery does not retry: the sweep tries again later, and the engine
ends the runtime in `error` once the count reaches its limit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import kombu.exceptions
import redis.exceptions
from celery.exceptions import BackendError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from bflow_tasks import db
from bflow_tasks.engine.runtimes import failures
from bflow_tasks.settings import settings
from bflow_tasks.worker import publishing

log = logging.getLogger(__name__)

# The broker or the result backend could not be reached, or stopped answering: a publish
# (kombu wraps its transport's errors in OperationalError), a chord's counter in Redis, a
# socket (refused, reset, timed out). Not any OSError: a bug can raise one too.
UNREACHABLE: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BackendError,
    ConnectionError,
    TimeoutError,
)


class StepFailed(Exception):
    """A workflow step failed for a reason a retry would not fix: counted, and left to the sweep."""


def is_transient(exc: BaseException) -> bool:
    """True when the database or the broker failed for now, so a retry may succeed."""
    if isinstance(exc, SQLAlchemyError):
        return db.is_unavailable(exc)  # a full pool too: SQLAlchemy's TimeoutError
    return isinstance(exc, UNREACHABLE)


def describe(exc: BaseException) -> str:
    """The exception's type and first line; for a database error, the driver's (no SQL, no parameters)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


@contextmanager
def attempt(*, command_id: str | None = None, stage_id: str | None = None) -> Iterator[None]:
    """Run one try of a step; count a failure a retry would not fix on its command or stage.

    A step of several stages at once (open_stages, stages_opened) names none: it cannot tell
    which stage failed, and a stage whose opening fails fails its `assign` too, which counts.
    """
    try:
        yield
    except Exception as exc:
        if is_transient(exc):
            raise
        error = describe(exc)
        count = _count(command_id, stage_id, error)
        counted = f"failure {count} of {failures.MAX_FAILURES}" if count else "not counted"
        raise StepFailed(f"{error} ({counted})") from exc


def _count(command_id: str | None, stage_id: str | None, error: str) -> int:
    if command_id is None and stage_id is None:
        return 0
    try:
        with publishing.unit_of_work() as session:
            if command_id is not None:
                return failures.command_failed(session, command_id=command_id, error=error)
            assert stage_id is not None
            return failures.opening_failed(
                session, stage_id=stage_id, error=error, once_per=settings.sweep_grace
            )
    except Exception:
        # The database failed us again: this try goes uncounted, the sweep makes another.
        log.exception("could not count a failure of command %s / stage %s", command_id, stage_id)
        return 0
