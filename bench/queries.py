"""SQL statements per request and per transition, counted with SQLAlchemy cursor events.

    python bench/queries.py                         # a temporary SQLite file
    python bench/queries.py --database-url 'mysql+pymysql://root@127.0.0.1/bflow_bench?charset=utf8mb4'

Measures the shim (statements per HTTP request, through the real FastAPI app; the broker
is the in-process memory:// one, so messages are published but not consumed here) and
the engine (statements per transition and per chord task, applied as the worker applies
them), once on an empty database and again after `--growth` more runtimes exist. Prints
the counts and exits 1 if any count grew with the number of runtimes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IGNORED = ("BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "PRAGMA")


def main() -> int:
    parser = argparse.ArgumentParser(description="SQL statements per request and per transition")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--growth", type=int, default=200, help="runtimes added before measuring again")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/queries.db"
    os.environ["BFLOW_DATABASE_URL"] = url

    from fastapi.testclient import TestClient
    from sqlalchemy import event, select
    from sqlalchemy.orm import sessionmaker

    from api_shim.app import app
    from bflow_tasks import db, migrations
    from bflow_tasks.engine import tenants
    from bflow_tasks.engine.runtimes import transitions
    from bflow_tasks.models import RuntimeCommand
    from tests.engine.driver import Driver
    from tests.factories import leave_request_definition

    if url.startswith("mysql"):
        _reset_mysql(url)
    migrations.upgrade(url)
    engine = db.get_engine()
    seen: Counter[str] = Counter()

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        word = statement.lstrip().split(None, 1)[0].upper()
        if word not in IGNORED:
            seen[word] += 1

    def measure(step: Callable[[], Any]) -> tuple[Counter[str], Any]:
        before = seen.copy()
        result = step()
        return seen - before, result

    driver = Driver(sessionmaker(engine, expire_on_commit=False))
    with db.session_scope() as s:
        token = tenants.issue_token(s, tenant_id=driver.tenant_id)
    workflow_id = driver.workflow(leave_request_definition())
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {token}"}

    def command_of(runtime_id: str, kind: str) -> str:
        with db.session_scope() as s:
            return s.scalars(
                select(RuntimeCommand.id)
                .where(RuntimeCommand.runtime_id == runtime_id, RuntimeCommand.kind == kind)
                .order_by(RuntimeCommand.created_at.desc())
                .limit(1)
            ).one()

    def in_transaction(function: Callable[..., Any], **kwargs: Any) -> Callable[[], Any]:
        def run() -> Any:
            with db.session_scope() as s:
                return function(s, **kwargs)

        return run

    def one_runtime(tag: str) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = {}
        body = {
            "workflow_id": workflow_id,
            "document_type": "leave_request",
            "document_id": f"Q-{tag}",
            "data": {"amount": 5000},
            "submitted_by": "alice",
        }
        counts["shim  POST /runtime/execute"], response = measure(
            lambda: client.post("/api/v1/runtime/execute", json=body, headers=headers)
        )
        assert response.status_code == 202, response.text
        runtime_id = response.json()["runtime_id"]
        counts["engine  start runtime"], stage_ids = measure(
            in_transaction(transitions.start, command_id=command_of(runtime_id, "start"))
        )
        counts["engine  opening plan"], plan = measure(
            in_transaction(transitions.opening_plan, stage_ids=stage_ids)
        )
        for index, (stage_id, user) in enumerate(plan):
            taken, _ = measure(in_transaction(transitions.assign, stage_id=stage_id, user=user))
            if index == 0:
                counts["engine  assign (chord header)"] = taken
            if index == len(plan) - 1:
                counts["engine  assign, the stage's last (starts it)"] = taken
        counts["engine  stages opened (chord body, a no-op)"], _ = measure(
            in_transaction(transitions.mark_started, stage_ids=stage_ids)
        )
        counts["shim  GET /runtimes/{id}/log"], response = measure(
            lambda: client.get(f"/api/v1/runtimes/{runtime_id}/log", headers=headers)
        )
        assert response.status_code == 200 and response.json()["results"], response.text
        task_id = driver.task_of(runtime_id, "u1")
        counts["shim  GET /tasks/{id}"], response = measure(
            lambda: client.get(f"/api/v1/tasks/{task_id}", headers=headers)
        )
        assert response.status_code == 200, response.text
        # 3 tasks on the empty database, a full page of 50 once the filler runtimes exist.
        counts["shim  GET /tasks?page_size=50"], response = measure(
            lambda: client.get("/api/v1/tasks?page_size=50", headers=headers)
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == min(50, response.json()["count"])
        for user in ("u1", "u2", "u3"):
            task_id = driver.task_of(runtime_id, user)
            taken, response = measure(
                lambda task_id=task_id, user=user: client.post(
                    f"/api/v1/tasks/{task_id}/action",
                    json={"action": "approve", "actor": user},
                    headers=headers,
                )
            )
            assert response.status_code == 202, response.text
            counts["shim  POST /tasks/{id}/action"] = taken
            applied, _ = measure(
                in_transaction(transitions.apply_action, command_id=command_of(runtime_id, "action"))
            )
            label = "engine  approve, stage completes" if user == "u3" else "engine  approve, stage waits"
            counts[label] = applied
        return counts

    first = one_runtime("first")
    for n in range(args.growth):
        driver.submit(workflow_id, {"amount": 5}, document_id=f"filler-{n}")
    later = one_runtime("later")

    print(
        f"SQL statements per step ({'MariaDB' if url.startswith('mysql') else 'SQLite'}; "
        f"second column after {args.growth} more runtimes)\n"
    )
    print(f"{'step':<46} {'empty':>6} {'later':>6}   by kind (empty database)")
    grew = []
    for step, counts in first.items():
        total, total_later = sum(counts.values()), sum(later[step].values())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"{step:<46} {total:>6} {total_later:>6}   {kinds}")
        if total_later > total:
            grew.append(step)
    if grew:
        print(f"\ngrew with the number of runtimes: {', '.join(grew)}")
        return 1
    print("\nno count grows with the number of runtimes")
    return 0


def _reset_mysql(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    target = make_url(url)
    server = create_engine(target.set(database=""))
    with server.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{target.database}`"))
        conn.execute(
            text(f"CREATE DATABASE `{target.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        )
    server.dispose()


if __name__ == "__main__":
    sys.exit(main())
