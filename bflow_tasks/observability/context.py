"""The log context of the current request or task: correlation id, tenant, runtime, task ids."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# The fields a log line and an outgoing message may carry, in the order logs show them.
FIELDS = ("correlation_id", "tenant_id", "runtime_id", "task_id", "task_name", "bflow_task_id")

# One mutable dict per request or task. FastAPI runs sync dependencies and endpoints in
# worker threads with a *copy* of the context, so a value set there with ContextVar.set()
# would be lost; updating the shared dict in place reaches every copy of the same request.
_fields: ContextVar[dict[str, str] | None] = ContextVar("bflow_log_context", default=None)

# Accept what proxies and clients commonly send (uuids, hex, ULIDs, "abc-123:4"); anything
# else is replaced, so a header cannot smuggle newlines or huge values into logs.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def new_id() -> str:
    """Return a fresh correlation id."""
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """Return the client's request id if it is safe to log and forward, else a fresh one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return new_id()


def current() -> dict[str, str]:
    """Return a copy of the fields bound in this context."""
    return dict(_fields.get() or {})


def get(name: str) -> str | None:
    """Return one bound field, or None."""
    return (_fields.get() or {}).get(name)


def bind(**values: str | None) -> None:
    """Add fields to the current context (None values are ignored)."""
    fields = _fields.get()
    if fields is None:
        fields = {}
        _fields.set(fields)
    fields.update({k: v for k, v in values.items() if v is not None})


@contextmanager
def scope(**values: str | None) -> Iterator[dict[str, str]]:
    """Run a block with a fresh context holding `values`; restore the previous one after."""
    token = _fields.set({k: v for k, v in values.items() if v is not None})
    try:
        yield _fields.get() or {}
    finally:
        _fields.reset(token)


def enter(**values: str | None) -> object:
    """Start a fresh context (for signal pairs such as task_prerun/postrun); return its token."""
    return _fields.set({k: v for k, v in values.items() if v is not None})


def leave(token: object) -> None:
    """End a context started by `enter`."""
    try:
        _fields.reset(token)  # type: ignore[arg-type]
    except ValueError:
        # A token from another context (a signal fired in a different thread): just clear.
        _fields.set(None)
