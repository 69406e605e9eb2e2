"""No-op tasks for `bench/engine.py`'s baseline: Bflow's canvas shape, no database, no Bflow code.

    celery -A bench.canvas_tasks worker -Q workflow,webhooks -c 1 --loglevel=INFO

The app takes Bflow's Celery settings (acks_late, prefetch 1, the Redis broker and result
backend, events, routes...) from `BENCH_CANVAS_CONFIG`, a JSON object that `bench/engine.py`
builds from `celeryconfig`: importing `celeryconfig` here would import `bflow_tasks` and
connect its logging, tracing and metrics signal handlers, and the baseline must be bare
Celery. The task names start with `workflow.` so that they are routed like Bflow's.

The shapes mirror `bflow_tasks.tasks.workflow` message for message, results included: only
the chord header stores its results, as in Bflow (the driver watches task events).
- a command (`start_runtime` / `record_action`) is `command.si(...) | open_stages.s()`;
- `open_stages` fans out `chord(group(assign per approver), stages_opened)` when the
  command returned a plan, and does nothing otherwise.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery, chord, group
from kombu import Queue

CONFIG_ENV = "BENCH_CANVAS_CONFIG"


def _config() -> dict[str, Any]:
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set: bench/engine.py starts this worker")
    config = json.loads(raw)
    config["task_queues"] = tuple(Queue(name) for name in config["task_queues"])
    return config


app = Celery("bench_canvas")
app.conf.update(_config())


def opened_id(stage_ids: list[str]) -> str:
    """The chord body's task id, so the driver can see the stage open (as it polls the DB in Bflow)."""
    return f"bench-opened-{stage_ids[0]}"


@app.task(name="workflow.bench_command", ignore_result=True)
def command(
    command_id: str, runtime_id: str, plan: list[list[str]], task_id: str | None = None, action: str = ""
) -> list[list[str]]:
    """Stand-in for `start_runtime` / `record_action`: return the (stage, user) pairs to open."""
    return plan


@app.task(name="workflow.bench_open_stages", ignore_result=True)
def open_stages(plan: list[list[str]]) -> None:
    """Stand-in for `open_stages`: a chord of one `assign` per approver and a `stages_opened` body."""
    if not plan:
        return
    header = group(assign.si(stage_id=stage_id, user=user) for stage_id, user in plan)
    stage_ids = sorted({stage_id for stage_id, _ in plan})
    chord(header)(stages_opened.si(stage_ids=stage_ids).set(task_id=opened_id(stage_ids)))


@app.task(name="workflow.bench_assign")
def assign(stage_id: str, user: str) -> str:
    """Stand-in for `assign` (a chord header task)."""
    return stage_id


@app.task(name="workflow.bench_stages_opened", ignore_result=True)
def stages_opened(stage_ids: list[str]) -> None:
    """Stand-in for `stages_opened` (the chord body)."""
