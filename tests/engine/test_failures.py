"""Failures a retry will not fix end the runtime in `error` after MAX_FAILURES attempts (SQLite, MariaDB)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import select

from bflow_tasks.engine import clock
from bflow_tasks.engine.runtimes import failures, lost_work, routing, stage_lifecycle, transitions
from bflow_tasks.engine.webhooks import outbox
from bflow_tasks.models import RuntimeCommand, RuntimeStage
from tests.engine.driver import Driver
from tests.engine.test_runtimes import events_and_log, single_stage, stage_events, started_but_unopened

N = failures.MAX_FAILURES
NO_WINDOW = timedelta(0)  # every failure is a try of its own


@pytest.fixture
def d(session_factory) -> Driver:
    return Driver(session_factory)


def broken_route(*_args: object, **_kwargs: object) -> list[str]:
    """A bug: every transition that routes on fails, whatever its data."""
    raise KeyError("no such node")


def attempt(d: Driver, command_id: str, kind: str) -> int | None:
    """Apply a command as its task does: on failure, count it in a transaction of its own.

    Return the count, or None when the command applied.
    """
    try:
        d.apply(command_id, kind)
    except KeyError as exc:
        with d.sf.begin() as s:
            return failures.command_failed(s, command_id=command_id, error=f"KeyError: {exc}")
    return None


def command(d: Driver, command_id: str) -> RuntimeCommand:
    with d.sf() as s:
        return s.get_one(RuntimeCommand, command_id)


@contextmanager
def a_day_later() -> Iterator[None]:
    later = clock.now() + timedelta(days=1)
    clock.set_clock(lambda: later)
    try:
        yield
    finally:
        clock.set_clock(None)


def swept_commands(d: Driver) -> list[str]:
    """What the sweep would re-send now (grace 0)."""
    with d.sf.begin() as s:
        return [c.id for c in lost_work.stale_commands(s, grace=timedelta(0))]


def test_an_action_that_keeps_failing_ends_its_runtime_in_error(d, monkeypatch):
    rid = d.submit(d.workflow(single_stage([{"users": ["a", "b"]}], "any")), {})
    action = d.request(rid, "a", "approve")
    monkeypatch.setattr(routing, "route", broken_route)
    counts = [attempt(d, action, "action") for _ in range(N - 1)]
    assert counts == list(range(1, N))
    assert command(d, action).status == "requested" and d.status(rid) == "in_progress"
    assert swept_commands(d) == [action]  # the sweep tries it again later

    assert attempt(d, action, "action") == N
    failed = command(d, action)
    assert (failed.status, failed.failures, failed.error) == ("failed", N, "KeyError: 'no such node'")
    runtime = d.runtime(rid)
    assert runtime.status == "error" and runtime.ended_at is not None and runtime.in_flight is None
    assert runtime.error == f"the action command failed {N} times: KeyError: 'no such node'"
    events, logs = events_and_log(d, rid)
    assert [e.type for e in events].count("runtime.error") == 1 and events[-1].type == "runtime.error"
    assert stage_events(events, "review")[-1] == ("stage.completed", "cancelled")
    assert logs[-2:] == ["stage.cancelled", "runtime.error"]
    assert d.tasks(rid) == {"alice": "completed", "a": "cancelled", "b": "cancelled"}

    with a_day_later():
        assert swept_commands(d) == []  # a failed command is never re-sent
    assert attempt(d, action, "action") is None  # a late redelivery changes nothing
    with d.sf.begin() as s:
        assert failures.command_failed(s, command_id=action, error="again") == 0
    assert command(d, action).failures == N and d.status(rid) == "error"


def test_a_start_that_keeps_failing_still_begins_the_runtimes_history(d, monkeypatch):
    rid, start = d.admit(d.workflow(single_stage([{"users": ["a"]}])), {})
    monkeypatch.setattr(routing, "route", broken_route)
    assert start is not None
    assert [attempt(d, start, "start") for _ in range(N)] == list(range(1, N + 1))
    assert d.status(rid) == "error"
    events, logs = events_and_log(d, rid)
    assert [e.type for e in events] == ["runtime.created", "runtime.error"]
    assert logs == ["runtime.submitted", "runtime.error"]


def test_a_command_that_fails_once_then_applies_normally(d, monkeypatch):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    action = d.request(rid, "a", "approve")
    with monkeypatch.context() as patched:
        patched.setattr(routing, "route", broken_route)
        assert attempt(d, action, "action") == 1
    assert attempt(d, action, "action") is None
    assert (command(d, action).status, command(d, action).failures) == ("applied", 1)
    assert d.status(rid) == "completed"


def test_a_command_of_a_runtime_that_already_ended_is_only_marked_failed(d):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    action = d.request(rid, "a", "approve")
    with d.sf.begin() as s:
        runtime = transitions.lock(s, rid)
        stage_lifecycle.finish(s, runtime, "cancelled")  # ended by something else, the action still queued
    for _ in range(N):
        with d.sf.begin() as s:
            failures.command_failed(s, command_id=action, error="KeyError: 'x'")
    assert command(d, action).status == "failed"
    runtime = d.runtime(rid)
    assert (runtime.status, runtime.error) == ("cancelled", None)
    events, _ = events_and_log(d, rid)
    assert "runtime.error" not in [e.type for e in events]


def test_a_stage_whose_tasks_cannot_be_created_ends_its_runtime_in_error(d, session_factory):
    workflow_id = d.workflow(single_stage([{"users": ["a", "b"]}]))
    rid, stage_id = started_but_unopened(d, session_factory, workflow_id, "D-broken")
    with session_factory.begin() as s:
        transitions.assign(s, stage_id=stage_id, user="a")  # b's task is the one that fails
    for n in range(1, N):
        with session_factory.begin() as s:
            assert (
                failures.opening_failed(s, stage_id=stage_id, error="DataError: too long", once_per=NO_WINDOW)
                == n
            )
    assert d.status(rid) == "in_progress"
    with session_factory.begin() as s:
        assert lost_work.unstarted_stages(s, grace=timedelta(0)) == [stage_id]  # tried again later
        assert (
            failures.opening_failed(s, stage_id=stage_id, error="DataError: too long", once_per=NO_WINDOW)
            == N
        )
    runtime = d.runtime(rid)
    assert runtime.status == "error"
    assert runtime.error == f"opening the stage 'review' failed {N} times: DataError: too long"
    events, logs = events_and_log(d, rid)
    assert [e.type for e in events].count("runtime.error") == 1
    assert stage_events(events, "review")[-2:] == [
        ("stage.started", "open"),
        ("stage.completed", "cancelled"),
    ]
    assert logs[-1] == "runtime.error"
    with session_factory() as s:
        assert s.get_one(RuntimeStage, stage_id).status == "cancelled"
    with a_day_later(), session_factory.begin() as s:
        assert lost_work.unstarted_stages(s, grace=timedelta(0)) == []
        assert failures.opening_failed(s, stage_id=stage_id, error="late", once_per=NO_WINDOW) == 0


def test_one_try_of_an_opening_counts_once_however_many_approvers_fail(d, session_factory):
    approvers = [f"u{i}" for i in range(N + 1)]
    rid, stage_id = started_but_unopened(
        d, session_factory, d.workflow(single_stage([{"users": approvers}])), "D"
    )
    grace = timedelta(seconds=30)
    now = clock.now()
    for seconds, counts in ((0, [1] * len(approvers)), (31, [2] * len(approvers))):
        clock.set_clock(lambda seconds=seconds: now + timedelta(seconds=seconds))
        try:
            for expected in counts:  # every approver's task of this try fails
                with session_factory.begin() as s:
                    assert (
                        failures.opening_failed(s, stage_id=stage_id, error="bug", once_per=grace) == expected
                    )
        finally:
            clock.set_clock(None)
    assert d.status(rid) == "in_progress"  # two tries, not N + 1 failures


def test_a_bug_in_the_end_itself_still_ends_the_runtime_in_error(d, monkeypatch):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    action = d.request(rid, "a", "approve")

    def broken_fan_out(*_args: object, **_kwargs: object) -> None:
        raise KeyError("endpoint filter")  # every event fails, runtime.error's too

    monkeypatch.setattr(outbox, "fan_out", broken_fan_out)
    for n in range(1, N + 1):
        try:
            d.apply(action, "action")
        except KeyError as exc:
            with d.sf.begin() as s:
                assert failures.command_failed(s, command_id=action, error=f"KeyError: {exc}") == n
    assert command(d, action).status == "failed"
    runtime = d.runtime(rid)
    assert (runtime.status, runtime.in_flight) == ("error", None)
    assert runtime.error == f"the action command failed {N} times: KeyError: 'endpoint filter'"
    with d.sf() as s:
        stage = s.scalars(
            select(RuntimeStage).where(RuntimeStage.runtime_id == rid, RuntimeStage.node_key == "review")
        ).one()
        assert [task.status for task in stage.assignees] == ["cancelled"]
    assert stage.status == "cancelled"
    assert swept_commands(d) == []


def test_a_failure_of_a_stage_already_started_is_not_counted(d, session_factory):
    rid = d.submit(d.workflow(single_stage([{"users": ["a"]}])), {})
    with session_factory.begin() as s:
        stage_id = s.scalars(
            select(RuntimeStage.id).where(RuntimeStage.runtime_id == rid, RuntimeStage.node_key == "review")
        ).one()
        assert (
            failures.opening_failed(s, stage_id=stage_id, error="late header task", once_per=NO_WINDOW) == 0
        )
    assert d.status(rid) == "in_progress"
