"""Operations: structured logs with a correlation id, its propagation through Celery, metrics.

Importing the package connects its Celery signal handlers and SQLAlchemy listeners; the
Celery app imports it, so every worker, Beat and the shim have them.
"""

from bflow_tasks.observability import context, logs, prometheus_metrics, propagation

__all__ = ["context", "logs", "prometheus_metrics", "propagation"]
