"""Helpers for the ops suite: a two-stage workflow, driving it over HTTP, reading logs and metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.stack import E2EClient, wait_until

# lead (any of lead1) -> board (all of b1, b2) -> done: a chord of one, then a chord of two.
BOARD = {"b1", "b2"}


def two_stages(name: str) -> dict[str, Any]:
    """A workflow whose runs open two stages one after the other."""
    return {
        "name": name,
        "document_type": "purchase_order",
        "nodes": [
            {"key": "submit", "name": "Submit", "action": "create"},
            {
                "key": "lead",
                "name": "Team lead",
                "action": "approve",
                "approvers": {"mode": "any", "sources": [{"users": ["lead1"]}]},
            },
            {
                "key": "board",
                "name": "Board",
                "action": "approve",
                "approvers": {"mode": "all", "sources": [{"users": sorted(BOARD)}]},
            },
            {"key": "done", "name": "Done", "action": "end"},
        ],
        "associations": [
            {"source": "submit", "dest": "lead"},
            {"source": "lead", "dest": "board"},
            {"source": "board", "dest": "done"},
        ],
    }


def submit(
    client: E2EClient, workflow_id: str, document_id: str, *, request_id: str | None = None, **data: Any
) -> requests.Response:
    """POST /runtime/execute (optionally with an X-Request-ID); assert 202."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    body = {
        "workflow_id": workflow_id,
        "document_type": "purchase_order",
        "document_id": document_id,
        "data": {"amount": 10, **data},
        "submitted_by": "an",
    }
    response = client.request("POST", "/runtime/execute", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response


def act(
    client: E2EClient, task_id: str, user: str, action: str = "approve", *, request_id: str | None = None
) -> requests.Response:
    """POST /tasks/{id}/action; assert 202."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = client.request(
        "POST", f"/tasks/{task_id}/action", json={"action": action, "actor": user}, headers=headers
    )
    assert response.status_code == 202, response.text
    return response


def wait_for_status(client: E2EClient, runtime_id: str, status: str) -> dict[str, Any]:
    """Wait until the runtime reaches `status`; return its detail."""
    return wait_until(
        lambda: (found := client.call("GET", f"/runtimes/{runtime_id}", 200))["status"] == status and found,
        f"runtime {runtime_id} to be {status}",
        timeout=60,
        interval=0.1,
    )


def run_to_the_end(client: E2EClient, workflow_id: str, document_id: str) -> str:
    """Submit a document and approve it through both stages; return its runtime id."""
    runtime_id = submit(client, workflow_id, document_id).json()["runtime_id"]
    act(client, client.wait_for_tasks(runtime_id, {"lead1"})["lead1"], "lead1")
    for user, task_id in client.wait_for_tasks(runtime_id, BOARD).items():
        act(client, task_id, user)
    wait_for_status(client, runtime_id, "completed")
    return runtime_id


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log records in a process's log file (banners and other text are skipped)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str) -> Samples:
    """GET /metrics and parse it with prometheus_client's own parser."""
    response = requests.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)
