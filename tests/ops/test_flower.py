"""Flower against the real stack: our tasks by name with their ids, the queues, basic auth."""

from __future__ import annotations

import ast
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.stack import Proc, free_port, wait_until
from tests.ops import support
from tests.ops.conftest import Ops, celery

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

USER = "operator"
PASSWORD = secrets.token_hex(8)
SENTINEL = "CONFIDENTIAL-DOCUMENT-BODY"


class Flower:
    def __init__(self, base_url: str):
        self.base_url = base_url

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("auth", (USER, PASSWORD))
        return requests.get(self.base_url + path, timeout=15, **kwargs)


@pytest.fixture(scope="module")
def flower(ops: Ops) -> Iterator[Flower]:
    port = free_port()
    # Flower keeps its own metrics: it must not write into the shim's multiprocess directory.
    env = {k: v for k, v in ops.stack.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    argv = celery("flower", f"--port={port}", "--address=127.0.0.1", f"--basic-auth={USER}:{PASSWORD}")
    proc = Proc("flower", argv, env, ops.stack.workdir / "flower.log", ops.stack.workdir)
    ops.stack.procs["flower"] = proc
    proc.start()
    flower = Flower(f"http://127.0.0.1:{port}")

    def sees_live_workers() -> bool:
        # Worker heartbeats are events: once Flower has one, it captures our task events too.
        if not proc.alive:
            raise AssertionError(f"flower exited:\n{proc.tail()}")
        try:
            alive = flower.get("/api/workers?status=1").json()
        except (requests.ConnectionError, ValueError):
            return False
        return any(alive.values())

    try:
        wait_until(sees_live_workers, "Flower to see a live worker", timeout=40, interval=0.3)
        yield flower
    finally:
        proc.stop()
        ops.stack.procs.pop("flower", None)


def test_flower_lists_our_tasks_by_name_with_their_runtime_ids_and_no_document(
    ops: Ops, flower: Flower
) -> None:
    workflow_id = ops.client.call("POST", "/workflows", 201, json=support.two_stages("Flower"))["id"]
    runtime_id = support.submit(ops.client, workflow_id, "PO-FLOWER-1", note=SENTINEL).json()["runtime_id"]
    support.act(ops.client, ops.client.wait_for_tasks(runtime_id, {"lead1"})["lead1"], "lead1")
    for user, task_id in ops.client.wait_for_tasks(runtime_id, support.BOARD).items():
        support.act(ops.client, task_id, user)
    support.wait_for_status(ops.client, runtime_id, "completed")

    def ours() -> dict[str, list[dict[str, Any]]] | None:
        tasks = flower.get("/api/tasks").json()
        by_name: dict[str, list[dict[str, Any]]] = {}
        for task in tasks.values():
            if runtime_id in f"{task['args']} {task['kwargs']}" and task["state"] == "SUCCESS":
                by_name.setdefault(task["name"], []).append(task)
        complete = len(by_name.get("workflow.record_action", [])) == 3 and "webhooks.deliver" in by_name
        return by_name if complete else None

    by_name = wait_until(ours, "Flower to show the runtime's tasks", timeout=30, interval=0.3)
    (start,) = by_name["workflow.start_runtime"]
    assert ast.literal_eval(start["kwargs"])["runtime_id"] == runtime_id
    actions = [ast.literal_eval(task["kwargs"]) for task in by_name["workflow.record_action"]]
    assert sorted(a["action"] for a in actions) == ["approve"] * 3
    assert all(a["runtime_id"] == runtime_id and a["task_id"] for a in actions)
    assert ast.literal_eval(by_name["webhooks.deliver"][0]["args"])[1] == runtime_id
    assert all(task["worker"].startswith("ops@") for tasks in by_name.values() for task in tasks)
    # The chord's tasks name their stage, not the runtime; they are there by name all the same.
    names = {task["name"] for task in flower.get("/api/tasks").json().values()}
    assert {"workflow.open_stages", "workflow.assign", "workflow.stages_opened"} <= names
    # Arguments are ids: never the document, never a webhook secret.
    everything = json.dumps(flower.get("/api/tasks").json())
    assert SENTINEL not in everything and "whsec_" not in everything


def test_flower_shows_the_workers_and_their_queues(flower: Flower) -> None:
    workers = flower.get("/api/workers?refresh=1").json()
    consumed = {
        name.split("@")[0]: sorted(queue["name"] for queue in info.get("active_queues", []))
        for name, info in workers.items()
    }
    assert consumed["ops"] == ["webhooks", "workflow"]
    assert consumed["maintenance"] == ["maintenance"]
    lengths = flower.get("/api/queues/length").json()["active_queues"]
    assert {queue["name"] for queue in lengths} == {"workflow", "webhooks", "maintenance"}


@pytest.mark.parametrize("auth", [None, (USER, "wrong-password")], ids=["no-password", "wrong-password"])
def test_flower_without_the_password_answers_401(flower: Flower, auth: tuple[str, str] | None) -> None:
    for path in ("/api/tasks", "/api/workers", "/"):
        assert flower.get(path, auth=auth).status_code == 401, path
