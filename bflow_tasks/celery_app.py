"""The Celery application; `celery -A bflow_tasks worker` finds it as `bflow_tasks.app`."""

from celery import Celery
from celery.signals import worker_process_init

from bflow_tasks import db, observability  # noqa: F401  (connects the log, context and metric hooks)

app = Celery("bflow")
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_engine_per_process(**_kwargs: object) -> None:
    # A forked pool process must not share the parent's database connections.
    db.reset_engine()


# Registered last: the task modules import `app` from here.
import bflow_tasks.tasks  # noqa: E402, F401
