"""Archiving: batches that survive crashes, an idempotent copy, and archived runtimes still readable."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks import db, migrations
from bflow_tasks.engine import clock, tenants
from bflow_tasks.engine.timers import archiving
from bflow_tasks.models import ARCHIVE_TWINS, Base, JobRun, utcnow
from bflow_tasks.worker import maintenance_tasks
from tests.api.helpers import API
from tests.beat.conftest import T0, FakeClock
from tests.bflow_cli import Ran, run
from tests.engine.driver import Driver
from tests.factories import leave_request_definition

BEFORE = T0 - timedelta(days=365)
TABLES = (*archiving.COPIED, *archiving.DROPPED)


def seed(d: Driver, fake_clock: FakeClock, *, old: int = 5, now: datetime = T0) -> dict[str, list[str]]:
    """Runtimes: `old` ended 400 days before `now` (in each final status), one 10 days before, one running."""
    workflow_id = d.workflow(leave_request_definition())
    made: dict[str, list[str]] = {"old": [], "recent": [], "running": []}
    for n in range(old + 2):
        kind = "old" if n < old else ("recent" if n == old else "running")
        fake_clock.set(now - timedelta(days=400, hours=-n) if kind == "old" else now - timedelta(days=10))
        rid = d.submit(workflow_id, {"amount": 100}, document_id=f"D{n}")
        if kind == "running":
            d.act(rid, "u1")
        elif n % 3 == 1:
            d.act(rid, "u2", "reject")
        elif n % 3 == 2:
            d.cancel(rid)
        else:
            for user in ("u1", "u2", "u3"):
                fake_clock.advance(minutes=10)
                d.act(rid, user)
        made[kind].append(rid)
    fake_clock.set(now)
    return made


def rows(engine: Engine, table: str, runtime_ids: list[str] | None = None) -> int:
    """Count a table's rows, optionally only those of the given runtimes."""
    t = Base.metadata.tables[table]
    query = select(func.count()).select_from(t)
    if runtime_ids is not None:
        key = t.c.id if table in ("runtime", "runtime_archive") else t.c.runtime_id
        query = query.where(key.in_(runtime_ids))
    with engine.connect() as conn:
        return conn.scalar(query) or 0


def snapshot(engine: Engine) -> dict[str, tuple[int, int]]:
    """(live rows, archived rows) of every table the archive touches."""
    return {
        name: (rows(engine, name), rows(engine, f"{name}_archive") if name in archiving.COPIED else 0)
        for name in TABLES
    }


def assert_moved_exactly(
    engine: Engine, before: dict[str, tuple[int, int]], made: dict[str, list[str]]
) -> None:
    """Every old runtime's rows are archived exactly once and gone from the live tables; nothing else."""
    after = snapshot(engine)
    for name in archiving.COPIED:
        assert sum(after[name]) == sum(before[name]), name  # live + archive: nothing lost, nothing doubled
        assert rows(engine, name, made["old"]) == 0, name
        assert rows(engine, f"{name}_archive", made["old"]) == after[name][1] > 0, name
        assert rows(engine, name, made["recent"] + made["running"]) == before[name][0] - after[name][1]
    for name in archiving.DROPPED:
        assert rows(engine, name, made["old"]) == 0
        assert rows(engine, name, made["recent"] + made["running"]) == after[name][0] > 0


class Crash(Exception):
    pass


def crash_at(phase: str, number: int) -> archiving.Hook:
    def hook(at: str, batch: archiving.Batch) -> None:
        if (at, batch.number) == (phase, number):
            raise Crash(f"{phase} {number}")

    return hook


def test_a_crash_between_batches_loses_and_duplicates_nothing(
    d: Driver, engine: Engine, session_factory: sessionmaker[Session], fake_clock: FakeClock
) -> None:
    made = seed(d, fake_clock)
    before = snapshot(engine)
    with session_factory() as s:
        due = archiving.count_due(s, before=BEFORE)
    assert due["runtime"] == 5
    with pytest.raises(Crash):
        archiving.run(session_factory.begin, before=BEFORE, batch_size=2, hook=crash_at("committed", 2))
    assert rows(engine, "runtime_archive") == 4  # two batches of two were committed
    assert rows(engine, "runtime", made["old"]) == 1

    resumed = archiving.run(session_factory.begin, before=BEFORE, batch_size=2)
    assert (resumed["runtimes"], resumed["batches"]) == (1, 1)
    assert_moved_exactly(engine, before, made)
    assert {name: before[name][0] - n for name, n in due.items()} == {
        name: snapshot(engine)[name][0] for name in TABLES
    }
    assert archiving.run(session_factory.begin, before=BEFORE, batch_size=2)["runtimes"] == 0


def test_a_crash_inside_a_batch_rolls_that_batch_back(
    d: Driver, engine: Engine, session_factory: sessionmaker[Session], fake_clock: FakeClock
) -> None:
    made = seed(d, fake_clock)
    before = snapshot(engine)
    with pytest.raises(Crash):
        archiving.run(session_factory.begin, before=BEFORE, batch_size=2, hook=crash_at("copied", 2))
    assert rows(engine, "runtime_archive") == 2  # batch 2 was copied, then rolled back with its deletes
    assert rows(engine, "runtime", made["old"]) == 3
    archiving.run(session_factory.begin, before=BEFORE, batch_size=2)
    assert_moved_exactly(engine, before, made)


def test_rows_already_in_the_archive_are_not_copied_twice(
    d: Driver, engine: Engine, session_factory: sessionmaker[Session], fake_clock: FakeClock
) -> None:
    made = seed(d, fake_clock, old=2)
    before = snapshot(engine)
    first = made["old"][0]
    # An earlier copy of one runtime's rows (by hand, or by a tool that crashed before deleting).
    with engine.begin() as conn:
        for name in archiving.COPIED:
            source, twin = Base.metadata.tables[name], ARCHIVE_TWINS[name]
            key = source.c.id if name == "runtime" else source.c.runtime_id
            columns = [c.name for c in twin.columns]
            conn.execute(
                insert(twin).from_select(columns, select(*(source.c[c] for c in columns)).where(key == first))
            )
    moved = archiving.run(session_factory.begin, before=BEFORE)
    assert moved["runtimes"] == 2
    assert moved["copied"]["runtime"] == 1  # only the second runtime's row was new
    assert_moved_exactly(engine, before, made)


def test_archived_runtimes_are_still_readable_over_http(
    d: Driver, client: TestClient, session_factory: sessionmaker[Session], fake_clock: FakeClock, other_tenant
) -> None:
    made = seed(d, fake_clock, old=1)
    with session_factory.begin() as s:
        headers = {"Authorization": f"Bearer {tenants.issue_token(s, tenant_id=d.tenant_id)}"}
    old_id, running_id = made["old"][0], made["running"][0]
    live = client.get(f"{API}/runtimes/{old_id}", headers=headers).json()
    assert live["archived"] is False

    archiving.run(session_factory.begin, before=BEFORE)
    response = client.get(f"{API}/runtimes/{old_id}", headers=headers)
    assert response.status_code == 200
    archived = response.json()
    assert archived["archived"] is True
    assert {k: v for k, v in archived.items() if k != "archived"} == {
        k: v for k, v in live.items() if k != "archived"
    }
    assert archived["status"] == "completed"
    assert [s["node_key"] for s in archived["stages"]] == ["submit", "manager_review", "done"]
    assert {a["user"] for a in archived["stages"][1]["assignees"]} == {"u1", "u2", "u3"}
    assert client.get(f"{API}/runtimes/{running_id}", headers=headers).json()["archived"] is False
    assert client.get(f"{API}/runtimes/{old_id}", headers=other_tenant.headers).status_code == 404
    assert client.get(f"{API}/runtimes/no-such-id", headers=headers).status_code == 404


def test_the_archive_task_runs_once_per_day_slot(
    d: Driver, api_engine: Engine, fake_clock: FakeClock, session_factory: sessionmaker[Session]
) -> None:
    made = seed(d, fake_clock, old=2)
    first = maintenance_tasks.archive(scheduled_at="2030-01-07T03:00:00.120000+00:00")
    assert (first["runtimes"], first["slot"]) == (2, "2030-01-07T00:00:00.000000")
    again = maintenance_tasks.archive(scheduled_at="2030-01-07T03:00:01.5+00:00")  # a second Beat's copy
    assert again == {
        "job": "maintenance.archive",
        "slot": "2030-01-07T00:00:00.000000",
        "skipped": True,
    }
    with session_factory() as s:
        run = s.scalars(select(JobRun).where(JobRun.job == "maintenance.archive")).one()
    assert run.finished_at == T0 and run.result is not None and run.result["runtimes"] == 2
    assert rows(api_engine, "runtime", made["old"]) == 0


def test_bflow_archive_command_counts_then_moves_with_a_progress_bar(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bflow.db'}"
    migrations.upgrade(url)
    engine = db.make_engine(url)
    # The command reads the real clock: the seed is dated relative to today.
    today = utcnow()
    fake = FakeClock(today)
    clock.set_clock(fake)
    try:
        made = seed(Driver(sessionmaker(engine, expire_on_commit=False)), fake, old=3, now=today)
    finally:
        clock.set_clock(None)

    def bflow(*args: str) -> Ran:  # in this process, as a `bflow` process on that database would run
        return run(tmp_path, *args, env={"BFLOW_DATABASE_URL": url})

    dry = bflow("archive", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    counted = json.loads(dry.stdout)
    assert counted["dry_run"] is True and counted["due"]["runtime"] == 3
    assert rows(engine, "runtime_archive") == 0

    done = bflow("archive")
    assert done.returncode == 0, done.stderr
    assert "archived 3 runtime(s) in 1 batch(es)" in done.stdout
    assert "archiving" in done.stderr  # the progress bar
    assert rows(engine, "runtime", made["old"]) == 0 and rows(engine, "runtime_archive") == 3

    again = bflow("archive", "--json")
    assert json.loads(again.stdout)["runtimes"] == 0
    engine.dispose()
