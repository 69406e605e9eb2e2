"""Delivery end to end: the shim, a real Celery worker, real HTTP to a receiver that verifies everything."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from standardwebhooks import Webhook, WebhookVerificationError

from bflow_tasks.engine import clock
from bflow_tasks.engine.webhooks import endpoint_secrets, signatures
from bflow_tasks.engine.webhooks.leases import Claim
from bflow_tasks.models import WebhookEndpoint
from bflow_tasks.settings import settings
from bflow_tasks.worker import webhook_sender
from tests.api.helpers import API, Tenant, execute, post_workflow
from tests.webhooks.receiver import Received, Receiver
from tests.webhooks.support import (
    act,
    attempts,
    deliveries,
    endpoint,
    register,
    tenant_events,
    wait_for_deliveries,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("worker")

EVERY_KIND_OF_RUN = {
    "runtime.created", "stage.started", "task.assigned", "task.completed", "task.delegated",
    "stage.completed", "runtime.completed", "runtime.rejected", "runtime.returned", "runtime.cancelled",
}  # fmt: skip


def _submit(client: TestClient, tenant: Tenant, workflow_id: str, document_id: str) -> str:
    response = execute(client, tenant, workflow_id, document_id=document_id)
    assert response.status_code == 202, response.text
    runtime_id: str = response.json()["runtime_id"]
    return runtime_id


def _assert_in_order_once_each(received: list[Received], delivery_ids: set[str]) -> None:
    """Each delivery arrived (once after dedupe), and each runtime's events in sequence order."""
    unique = {r.webhook_id: r for r in reversed(received)}  # the first arrival of each id
    assert set(unique) == delivery_ids
    sequences: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for request in received:
        if request.webhook_id in seen:
            continue
        seen.add(request.webhook_id)
        payload = request.payload
        if payload["sequence"] is not None:
            sequences[payload["data"]["runtime_id"]].append(payload["sequence"])
    for runtime_id, order in sequences.items():
        assert order == list(range(1, len(order) + 1)), (runtime_id, order)


def test_every_event_of_full_runs_arrives_verified_once_each_in_sequence_order(
    client: TestClient, tenant: Tenant, receiver: Receiver, api_engine: Engine
) -> None:
    hook = register(client, tenant, receiver.url)
    receiver.secrets = [hook["secret"]]
    workflow_id = post_workflow(client, tenant)["id"]

    approved = _submit(client, tenant, workflow_id, "LR-1")
    rejected = _submit(client, tenant, workflow_id, "LR-2")
    returned = _submit(client, tenant, workflow_id, "LR-3")
    cancelled = _submit(client, tenant, workflow_id, "LR-4")
    for user in ("u1", "u2", "u3"):
        act(client, tenant, approved, user)
    act(client, tenant, rejected, "u2", "reject", comments="no")
    act(client, tenant, returned, "u3", "return", comments="dates?")
    act(client, tenant, cancelled, "u1", "delegate", delegate_to="u9")
    wait_for_status(client, tenant, returned, "returned")
    response = client.post(
        f"{API}/runtimes/{returned}/resubmit",
        json={"actor": "alice", "data": {"amount": 300}},
        headers=tenant.headers,
    )
    assert response.status_code == 202
    for user in ("u1", "u2", "u3"):
        act(client, tenant, returned, user)
    act(client, tenant, cancelled, "u9")  # the delegate approves ...
    response = client.post(
        f"{API}/runtimes/{cancelled}/cancel", json={"actor": "alice"}, headers=tenant.headers
    )
    assert response.status_code == 202  # ... then the submitter withdraws the document
    for runtime_id, status in [
        (approved, "completed"), (rejected, "rejected"), (returned, "completed"), (cancelled, "cancelled"),
    ]:  # fmt: skip
        wait_for_status(client, tenant, runtime_id, status)

    events = tenant_events(api_engine, tenant.id)
    rows = wait_for_deliveries(api_engine, hook["id"])
    assert {e.type for e in events} >= EVERY_KIND_OF_RUN
    assert sorted(d.event_id for d in rows) == sorted(e.id for e in events)  # one delivery per event
    assert all(d.status == "delivered" for d in rows)
    received = receiver.requests()
    assert received and all(r.verified for r in received)
    _assert_in_order_once_each(received, {d.id for d in rows})
    by_id = {d.id: d for d in rows}
    for request in received:
        assert request.body == by_id[request.webhook_id].body.encode()  # the exact stored bytes
        assert "." not in request.webhook_id
    assert {r.payload["type"] for r in received} >= EVERY_KIND_OF_RUN


def test_a_receiver_that_is_down_then_failing_then_slow_gets_everything_once_it_is_up(
    client: TestClient,
    tenant: Tenant,
    receiver: Receiver,
    api_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "webhook_retry_scale", 0.0003)
    monkeypatch.setattr(settings, "webhook_timeout_seconds", 0.5)
    hook = register(client, tenant, receiver.url)
    receiver.secrets = [hook["secret"]]
    receiver.stop()  # connection refused
    runtime_id = _submit(client, tenant, post_workflow(client, tenant)["id"], "LR-1")

    def head_attempts() -> list[tuple[int | None, str | None]]:
        rows = deliveries(api_engine, endpoint_id=hook["id"])
        return [(a.status_code, a.error_class) for a in attempts(api_engine, rows[0].id)] if rows else []

    wait_until(lambda: (None, "ConnectionError") in head_attempts(), what="a refused attempt")
    receiver.reply = lambda _r: 500
    receiver.start()
    wait_until(lambda: any(code == 500 for code, _ in head_attempts()), what="a 500 attempt")
    receiver.reply = lambda _r: (200, {}, b"late", 2.0)
    wait_until(
        lambda: any(error in ("Timeout", "ReadTimeout") for _, error in head_attempts()), what="a timeout"
    )
    receiver.reply = lambda _r: 200
    act(client, tenant, runtime_id, "u1")  # more events keep queueing behind the head meanwhile
    rows = wait_for_deliveries(api_engine, hook["id"], including="task.completed")

    log = head_attempts()
    assert log[-1] == (200, None) and len(log) < 8
    kinds = [error or str(code) for code, error in log]
    assert (
        kinds.index("ConnectionError")
        < kinds.index("500")
        < max(i for i, k in enumerate(kinds) if k in ("Timeout", "ReadTimeout"))
    )
    assert all(d.status == "delivered" for d in rows)
    assert rows[0].attempts == len(log) and rows[0].last_status_code == 200
    assert all(len(attempts(api_engine, d.id)) == d.attempts for d in rows)
    assert all(r.verified for r in receiver.requests())
    _assert_in_order_once_each(receiver.requests(), {d.id for d in rows})


def test_past_the_last_retry_a_delivery_is_dead_lettered_and_a_replay_delivers_it(
    client: TestClient,
    tenant: Tenant,
    receiver: Receiver,
    api_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "webhook_retry_scale", 0.00001)  # the whole schedule in ~1 s
    hook = register(client, tenant, receiver.url)
    receiver.reply = lambda r: 500 if r.payload["sequence"] == 1 else 200
    _submit(client, tenant, post_workflow(client, tenant)["id"], "LR-1")
    rows = wait_for_deliveries(api_engine, hook["id"])
    dead, *rest = rows
    assert dead.status == "failed" and dead.attempts == 8 and dead.last_status_code == 500
    assert [a.status_code for a in attempts(api_engine, dead.id)] == [500] * 8
    assert rest and all(d.status == "delivered" for d in rest)
    # The stream waited for the head until it was dead-lettered.
    last_try = max(r.at for r in receiver.requests() if r.webhook_id == dead.id)
    assert all(r.at >= last_try for r in receiver.requests() if r.webhook_id != dead.id)

    failed = client.get(
        f"{API}/webhooks/{hook['id']}/deliveries?status=failed", headers=tenant.headers
    ).json()
    assert failed["count"] == 1 and failed["results"][0]["id"] == dead.id
    assert failed["results"][0]["attempt_count"] == 8

    receiver.reply = lambda _r: 200
    replay = client.post(f"{API}/webhook-deliveries/{dead.id}/replay", headers=tenant.headers)
    assert replay.status_code == 202 and replay.json() == {"delivery_id": dead.id, "status": "pending"}
    wait_until(lambda: deliveries(api_engine, id=dead.id)[0].status == "delivered", what="the replay")
    replayed = [r for r in receiver.requests() if r.webhook_id == dead.id]
    assert len(replayed) == 9 and replayed[-1].body == replayed[0].body  # same id, same bytes


def test_410_disables_the_endpoint_tells_the_others_and_enable_resumes_it(
    client: TestClient, tenant: Tenant, receiver: Receiver, api_engine: Engine
) -> None:
    base = f"http://127.0.0.1:{receiver.port}"
    gone = register(client, tenant, f"{base}/gone")
    watcher = register(client, tenant, f"{base}/watch")

    def reply(request: Received) -> int:
        if request.path != "/gone":
            return 200
        # Gone only once the runtime's next events wait behind this one (unavailable until then).
        return 410 if len(deliveries(api_engine, endpoint_id=gone["id"])) >= 3 else 503

    receiver.reply = reply
    runtime_id = _submit(client, tenant, post_workflow(client, tenant)["id"], "LR-1")

    def notice() -> Received | None:
        return next(
            (
                r
                for r in receiver.requests()
                if r.path == "/watch" and r.payload["type"] == "endpoint.disabled"
            ),
            None,
        )

    told = wait_until(notice, what="the endpoint.disabled notice")
    assert told.payload["data"]["endpoint_id"] == gone["id"] and told.payload["sequence"] is None
    assert told.webhook_id in {d.id for d in deliveries(api_engine, endpoint_id=watcher["id"])}
    shown = client.get(f"{API}/webhooks/{gone['id']}", headers=tenant.headers).json()
    assert shown["is_active"] is False and shown["disabled_reason"] == "the endpoint answered 410 Gone"
    tried = [r.payload["sequence"] for r in receiver.requests() if r.path == "/gone"]
    assert set(tried) == {1}  # the runtime's first event, until the 410
    act(client, tenant, runtime_id, "u1")  # a disabled endpoint gets no new deliveries
    wait_until(
        lambda: any(r.payload["type"] == "task.completed" for r in receiver.requests()), what="u1's event"
    )
    assert "task.completed" not in {d.event_type for d in deliveries(api_engine, endpoint_id=gone["id"])}
    assert len([r for r in receiver.requests() if r.path == "/gone"]) == len(tried)  # nothing more was tried

    receiver.reply = lambda _r: 200
    enabled = client.post(f"{API}/webhooks/{gone['id']}/enable", headers=tenant.headers)
    assert enabled.status_code == 200 and enabled.json()["is_active"] is True
    rows = wait_for_deliveries(api_engine, gone["id"])
    # The delivery that got the 410 waited with the rest and goes first: the runtime's events
    # still arrive in sequence order.
    assert {d.status for d in rows} == {"delivered"}
    sent = [r.payload["sequence"] for r in receiver.requests() if r.path == "/gone"]
    assert sent == [*tried, *sorted(d.sequence for d in rows)]
    assert endpoint(api_engine, gone["id"]).failing_since is None


def test_a_failing_runtime_never_holds_up_another(
    client: TestClient,
    tenant: Tenant,
    receiver: Receiver,
    api_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "webhook_retry_scale", 0.01)
    workflow_id = post_workflow(client, tenant)["id"]
    hook = register(client, tenant, receiver.url)
    receiver.reply = lambda r: 503 if r.payload["data"]["document_id"] == "LR-1" else 200
    stuck = _submit(client, tenant, workflow_id, "LR-1")
    flowing = _submit(client, tenant, workflow_id, "LR-2")
    act(client, tenant, flowing, "u1")

    def flowing_done() -> bool:
        rows = deliveries(api_engine, endpoint_id=hook["id"], runtime_id=flowing)
        return any(d.event_type == "task.completed" for d in rows) and all(
            d.status == "delivered" for d in rows
        )

    wait_until(flowing_done, what="the other runtime's events")
    held = deliveries(api_engine, endpoint_id=hook["id"], runtime_id=stuck)
    assert held[0].status == "retrying" and all(d.status == "pending" for d in held[1:])
    assert {r.webhook_id for r in receiver.requests() if r.payload["data"]["runtime_id"] == stuck} == {
        held[0].id
    }
    assert len(held) > 1


def test_during_a_rotation_both_secrets_verify_and_afterwards_only_the_new_one(
    client: TestClient, tenant: Tenant, receiver: Receiver, api_engine: Engine
) -> None:
    hook = register(client, tenant, receiver.url)
    rotated = client.post(f"{API}/webhooks/{hook['id']}/rotate-secret", headers=tenant.headers)
    assert rotated.status_code == 200
    old, new = hook["secret"], rotated.json()["secret"]
    assert new != old and new.startswith("whsec_")
    receiver.secrets = [old, new]  # each must verify every request on its own
    runtime_id = _submit(client, tenant, post_workflow(client, tenant)["id"], "LR-1")
    wait_for_deliveries(api_engine, hook["id"])
    during = receiver.requests()
    assert during and all(r.verified for r in during)
    assert all(len(r.headers["webhook-signature"].split(" ")) == 2 for r in during)

    with Session(api_engine) as session, session.begin():
        row = session.get_one(WebhookEndpoint, hook["id"])
        expired = (clock.now() - timedelta(seconds=1)).isoformat()
        row.previous_secrets = [{**entry, "expires_at": expired} for entry in row.previous_secrets]
    receiver.secrets = [new]
    act(client, tenant, runtime_id, "u1")
    after = wait_until(
        lambda: [r for r in receiver.requests() if r.payload["type"] == "task.completed"],
        what="a later event",
    )
    assert all(r.verified and " " not in r.headers["webhook-signature"] for r in after)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after[0].body, after[0].headers)
    assert json.loads(after[0].body)["data"]["actor"] == "u1"
    assert isinstance(datetime.fromisoformat(rotated.json()["previous_secret_expires_at"]), datetime)


def test_a_slow_host_lookup_counts_against_the_attempts_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()

    def slow_getaddrinfo(*args: object, **kwargs: object) -> list[Any]:
        released.wait(4)  # a resolver that takes 4 s to answer
        return []

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    monkeypatch.setattr(settings, "webhook_timeout_seconds", 1.0)
    claim = Claim(
        delivery_id="d-1",
        endpoint_id="e-1",
        runtime_id=None,
        url="http://slow-dns.example/hook",
        body="{}",
        lease=clock.now() + timedelta(seconds=60),
        secrets_encrypted=(endpoint_secrets.encrypt(signatures.new_secret()),),
    )
    started = time.monotonic()
    try:
        outcome = webhook_sender.attempt(claim)
    finally:
        released.set()
    assert time.monotonic() - started < 2.5
    assert not outcome.ok and outcome.error_class == "Timeout"
    assert outcome.error is not None and "looking the host up" in outcome.error
