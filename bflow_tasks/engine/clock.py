"""The engine's clock: one place to read the time, so tests can move it forward."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bflow_tasks.models import utcnow

_now: Callable[[], datetime] = utcnow


def now() -> datetime:
    """Return the current naive-UTC time as the engine sees it."""
    return _now()


def set_clock(source: Callable[[], datetime] | None) -> None:
    """Replace the clock (tests); None restores the real one."""
    global _now
    _now = source or utcnow
