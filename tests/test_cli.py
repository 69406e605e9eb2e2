"""The `bflow` command line, as a user runs it.

Most tests run the command in this process, as a fresh `bflow` process would (tests/bflow_cli.py:
the environment, the working directory, stdout and stderr apart, an escaping exception's
traceback). A few smoke tests start real `bflow` processes (the demo, an error path's two
streams, `python -m bflow_tasks.cli`).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from bflow_tasks import cli, migrations
from tests import services
from tests.api import helpers
from tests.bflow_cli import Ran, bflow_env, run
from tests.factories import leave_request_definition

BFLOW = shutil.which("bflow", path=str(Path(sys.executable).parent)) or "bflow"


def run_process(
    tmp_path: Path, *argv: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ARGV (a `bflow` command line) as a real process in tmp_path, with `bflow_env`."""
    return subprocess.run(
        list(argv),
        cwd=tmp_path,
        env=bflow_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def empty_queues() -> Iterator[None]:
    """An in-process demo leaves Beat's last messages in the in-memory broker: drop them."""
    yield
    helpers.purge_queues()


def test_demo_runs_the_embedded_default_end_to_end(tmp_path):
    """`bflow demo` as a user runs it: a real process."""
    result = run_process(tmp_path, BFLOW, "demo", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 documents, as expected" in result.stdout
    assert "(0 rejected), in sequence order per runtime" in result.stdout
    for needle in (
        "runtime.returned",
        "runtime.resubmitted",
        "task.reject",
        "finance",
        "COMPLETED",
        "REJECTED",
    ):
        assert needle in result.stdout


def test_demo_json_prints_one_object(tmp_path):
    result = run(tmp_path, "demo", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["error"] is None
    assert [r["status"] for r in summary["runtimes"]] == ["completed", "completed", "completed", "rejected"]
    assert summary["webhooks"]["received"] > 40
    assert summary["webhooks"]["rejected"] == 0 and summary["webhooks"]["in_order"] is True


@pytest.fixture
def tenant_id(tmp_path) -> str:
    assert run(tmp_path, "db", "upgrade").returncode == 0
    created = run(tmp_path, "tenant", "create", "acme", "--json")
    assert created.returncode == 0, created.stderr
    payload = json.loads(created.stdout)
    assert payload["token"].startswith("bflow_")
    return payload["tenant_id"]


def test_workflow_import_and_show_mermaid(tmp_path, tenant_id):
    path = tmp_path / "leave.json"
    path.write_text(json.dumps(leave_request_definition()))
    imported = run(tmp_path, "workflow", "import", str(path), "--tenant", tenant_id, "--json")
    assert imported.returncode == 0, imported.stderr
    workflow_id = json.loads(imported.stdout)["id"]
    shown = run(tmp_path, "workflow", "show", workflow_id, "--mermaid")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("flowchart TD")
    assert 'manager_review -->|"amount >= 1000"| finance' in shown.stdout


def test_workflow_import_reports_every_problem_with_its_path(tmp_path, tenant_id):
    path = tmp_path / "bad.json"
    bad = leave_request_definition()
    bad["associations"][0]["dest"] = "nowhere"
    path.write_text(json.dumps(bad))
    result = run(tmp_path, "workflow", "import", str(path), "--tenant", tenant_id)
    assert result.returncode == 1
    assert "$.associations[0].dest" in result.stderr


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"name": "caf\xe9"}', b"[" * 100_000 + b"]" * 100_000],
    ids=["not-json", "not-utf8", "nested-too-deep"],
)
def test_workflow_import_of_a_file_that_is_not_json_is_a_one_line_error(tmp_path, tenant_id, content):
    path = tmp_path / "wf.json"
    path.write_bytes(content)
    result = run(tmp_path, "workflow", "import", str(path), "--tenant", tenant_id)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"Error: {path} is not UTF-8 JSON: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_workflow_import_to_an_unknown_tenant_is_a_one_line_error(tmp_path, tenant_id):
    path = tmp_path / "leave.json"
    path.write_text(json.dumps(leave_request_definition()))
    result = run(tmp_path, "workflow", "import", str(path), "--tenant", "no-such-tenant")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == "Error: unknown tenant no-such-tenant"


def json_error(result: Ran | subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The one JSON object a failed --json command prints on stdout (its error line stays on stderr)."""
    assert result.returncode != 0, result.stdout
    payload = json.loads(result.stdout)
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message", "details"}
    return payload["error"]


def test_a_refused_json_command_prints_one_error_object(tmp_path, tenant_id):
    path = tmp_path / "leave.json"
    path.write_text(json.dumps(leave_request_definition()))
    unknown = run(tmp_path, "workflow", "import", str(path), "--tenant", "no-such-tenant", "--json")
    assert unknown.returncode == 1
    assert json_error(unknown) == {
        "code": "not_found",
        "message": "unknown tenant no-such-tenant",
        "details": None,
    }
    assert unknown.stderr.strip() == "Error: unknown tenant no-such-tenant"
    bad = leave_request_definition()
    bad["associations"][0]["dest"] = "nowhere"
    path.write_text(json.dumps(bad))
    invalid = json_error(run(tmp_path, "workflow", "import", str(path), "--tenant", tenant_id, "--json"))
    assert invalid["code"] == "invalid_definition"
    assert "$.associations[0].dest" in [problem["path"] for problem in invalid["details"]]
    assert json_error(run(tmp_path, "workflow", "show", "nope", "--json"))["code"] == "not_found"
    assert (
        json_error(run(tmp_path, "db", "upgrade", "--revision", "nope", "--json"))["code"] == "invalid_input"
    )


@pytest.mark.parametrize(
    "command",
    [
        ("tenant", "create", "--json"),
        ("archive", "--json", "--bogus"),
        ("workflow", "import", "x.json", "--json"),
        ("--bogus", "tenant", "create", "x", "--json"),
    ],
    ids=["missing-argument", "unknown-option", "missing-option", "unknown-option-of-bflow"],
)
def test_a_usage_error_with_json_prints_one_error_object(tmp_path, command):
    result = run(tmp_path, *command)
    assert result.returncode == 2
    assert json_error(result)["code"] == "usage_error"
    assert "Usage: bflow" in result.stderr


# --- a database without the schema ---------------------------------------------------------


def _drop_all_tables(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SET FOREIGN_KEY_CHECKS=0"))
        for name in inspect(conn).get_table_names():
            conn.execute(text(f"DROP TABLE `{name}`"))
        conn.execute(text("SET FOREIGN_KEY_CHECKS=1"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "mysql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no table at all: `bflow db upgrade` never ran on it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url = services.mysql_url(database="bflow_cli_test" + os.environ.get("BFLOW_TEST_DB_SUFFIX", ""))
    _drop_all_tables(url)
    return url


@pytest.mark.parametrize(
    "command",
    [
        ("tenant", "create", "acme", "--json"),
        ("workflow", "import", "leave.json", "--tenant", "t1"),
        ("workflow", "show", "w1", "--mermaid"),
        ("archive", "--dry-run"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_an_unmigrated_database_is_one_line_saying_how_to_migrate(tmp_path, empty_database_url, command):
    (tmp_path / "leave.json").write_text(json.dumps(leave_request_definition()))
    result = run(tmp_path, *command, env={"BFLOW_DATABASE_URL": empty_database_url})
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: the database at ") and "has no Bflow schema" in line, line
    assert "run `bflow db upgrade`" in line
    if "--json" in command:
        assert json_error(result) == {
            "code": "schema_missing",
            "message": line[len("Error: ") :],
            "details": None,
        }
    else:
        assert result.stdout == ""


def test_a_database_behind_the_code_is_named_with_its_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrations.upgrade(url, "0001")
    problem = cli.schema_problem(url)
    assert problem is not None
    assert "at revision 0001" in problem and "run `bflow db upgrade`" in problem
    migrations.upgrade(url)
    assert cli.schema_problem(url) is None


def test_a_missing_table_in_a_migrated_database_is_not_disguised(tmp_path):
    """Only an unmigrated database gets the one-liner: a real bug keeps its traceback."""
    assert run(tmp_path, "db", "upgrade").returncode == 0
    with sqlite3.connect(tmp_path / "bflow.db") as conn:
        conn.execute("DROP TABLE runtime_viewer")
    result = run(tmp_path, "archive", "--dry-run")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "no such table: runtime_viewer" in result.stderr
    as_json = run(tmp_path, "archive", "--dry-run", "--json")
    error = json_error(as_json)
    assert error["code"] == "internal_error" and "no such table: runtime_viewer" in error["message"]
    assert "Traceback" in as_json.stderr


# --- the demo's --json on failure ----------------------------------------------------------

SUMMARY_KEYS = {"ok", "error", "tenant_id", "seconds", "webhooks", "runtimes"}


def test_demo_json_reports_a_failed_demo_as_one_object(tmp_path):
    # A body limit below a definition's size: the shim answers the demo's POST /workflows 413.
    result = run(tmp_path, "demo", "--json", env={"BFLOW_MAX_BODY_BYTES": "200"})
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == SUMMARY_KEYS
    assert summary["ok"] is False
    assert summary["error"].startswith("POST /workflows answered 413")
    assert summary["tenant_id"] and summary["runtimes"] == []


def test_demo_json_reports_an_unexpected_error_as_one_object(tmp_path):
    database = tmp_path / "no-such-directory" / "bflow.db"
    result = run(tmp_path, "demo", "--json", env={"BFLOW_DATABASE_URL": f"sqlite:///{database}"})
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == SUMMARY_KEYS
    assert summary["ok"] is False and summary["tenant_id"] is None
    assert "unable to open database file" in summary["error"]
    assert "Traceback" in result.stderr  # the details stay on stderr


@pytest.mark.parametrize(
    ("url", "command"),
    [
        ("mysql+pymysql://root@127.0.0.1:1/bflow", ("tenant", "create", "Acme")),  # nothing listens
        ("sqlite:////nonexistent-dir/bflow.db", ("db", "upgrade")),
    ],
)
def test_an_unreachable_database_is_one_error_line(tmp_path, url, command):
    result = run(tmp_path, *command, env={"BFLOW_DATABASE_URL": url})
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: cannot use the database at "), line
    as_json = run(tmp_path, *command, "--json", env={"BFLOW_DATABASE_URL": url})
    assert json_error(as_json)["code"] == "database_unavailable"


def test_an_unknown_revision_is_one_error_line(tmp_path):
    result = run(tmp_path, "db", "upgrade", "--revision", "nope")
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "nope" in line, line


# --- real processes ---------------------------------------------------------------------------


def test_a_real_process_keeps_the_json_object_on_stdout_and_the_traceback_on_stderr(tmp_path):
    migrations.upgrade(bflow_env(tmp_path)["BFLOW_DATABASE_URL"])
    with sqlite3.connect(tmp_path / "bflow.db") as conn:
        conn.execute("DROP TABLE runtime_viewer")
    as_json = run_process(tmp_path, BFLOW, "archive", "--dry-run", "--json")
    assert as_json.returncode == 1
    error = json_error(as_json)
    assert error["code"] == "internal_error" and "no such table: runtime_viewer" in error["message"]
    assert "Traceback" in as_json.stderr and "no such table: runtime_viewer" in as_json.stderr


def test_python_dash_m_runs_the_same_command_line(tmp_path):
    upgraded = run_process(tmp_path, sys.executable, "-m", "bflow_tasks.cli", "db", "upgrade", "--json")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout) == {
        "revision": migrations.current(bflow_env(tmp_path)["BFLOW_DATABASE_URL"])
    }
    usage = run_process(tmp_path, sys.executable, "-m", "bflow_tasks.cli", "tenant", "create", "--json")
    assert usage.returncode == 2
    assert json_error(usage)["code"] == "usage_error"
    assert "Usage: " in usage.stderr
