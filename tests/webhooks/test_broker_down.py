"""A broker that is down when a transition commits loses no webhook: the sweep sends them later."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.models import WebhookDelivery
from bflow_tasks.worker import celery_app, webhook_tasks
from tests.api.helpers import (
    UNREACHABLE_BROKER,
    Tenant,
    count,
    execute,
    open_runtime,
    post_workflow,
    queued_messages,
    switch_broker,
)
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import in_process_worker, register, tenant_events, wait_for_deliveries


def test_events_committed_while_the_broker_is_down_are_sent_by_the_sweep(
    client: TestClient,
    tenant: Tenant,
    session_factory: sessionmaker[Session],
    receiver: Receiver,
    api_engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = register(client, tenant, receiver.url)
    receiver.secrets = [hook["secret"]]
    workflow_id = post_workflow(client, tenant)["id"]
    working = celery_app.app.conf.broker_url
    switch_broker(UNREACHABLE_BROKER)
    try:
        # A submission the broker refused is withdrawn (503): its event's deliveries go with it.
        assert execute(client, tenant, workflow_id, document_id="LR-0").status_code == 503
        assert count(api_engine, WebhookDelivery) == 0
        # Transitions the worker commits go on; only the after-commit message is lost.
        with caplog.at_level(logging.WARNING, logger="bflow_tasks.worker.publishing"):
            runtime_id = open_runtime(session_factory, tenant, document_id="LR-1").runtime_id
    finally:
        switch_broker(working)
    assert "left to the sweep" in caplog.text
    pending = count(api_engine, WebhookDelivery, status="pending")
    assert pending == len(tenant_events(api_engine, tenant.id)) > 3
    assert queued_messages("webhooks") == 0 and receiver.requests() == []

    with in_process_worker():
        webhook_tasks.sweep.delay()  # what Beat does every BFLOW_SWEEP_SECONDS
        rows = wait_for_deliveries(api_engine, hook["id"])
    assert len(rows) == pending and all(d.status == "delivered" for d in rows)
    arrived = receiver.first_of_each()
    assert all(r.verified for r in arrived)
    assert [r.payload["sequence"] for r in arrived] == list(range(1, pending + 1))
    assert {r.payload["data"]["runtime_id"] for r in arrived} == {runtime_id}
