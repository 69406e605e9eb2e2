"""docker-compose.yml is valid and runs the same commands the README documents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import services

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"mysql", "redis", "migrate", "worker", "worker-maintenance", "beat", "shim", "flower"}


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`docker-compose config` of the repository's file, with .env.example as its .env."""
    binary = shutil.which("docker-compose")
    services.require("docker-compose (Debian package)", binary is not None)
    assert binary is not None
    workdir = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "docker-compose.yml", workdir / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", workdir / ".env")
    result = subprocess.run(
        [binary, "-f", str(workdir / "docker-compose.yml"), "config"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_complete(compose_config):
    assert set(compose_config["services"]) == SERVICES
    assert compose_config["services"]["migrate"]["command"] == ["bflow", "db", "upgrade"]
    for name in SERVICES - {"mysql", "redis", "migrate"}:
        depends = compose_config["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_compose_commands_are_the_documented_ones(compose_config):
    readme = (ROOT / "README.md").read_text()
    for name in ("migrate", "worker", "worker-maintenance", "beat", "shim", "flower"):
        command = " ".join(compose_config["services"][name]["command"])
        # Flower's password comes from the environment; the README shows the variable.
        command = command.replace("admin:change-me", "${FLOWER_BASIC_AUTH}")
        assert command in readme, f"the README does not document the {name} command: {command}"


def test_env_example_names_every_setting_compose_needs():
    env = (ROOT / ".env.example").read_text()
    for name in (
        "BFLOW_DATABASE_URL",
        "BFLOW_BROKER_URL",
        "BFLOW_RESULT_BACKEND",
        "BFLOW_SECRET_KEY",
        "FLOWER_BASIC_AUTH",
        "MYSQL_PASSWORD",
    ):
        assert f"{name}=" in env
