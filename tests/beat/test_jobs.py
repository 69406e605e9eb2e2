"""Job slots: one firing per (job, slot), however many Beats or threads try at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from celery.beat import BeatLazyFunc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from beat_schedule import beat_schedule
from bflow_tasks.engine.timers import job_slots
from bflow_tasks.models import JobRun
from bflow_tasks.worker.celery_app import app
from tests.beat.conftest import T0, FakeClock


def test_the_slot_is_the_send_time_floored_to_the_period() -> None:
    at = datetime(2030, 1, 7, 9, 0, 59, 999_999)
    assert job_slots.slot_of(at, 60) == "2030-01-07T09:00:00.000000"
    assert job_slots.slot_of(at, 1) == "2030-01-07T09:00:59.000000"
    assert job_slots.slot_of(at, 0.5) == "2030-01-07T09:00:59.500000"
    assert job_slots.slot_of(at, job_slots.DAY_SECONDS) == "2030-01-07T00:00:00.000000"
    # Two Beats a few hundred milliseconds apart send into the same slot.
    assert job_slots.slot_of(at - timedelta(milliseconds=700), 1) == job_slots.slot_of(at, 1)
    assert job_slots.sent_at("2030-01-07T10:00:00.25+01:00") == datetime(2030, 1, 7, 9, 0, 0, 250_000)


def test_of_many_concurrent_firings_exactly_one_claims_the_slot(
    session_factory: sessionmaker[Session],
) -> None:
    with ThreadPoolExecutor(8) as pool:
        claimed = list(
            pool.map(lambda _: job_slots.claim(session_factory.begin, job="j", slot="s"), range(16))
        )
    assert claimed.count(True) == 1
    with session_factory() as s:
        assert len(s.scalars(select(JobRun)).all()) == 1


def test_run_once_does_the_work_once_per_slot_and_records_it(
    session_factory: sessionmaker[Session], fake_clock: FakeClock
) -> None:
    calls: list[int] = []

    def work() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    assert job_slots.run_once(session_factory.begin, job="j", slot="s1", work=work) == {
        "job": "j",
        "slot": "s1",
        "n": 1,
    }
    assert job_slots.run_once(session_factory.begin, job="j", slot="s1", work=work)["skipped"] is True
    assert job_slots.run_once(session_factory.begin, job="k", slot="s1", work=work)["n"] == 2
    assert len(calls) == 2
    with session_factory() as s:
        runs = s.scalars(select(JobRun).order_by(JobRun.job)).all()
    assert [(r.job, r.result, r.finished_at) for r in runs] == [("j", {"n": 1}, T0), ("k", {"n": 2}, T0)]


def test_a_failed_firing_keeps_its_claim_and_records_why(session_factory: sessionmaker[Session]) -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        job_slots.run_once(session_factory.begin, job="j", slot="s", work=broken)
    # A redelivered message for the same slot does not run it again; the next slot will.
    assert job_slots.run_once(session_factory.begin, job="j", slot="s", work=broken)["skipped"] is True
    with session_factory() as s:
        assert s.scalars(select(JobRun.result)).one() == {"error": "RuntimeError: database went away"}


def test_prune_keeps_a_week_of_job_runs(
    session_factory: sessionmaker[Session], fake_clock: FakeClock
) -> None:
    for days in (0, 6, 8, 30):
        slot = job_slots.slot_of(T0 - timedelta(days=days), 60)
        for job in ("maintenance.sweep", "maintenance.sla_scan"):
            assert job_slots.claim(session_factory.begin, job=job, slot=slot)
    with session_factory.begin() as s:
        assert job_slots.prune(s) == 4
    with session_factory() as s:
        assert len(s.scalars(select(JobRun)).all()) == 4


def test_every_beat_entry_names_its_task_and_passes_its_send_time() -> None:
    for name, entry in beat_schedule.items():
        assert entry["task"] == name and name in app.tasks
        assert isinstance(entry["kwargs"]["scheduled_at"], BeatLazyFunc)
        assert job_slots.sent_at(entry["kwargs"]["scheduled_at"]()) <= datetime.now() + timedelta(days=1)
    assert {"maintenance.sweep", "maintenance.sla_scan", "maintenance.archive"} <= set(beat_schedule)
