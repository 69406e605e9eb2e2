"""The pure domain: definitions, graph checks, conditions, transitions (no Celery, no HTTP)."""
