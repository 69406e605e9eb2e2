"""The `bflow` console script, run as a user runs it: a subprocess on the embedded default."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import leave_request_definition

BFLOW = shutil.which("bflow", path=str(Path(sys.executable).parent)) or "bflow"


def run(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `bflow ARGS` in tmp_path with no BFLOW_* setting but an SQLite file there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFLOW_")}
    env["BFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'bflow.db'}"
    return subprocess.run(
        [BFLOW, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_demo_runs_the_embedded_default_end_to_end(tmp_path):
    result = run(tmp_path, "demo", timeout=180)
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
    result = run(tmp_path, "demo", "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
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
