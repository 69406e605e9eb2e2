"""A real worker and the sweep: a step that keeps failing ends its runtime in `error` after
MAX_FAILURES tries, once; a failure for now is retried and not counted (SQLite, MariaDB).

A bug is simulated by replacing an engine function in this process, where the worker runs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pymysql
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from bflow_tasks.engine import clock
from bflow_tasks.engine.runtimes import failures, routing, stage_lifecycle
from bflow_tasks.engine.timers import job_slots
from bflow_tasks.models import JobRun, Runtime, RuntimeCommand, RuntimeStage
from bflow_tasks.settings import settings
from bflow_tasks.worker import maintenance_tasks
from tests.api.helpers import Tenant, execute, post_workflow
from tests.engine.test_runtimes import single_stage
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import act, register, task_id, tenant_events, wait_for_deliveries, wait_until

N = failures.MAX_FAILURES
BEAT = datetime(2030, 1, 7, 9, 0)


class Sweeps:
    """Fire `maintenance_tasks.sweep` as Beat does, one slot after another, and read what each re-sent."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.fired = 0

    def fire(self) -> dict[str, Any]:
        self.fired += 1
        at = BEAT + timedelta(seconds=settings.sweep_seconds * self.fired)
        maintenance_tasks.sweep.delay(scheduled_at=at.isoformat())
        slot = job_slots.slot_of(at, settings.sweep_seconds)

        def finished() -> dict[str, Any] | None:
            with Session(self.engine) as session:
                run = session.scalars(
                    select(JobRun).where(JobRun.job == "maintenance.sweep", JobRun.slot == slot)
                ).one_or_none()
                return run.result if run is not None and run.finished_at is not None else None

        result: dict[str, Any] = wait_until(finished, what=f"sweep {self.fired}")
        return result

    def until(self, done: Callable[[], bool], *, what: str, timeout: float = 60.0) -> None:
        """Sweep every 0.2 s until `done()` (each item waits twice as long as before between re-sends)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s of sweeps waiting for {what}")
            self.fire()
            time.sleep(0.2)


class Calls:
    """Replace an engine function; count its calls and fail the ones `fails(n, args)` picks."""

    def __init__(
        self,
        original: Callable[..., Any],
        fails: Callable[[int, tuple[Any, ...], dict[str, Any]], BaseException | None],
    ):
        self.original, self.fails, self.count = original, fails, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        error = self.fails(self.count, args, kwargs)
        if error is not None:
            raise error
        return self.original(*args, **kwargs)


def runtime(engine: Engine, runtime_id: str) -> Runtime:
    with Session(engine) as session:
        return session.get_one(Runtime, runtime_id)


def action_command(engine: Engine, runtime_id: str) -> RuntimeCommand:
    with Session(engine) as session:
        return session.scalars(
            select(RuntimeCommand).where(
                RuntimeCommand.runtime_id == runtime_id, RuntimeCommand.kind == "action"
            )
        ).one()


def submitted(client: TestClient, tenant: Tenant, users: list[str]) -> str:
    """Submit to a one-stage workflow; return the runtime id once it is accepted."""
    workflow_id = post_workflow(client, tenant, single_stage([{"users": users}]))["id"]
    response = execute(client, tenant, workflow_id, data={})
    assert response.status_code == 202, response.text
    runtime_id: str = response.json()["runtime_id"]
    return runtime_id


@pytest.fixture
def lock_wait(database_url: str) -> OperationalError:
    """What each database answers when it could not lock in time (db.is_unavailable)."""
    if database_url.startswith("sqlite"):
        return OperationalError("UPDATE runtime", {}, sqlite3.OperationalError("database is locked"))
    return OperationalError("UPDATE runtime", {}, pymysql.err.OperationalError(1213, "Deadlock found"))


@pytest.fixture(params=["bug", "refused"])
def permanent(request: pytest.FixtureRequest, database_url: str) -> tuple[BaseException, str]:
    """A failure a retry would not fix, and how it is described: a bug, or a row the database refuses."""
    if request.param == "bug":
        return KeyError("no such node"), "KeyError: 'no such node'"
    if database_url.startswith("sqlite"):
        driver: Exception = sqlite3.IntegrityError("UNIQUE constraint failed: runtime_viewer.user")
    else:
        driver = pymysql.err.IntegrityError(1062, "Duplicate entry 'a' for key 'uq_runtime_viewer'")
    return IntegrityError("INSERT INTO runtime_viewer", {}, driver), f"IntegrityError: {driver}"


def test_an_action_that_keeps_failing_ends_its_runtime_in_error_and_is_sent_no_more(
    client: TestClient,
    tenant: Tenant,
    receiver: Receiver,
    worker: None,
    api_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    permanent: tuple[BaseException, str],
) -> None:
    error, described = permanent
    hook = register(client, tenant, receiver.url, ["runtime.error"])
    receiver.secrets = [hook["secret"]]
    runtime_id = submitted(client, tenant, ["a"])
    task_id(client, tenant, runtime_id, "a")  # the stage is open
    route = Calls(routing.route, lambda _n, _a, _k: error)
    monkeypatch.setattr(routing, "route", route)
    act(client, tenant, runtime_id, "a")

    sweeps = Sweeps(api_engine)
    sweeps.until(lambda: runtime(api_engine, runtime_id).status == "error", what="the runtime to fail")
    assert route.count == N  # one try per message: Celery does not retry what a retry cannot fix
    command = action_command(api_engine, runtime_id)
    assert (command.status, command.failures, command.error) == ("failed", N, described)
    assert runtime(api_engine, runtime_id).error == f"the action command failed {N} times: {described}"
    events = [e.type for e in tenant_events(api_engine, tenant.id)]
    assert events.count("runtime.error") == 1 and events[-2:] == ["stage.completed", "runtime.error"]
    (delivery,) = wait_for_deliveries(api_engine, hook["id"], including="runtime.error")
    assert delivery.status == "delivered" and receiver.first_of_each()[0].verified

    later = clock.now() + timedelta(days=1)  # long past any doubling wait
    clock.set_clock(lambda: later)
    try:
        assert sweeps.fire() == {"commands": 0, "stages": 0}
    finally:
        clock.set_clock(None)
    assert route.count == N


def test_a_command_that_fails_once_is_applied_by_the_sweeps_next_try(
    client: TestClient, tenant: Tenant, worker: None, api_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime_id = submitted(client, tenant, ["a"])
    task_id(client, tenant, runtime_id, "a")
    route = Calls(routing.route, lambda n, _a, _k: KeyError("once") if n == 1 else None)
    monkeypatch.setattr(routing, "route", route)
    act(client, tenant, runtime_id, "a")

    Sweeps(api_engine).until(lambda: runtime(api_engine, runtime_id).status == "completed", what="completion")
    command = action_command(api_engine, runtime_id)
    assert (command.status, command.failures, route.count) == ("applied", 1, 2)


def test_a_failure_for_now_is_retried_by_celery_and_not_counted(
    client: TestClient,
    tenant: Tenant,
    worker: None,
    api_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    lock_wait: OperationalError,
) -> None:
    runtime_id = submitted(client, tenant, ["a"])
    task_id(client, tenant, runtime_id, "a")
    route = Calls(routing.route, lambda n, _a, _k: lock_wait if n <= 2 else None)
    monkeypatch.setattr(routing, "route", route)
    act(client, tenant, runtime_id, "a")

    wait_until(lambda: runtime(api_engine, runtime_id).status == "completed", what="completion")  # no sweep
    command = action_command(api_engine, runtime_id)
    assert (command.status, command.failures, route.count) == ("applied", 0, 3)


def test_a_stage_whose_task_cannot_be_created_ends_its_runtime_in_error(
    client: TestClient, tenant: Tenant, worker: None, api_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def b_fails(_n: int, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseException | None:
        return KeyError("no place for b") if kwargs["user"] == "b" else None

    add_assignee = Calls(stage_lifecycle.add_assignee, b_fails)
    monkeypatch.setattr(stage_lifecycle, "add_assignee", add_assignee)
    runtime_id = submitted(client, tenant, ["a", "b"])

    Sweeps(api_engine).until(
        lambda: runtime(api_engine, runtime_id).status == "error", what="the runtime to fail"
    )
    with Session(api_engine) as session:
        stage = session.scalars(
            select(RuntimeStage).where(
                RuntimeStage.runtime_id == runtime_id, RuntimeStage.node_key == "review"
            )
        ).one()
    assert (stage.status, stage.opening_failures) == ("cancelled", N)
    assert (
        runtime(api_engine, runtime_id).error
        == f"opening the stage 'review' failed {N} times: KeyError: 'no place for b'"
    )
    events = [e.type for e in tenant_events(api_engine, tenant.id)]
    assert events.count("runtime.error") == 1
