"""`bflow demo`: the whole service in one process, driven over HTTP, with a printed timeline.

It seeds a tenant and a leave-request workflow (a parallel 3-approver stage, a finance
stage for large amounts), then submits documents and acts on them through the real shim
on a loopback port while an embedded worker and Beat carry them.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import requests
import uvicorn

from bflow_tasks import migrations
from bflow_tasks.db import session_scope
from bflow_tasks.demo_receiver import Receiver
from bflow_tasks.engine import tenants
from bflow_tasks.models import RuntimeEvent
from bflow_tasks.settings import settings
from bflow_tasks.worker.embedded import worker_and_beat

MANAGERS = ["mai", "minh", "lan"]
WAIT_SECONDS = 60
EXPECTED_STATUSES = ["completed", "completed", "completed", "rejected"]

DEMO_WORKFLOW: dict[str, Any] = {
    "name": "Leave request",
    "document_type": "leave_request",
    "zones": ["days", "amount", "receipt"],
    "nodes": [
        {"key": "submit", "name": "Employee submits", "action": "create"},
        {
            "key": "managers",
            "name": "Three managers approve",
            "action": "approve",
            "sla_hours": 24,
            "approvers": {"mode": "all", "sources": [{"users": MANAGERS}]},
        },
        {
            "key": "finance",
            "name": "Finance approves large amounts",
            "action": "approve",
            "approvers": {"mode": "any", "sources": [{"field": "data.finance_officer"}]},
        },
        {"key": "done", "name": "Approved", "action": "end"},
    ],
    "associations": [
        {"source": "submit", "dest": "managers"},
        {"source": "managers", "dest": "finance", "condition": {"var": "amount", "op": ">=", "value": 1000}},
        {"source": "managers", "dest": "done", "condition": {"var": "amount", "op": "<", "value": 1000}},
        {"source": "finance", "dest": "done"},
    ],
}


class DemoFailed(Exception):
    """The demo saw something other than what it expected."""


class Client:
    """A tiny HTTP client for the shim, as an ERP module would use it."""

    def __init__(self, base_url: str, token: str):
        self.base = base_url + "/api/v1"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = self.http.request(method, self.base + path, timeout=10, **kwargs)
        if response.status_code != expect:
            raise DemoFailed(f"{method} {path} answered {response.status_code}: {response.text}")
        return response.json() if response.content else None

    def submit(self, workflow_id: str, document_id: str, data: dict[str, Any], by: str) -> str:
        body = {
            "workflow_id": workflow_id,
            "document_type": "leave_request",
            "document_id": document_id,
            "data": data,
            "submitted_by": by,
        }
        return self.call("POST", "/runtime/execute", 202, json=body)["runtime_id"]

    def act(self, runtime_id: str, user: str, action: str = "approve", **extra: Any) -> None:
        task_id = self.wait_for_task(runtime_id, user)
        self.call("POST", f"/tasks/{task_id}/action", 202, json={"action": action, "actor": user, **extra})

    def wait_for_task(self, runtime_id: str, user: str) -> str:
        def pending() -> str | None:
            found = self.call(
                "GET", "/tasks", 200, params={"assignee": user, "status": "pending", "runtime_id": runtime_id}
            )
            items = found["results"] if isinstance(found, dict) else found
            return items[0]["id"] if items else None

        return _wait(pending, f"a pending task for {user} on runtime {runtime_id}")

    def wait_for_status(self, runtime_id: str, *statuses: str) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            runtime = self.call("GET", f"/runtimes/{runtime_id}", 200)
            return runtime if runtime["status"] in statuses else None

        return _wait(reached, f"runtime {runtime_id} to become {' or '.join(statuses)}")


def _wait(probe: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise DemoFailed(f"gave up after {WAIT_SECONDS} s waiting for {what}")


@contextmanager
def _shim_on_loopback() -> Iterator[str]:
    """Serve the shim with uvicorn on a free loopback port, in a thread."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config("api_shim.app:app", host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True, name="bflow-shim")
    thread.start()
    _wait(lambda: server.started, "the shim to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _scenario(client: Client) -> list[dict[str, Any]]:
    """Drive four documents; return each one's final runtime as the API shows it."""
    workflow = client.call("POST", "/workflows", 201, json=DEMO_WORKFLOW)
    run = uuid.uuid4().hex[:6]
    small = client.submit(workflow["id"], f"LR-{run}-1", {"days": 2, "amount": 400}, by="an")
    large = client.submit(
        workflow["id"], f"LR-{run}-2", {"days": 10, "amount": 2500, "finance_officer": "thu"}, by="binh"
    )
    revised = client.submit(
        workflow["id"], f"LR-{run}-3", {"days": 5, "amount": 1800, "finance_officer": "thu"}, by="chi"
    )
    refused = client.submit(
        workflow["id"], f"LR-{run}-4", {"days": 30, "amount": 9000, "finance_officer": "thu"}, by="dung"
    )

    for runtime_id in (small, large, refused):
        for manager in MANAGERS:
            client.act(runtime_id, manager, comments="ok")
    client.act(large, "thu", comments="budget available")
    client.act(refused, "thu", "reject", comments="over the yearly budget")

    client.act(revised, "mai")
    client.act(revised, "minh", "return", comments="please attach the receipt")
    client.wait_for_status(revised, "returned")
    client.call(
        "POST",
        f"/runtimes/{revised}/resubmit",
        202,
        json={"actor": "chi", "data": {"days": 5, "amount": 900, "receipt": "r-77.pdf"}},
    )
    for manager in MANAGERS:
        client.act(revised, manager)

    return [client.wait_for_status(rid, "completed", "rejected") for rid in (small, large, revised, refused)]


def _timeline(runtime: dict[str, Any]) -> str:
    log = runtime["log"]
    start = _parse(log[0]["created_at"]) if log else None
    lines = [f"{runtime['document_id']}  data={json.dumps(runtime['data'])}  ->  {runtime['status'].upper()}"]
    for entry in log:
        offset = (_parse(entry["created_at"]) - start).total_seconds() if start else 0.0
        node = next((s["node_key"] for s in runtime["stages"] if s["id"] == entry.get("stage_id")), "")
        who = entry.get("actor") or ""
        note = entry.get("message") or ""
        lines.append(f"  +{offset:6.3f}s  {entry['action']:<20} {node:<10} {who:<6} {note}".rstrip())
    return "\n".join(lines)


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).replace(tzinfo=None)


def _events_of(tenant_id: str) -> int:
    from sqlalchemy import func, select

    with session_scope() as session:
        return session.scalar(select(func.count()).where(RuntimeEvent.tenant_id == tenant_id)) or 0


def run_demo(*, as_json: bool = False) -> int:
    """Run the demo end to end; return the process exit code."""
    tenant_id: str | None = None
    receiver: Receiver | None = None
    runtimes: list[dict[str, Any]] = []
    failure: str | None = None
    started = time.monotonic()
    try:
        migrations.upgrade(settings.database_url)
        # The demo's webhook receiver listens on loopback, which production refuses (SSRF guard).
        settings.webhook_allow_private = True
        with session_scope() as session:
            tenant, token = tenants.create_tenant(session, name="Demo Co")
        tenant_id = tenant.id
        started = time.monotonic()
        with Receiver() as receiver, worker_and_beat(), _shim_on_loopback() as base_url:
            client = Client(base_url, token)
            hook = client.call("POST", "/webhooks", 201, json={"url": receiver.url, "events": ["*"]})
            receiver.secret = hook["secret"]
            runtimes = _scenario(client)
            _wait(lambda: len(receiver.events) >= _events_of(tenant.id) > 0, "every event's webhook")
    except DemoFailed as exc:
        failure = str(exc)
    except Exception as exc:
        if not as_json:
            raise
        # --json promises one object on stdout whatever happens; the traceback goes to stderr.
        traceback.print_exc()
        failure = f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - started
    error = failure or _unexpected(runtimes, receiver)
    if as_json:
        print(json.dumps(_summary(error, tenant_id, elapsed, receiver, runtimes)))
    elif failure is not None or receiver is None:
        print(f"demo failed: {failure}")
    else:
        print(f"Bflow demo on {settings.database_url} with broker {settings.broker_url}\n")
        for runtime in runtimes:
            print(_timeline(runtime) + "\n")
        kinds = sorted({event["type"] for event in receiver.events})
        print(
            f"webhooks: {len(receiver.events)} received on {receiver.url}, each verified (standardwebhooks)"
            f" ({receiver.rejected} rejected), {'in' if receiver.in_order() else 'OUT OF'} sequence order"
            f" per runtime\n  types: {', '.join(kinds)}"
        )
        verdict = "as expected" if error is None else "NOT as expected"
        print(f"{len(runtimes)} documents, {verdict}, in {elapsed:.1f} s")
    return 0 if error is None else 1


def _unexpected(runtimes: list[dict[str, Any]], receiver: Receiver | None) -> str | None:
    """Say what a demo that ran to the end got wrong, or None when all is as expected."""
    statuses = [r["status"] for r in runtimes]
    problems = []
    if statuses != EXPECTED_STATUSES:
        problems.append(f"runtimes ended {', '.join(statuses)} (expected {', '.join(EXPECTED_STATUSES)})")
    if receiver is not None and receiver.rejected:
        problems.append(f"{receiver.rejected} webhook(s) failed verification")
    if receiver is not None and not receiver.in_order():
        problems.append("webhooks arrived out of sequence order")
    return "; ".join(problems) or None


def _summary(
    error: str | None,
    tenant_id: str | None,
    elapsed: float,
    receiver: Receiver | None,
    runtimes: list[dict[str, Any]],
) -> dict[str, Any]:
    """Build the --json object: the same keys whether the demo succeeded or not."""
    return {
        "ok": error is None,
        "error": error,
        "tenant_id": tenant_id,
        "seconds": round(elapsed, 3),
        "webhooks": {
            "received": len(receiver.events) if receiver else 0,
            "rejected": receiver.rejected if receiver else 0,
            "in_order": receiver.in_order() if receiver else True,
        },
        "runtimes": [
            {"id": r["id"], "document_id": r["document_id"], "status": r["status"]} for r in runtimes
        ],
    }
