"""The embedded default (`bflow dev`, one process): health, metrics and correlated logs there too."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.stack import Stack, launch, wait_until
from tests.ops import support

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with launch("embedded", tmp_path_factory.mktemp("ops-embedded"), {"BFLOW_LOG_FORMAT": "json"}) as stack:
        yield stack


def test_health_checks_the_in_process_worker(dev: Stack) -> None:
    response = requests.get(f"{dev.base_url}/api/v1/health", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["checks"]) == {
        "database",
        "broker",
        "workers.workflow",
        "workers.webhooks",
        "workers.maintenance",
    }
    assert body["workers"] == {
        queue: ["embedded@localhost"] for queue in ("workflow", "webhooks", "maintenance")
    }


def test_one_process_serves_metrics_and_correlated_logs(dev: Stack) -> None:
    client = dev.client(dev.create_tenant("Embedded"))
    workflow_id = client.call("POST", "/workflows", 201, json=support.two_stages("Embedded"))["id"]
    request_id = f"dev-{uuid.uuid4().hex[:12]}"
    runtime_id = support.submit(client, workflow_id, "PO-DEV-1", request_id=request_id).json()["runtime_id"]
    client.wait_for_tasks(runtime_id, {"lead1"})

    def chord_done() -> set[str] | None:
        names = {
            r.get("task_name", "")
            for r in support.json_lines(dev.procs["dev"].log_path)
            if r.get("correlation_id") == request_id and r.get("runtime_id") == runtime_id
        }
        return names if "workflow.stages_opened" in names else None

    names = wait_until(chord_done, "the embedded worker's correlated log lines", timeout=20)
    assert {"workflow.start_runtime", "workflow.open_stages", "workflow.assign"} <= names

    samples = support.scrape(dev.base_url)  # the default registry: no multiprocess directory
    assert support.value(samples, "bflow_runtimes_started_total", workflow_id=workflow_id) == 1
    assert support.value(samples, "bflow_tasks_open", status="pending") == 1
    assert (
        support.value(samples, "bflow_http_requests_total", route="/api/v1/runtime/execute", status="202")
        == 1
    )
