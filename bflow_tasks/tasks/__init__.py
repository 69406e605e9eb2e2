"""Thin Celery tasks: each adapts one engine call to a message."""

from bflow_tasks.tasks import maintenance, workflow

__all__ = ["maintenance", "workflow"]
