"""Bflow installed as a user installs a release: the wheel, into a fresh venv, run from anywhere.

The rest of the suite runs on the editable install, which sees the repository's files; this
module builds the wheel, installs it (and its dependencies, from the package index) into a
new virtualenv without the system's site-packages, and runs the installed `bflow` from an
empty folder with no BFLOW_* setting and no PYTHONPATH, so anything the wheel lacks (the
migration scripts, celeryconfig, beat_schedule) fails here.

One venv for the module (about 15 s with pip's cache warm), then one demo (about 7 s).
Deselect with ``-m "not wheel"`` for a quick local run; CI runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from bflow_tasks import migrations

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "bflow_tasks" / "migrations"
STATIC = ROOT / "api_shim" / "static"
HEAD = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()

pytestmark = pytest.mark.wheel

# What a checkout holds that is not source: left out of the copy the wheel is built from.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".venv",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "*.db",
    "*.db-*",
    "bflow-secret.key",
    "celerybeat-schedule*",
)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """This environment less Bflow's settings, Python's (PYTHONPATH...) and the suite's venv.

    With `venv`, as that venv activated: its bin/ first on PATH.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFLOW_", "PYTHON", "VIRTUAL_ENV"))}
    ours = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != ours]
    if venv is not None:
        path.insert(0, str(venv / "bin"))
        env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join(path)
    return env


def _run(
    args: list[str | Path], cwd: Path, timeout: float, venv: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_clean_env(venv), capture_output=True, text=True, timeout=timeout
    )


def _check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{output}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from this checkout, installed with its dependencies in a fresh venv."""
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy: an in-tree build leaves build/ behind, whose stale files (a removed
    # module, a renamed migration) would go into the next wheel.
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    dist = base / "dist"
    _check(
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, source],
            cwd=base,
            timeout=180,
        )
    )
    [wheel] = dist.glob("bflow-*.whl")

    venv = base / "venv"
    # No pip of its own (ensurepip costs seconds): this suite's pip installs into it.
    _check(_run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base, timeout=120))
    # With the ops extra, as the Docker image installs it; the dependencies come from the
    # package index (pip's cache makes a second run fast), none from this environment.
    # --no-compile: each command compiles only what it imports, not every dependency.
    install = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install"]
    _check(_run([*install, "--quiet", "--no-compile", f"{wheel}[ops]"], cwd=base, timeout=240))
    return Installed(wheel=wheel, venv=venv)


def test_the_wheel_holds_the_migrations_and_the_celery_modules(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = set(archive.namelist())
    revisions = {f"bflow_tasks/migrations/versions/{p.name}" for p in (MIGRATIONS / "versions").glob("*.py")}
    assert len(revisions) >= 10
    expected = {
        "bflow_tasks/migrations/__init__.py",
        "bflow_tasks/migrations/env.py",
        "bflow_tasks/migrations/script.py.mako",
        "celeryconfig.py",
        "beat_schedule.py",
        "api_shim/app.py",
        *revisions,
        # The docs' assets: /api/v1/docs and /api/v1/redoc load nothing from elsewhere.
        *(f"api_shim/static/{p.relative_to(STATIC).as_posix()}" for p in STATIC.rglob("*") if p.is_file()),
    }
    assert {
        "api_shim/static/swagger-ui/swagger-ui-bundle.js",
        "api_shim/static/redoc/redoc.standalone.js",
    } <= expected
    assert expected <= names, sorted(expected - names)
    # Nothing of the checkout that is not the product.
    tops = {name.split("/", 1)[0] for name in names if ".dist-info/" not in name}
    assert tops == {"bflow_tasks", "api_shim", "celeryconfig.py", "beat_schedule.py"}


def test_installed_modules_come_from_the_venv_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    probe = (
        "import json, sys, sysconfig\n"
        "import api_shim.app, beat_schedule, bflow_tasks, flower\n"
        "from bflow_tasks import migrations\n"
        "from api_shim.routes import docs_routes\n"
        "assert bflow_tasks.app.conf.beat_schedule  # loads celeryconfig, which loads beat_schedule\n"
        "print(json.dumps({\n"
        "    'site': sysconfig.get_path('purelib'),\n"
        "    'modules': {name: sys.modules[name].__file__ for name in\n"
        "                ('bflow_tasks', 'api_shim', 'celeryconfig', 'beat_schedule')},\n"
        "    'scripts': str(migrations.SCRIPT_LOCATION),\n"
        "    'static': str(docs_routes.STATIC_DIR),\n"
        "}))\n"
    )
    result = _check(_run([installed.bin / "python", "-c", probe], tmp_path, 60, installed.venv))
    found = json.loads(result.stdout)
    site = Path(found["site"]).resolve()
    assert site.is_relative_to(installed.venv.resolve())
    for name, file in found["modules"].items():
        path = Path(file).resolve()
        assert path.is_relative_to(site), f"{name} imported from {path}, not from {site}"
        assert not path.is_relative_to(ROOT), f"{name} imported from the checkout: {path}"
    assert Path(found["scripts"]).resolve() == site / "bflow_tasks" / "migrations"
    static = Path(found["static"]).resolve()
    assert static == site / "api_shim" / "static"
    assert (static / "swagger-ui" / "swagger-ui-bundle.js").is_file()
    assert (static / "redoc" / "redoc.standalone.js").is_file()
    # What docker-compose.yml runs, besides `bflow`.
    for script in ("bflow", "celery", "uvicorn"):
        assert (installed.bin / script).is_file(), script


def test_db_upgrade_from_an_empty_folder(installed: Installed, tmp_path: Path) -> None:
    result = _check(_run([installed.bin / "bflow", "db", "upgrade", "--json"], tmp_path, 120, installed.venv))
    assert json.loads(result.stdout) == {"revision": HEAD}
    assert (tmp_path / "bflow.db").is_file()  # the embedded default: SQLite in the cwd


def test_demo_from_an_empty_folder(installed: Installed, tmp_path: Path) -> None:
    result = _check(_run([installed.bin / "bflow", "demo"], tmp_path, 180, installed.venv))
    assert "4 documents, as expected" in result.stdout, result.stdout + result.stderr
    assert "(0 rejected), in sequence order per runtime" in result.stdout
