"""docker-compose.yml is valid and runs the same commands the README documents."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import services

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"mysql", "redis", "migrate", "worker", "worker-maintenance", "beat", "shim", "flower"}


def compose(workdir: Path, env: str) -> subprocess.CompletedProcess[str]:
    """Run `docker-compose config` on the repository's file with `env` as its .env."""
    binary = shutil.which("docker-compose")
    services.require("docker-compose (Debian package)", binary is not None)
    assert binary is not None
    shutil.copy(ROOT / "docker-compose.yml", workdir / "docker-compose.yml")
    (workdir / ".env").write_text(env)
    return subprocess.run(
        [binary, "-f", str(workdir / "docker-compose.yml"), "config"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`docker-compose config` of the repository's file, with .env.example as its .env."""
    result = compose(tmp_path_factory.mktemp("compose"), (ROOT / ".env.example").read_text())
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
        "BFLOW_BROKER_URL",
        "BFLOW_RESULT_BACKEND",
        "BFLOW_SECRET_KEY",
        "FLOWER_BASIC_AUTH",
        "MYSQL_PASSWORD",
        "MYSQL_ROOT_PASSWORD",
    ):
        assert re.search(rf"(?m)^{name}=", env), name


def test_the_database_password_is_written_once(tmp_path):
    example = (ROOT / ".env.example").read_text()
    [password] = re.findall(r"(?m)^MYSQL_PASSWORD=(.*)$", example)
    assert f":{password}@" not in example  # no URL repeating it
    result = compose(tmp_path, example.replace(f"MYSQL_PASSWORD={password}", "MYSQL_PASSWORD=Xy7-new_pw"))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    assert config["mysql"]["environment"]["MARIADB_PASSWORD"] == "Xy7-new_pw"
    for name in SERVICES - {"mysql", "redis"}:
        url = config[name]["environment"]["BFLOW_DATABASE_URL"]
        assert url == "mysql+pymysql://bflow:Xy7-new_pw@mysql:3306/bflow?charset=utf8mb4", name


def test_compose_refuses_a_missing_mysql_password(tmp_path):
    result = compose(tmp_path, "MYSQL_ROOT_PASSWORD=root-pw\nFLOWER_BASIC_AUTH=admin:pw\n")
    assert result.returncode != 0
    assert "MYSQL_PASSWORD" in result.stderr
