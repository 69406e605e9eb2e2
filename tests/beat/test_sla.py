"""The SLA scan with time moved by the test: overdue, reminders, escalation, each event once."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pymysql
import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine.domain_errors import Conflict
from bflow_tasks.engine.runtimes import admission
from bflow_tasks.engine.timers import sla
from bflow_tasks.models import RuntimeAssignee, RuntimeEvent, RuntimeLog
from tests.beat.conftest import T0, FakeClock
from tests.engine.driver import Driver


def review(users: list[str], mode: str = "all", **node: Any) -> dict[str, Any]:
    """A workflow with one approval stage `review` (extra node settings: sla_hours...)."""
    return {
        "name": "SLA flow",
        "document_type": "leave_request",
        "nodes": [
            {"key": "submit", "name": "Submit", "action": "create"},
            {
                "key": "review",
                "name": "Review",
                "action": "approve",
                "approvers": {"mode": mode, "sources": [{"users": users}]},
                **node,
            },
            {"key": "done", "name": "Done", "action": "end"},
        ],
        "associations": [{"source": "submit", "dest": "review"}, {"source": "review", "dest": "done"}],
    }


def scan(sf: sessionmaker[Session], batch: int = 500) -> dict[str, Any]:
    return sla.scan(sf.begin, batch=batch)


def events(sf: sessionmaker[Session], kind: str) -> Counter[str]:
    """How many events of `kind` each user's task got."""
    with sf() as s:
        rows = s.scalars(select(RuntimeEvent.data).where(RuntimeEvent.type == kind)).all()
    return Counter(row["assignee"] for row in rows)


def task(sf: sessionmaker[Session], runtime_id: str, user: str) -> RuntimeAssignee:
    with sf() as s:
        return s.scalars(
            select(RuntimeAssignee).where(
                RuntimeAssignee.runtime_id == runtime_id, RuntimeAssignee.user == user
            )
        ).one()


def log_actions(sf: sessionmaker[Session], runtime_id: str) -> list[str]:
    with sf() as s:
        return list(
            s.scalars(
                select(RuntimeLog.action)
                .where(RuntimeLog.runtime_id == runtime_id)
                .order_by(RuntimeLog.sequence)
            )
        )


def test_tasks_past_due_are_marked_overdue_once(d: Driver, session_factory, fake_clock: FakeClock) -> None:
    rid = d.submit(d.workflow(review(["u1", "u2"], sla_hours=2)), {})
    assert task(session_factory, rid, "u1").due_at == T0.replace(hour=11)

    fake_clock.advance(hours=1, minutes=59)
    assert scan(session_factory)["overdue"] == 0
    fake_clock.advance(minutes=1)  # exactly the due time
    assert scan(session_factory)["overdue"] == 2
    for _ in range(3):
        assert scan(session_factory)["overdue"] == 0
    fake_clock.advance(days=3)
    assert scan(session_factory)["overdue"] == 0

    assert events(session_factory, "task.overdue") == {"u1": 1, "u2": 1}
    u1 = task(session_factory, rid, "u1")
    assert (u1.status, u1.overdue_at, u1.escalated_at) == ("overdue", T0.replace(hour=11), None)
    assert log_actions(session_factory, rid).count("task.overdue") == 2
    # An overdue task is still the approver's to act on.
    d.act(rid, "u1")
    d.act(rid, "u2")
    assert d.status(rid) == "completed"


def test_reminders_every_reminder_hours_before_and_after_the_due_time(
    d: Driver, session_factory, fake_clock: FakeClock
) -> None:
    rid = d.submit(d.workflow(review(["u1"], sla_hours=3, reminder_hours=1)), {})
    sent = []
    for minutes in (30, 60, 60, 90, 120, 150, 180, 181, 240, 300):
        fake_clock.set(T0.replace(hour=9 + minutes // 60, minute=minutes % 60))
        done = scan(session_factory)
        sent.append((minutes, done["reminded"], done["overdue"]))
    assert sent == [
        (30, 0, 0),
        (60, 1, 0),  # 1 h before... 2 h before the due time
        (60, 0, 0),  # the same scan again: nothing twice
        (90, 0, 0),
        (120, 1, 0),
        (150, 0, 0),
        (180, 0, 1),  # due: the overdue notice stands for the reminder of that hour
        (181, 0, 0),
        (240, 1, 0),  # and after the due time, every hour while it is open
        (300, 1, 0),
    ]
    # After a gap (Beat down for a day) one reminder goes out, not the 24 that were missed.
    fake_clock.set(T0.replace(day=8, hour=14, minute=30))
    assert scan(session_factory)["reminded"] == 1
    assert scan(session_factory)["reminded"] == 0
    u1 = task(session_factory, rid, "u1")
    assert u1.last_reminded_at == T0.replace(day=8, hour=14, minute=30)
    assert u1.next_reminder_at == T0.replace(day=8, hour=15)
    assert events(session_factory, "task.reminded") == {"u1": 5}
    assert log_actions(session_factory, rid).count("task.reminded") == 5
    # Once acted on, a task gets no more reminders.
    d.act(rid, "u1")
    fake_clock.advance(hours=5)
    assert scan(session_factory)["reminded"] == 0


def test_escalation_adds_a_stand_in_whose_approval_completes_the_stage(
    d: Driver, session_factory, fake_clock: FakeClock
) -> None:
    rid = d.submit(d.workflow(review(["u1", "u2"], sla_hours=2, escalate_to="boss")), {})
    d.act(rid, "u1")  # in time
    fake_clock.advance(hours=2, minutes=5)
    assert scan(session_factory) | {"more": 0} == {
        "overdue": 1,
        "escalated": 1,
        "reminded": 0,
        "errors": 0,
        "more": 0,
    }
    for _ in range(2):
        assert scan(session_factory)["escalated"] == 0
    fake_clock.advance(hours=1)
    assert scan(session_factory)["escalated"] == 0

    u2, boss = task(session_factory, rid, "u2"), task(session_factory, rid, "boss")
    assert (u2.status, u2.escalated_at) == ("overdue", T0.replace(hour=11, minute=5))
    assert (boss.assign_type, boss.status, boss.delegated_from_id) == ("escalation", "pending", u2.id)
    assert boss.due_at == T0.replace(hour=13, minute=5)  # a fresh SLA window for the stand-in
    assert events(session_factory, "task.overdue") == {"u2": 1}
    assert events(session_factory, "task.escalated") == {"u2": 1}
    assert events(session_factory, "task.assigned")["boss"] == 1
    with session_factory() as s:  # the order the README gives
        last = s.execute(
            select(RuntimeEvent.type, RuntimeEvent.data)
            .where(RuntimeEvent.runtime_id == rid)
            .order_by(RuntimeEvent.sequence.desc())
            .limit(3)
        ).all()
    assert [(kind, data["assignee"]) for kind, data in reversed(last)] == [
        ("task.overdue", "u2"),
        ("task.assigned", "boss"),
        ("task.escalated", "u2"),
    ]

    d.act(rid, "boss")
    assert d.status(rid) == "completed"
    assert d.tasks(rid) == {"alice": "completed", "u1": "completed", "u2": "cancelled", "boss": "completed"}
    assert "task.released" in log_actions(session_factory, rid)


def test_one_approval_per_approver_place_when_both_original_and_stand_in_could_act(
    d: Driver, session_factory, fake_clock: FakeClock
) -> None:
    rid = d.submit(d.workflow(review(["u1", "u2", "u3"], sla_hours=1, escalate_to="boss")), {})
    d.act(rid, "u1")
    fake_clock.advance(hours=2)
    assert scan(session_factory)["overdue"] == 2
    boss = task(session_factory, rid, "boss")
    covered = next(u for u in ("u2", "u3") if task(session_factory, rid, u).id == boss.delegated_from_id)
    other = "u3" if covered == "u2" else "u2"
    # The covered approver acts after all: the stand-in is released, the place counted once.
    d.act(rid, covered)
    assert task(session_factory, rid, "boss").status == "cancelled"
    assert d.stages(rid)[-1] == ("review", "open", None)
    with pytest.raises(Conflict), session_factory() as s:
        admission.request_action(s, tenant_id=d.tenant_id, task_id=boss.id, action="approve", actor="boss")
    d.act(rid, other)
    assert d.status(rid) == "completed"


def test_no_stand_in_when_the_escalation_user_already_has_a_task(
    d: Driver, session_factory, fake_clock: FakeClock
) -> None:
    rid = d.submit(d.workflow(review(["u1", "boss"], sla_hours=1, escalate_to="boss")), {})
    d.act(rid, "boss")
    fake_clock.advance(hours=1)
    assert scan(session_factory) | {"more": 0} == {
        "overdue": 1,
        "escalated": 0,
        "reminded": 0,
        "errors": 0,
        "more": 0,
    }
    assert events(session_factory, "task.escalated") == {}
    assert "task.escalation_skipped" in log_actions(session_factory, rid)
    assert task(session_factory, rid, "u1").escalated_at == T0.replace(hour=10)
    assert scan(session_factory)["escalated"] == 0


def test_each_run_is_bounded_and_the_next_one_resumes(
    d: Driver, session_factory, fake_clock: FakeClock
) -> None:
    workflow_id = d.workflow(review(["u1"], sla_hours=1))
    for n in range(5):
        d.submit(workflow_id, {}, document_id=f"D{n}")
    fake_clock.advance(hours=2)
    runs = [scan(session_factory, batch=2) for _ in range(4)]
    assert [(r["overdue"], r["more"]) for r in runs] == [(2, 1), (2, 1), (1, 0), (0, 0)]
    assert sum(events(session_factory, "task.overdue").values()) == 5


def test_a_scan_reads_as_many_times_for_six_runtimes_as_for_two(
    d: Driver, engine: Engine, session_factory, fake_clock: FakeClock
) -> None:
    """Escalations and reminders are read per group of runtimes, never one runtime at a time.

    (Updates by primary key are left out: SQLite's driver sends one per row in any case.)
    """
    escalating = d.workflow(review(["u1"], sla_hours=1, escalate_to="boss"))
    reminding = d.workflow({**review(["u2"], sla_hours=10, reminder_hours=1), "name": "Reminders"})
    executed: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        executed.append(statement)

    reads = []
    for count in (1, 3):
        for n in range(count):
            d.submit(escalating, {}, document_id=f"E{count}-{n}")
            d.submit(reminding, {}, document_id=f"R{count}-{n}")
        fake_clock.advance(hours=2)
        executed.clear()
        event.listen(engine, "before_cursor_execute", record)
        try:
            done = scan(session_factory)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        # The second scan also finds the first one's stand-in overdue and its reminder due again.
        assert done["escalated"] == count and done["reminded"] >= count and done["overdue"] >= count
        reads.append(sum(statement.lstrip().startswith("SELECT") for statement in executed))
    assert reads[0] == reads[1], reads


def test_concurrent_scans_still_send_each_event_once(
    d: Driver, session_factory, fake_clock: FakeClock
) -> None:
    workflow_id = d.workflow(review(["u1", "u2"], sla_hours=1, reminder_hours=0.5, escalate_to="boss"))
    for n in range(6):
        d.submit(workflow_id, {}, document_id=f"D{n}")

    def scans_at(minutes: int) -> dict[str, int]:
        fake_clock.set(T0.replace(hour=9 + minutes // 60, minute=minutes % 60))
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: scan(session_factory), range(4)))
        return {k: sum(r[k] for r in results) for k in ("overdue", "escalated", "reminded", "errors")}

    assert scans_at(40) == {"overdue": 0, "escalated": 0, "reminded": 12, "errors": 0}
    # Due at 1:00 (with the reminder of that hour): overdue, and one stand-in per stage.
    assert scans_at(70) == {"overdue": 12, "escalated": 6, "reminded": 0, "errors": 0}
    # 1:30: the twelve overdue tasks; 1:40: the six stand-ins assigned at 1:10.
    assert scans_at(100) == {"overdue": 0, "escalated": 0, "reminded": 18, "errors": 0}
    assert sum(events(session_factory, "task.reminded").values()) == 30
    assert sum(events(session_factory, "task.overdue").values()) == 12
    assert sum(events(session_factory, "task.escalated").values()) == 6


def test_a_broken_runtime_is_retried_alone_and_does_not_hold_back_its_group(
    d: Driver, session_factory, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow_id = d.workflow(review(["u1"], reminder_hours=1))
    runtime_ids = [d.submit(workflow_id, {}, document_id=f"D{n}") for n in range(4)]
    broken = sorted(runtime_ids)[1]  # inside the one group of four
    remind = sla._remind

    def fail_for_broken(session: Session, runtime: Any, *args: Any, **kwargs: Any) -> int:
        if runtime.id == broken:
            raise RuntimeError("broken runtime")
        return remind(session, runtime, *args, **kwargs)

    monkeypatch.setattr(sla, "_remind", fail_for_broken)
    fake_clock.advance(hours=1)
    assert scan(session_factory) == {"overdue": 0, "escalated": 0, "reminded": 3, "errors": 1, "more": 0}
    assert sum(events(session_factory, "task.reminded").values()) == 3
    monkeypatch.setattr(sla, "_remind", remind)
    assert scan(session_factory)["reminded"] == 0  # held back until its retry time
    fake_clock.advance(minutes=1)  # the shortest wait: its reminder had only just fallen due
    assert scan(session_factory)["reminded"] == 1  # its reminder is still due
    assert sum(events(session_factory, "task.reminded").values()) == 4


def test_runtimes_that_keep_failing_do_not_hold_back_everyone_elses_tasks(
    d: Driver, session_factory, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow_id = d.workflow(review(["u1"], sla_hours=1))
    broken = {d.submit(workflow_id, {}, document_id=f"B{n}") for n in range(2)}
    fake_clock.advance(minutes=1)
    healthy = d.submit(workflow_id, {}, document_id="H")  # due a minute after the broken ones
    mark_overdue = sla._mark_overdue

    def fail_for_broken(session: Session, runtime: Any, *args: Any, **kwargs: Any) -> int:
        if runtime.id in broken:
            raise RuntimeError("broken runtime")
        return mark_overdue(session, runtime, *args, **kwargs)

    monkeypatch.setattr(sla, "_mark_overdue", fail_for_broken)
    fake_clock.advance(hours=2)
    nothing = {"overdue": 0, "escalated": 0, "reminded": 0}
    assert scan(session_factory, batch=2) == {**nothing, "errors": 2, "more": 1}
    assert scan(session_factory, batch=2) == {**nothing, "overdue": 1, "errors": 0, "more": 0}
    assert task(session_factory, healthy, "u1").status == "overdue"
    assert scan(session_factory, batch=2) == {**nothing, "errors": 0, "more": 0}
    # Held back as long as they had been due (61 min), tried again, then held back 122 min.
    for minutes, errors in ((60, 0), (1, 2), (121, 0), (1, 2)):
        fake_clock.advance(minutes=minutes)
        assert scan(session_factory, batch=2) == {**nothing, "errors": errors, "more": int(errors == 2)}


FAILING_FOR_NOW = {
    "lock wait": OperationalError(
        "UPDATE ...", {}, pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
    ),
    "full pool": PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached"),
}


@pytest.mark.parametrize("failure", FAILING_FOR_NOW)
def test_a_runtime_failing_for_now_is_not_held_back(
    d: Driver, session_factory, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    runtime_id = d.submit(d.workflow(review(["u1"], sla_hours=1)), {})
    mark_overdue = sla._mark_overdue

    def fail_for_now(*args: Any, **kwargs: Any) -> int:
        raise FAILING_FOR_NOW[failure]

    monkeypatch.setattr(sla, "_mark_overdue", fail_for_now)
    fake_clock.advance(hours=3)
    assert scan(session_factory)["errors"] == 1
    monkeypatch.setattr(sla, "_mark_overdue", mark_overdue)
    fake_clock.advance(minutes=1)  # the next run, not hours later
    assert scan(session_factory)["overdue"] == 1
    assert task(session_factory, runtime_id, "u1").status == "overdue"
