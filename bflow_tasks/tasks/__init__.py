"""Thin Celery tasks: each adapts one engine call to a message."""

from bflow_tasks.tasks import maintenance, webhooks, workflow

__all__ = ["maintenance", "webhooks", "workflow"]
