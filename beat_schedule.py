"""The Beat schedule: keys equal task names; intervals come from settings.

Every job gets `scheduled_at`, the time this Beat sends it (evaluated at send time by
`BeatLazyFunc`); the task claims the slot that time falls in, so that two Beats started by
mistake still run each job once per slot. `expires` drops a firing nobody picked up before
the next one is due.
"""

from datetime import UTC, datetime

from celery.beat import BeatLazyFunc
from celery.schedules import crontab

from bflow_tasks.settings import settings


def sent_now() -> str:
    """Return the current UTC time as ISO 8601: the send time a job's slot is derived from."""
    return datetime.now(UTC).isoformat()


beat_schedule = {
    "maintenance.sweep": {
        "task": "maintenance.sweep",
        "schedule": settings.sweep_seconds,
        "kwargs": {"scheduled_at": BeatLazyFunc(sent_now)},
        "options": {"expires": settings.sweep_seconds},
    },
    "maintenance.sla_scan": {
        "task": "maintenance.sla_scan",
        "schedule": settings.sla_scan_seconds,
        "kwargs": {"scheduled_at": BeatLazyFunc(sent_now)},
        "options": {"expires": settings.sla_scan_seconds},
    },
    "maintenance.archive": {
        "task": "maintenance.archive",
        "schedule": crontab(minute=0, hour=settings.archive_hour_utc),
        "kwargs": {"scheduled_at": BeatLazyFunc(sent_now)},
        "options": {"expires": 3600},
    },
    "webhooks.sweep": {
        "task": "webhooks.sweep",
        "schedule": settings.sweep_seconds,
        "kwargs": {"scheduled_at": BeatLazyFunc(sent_now)},
        "options": {"expires": settings.sweep_seconds},
    },
}
