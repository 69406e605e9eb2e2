"""Celery: the app, its tasks, publishing after commit, and the embedded worker."""
