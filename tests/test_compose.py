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


# --- the image compose builds (no Docker engine here: the Dockerfile is read, not built) ---


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions, one list per stage (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def _copied(stage: list[str]) -> set[str]:
    """What a stage COPYs from the build context (not --from another stage)."""
    sources: set[str] = set()
    for line in stage:
        words = line.split()
        if words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            sources.update(w for w in words[1:-1] if not w.startswith("--"))
    return sources


def test_the_image_is_built_from_the_wheel_of_what_pyproject_packages():
    import tomllib

    stages = _dockerfile_stages()
    for source in set().union(*map(_copied, stages)):
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    assert len(stages) >= 2, "the wheel is built in a stage of its own, installed in the last"
    build, final = stages[0], stages[-1]
    # Everything the wheel is built from is in the build stage, or `docker build` fails there.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = {"pyproject.toml", "README.md"}
    needed |= {f"{module}.py" for module in setuptools["py-modules"]}
    needed |= {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
    assert needed <= _copied(build), sorted(needed - _copied(build))
    # The image runs an installed wheel, not the checkout (editable, PYTHONPATH).
    assert any("pip wheel" in line for line in build)
    assert not _copied(final)
    assert not any(" -e " in line or "--editable" in line or "PYTHONPATH" in line for line in final)
