"""A runtime's audit log: the latest lines in GET /runtimes/{id}, every line through /log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from bflow_tasks.engine.timers import archiving
from bflow_tasks.models import Runtime, RuntimeLog
from tests.api.helpers import API, OpenRuntime, Tenant, counted_statements, open_runtime


@pytest.fixture
def opened(session_factory: sessionmaker[Session], tenant: Tenant) -> OpenRuntime:
    return open_runtime(session_factory, tenant)


def add_lines(engine: Engine, runtime_id: str, n: int) -> int:
    """Append n audit lines numbered as the journal numbers them; return the log's length."""
    with engine.begin() as connection:
        last = connection.scalar(select(Runtime.log_sequence).where(Runtime.id == runtime_id)) or 0
        connection.execute(
            insert(RuntimeLog),
            [
                {"runtime_id": runtime_id, "sequence": last + k, "action": "task.reminded"}
                for k in range(1, n + 1)
            ],
        )
        connection.execute(update(Runtime).where(Runtime.id == runtime_id).values(log_sequence=last + n))
    return last + n


def archive(session_factory: sessionmaker[Session], runtime_id: str) -> None:
    with session_factory.begin() as session:
        session.execute(
            update(Runtime)
            .where(Runtime.id == runtime_id)
            .values(status="cancelled", in_flight=None, ended_at=datetime(2020, 1, 1))
        )
    with session_factory.begin() as session:
        assert archiving.archive_batch(session, before=datetime(2021, 1, 1), limit=10).runtimes == 1


def walk(client: TestClient, tenant: Tenant, url: str) -> tuple[list[dict[str, Any]], int]:
    """Follow `next` from url; return every line and how many pages it took."""
    lines: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        response = client.get(next_url, headers=tenant.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"results", "next"}
        lines += body["results"]
        next_url = body["next"]
        pages += 1
    return lines, pages


def test_paging_walks_every_line_once_in_order(
    client: TestClient, tenant: Tenant, api_engine: Engine, opened: OpenRuntime
) -> None:
    total = add_lines(api_engine, opened.runtime_id, 120)
    lines, pages = walk(client, tenant, f"{API}/runtimes/{opened.runtime_id}/log?page_size=7")
    assert [line["sequence"] for line in lines] == list(range(1, total + 1))
    assert pages == -(-total // 7)
    assert set(lines[0]) == {
        "sequence", "action", "actor", "stage_id", "task_id", "message", "details", "created_at"
    }  # fmt: skip
    assert lines[0]["action"] == "runtime.submitted"
    assigned = next(line for line in lines if line["action"] == "task.assigned")
    assert assigned["task_id"] in opened.tasks.values() and assigned["stage_id"] is not None
    # The default page is 50; a full last page still ends with next = null.
    default, pages = walk(client, tenant, f"{API}/runtimes/{opened.runtime_id}/log")
    assert default == lines and pages == -(-total // 50)
    exact, _ = walk(client, tenant, f"{API}/runtimes/{opened.runtime_id}/log?page_size={total}")
    assert exact == lines


def test_after_starts_past_a_sequence_and_next_carries_the_last_one(
    client: TestClient, tenant: Tenant, api_engine: Engine, opened: OpenRuntime
) -> None:
    total = add_lines(api_engine, opened.runtime_id, 10)
    url = f"{API}/runtimes/{opened.runtime_id}/log?after=3&page_size=4"
    body = client.get(url, headers=tenant.headers).json()
    assert [line["sequence"] for line in body["results"]] == [4, 5, 6, 7]
    assert "after=7" in body["next"] and "page_size=4" in body["next"]
    past = client.get(f"{API}/runtimes/{opened.runtime_id}/log?after={total}", headers=tenant.headers)
    assert past.json() == {"results": [], "next": None}


def test_detail_keeps_the_latest_50_lines_in_order_and_links_the_log(
    client: TestClient, tenant: Tenant, api_engine: Engine, opened: OpenRuntime
) -> None:
    url = f"{API}/runtimes/{opened.runtime_id}"
    short = client.get(url, headers=tenant.headers).json()
    assert short["log_truncated"] is False and short["log_next"] is None
    total = add_lines(api_engine, opened.runtime_id, 60)
    body = client.get(url, headers=tenant.headers).json()
    assert [line["sequence"] for line in body["log"]] == list(range(total - 49, total + 1))
    assert body["log_truncated"] is True
    lines, _ = walk(client, tenant, body["log_next"])
    assert [line["sequence"] for line in lines] == list(range(1, total + 1))
    assert lines[-50:] == body["log"]


def test_an_archived_runtime_is_truncated_and_paged_alike(
    client: TestClient,
    tenant: Tenant,
    api_engine: Engine,
    session_factory: sessionmaker[Session],
    opened: OpenRuntime,
) -> None:
    total = add_lines(api_engine, opened.runtime_id, 70)
    live, _ = walk(client, tenant, f"{API}/runtimes/{opened.runtime_id}/log?page_size=30")
    archive(session_factory, opened.runtime_id)
    body = client.get(f"{API}/runtimes/{opened.runtime_id}", headers=tenant.headers).json()
    assert body["archived"] is True and body["log_truncated"] is True
    assert [line["sequence"] for line in body["log"]] == list(range(total - 49, total + 1))
    lines, _ = walk(client, tenant, f"{API}/runtimes/{opened.runtime_id}/log?page_size=30")
    assert lines == live
    assert walk(client, tenant, body["log_next"])[0] == live


def test_another_tenants_runtime_and_an_unknown_one_are_404(
    client: TestClient,
    tenant: Tenant,
    other_tenant: Tenant,
    session_factory: sessionmaker[Session],
    opened: OpenRuntime,
) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    for who, runtime_id in ((other_tenant, opened.runtime_id), (tenant, unknown)):
        response = client.get(f"{API}/runtimes/{runtime_id}/log", headers=who.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    archive(session_factory, opened.runtime_id)
    response = client.get(f"{API}/runtimes/{opened.runtime_id}/log", headers=other_tenant.headers)
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("after=-1", "query.after"),
        ("after=x", "query.after"),
        ("page_size=0", "query.page_size"),
        ("page_size=201", "query.page_size"),
    ],
)
def test_bad_query_values_are_422(
    client: TestClient, tenant: Tenant, opened: OpenRuntime, query: str, path: str
) -> None:
    response = client.get(f"{API}/runtimes/{opened.runtime_id}/log?{query}", headers=tenant.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["path"] == path


def test_a_log_page_costs_at_most_3_statements_whatever_the_log_length(
    client: TestClient, tenant: Tenant, api_engine: Engine, opened: OpenRuntime
) -> None:
    add_lines(api_engine, opened.runtime_id, 300)
    with counted_statements() as statements:
        url = f"{API}/runtimes/{opened.runtime_id}/log?after=100&page_size=200"
        assert len(client.get(url, headers=tenant.headers).json()["results"]) == 200
    # The token (unless cached), the runtime (is it the tenant's?), the lines.
    assert len(statements) <= 3, statements


def test_head_on_the_log_has_the_headers_of_get(
    client: TestClient, tenant: Tenant, opened: OpenRuntime
) -> None:
    url = f"{API}/runtimes/{opened.runtime_id}/log"
    got, head = client.get(url, headers=tenant.headers), client.head(url, headers=tenant.headers)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"]
