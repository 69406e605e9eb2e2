"""Bflow: approval workflows for ERP documents, carried by Celery.

Importing the package loads nothing heavy: the engine is usable without Celery. The Celery
app is `bflow_tasks.app`, loaded on first access, which is how `celery -A bflow_tasks ...`
finds it.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from bflow_tasks.worker.celery_app import app

        return app
    raise AttributeError(f"module 'bflow_tasks' has no attribute {name!r}")
