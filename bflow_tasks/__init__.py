"""Bflow: approval workflows for ERP documents, carried by Celery."""

from bflow_tasks.celery_app import app

__all__ = ["app"]
