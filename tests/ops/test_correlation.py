"""One request's correlation id reaches every Celery task it caused, in JSON logs (real worker)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
import requests

from tests.e2e.stack import wait_until
from tests.ops import support
from tests.ops.conftest import Ops

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def workflow_id(ops: Ops) -> str:
    return ops.client.call("POST", "/workflows", 201, json=support.two_stages("Correlation"))["id"]


def task_lines(ops: Ops, correlation_id: str) -> list[dict[str, Any]]:
    """The worker's log lines of finished tasks that carry `correlation_id`."""
    return [
        record
        for process in ("worker", "worker-maintenance")
        for record in support.json_lines(ops.log(process))
        if record.get("correlation_id") == correlation_id and " succeeded in " in record.get("message", "")
    ]


def wait_for_tasks(ops: Ops, correlation_id: str, expected: dict[str, int]) -> list[dict[str, Any]]:
    """Wait until at least `expected` (task name -> count) finished with `correlation_id`."""

    def enough() -> list[dict[str, Any]] | None:
        lines = task_lines(ops, correlation_id)
        names = Counter(line["task_name"] for line in lines)
        return lines if all(names[name] >= n for name, n in expected.items()) else None

    return wait_until(enough, f"tasks {expected} with correlation id {correlation_id}", timeout=30)


def test_a_submit_and_an_action_carry_their_request_ids_through_every_task(
    ops: Ops, workflow_id: str
) -> None:
    submitted = f"submit-{uuid.uuid4().hex[:12]}"
    response = support.submit(ops.client, workflow_id, "PO-CORR-1", request_id=submitted)
    assert response.headers["X-Request-ID"] == submitted
    runtime_id = response.json()["runtime_id"]
    lead_task = ops.client.wait_for_tasks(runtime_id, {"lead1"})["lead1"]

    # submit -> start_runtime -> open_stages -> chord(assign) -> stages_opened, + webhook deliveries
    lines = wait_for_tasks(
        ops,
        submitted,
        {
            "workflow.start_runtime": 1,
            "workflow.open_stages": 1,
            "workflow.assign": 1,
            "workflow.stages_opened": 1,
            "webhooks.deliver": 1,
        },
    )
    for line in lines:
        assert line["runtime_id"] == runtime_id, line
        assert line["tenant_id"] == ops.tenant.id, line
        assert line["task_id"] in line["message"], line  # the Celery task id of that very task

    acted = f"action-{uuid.uuid4().hex[:12]}"
    assert support.act(ops.client, lead_task, "lead1", request_id=acted).headers["X-Request-ID"] == acted
    # action -> record_action -> open_stages -> chord(assign x2) -> stages_opened (the chord body)
    lines = wait_for_tasks(
        ops,
        acted,
        {
            "workflow.record_action": 1,
            "workflow.open_stages": 1,
            "workflow.assign": 2,
            "workflow.stages_opened": 1,
            "webhooks.deliver": 1,
        },
    )
    assert {line["runtime_id"] for line in lines} == {runtime_id}
    (record,) = [line for line in lines if line["task_name"] == "workflow.record_action"]
    assert record["bflow_task_id"] == lead_task
    # Nothing of the submit's chain was logged under the action's id, nor the other way round.
    assert not {line["task_id"] for line in lines} & {line["task_id"] for line in task_lines(ops, submitted)}


def test_the_shim_logs_the_request_id_and_tenant_in_json(ops: Ops, workflow_id: str) -> None:
    request_id = f"shim-{uuid.uuid4().hex[:12]}"
    support.submit(ops.client, workflow_id, "PO-CORR-2", request_id=request_id)

    def access_line() -> dict[str, Any] | None:
        found = [
            r
            for r in support.json_lines(ops.log("shim"))
            if r.get("logger") == "uvicorn.access" and r.get("correlation_id") == request_id
        ]
        return found[0] if found else None

    line = wait_until(access_line, "the shim's access log line", timeout=10)
    assert "POST /api/v1/runtime/execute" in line["message"]
    assert line["tenant_id"] == ops.tenant.id
    assert line["level"] == "INFO" and line["time"]


def test_a_request_without_a_usable_id_gets_a_fresh_one(ops: Ops) -> None:
    url = f"{ops.stack.base_url}/api/v1/health"
    made = requests.get(url, timeout=10).headers["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    replaced = requests.get(url, headers={"X-Request-ID": "two words\tand a tab"}, timeout=10)
    assert replaced.headers["X-Request-ID"] not in ("two words\tand a tab", made)
