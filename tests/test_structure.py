"""The house rules, checked: a pure engine, no import loop, one name per module, no aliases.

See docs/architecture.md for the rooms these keep apart.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bflow_tasks", "api_shim")
# What the engine must never load, even indirectly: it is the domain, usable without Celery or HTTP.
NOT_IN_THE_ENGINE = {"celery", "kombu", "fastapi", "starlette", "requests", "redis", "httpx", "uvicorn"}


def package_modules() -> dict[str, Path]:
    """Every module of our packages, by dotted name (packages by their __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            if "versions" in relative.parts:  # Alembic revisions: loaded by path, not imported
                continue
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            found[".".join(parts)] = path
    return found


def module_level_imports(path: Path) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (not those inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node.test):
            pending.extend([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            pending.extend([*node.body, *node.orelse, *node.finalbody])
            for handler in node.handlers:
                pending.extend(handler.body)


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at import time (a submodule imports its parents)."""
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in module_level_imports(path):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.append(submodule if submodule in modules else node.module)
            for target in targets:
                # Importing a.b.c runs a/__init__ and a/b/__init__ first, except the packages
                # the importer is inside of: they are being imported already.
                parts = target.split(".")
                for end in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:end])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_engine_loads_no_celery_kombu_http_or_redis() -> None:
    engine = sorted(name for name in package_modules() if name.startswith("bflow_tasks.engine"))
    script = (
        "import importlib, json, sys\n"
        f"for name in {engine!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    # A fresh interpreter: this test process has loaded Celery and FastAPI long ago.
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert len(engine) > 25
    assert loaded & NOT_IN_THE_ENGINE == set()


def test_importing_the_package_loads_no_celery() -> None:
    script = "import sys, bflow_tasks, bflow_tasks.settings, bflow_tasks.db; print('celery' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


def test_celery_finds_the_app_as_bflow_tasks_app() -> None:
    # `celery -A bflow_tasks ...` (the docs, compose and Flower): the app is loaded on first access.
    script = (
        "from celery.app.utils import find_app\n"
        "app = find_app('bflow_tasks')\n"
        "print(app.main, sorted(app.conf.include))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("bflow ['bflow_tasks.worker.")


def test_the_import_graph_has_no_loop() -> None:
    graph = import_graph()
    assert graph["bflow_tasks.worker.publishing"] >= {"bflow_tasks.worker.celery_app"}  # the walk sees edges
    assert find_cycle(graph) is None


def test_find_cycle_sees_a_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_two_modules_share_a_name() -> None:
    names: dict[str, list[str]] = {}
    for dotted in package_modules():
        names.setdefault(dotted.rsplit(".", 1)[-1], []).append(dotted)
    twins = {name: where for name, where in names.items() if len(where) > 1}
    assert twins == {}


@pytest.mark.parametrize("folder", [*PACKAGES, "tests", "bench"])
def test_our_modules_are_imported_by_their_own_names(folder: str) -> None:
    """`import x as y` of our own modules means `x` is badly named: rename it instead."""
    aliased = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGES):
                aliased += [
                    f"{path.name}: {alias.name} as {alias.asname}" for alias in node.names if _renamed(alias)
                ]
            elif isinstance(node, ast.Import):
                aliased += [
                    f"{path.name}: {alias.name}"
                    for alias in node.names
                    if _renamed(alias) and alias.name.startswith(PACKAGES)
                ]
    assert aliased == []


def _renamed(alias: ast.alias) -> bool:
    return alias.asname is not None and alias.asname != alias.name  # `x as x` is an explicit re-export
