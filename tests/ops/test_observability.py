"""In-process checks of the pieces: counting only what commits, log records, message headers."""

from __future__ import annotations

import json
import logging
import os
import uuid

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.orm import sessionmaker

from bflow_tasks import after_commit, db
from bflow_tasks.observability import context, logs, propagation
from bflow_tasks.worker import publishing


def event(event_type: str, workflow_id: str) -> dict[str, str]:
    # What journal.emit notes for each event it writes.
    return {"type": event_type, "workflow_id": workflow_id}


def counted(name: str, workflow_id: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"workflow_id": workflow_id, **labels}) or 0.0


@pytest.mark.skipif(bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")), reason="reads the default registry")
def test_only_events_that_commit_are_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    workflow_id = str(uuid.uuid4())
    engine = db.make_engine("sqlite://")  # the project's SQLite recipe: savepoints work
    monkeypatch.setattr(db, "get_sessionmaker", lambda: sessionmaker(engine, expire_on_commit=False))
    with publishing.unit_of_work() as session:
        box = after_commit.of(session)
        box.record_event(event("runtime.created", workflow_id))
        with pytest.raises(RuntimeError), after_commit.savepoint(session):
            box.record_event(event("runtime.completed", workflow_id))  # undone with its savepoint
            raise RuntimeError("route failed")
        with after_commit.savepoint(session):
            box.record_event(event("runtime.rejected", workflow_id))  # kept: the savepoint was released
    with pytest.raises(RuntimeError), publishing.unit_of_work() as session:
        after_commit.of(session).record_event(event("runtime.created", workflow_id))
        raise RuntimeError("never happened")
    with publishing.unit_of_work() as session:
        session.connection()  # nothing new: nothing counted twice
    engine.dispose()
    assert counted("bflow_runtimes_started_total", workflow_id) == 1
    assert counted("bflow_runtimes_ended_total", workflow_id, status="completed") == 0
    assert counted("bflow_runtimes_ended_total", workflow_id, status="rejected") == 1


def record(message: str = "hello") -> logging.LogRecord:
    return logging.LogRecord("bflow.test", logging.INFO, __file__, 1, message, None, None)


def test_json_lines_carry_the_context() -> None:
    with context.scope(correlation_id="req-1", tenant_id="t-1", runtime_id="r-1"):
        line = record()
        logs.ContextFilter().filter(line)
    out = json.loads(logs.json_formatter().format(line))
    assert out["message"] == "hello" and out["level"] == "INFO" and out["logger"] == "bflow.test"
    assert (out["correlation_id"], out["tenant_id"], out["runtime_id"]) == ("req-1", "t-1", "r-1")
    assert out["time"].endswith("+00:00")


def test_text_lines_append_the_context_only_when_there_is_one() -> None:
    plain = record()
    logs.ContextFilter().filter(plain)
    assert "[" not in logs.TextFormatter().format(plain)
    with context.scope(correlation_id="req-2"):
        bound = record()
        logs.ContextFilter().filter(bound)
    assert logs.TextFormatter().format(bound).endswith("hello [correlation_id=req-2]")


def test_published_messages_carry_the_context_and_their_own_runtime() -> None:
    headers: dict[str, object] = {}
    with context.scope(correlation_id="req-3", tenant_id="t-3", runtime_id="r-context"):
        propagation.stamp_headers(headers=headers, body=((), {"runtime_id": "r-message"}, {}))
    assert headers == {
        "bflow_correlation_id": "req-3",
        "bflow_tenant_id": "t-3",
        "bflow_runtime_id": "r-message",
    }


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc-123", True), ("0f" * 16, True), ("", False), ("a b", False), ("x" * 200, False), ("a\nb", False)],
)
def test_request_ids_are_kept_only_when_safe_to_log(sent: str, kept: bool) -> None:
    assert (context.accept_request_id(sent) == sent) is kept
