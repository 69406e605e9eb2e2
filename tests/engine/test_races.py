"""Concurrent actions on one stage: exactly one transition, however the threads interleave."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select

from bflow_tasks.engine.runtimes import transitions
from bflow_tasks.models import RuntimeCommand, RuntimeEvent, RuntimeStage
from tests.engine.driver import Driver
from tests.engine.test_runtimes import approve_node, definition

APPROVERS = ["a", "b", "c", "d"]
ROUNDS = 12


def racing_flow(mode: str) -> dict:
    extra = {"quorum": 2} if mode == "quorum" else {}
    return definition(
        [
            approve_node("review", [{"users": APPROVERS}], mode, **extra),
            approve_node("next", [{"users": ["z"]}]),
        ],
        [
            {"source": "submit", "dest": "review"},
            {"source": "review", "dest": "next"},
            {"source": "next", "dest": "done"},
        ],
    )


def run_together(session_factory, command_ids: list[str]) -> list[BaseException]:
    """Apply every command at the same moment, each in its own thread and transaction."""
    barrier = threading.Barrier(len(command_ids))
    errors: list[BaseException] = []

    def apply(command_id: str) -> None:
        try:
            barrier.wait(timeout=10)
            with session_factory.begin() as session:
                transitions.apply_action(session, command_id=command_id)
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=apply, args=(c,)) for c in command_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


@pytest.mark.parametrize("mode", ["all", "any", "quorum"])
def test_racing_approvals_give_exactly_one_next_stage(session_factory, mode):
    d = Driver(session_factory)
    workflow_id = d.workflow(racing_flow(mode))
    for round_number in range(ROUNDS):
        rid = d.submit(workflow_id, {}, document_id=f"race-{mode}-{round_number}")
        commands = [d.request(rid, user, "approve") for user in APPROVERS]
        # Every command twice: a redelivered message racing its original.
        errors = run_together(session_factory, commands + commands)
        assert errors == []
        with session_factory() as s:
            stages = Counter(s.scalars(select(RuntimeStage.node_key).where(RuntimeStage.runtime_id == rid)))
            events = Counter(s.scalars(select(RuntimeEvent.type).where(RuntimeEvent.runtime_id == rid)))
            sequences = s.scalars(
                select(RuntimeEvent.sequence)
                .where(RuntimeEvent.runtime_id == rid)
                .order_by(RuntimeEvent.sequence)
            ).all()
            statuses = Counter(
                s.scalars(
                    select(RuntimeCommand.status).where(
                        RuntimeCommand.kind == "action", RuntimeCommand.runtime_id == rid
                    )
                )
            )
        assert stages == {"submit": 1, "review": 1, "next": 1}
        assert events["stage.completed"] == 1
        assert list(sequences) == list(range(1, len(sequences) + 1))  # no gap, no tie
        needed = {"all": 4, "any": 1, "quorum": 2}[mode]
        assert statuses == ({"applied": 4} if needed == 4 else {"applied": needed, "refused": 4 - needed})
        assert events["task.completed"] == needed
