"""The Beat schedule: keys equal task names; intervals come from settings."""

from bflow_tasks.settings import settings

beat_schedule = {
    "maintenance.sweep": {
        "task": "maintenance.sweep",
        "schedule": settings.sweep_seconds,
        "options": {"expires": settings.sweep_seconds},
    },
}
