"""The Celery application; `celery -A bflow_tasks worker` finds it as `bflow_tasks.app`.

The task modules are listed in `include`: a worker imports them when it starts, and a
process that only publishes (the shim, Beat, the command line) never does, since every
message is built by task name (`publishing`).
"""

from celery import Celery
from celery.signals import worker_process_init

from bflow_tasks import db, observability  # noqa: F401  (connects the log, context and metric hooks)

TASK_MODULES = [
    "bflow_tasks.worker.workflow_tasks",
    "bflow_tasks.worker.webhook_tasks",
    "bflow_tasks.worker.maintenance_tasks",
]

app = Celery("bflow", include=TASK_MODULES)
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_engine_per_process(**_kwargs: object) -> None:
    # A forked pool process must not share the parent's database connections.
    db.reset_engine()
