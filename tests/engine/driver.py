"""Drive the engine the way the Celery tasks do, synchronously, for engine tests.

Each step is its own committed transaction, exactly as each task is: apply a command, then
open the stages it returned (one `assign` per approver, then `mark_started`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine import tenants
from bflow_tasks.engine.definitions import workflow_store
from bflow_tasks.engine.runtimes import admission, transitions
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage

APPLY = {
    "start": transitions.start,
    "action": transitions.apply_action,
    "resubmit": transitions.resubmit,
    "cancel": transitions.cancel,
}


class Driver:
    """One tenant's view of the engine, with helpers to submit and act."""

    def __init__(self, session_factory: sessionmaker[Session]):
        self.sf = session_factory
        with self.sf.begin() as s:
            tenant, _token = tenants.create_tenant(s, name="acme")
            self.tenant_id = tenant.id

    def workflow(self, definition: dict[str, Any]) -> str:
        with self.sf.begin() as s:
            workflow, _version = workflow_store.create_workflow(s, tenant_id=self.tenant_id, raw=definition)
            return workflow.id

    def submit(
        self,
        workflow_id: str,
        data: dict[str, Any],
        *,
        document_id: str = "D1",
        by: str = "alice",
        document_type: str = "leave_request",
    ) -> str:
        runtime_id, command_id = self.admit(
            workflow_id, data, document_id=document_id, by=by, document_type=document_type
        )
        if command_id:
            self.apply(command_id, "start")
        return runtime_id

    def admit(
        self,
        workflow_id: str,
        data: dict[str, Any],
        *,
        document_id: str = "D1",
        by: str = "alice",
        document_type: str = "leave_request",
        key: str | None = None,
    ) -> tuple[str, str | None]:
        """Submit as the shim does, without starting: (runtime id, start command id or None on a replay)."""
        with self.sf.begin() as s:
            runtime, command = admission.submit(
                s,
                tenant_id=self.tenant_id,
                workflow_id=workflow_id,
                document_type=document_type,
                document_id=document_id,
                data=data,
                submitted_by=by,
                idempotency_key=key,
            )
            return runtime.id, command.id if command else None

    def apply(self, command_id: str, kind: str) -> list[str]:
        with self.sf.begin() as s:
            stage_ids = APPLY[kind](s, command_id=command_id)
        self.open(stage_ids)
        return stage_ids

    def open(self, stage_ids: list[str]) -> None:
        if not stage_ids:
            return
        with self.sf() as s:
            plan = transitions.opening_plan(s, stage_ids=stage_ids)
        for stage_id, user in plan:
            with self.sf.begin() as s:
                transitions.assign(s, stage_id=stage_id, user=user)
        with self.sf.begin() as s:
            transitions.mark_started(s, stage_ids=stage_ids)

    def task_of(self, runtime_id: str, user: str) -> str:
        with self.sf() as s:
            return s.scalars(
                select(RuntimeAssignee.id).where(
                    RuntimeAssignee.runtime_id == runtime_id,
                    RuntimeAssignee.user == user,
                    RuntimeAssignee.status.in_(("pending", "overdue")),
                )
            ).one()

    def request(self, runtime_id: str, user: str, action: str, **extra: Any) -> str:
        with self.sf.begin() as s:
            command = admission.request_action(
                s,
                tenant_id=self.tenant_id,
                task_id=self.task_of(runtime_id, user),
                action=action,
                actor=user,
                **extra,
            )
            return command.id

    def act(self, runtime_id: str, user: str, action: str = "approve", **extra: Any) -> None:
        self.apply(self.request(runtime_id, user, action, **extra), "action")

    def resubmit(self, runtime_id: str, by: str = "alice", data: dict[str, Any] | None = None) -> None:
        with self.sf.begin() as s:
            command = admission.request_resubmit(
                s, tenant_id=self.tenant_id, runtime_id=runtime_id, actor=by, data=data
            )
            command_id = command.id
        self.apply(command_id, "resubmit")

    def cancel(self, runtime_id: str) -> None:
        with self.sf.begin() as s:
            command_id = admission.request_cancel(
                s, tenant_id=self.tenant_id, runtime_id=runtime_id, actor="alice"
            ).id
        self.apply(command_id, "cancel")

    def status(self, runtime_id: str) -> str:
        with self.sf() as s:
            return s.get_one(Runtime, runtime_id).status

    def runtime(self, runtime_id: str) -> Runtime:
        with self.sf() as s:
            return s.get_one(Runtime, runtime_id)

    def stages(self, runtime_id: str) -> list[tuple[str, str, str | None]]:
        """(node_key, status, outcome) of every stage, in the order they were created."""
        with self.sf() as s:
            rows = s.execute(
                select(RuntimeStage.node_key, RuntimeStage.status, RuntimeStage.outcome)
                .where(RuntimeStage.runtime_id == runtime_id)
                .order_by(RuntimeStage.sequence)
            ).all()
            return [tuple(r) for r in rows]  # type: ignore[misc]

    def tasks(self, runtime_id: str) -> dict[str, str]:
        """user -> status of every task (latest per user)."""
        with self.sf() as s:
            rows = s.execute(
                select(RuntimeAssignee.user, RuntimeAssignee.status)
                .where(RuntimeAssignee.runtime_id == runtime_id)
                .order_by(RuntimeAssignee.created_at)
            ).all()
            return dict(rows)  # type: ignore[arg-type]
