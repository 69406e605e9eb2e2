"""The webhook API over HTTP: endpoints, the secret shown once, the deliveries log, replay, recover."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine.webhooks import endpoint_secrets
from bflow_tasks.models import WebhookDelivery, WebhookEndpoint
from bflow_tasks.settings import settings
from bflow_tasks.worker import webhook_sender
from tests.api.helpers import API, Tenant, count, open_runtime, queued_messages
from tests.webhooks.receiver import Receiver
from tests.webhooks.support import deliveries, endpoint, register
from tests.webhooks.test_ssrf import AMBIGUOUS_URLS, INVISIBLE_URLS, REFUSED_URLS


def test_register_list_get_delete_and_the_secret_is_shown_once(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    created = register(
        client, tenant, "https://erp.example.com/hooks", ["runtime.completed", "task.assigned"]
    )
    assert set(created) == {
        "id", "url", "events", "is_active", "disabled_reason", "failing_since",
        "previous_secret_expires_at", "created_at", "secret",
    }  # fmt: skip
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert created["events"] == ["runtime.completed", "task.assigned"] and created["is_active"] is True
    stored = endpoint(api_engine, created["id"])
    assert (
        secret not in stored.secret_encrypted and endpoint_secrets.decrypt(stored.secret_encrypted) == secret
    )

    listed = client.get(f"{API}/webhooks", headers=tenant.headers)
    assert listed.status_code == 200 and listed.json()["count"] == 1
    shown = client.get(f"{API}/webhooks/{created['id']}", headers=tenant.headers)
    assert shown.status_code == 200 and shown.json()["url"] == "https://erp.example.com/hooks"
    for response in (listed, shown):
        assert "secret" not in response.text.replace("previous_secret_expires_at", "")
        assert secret not in response.text

    assert client.delete(f"{API}/webhooks/{created['id']}", headers=tenant.headers).status_code == 204
    assert client.get(f"{API}/webhooks/{created['id']}", headers=tenant.headers).status_code == 404
    assert client.delete(f"{API}/webhooks/{created['id']}", headers=tenant.headers).status_code == 404
    assert count(api_engine, WebhookEndpoint) == 0


def test_event_filters_default_to_everything_and_unknown_types_are_422(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    url = f"{API}/webhooks"
    everything = client.post(url, json={"url": "https://erp.example.com/a"}, headers=tenant.headers)
    assert everything.status_code == 201 and everything.json()["events"] == ["*"]
    twice = client.post(
        url,
        json={"url": "https://erp.example.com/b", "events": ["runtime.error", "runtime.error"]},
        headers=tenant.headers,
    )
    assert twice.json()["events"] == ["runtime.error"]
    for body, path in [
        (
            {"url": "https://erp.example.com/c", "events": ["runtime.completed", "runtime.exploded"]},
            "$.events[1]",
        ),
        ({"url": "https://erp.example.com/c", "events": []}, "$.events"),
        ({"url": "https://erp.example.com/c", "secret": "mine"}, "$.secret"),
        ({"events": ["*"]}, "$.url"),
    ]:
        response = client.post(url, json=body, headers=tenant.headers)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == "invalid_input"
        assert [d["path"] for d in response.json()["error"]["details"]] == [path]
    assert count(api_engine, WebhookEndpoint) == 2


@pytest.mark.parametrize("url", [*REFUSED_URLS, "ftp://erp.example.com/hook", "http:///hook"])
def test_urls_to_internal_addresses_are_refused_at_registration(
    url: str, client: TestClient, tenant: Tenant, api_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "webhook_allow_private", False)
    response = client.post(f"{API}/webhooks", json={"url": url, "events": ["*"]}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["path"] == "$.url"
    assert count(api_engine, WebhookEndpoint) == 0
    public = client.post(
        f"{API}/webhooks", json={"url": "https://93.184.215.14/hook"}, headers=tenant.headers
    )
    assert public.status_code == 201


@pytest.mark.parametrize("url", INVISIBLE_URLS)
def test_urls_with_control_characters_or_whitespace_are_422_and_register_nothing(
    url: str, client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    response = client.post(f"{API}/webhooks", json={"url": url, "events": ["*"]}, headers=tenant.headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("the URL may not receive webhooks: the URL contains ")
    assert [d["path"] for d in error["details"]] == ["$.url"]
    assert count(api_engine, WebhookEndpoint) == 0
    assert queued_messages("webhooks") == 0


@pytest.mark.parametrize(("url", "reason"), AMBIGUOUS_URLS)
def test_urls_with_a_backslash_or_userinfo_are_422_and_register_nothing(
    url: str, reason: str, client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    assert settings.webhook_allow_private  # refused even where loopback receivers are allowed
    response = client.post(f"{API}/webhooks", json={"url": url, "events": ["*"]}, headers=tenant.headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("the URL may not receive webhooks: ")
    assert reason in error["message"]
    assert [d["path"] for d in error["details"]] == ["$.url"]
    assert count(api_engine, WebhookEndpoint) == 0
    assert queued_messages("webhooks") == 0


def _deliveries_with_a_dead_letter(
    client: TestClient, tenant: Tenant, session_factory: sessionmaker[Session], receiver: Receiver
) -> tuple[dict[str, str], str]:
    """An endpoint whose first event failed every attempt and whose later events were delivered."""
    hook = register(client, tenant, receiver.url)
    receiver.reply = lambda r: (500, {}, b"receiver broke", 0.0) if r.payload["sequence"] == 1 else 204
    runtime_id = open_runtime(session_factory, tenant).runtime_id
    for _ in range(8):  # retry_scale 0: every retry is due at once; no worker needed
        webhook_sender.drain(endpoint_id=hook["id"], runtime_id=runtime_id)
    return hook, runtime_id


def test_the_deliveries_log_filters_by_status_and_shows_the_attempts(
    client: TestClient,
    tenant: Tenant,
    session_factory: sessionmaker[Session],
    receiver: Receiver,
    api_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "webhook_retry_scale", 0)
    hook, runtime_id = _deliveries_with_a_dead_letter(client, tenant, session_factory, receiver)
    rows = deliveries(api_engine, endpoint_id=hook["id"])
    url = f"{API}/webhooks/{hook['id']}/deliveries"

    every = client.get(url, headers=tenant.headers).json()
    assert every["count"] == len(rows) > 2
    assert [d["sequence"] for d in every["results"]] == sorted((d.sequence or 0 for d in rows), reverse=True)
    failed = client.get(url, params={"status": "failed"}, headers=tenant.headers).json()
    assert failed["count"] == 1
    (dead,) = failed["results"]
    assert dead["id"] == rows[0].id and dead["sequence"] == 1 and dead["runtime_id"] == runtime_id
    assert dead["event_type"] == "runtime.created" and dead["last_status_code"] == 500
    assert dead["attempt_count"] == 8 and len(dead["attempts"]) == 8
    assert {a["status_code"] for a in dead["attempts"]} == {500}
    assert dead["attempts"][0]["response_body"] == "receiver broke" and dead["attempts"][0]["latency_ms"] >= 0
    delivered = client.get(url, params={"status": "delivered", "page_size": 2}, headers=tenant.headers).json()
    assert delivered["count"] == len(rows) - 1 and len(delivered["results"]) == 2
    assert delivered["next"] is not None and delivered["results"][0]["attempts"][0]["status_code"] == 204
    assert client.get(url, params={"status": "lost"}, headers=tenant.headers).status_code == 422


def test_replay_and_recover_reset_dead_letters_and_enqueue_them(
    client: TestClient,
    tenant: Tenant,
    session_factory: sessionmaker[Session],
    receiver: Receiver,
    api_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "webhook_retry_scale", 0)
    hook, runtime_id = _deliveries_with_a_dead_letter(client, tenant, session_factory, receiver)
    dead = deliveries(api_engine, endpoint_id=hook["id"], status="failed")[0]
    queued = queued_messages("webhooks")

    replay = client.post(f"{API}/webhook-deliveries/{dead.id}/replay", headers=tenant.headers)
    assert replay.status_code == 202
    again = deliveries(api_engine, id=dead.id)[0]
    assert again.status == "pending" and again.attempts == 0
    assert queued_messages("webhooks") == queued + 1  # enqueued after the commit
    receiver.reply = lambda _r: 200
    webhook_sender.drain(endpoint_id=hook["id"], runtime_id=runtime_id)
    assert deliveries(api_engine, id=dead.id)[0].status == "delivered"
    assert client.post(f"{API}/webhook-deliveries/nope/replay", headers=tenant.headers).status_code == 404

    recover = f"{API}/webhooks/{hook['id']}/recover"
    receiver.reply = lambda _r: 500
    with session_factory.begin() as session:  # dead-letter it again
        session.get_one(WebhookDelivery, dead.id).status = "failed"
    since = datetime.now(UTC) - timedelta(hours=1)
    future = client.post(
        recover, params={"since": (since + timedelta(days=1)).isoformat()}, headers=tenant.headers
    )
    assert future.status_code == 202 and future.json()["replayed"] == 0
    recovered = client.post(recover, params={"since": since.isoformat()}, headers=tenant.headers)
    assert recovered.status_code == 202
    assert recovered.json() == {"endpoint_id": hook["id"], "since": recovered.json()["since"], "replayed": 1}
    assert deliveries(api_engine, id=dead.id)[0].status == "pending"
    assert client.post(recover, headers=tenant.headers).status_code == 422  # `since` is required

    with session_factory.begin() as session:
        row = session.get_one(WebhookEndpoint, hook["id"])
        row.is_active, row.disabled_reason = False, "the endpoint answered 410 Gone"
    assert (
        client.post(recover, params={"since": since.isoformat()}, headers=tenant.headers).status_code == 409
    )
    conflict = client.post(f"{API}/webhook-deliveries/{dead.id}/replay", headers=tenant.headers)
    assert conflict.status_code == 409 and "enable it first" in conflict.json()["error"]["message"]


def test_rotate_secret_shows_the_new_one_once_and_keeps_the_old_for_24_hours(
    client: TestClient, tenant: Tenant, api_engine: Engine
) -> None:
    hook = register(client, tenant, "https://erp.example.com/hooks")
    response = client.post(f"{API}/webhooks/{hook['id']}/rotate-secret", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert (
        body["id"] == hook["id"] and body["secret"].startswith("whsec_") and body["secret"] != hook["secret"]
    )
    expires = datetime.fromisoformat(body["previous_secret_expires_at"])
    assert timedelta(hours=23, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=24)
    stored = endpoint(api_engine, hook["id"])
    assert endpoint_secrets.decrypt(stored.secret_encrypted) == body["secret"]
    assert [endpoint_secrets.decrypt(entry["secret_encrypted"]) for entry in stored.previous_secrets] == [
        hook["secret"]
    ]
    shown = client.get(f"{API}/webhooks/{hook['id']}", headers=tenant.headers).text
    assert body["secret"] not in shown and hook["secret"] not in shown


def test_another_tenants_endpoints_and_deliveries_are_not_found(
    client: TestClient,
    tenant: Tenant,
    other_tenant: Tenant,
    session_factory: sessionmaker[Session],
    api_engine: Engine,
) -> None:
    hook = register(client, tenant, "https://erp.example.com/hooks")
    open_runtime(session_factory, tenant)
    delivery_id = deliveries(api_engine, endpoint_id=hook["id"])[0].id
    base = f"{API}/webhooks/{hook['id']}"
    since = {"since": "2020-01-01T00:00:00Z"}
    for method, url, params in [
        ("GET", base, None),
        ("DELETE", base, None),
        ("GET", f"{base}/deliveries", None),
        ("POST", f"{base}/rotate-secret", None),
        ("POST", f"{base}/enable", None),
        ("POST", f"{base}/recover", since),
        ("POST", f"{API}/webhook-deliveries/{delivery_id}/replay", None),
    ]:
        response = client.request(method, url, params=params, headers=other_tenant.headers)
        assert response.status_code == 404, (method, url)
        assert response.json()["error"]["code"] == "not_found"
    assert client.get(f"{API}/webhooks", headers=other_tenant.headers).json()["count"] == 0
    assert (
        endpoint_secrets.decrypt(endpoint(api_engine, hook["id"]).secret_encrypted) == hook["secret"]
    )  # not rotated
    assert client.get(base, headers=tenant.headers).status_code == 200
