"""`bflow token create|list|revoke` and `bflow tenant list`, run in this process."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from tests.bflow_cli import Ran, run


def ok_json(result: Ran) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def error(result: Ran) -> dict:
    assert result.returncode == 1, result.stdout + result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message", "details"}
    [line] = result.stderr.strip().splitlines()
    assert line == "Error: " + payload["error"]["message"]
    return payload["error"]


@pytest.fixture
def tenant_id(tmp_path) -> str:
    assert run(tmp_path, "db", "upgrade").returncode == 0
    return ok_json(run(tmp_path, "tenant", "create", "acme", "--json"))["tenant_id"]


def _time(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value[:-1])


def test_token_create_prints_the_token_once_and_list_never_shows_it(tmp_path, tenant_id):
    created = ok_json(
        run(tmp_path, "token", "create", "--tenant", tenant_id, "--name", "ci", "--expires-in", "7", "--json")
    )
    assert set(created) == {"token_id", "tenant_id", "token", "expires_at"}
    assert created["tenant_id"] == tenant_id and created["token"].startswith("bflow_")
    lifetime = _time(created["expires_at"]) - datetime.now(UTC).replace(tzinfo=None)
    assert timedelta(days=7) - timedelta(minutes=1) < lifetime <= timedelta(days=7)
    forever = ok_json(run(tmp_path, "token", "create", "--tenant", tenant_id, "--json"))
    assert forever["expires_at"] is None

    listed = run(tmp_path, "token", "list", "--tenant", tenant_id, "--json")
    payload = ok_json(listed)
    assert payload["tenant_id"] == tenant_id
    tokens = payload["tokens"]
    assert [t["name"] for t in tokens] == ["default", "ci", "default"]
    assert {t["id"] for t in tokens} >= {created["token_id"], forever["token_id"]}
    for t in tokens:
        assert set(t) == {"id", "tenant_id", "name", "created_at", "expires_at", "revoked_at"}
        assert t["revoked_at"] is None
    assert tokens[1]["expires_at"] == created["expires_at"]
    assert created["token"] not in listed.stdout and forever["token"] not in listed.stdout

    text = run(tmp_path, "token", "list", "--tenant", tenant_id)
    assert text.returncode == 0 and len(text.stdout.strip().splitlines()) == 3
    assert created["token"] not in text.stdout
    shown = run(tmp_path, "token", "create", "--tenant", tenant_id)
    assert shown.returncode == 0 and "shown once" in shown.stdout and "never expires" in shown.stdout


def test_token_revoke_is_idempotent_and_tenant_list_counts_live_tokens(tmp_path, tenant_id):
    created = ok_json(run(tmp_path, "token", "create", "--tenant", tenant_id, "--json"))
    other = ok_json(run(tmp_path, "tenant", "create", "globex", "--json"))["tenant_id"]
    counts = ok_json(run(tmp_path, "tenant", "list", "--json"))["tenants"]
    assert [(t["id"], t["name"], t["live_tokens"]) for t in counts] == [
        (tenant_id, "acme", 2),
        (other, "globex", 1),
    ]
    assert all(set(t) == {"id", "name", "created_at", "live_tokens"} for t in counts)

    revoked = ok_json(run(tmp_path, "token", "revoke", created["token_id"], "--json"))
    assert revoked["id"] == created["token_id"] and revoked["revoked_at"] is not None
    again = ok_json(run(tmp_path, "token", "revoke", created["token_id"], "--json"))
    assert again == revoked  # the first revocation time stays
    plain = run(tmp_path, "token", "revoke", created["token_id"])
    assert plain.returncode == 0 and "revoked" in plain.stdout

    counts = ok_json(run(tmp_path, "tenant", "list", "--json"))["tenants"]
    assert [t["live_tokens"] for t in counts] == [1, 1]
    listed = ok_json(run(tmp_path, "token", "list", "--tenant", tenant_id, "--json"))["tokens"]
    assert [t["revoked_at"] for t in listed if t["id"] == created["token_id"]] == [revoked["revoked_at"]]
    text = run(tmp_path, "tenant", "list")
    assert text.returncode == 0 and "acme" in text.stdout and "globex" in text.stdout


def test_tenant_list_of_no_tenants(tmp_path):
    assert run(tmp_path, "db", "upgrade").returncode == 0
    assert ok_json(run(tmp_path, "tenant", "list", "--json")) == {"tenants": []}
    assert run(tmp_path, "tenant", "list").stdout.strip() == "no tenants"


@pytest.mark.parametrize(
    "command",
    [
        ("token", "create", "--tenant", "no-such-tenant"),
        ("token", "list", "--tenant", "no-such-tenant"),
    ],
    ids=["create", "list"],
)
def test_an_unknown_tenant_is_a_one_line_error(tmp_path, tenant_id, command):
    plain = run(tmp_path, *command)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip() == "Error: unknown tenant no-such-tenant"
    assert error(run(tmp_path, *command, "--json")) == {
        "code": "not_found",
        "message": "unknown tenant no-such-tenant",
        "details": None,
    }


def test_an_unknown_token_id_is_a_one_line_error(tmp_path, tenant_id):
    plain = run(tmp_path, "token", "revoke", "no-such-token")
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip() == "Error: unknown token no-such-token"
    assert error(run(tmp_path, "token", "revoke", "no-such-token", "--json")) == {
        "code": "not_found",
        "message": "unknown token no-such-token",
        "details": None,
    }


@pytest.mark.parametrize("days", ["0", "-3"])
def test_a_lifetime_under_one_day_is_refused(tmp_path, tenant_id, days):
    command = ("token", "create", "--tenant", tenant_id, f"--expires-in={days}")
    plain = run(tmp_path, *command)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip() == f"Error: --expires-in must be 1 day or more, not {days}"
    assert error(run(tmp_path, *command, "--json"))["code"] == "invalid_input"
    listed = ok_json(run(tmp_path, "token", "list", "--tenant", tenant_id, "--json"))["tokens"]
    assert len(listed) == 1  # nothing was created


@pytest.mark.parametrize(
    "command",
    [
        ("tenant", "list"),
        ("token", "create", "--tenant", "t1"),
        ("token", "list", "--tenant", "t1"),
        ("token", "revoke", "k1"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_a_database_before_0011_is_one_line_saying_how_to_migrate(tmp_path, command):
    assert run(tmp_path, "db", "upgrade", "--revision", "0010").returncode == 0
    with sqlite3.connect(tmp_path / "bflow.db") as conn:
        conn.execute("INSERT INTO tenant (id, name, created_at) VALUES ('t1', 'acme', '2026-01-01')")
    result = run(tmp_path, *command, "--json")
    failure = error(result)
    assert failure["code"] == "schema_missing"
    assert "at revision 0010" in failure["message"] and "run `bflow db upgrade`" in failure["message"]
