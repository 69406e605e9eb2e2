"""What a unit of work does once its transaction commits: nudge webhook streams, count events.

Whoever opens a session owns its unit of work (the shim's request, a worker task's scope,
the command line): engine code notes what it did in the session's `AfterCommit`, the owner
commits, then hands the box to the sender (`bflow_tasks.worker.publishing.send`). A rolled
back transaction drops its box unsent. Nothing listens on every SQLAlchemy session of the
process: a session opened without an owner (a script, a test) keeps its notes to itself,
and the sweep finds its deliveries all the same. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

_KEY = "bflow.after_commit"

Stream = tuple[str, str | None]
"""(endpoint id, runtime id): the unit of webhook ordering; None holds a tenant-level notice."""


@dataclass
class AfterCommit:
    """What one transaction will send and count once it commits."""

    streams: dict[Stream, None] = field(default_factory=dict)
    """Webhook streams with a new delivery, in the order first touched."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Domain events written, for the metrics: type, workflow, node, and a stage's seconds."""

    def touch(self, stream: Stream) -> None:
        """Note that a stream has something to send."""
        self.streams[stream] = None

    def record_event(self, event: dict[str, Any]) -> None:
        """Note a domain event, to be counted."""
        self.events.append(event)


def of(session: Session) -> AfterCommit:
    """The session's after-commit box, made on first use."""
    box = session.info.get(_KEY)
    if box is None:
        box = session.info[_KEY] = AfterCommit()
    return box


def take(session: Session) -> AfterCommit:
    """Return the box of the transaction that just committed, and start a fresh one."""
    return session.info.pop(_KEY, None) or AfterCommit()


def discard(session: Session) -> None:
    """Forget what a transaction that did not commit noted."""
    session.info.pop(_KEY, None)


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """Run a block in a SAVEPOINT; if it rolls back, so do the events it noted."""
    box = of(session)
    mark = len(box.events)
    try:
        with session.begin_nested():
            yield
    except BaseException:
        # Streams stay: a nudge for a stream with nothing due is a no-op.
        del box.events[mark:]
        raise
