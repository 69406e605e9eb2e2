"""GET /metrics: the shim's and the workers' samples in one scrape, and the database gauges."""

from __future__ import annotations

import re

import pytest
import requests

from tests.e2e.stack import wait_until
from tests.ops import support
from tests.ops.conftest import Ops

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

SUBMIT = {"method": "POST", "route": "/api/v1/runtime/execute", "status": "202"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


@pytest.fixture(scope="module")
def workflow_id(ops: Ops) -> str:
    return ops.client.call("POST", "/workflows", 201, json=support.two_stages("Metrics"))["id"]


def test_counters_move_after_runs_including_the_workers_counters(ops: Ops, workflow_id: str) -> None:
    before = support.scrape(ops.stack.base_url)
    support.run_to_the_end(ops.client, workflow_id, "PO-MET-1")
    rejected = support.submit(ops.client, workflow_id, "PO-MET-2").json()["runtime_id"]
    lead_task = ops.client.wait_for_tasks(rejected, {"lead1"})["lead1"]
    support.act(ops.client, lead_task, "lead1", "reject")
    support.wait_for_status(ops.client, rejected, "rejected")
    delivered_before = support.value(before, "bflow_webhook_delivery_attempts_total", outcome="delivered")

    def settled() -> support.Samples | None:
        # Webhook deliveries finish a moment after the runtime does, and a worker counts an
        # attempt just after committing it: wait until the counter caught up with the events.
        now = support.scrape(ops.stack.base_url)
        done = support.value(now, "bflow_webhook_deliveries", status="pending") == 0
        delivered = support.value(now, "bflow_webhook_delivery_attempts_total", outcome="delivered")
        events = support.value(now, "bflow_events_total") - support.value(before, "bflow_events_total")
        return now if done and events > 0 and delivered - delivered_before >= events else None

    after = wait_until(settled, "the webhook outbox to drain", timeout=30, interval=0.3)

    def delta(name: str, **labels: str) -> float:
        return support.value(after, name, **labels) - support.value(before, name, **labels)

    # The shim's own counter, by route template.
    assert delta("bflow_http_requests_total", **SUBMIT) == 2
    assert support.value(after, "bflow_http_request_duration_seconds_count", method="POST") >= 2
    # Counted in the worker processes after commit, read through the shim's endpoint.
    assert delta("bflow_runtimes_started_total", workflow_id=workflow_id) == 2
    assert delta("bflow_runtimes_ended_total", workflow_id=workflow_id, status="completed") == 1
    assert delta("bflow_runtimes_ended_total", workflow_id=workflow_id, status="rejected") == 1
    lead = {"workflow_id": workflow_id, "node": "lead"}
    assert delta("bflow_stage_duration_seconds_count", **lead) == 2
    assert delta("bflow_stage_duration_seconds_count", workflow_id=workflow_id, node="board") == 1
    assert delta("bflow_stage_duration_seconds_bucket", le="+Inf", **lead) == 2
    assert delta("bflow_events_total", type="task.assigned") == 4  # lead1 twice, b1, b2
    # Every event of both runtimes went to the one registered endpoint, each delivered once.
    events = delta("bflow_events_total")
    assert events > 0
    assert (
        support.value(after, "bflow_webhook_delivery_attempts_total", outcome="delivered") - delivered_before
        == events
    )


def test_no_raw_ids_in_http_labels(ops: Ops, workflow_id: str) -> None:
    runtime_id = support.submit(ops.client, workflow_id, "PO-MET-3").json()["runtime_id"]
    ops.client.call("GET", f"/runtimes/{runtime_id}", 200)
    requests.get(f"{ops.stack.base_url}/no/such/{runtime_id}", timeout=10)
    samples = support.scrape(ops.stack.base_url)
    routes = {dict(labels)["route"] for name, labels in samples if name == "bflow_http_requests_total"}
    assert "/api/v1/runtimes/{runtime_id}" in routes
    assert "<unrouted>" in routes
    assert not [route for route in routes if UUID.search(route)]


@pytest.mark.parametrize("path", ["/metrics", "/api/v1/metrics"])
def test_head_on_the_scrape_is_200_without_a_body(ops: Ops, path: str) -> None:
    response = requests.head(f"{ops.stack.base_url}{path}", timeout=10)
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = support.scrape(ops.stack.base_url)
    assert support.value(samples, "bflow_http_requests_total", method="HEAD", route=path, status="200") >= 1


def test_state_gauges_are_read_from_the_database(ops: Ops, workflow_id: str) -> None:
    runtime_id = support.submit(ops.client, workflow_id, "PO-MET-4").json()["runtime_id"]
    ops.client.wait_for_tasks(runtime_id, {"lead1"})
    samples = support.scrape(ops.stack.base_url)
    assert support.value(samples, "bflow_state_up") == 1
    assert support.value(samples, "bflow_tasks_open", status="pending") >= 1
    assert support.value(samples, "bflow_runtimes_active", status="in_progress") >= 1
    for name in (
        "bflow_tasks_overdue",
        "bflow_commands_requested",
        "bflow_commands_requested_oldest_seconds",
    ):
        assert (name, frozenset()) in samples, name
    for status in ("pending", "retrying", "failed"):
        assert ("bflow_webhook_deliveries", frozenset({("status", status)})) in samples
    # /api/v1/metrics serves the same exposition (the API lists it under its prefix).
    assert "bflow_state_up 1.0" in requests.get(f"{ops.stack.base_url}/api/v1/metrics", timeout=10).text


def test_every_process_writes_its_own_files_in_the_shared_directory(ops: Ops) -> None:
    owners = {path.stem.split("_", 1)[1] for path in ops.metrics_dir.glob("*.db")}
    # The shim and at least one prefork child of the worker, named host-pid.
    assert len(owners) >= 2, owners
    assert all(re.fullmatch(r"[^_]+-\d+", owner) for owner in owners), owners
