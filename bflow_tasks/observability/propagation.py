"""Carry the log context across Celery messages: stamp it on publish, restore it in the worker.

The fields travel as top-level message headers (`bflow_correlation_id`...). With protocol 2
Celery copies every message header into the worker's `task.request` (checked with a real
worker on Redis and in-process: chain links and chord bodies included); the inner
`request.headers` dict is read as a fallback for messages published with `headers={...}`
(celery#4875 shows both places in use across versions).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from celery import Task
from celery.signals import before_task_publish, task_postrun, task_prerun

from bflow_tasks.observability import context

PREFIX = "bflow_"
CARRIED = ("correlation_id", "tenant_id", "runtime_id")

_tokens: dict[str, object] = {}


@before_task_publish.connect(weak=False)
def stamp_headers(headers: dict[str, Any] | None = None, body: Any = None, **_: Any) -> None:
    """Put the current context (and the message's own runtime id) into the message headers."""
    if headers is None:
        return
    fields = context.current()
    # A message that names its runtime says best which runtime it is about (the sweep
    # publishes for many runtimes from one task).
    runtime_id = _kwargs_of(body).get("runtime_id")
    if isinstance(runtime_id, str):
        fields["runtime_id"] = runtime_id
    for name in CARRIED:
        if fields.get(name):
            headers.setdefault(PREFIX + name, fields[name])


@task_prerun.connect(weak=False)
def enter_task(
    task_id: str | None = None,
    task: Task | None = None,
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """Bind the message's context for the task's log lines and the messages it publishes."""
    if task is None or task_id is None:
        return
    request = task.request
    arguments = _arguments(task, tuple(args or ()), kwargs or {})
    runtime_id = arguments.get("runtime_id") or _header(request, "runtime_id")
    approval_task = arguments.get("task_id") if task.name == "workflow.record_action" else None
    _tokens[task_id] = context.enter(
        # A message from Beat or from an older publisher has none: the canvas's root task id
        # still ties a chain or chord together.
        correlation_id=_header(request, "correlation_id") or getattr(request, "root_id", None) or task_id,
        tenant_id=_header(request, "tenant_id"),
        runtime_id=runtime_id if isinstance(runtime_id, str) else None,
        task_id=task_id,
        task_name=task.name,
        bflow_task_id=approval_task if isinstance(approval_task, str) else None,
    )


@task_postrun.connect(weak=False)
def leave_task(task_id: str | None = None, **_: Any) -> None:
    """Drop the task's context once it has run."""
    token = _tokens.pop(task_id or "", None)
    if token is not None:
        context.leave(token)


def _header(request: Any, name: str) -> str | None:
    value = getattr(request, PREFIX + name, None)
    if not value:
        value = (getattr(request, "headers", None) or {}).get(PREFIX + name)
    return value if isinstance(value, str) else None


def _kwargs_of(body: Any) -> dict[str, Any]:
    # Protocol 2 bodies are (args, kwargs, embed).
    if isinstance(body, (tuple, list)) and len(body) >= 2 and isinstance(body[1], dict):
        return body[1]
    return {}


def _arguments(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (webhooks.deliver is published with positional ids)."""
    if not args:
        return kwargs
    names = _parameter_names(task.name, task.run)
    return {**dict(zip(names, args, strict=False)), **kwargs}


@functools.cache
def _parameter_names(name: str, run: Any) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(run).parameters)
    except (TypeError, ValueError):
        return ()
