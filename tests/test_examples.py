"""The definitions the docs show are what the docs say they are.

Every `examples/*.json` is accepted by the engine's parser and imported by `bflow workflow
import` (in-process, through Click's CliRunner) into a fresh SQLite database. Every ```json
block of docs/definitions.md parses: a whole definition as it is, a node or a condition
wrapped in the smallest definition around it. A block right after `<!-- invalid -->` must be
refused instead, and when a ```text block follows it, with exactly the `path: message` lines
it shows, in that order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bflow_tasks import cli, db
from bflow_tasks.engine.definitions import language
from bflow_tasks.settings import settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
DEFINITIONS_DOC = ROOT / "docs" / "definitions.md"
# A fenced block, with the marker comment that may precede it.
FENCE = re.compile(r"(?P<invalid><!-- invalid -->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)\n```", re.S)
COMBINATORS = ("all", "any", "not")


def parse(raw: Any) -> Any:
    """The engine's parser: accept and return `raw`, or raise `language.DefinitionError`."""
    return language.parse_definition(raw)


def problems(raw: Any) -> list[str]:
    """Every `path: message` the parser refuses `raw` with ([] when it accepts it)."""
    try:
        parse(raw)
    except language.DefinitionError as exc:
        return [f"{p.path}: {p.message}" for p in exc.problems]
    return []


# --- examples/ --------------------------------------------------------------------------------


def test_the_documented_examples_exist():
    names = {path.name for path in EXAMPLES}
    assert {"leave-request.json", "purchase-order.json"} <= names, names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_is_accepted_by_the_engine(path: Path):
    assert problems(json.loads(path.read_text(encoding="utf-8"))) == []


@pytest.fixture(scope="module")
def fresh_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Point this process's settings and engine at a new SQLite file, migrated by `bflow db upgrade`."""
    url = f"sqlite:///{tmp_path_factory.mktemp('examples') / 'bflow.db'}"
    previous = settings.database_url
    settings.database_url = url
    db.reset_engine()
    try:
        upgraded = CliRunner().invoke(cli.main, ["db", "upgrade", "--json"])
        assert upgraded.exit_code == 0, upgraded.output
        yield url
    finally:
        db.reset_engine()
        settings.database_url = previous


@pytest.fixture(scope="module")
def tenant_id(fresh_database: str) -> str:
    created = CliRunner().invoke(cli.main, ["tenant", "create", "Examples", "--json"])
    assert created.exit_code == 0, created.output
    return str(json.loads(created.stdout)["tenant_id"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_imports_with_the_cli_and_is_stored_as_validated(path: Path, tenant_id: str):
    runner = CliRunner()
    imported = runner.invoke(cli.main, ["workflow", "import", str(path), "--tenant", tenant_id, "--json"])
    assert imported.exit_code == 0, imported.output
    result = json.loads(imported.stdout)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert (result["name"], result["version"]) == (raw["name"], 1)

    shown = runner.invoke(cli.main, ["workflow", "show", result["id"], "--json"])
    assert shown.exit_code == 0, shown.output
    stored = json.loads(shown.stdout)["definition"]
    assert stored == parse(raw).model_dump(mode="json", exclude_none=True)


# --- docs/definitions.md ------------------------------------------------------------------------


def smallest_definition(nodes: list[dict[str, Any]], associations: list[dict[str, Any]], **extra: Any) -> Any:
    start = {"key": "_start", "name": "Start", "action": "create"}
    end = {"key": "_end", "name": "End", "action": "end"}
    return {
        "name": "Doc",
        "document_type": "doc",
        "nodes": [start, *nodes, end],
        "associations": associations,
        **extra,
    }


def as_definition(block: Any) -> Any:
    """A doc block as the definition to parse: a definition, or a node or condition wrapped in one."""
    if isinstance(block, dict) and "nodes" in block:
        return block
    if isinstance(block, dict) and "action" in block:  # a node: create -> it -> end
        key = block["key"]
        links = [{"source": "_start", "dest": key}, {"source": key, "dest": "_end"}]
        return smallest_definition([block], links, zones=block.get("zones", []))
    if isinstance(block, dict) and ("var" in block or any(name in block for name in COMBINATORS)):
        return smallest_definition([], [{"source": "_start", "dest": "_end", "condition": block}])
    raise AssertionError(f"a json block that is neither a definition, a node nor a condition: {block}")


def doc_blocks() -> list[tuple[str, bool, Any, list[str] | None]]:
    """(id, meant to fail, parsed block, the error lines shown after it) for every ```json block."""
    text = DEFINITIONS_DOC.read_text(encoding="utf-8")
    fences = list(FENCE.finditer(text))
    found = []
    for index, fence in enumerate(fences):
        if fence["lang"] != "json":
            continue
        line = text.count("\n", 0, fence.start("lang")) + 1
        following = fences[index + 1] if index + 1 < len(fences) else None
        shown = None
        if fence["invalid"] and following is not None and following["lang"] == "text":
            shown = following["body"].splitlines()
        found.append((f"line-{line}", bool(fence["invalid"]), json.loads(fence["body"]), shown))
    return found


DOC_BLOCKS = doc_blocks()


def test_the_definitions_doc_has_valid_and_invalid_examples():
    assert sum(1 for _, invalid, block, _ in DOC_BLOCKS if not invalid and "nodes" in block) >= 5
    assert sum(1 for _, invalid, _, shown in DOC_BLOCKS if invalid and shown) >= 2


@pytest.mark.parametrize(
    ("invalid", "block", "shown"), [b[1:] for b in DOC_BLOCKS], ids=[b[0] for b in DOC_BLOCKS]
)
def test_a_doc_block_parses_or_fails_as_marked(invalid: bool, block: Any, shown: list[str] | None):
    found = problems(as_definition(block))
    if not invalid:
        assert found == []
    elif shown is None:
        assert found, "marked <!-- invalid --> but accepted"
    else:
        assert found == shown
