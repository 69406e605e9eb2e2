"""The JSON Schema of a workflow definition: served, used by the OpenAPI bodies, true to the engine.

The schema is checked with the `jsonschema` package (Draft 2020-12), independently of pydantic:
it accepts every example definition, refuses broken shapes, and describes every property. The
API keeps the engine's own validation: an invalid body answers 422 `invalid_definition` with
the very problems `parse_definition` lists.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from api_shim.app import create_app
from bflow_tasks.engine.definitions import language
from tests.api.helpers import API, Tenant
from tests.factories import leave_request_definition

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
SCHEMA_URL = f"{API}/schemas/workflow-definition"
COMPONENT = "#/components/schemas/"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(the schema at /schemas/workflow-definition, /openapi.json): neither needs a database."""
    with TestClient(create_app()) as client:
        schema = client.get(SCHEMA_URL)
        openapi = client.get(f"{API}/openapi.json")
    assert schema.status_code == 200 and openapi.status_code == 200
    assert schema.headers["content-type"] == "application/json"
    return schema.json(), openapi.json()


@pytest.fixture(scope="module")
def schema(served: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    return served[0]


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_the_schema_is_draft_2020_12_and_needs_no_token(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "WorkflowDefinition"
    assert schema["required"] == ["name", "document_type", "nodes"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_valid(validator: Draft202012Validator, path: Path) -> None:
    assert [e.message for e in validator.iter_errors(json.loads(path.read_text(encoding="utf-8")))] == []


def test_the_examples_the_schema_gives_are_valid(validator: Draft202012Validator) -> None:
    assert EXAMPLES  # the examples are the first check; the schema's own follow
    for example in validator.schema["examples"]:
        assert list(validator.iter_errors(example)) == []
        assert language.parse_definition(example)  # and the engine accepts them too


def _drop_nodes(d: dict[str, Any]) -> None:
    del d["nodes"]


def _unknown_action(d: dict[str, Any]) -> None:
    d["nodes"][1]["action"] = "dance"


def _unknown_mode(d: dict[str, Any]) -> None:
    d["nodes"][1]["approvers"]["mode"] = "most"


def _extra_key(d: dict[str, Any]) -> None:
    d["colour"] = "blue"


def _extra_node_key(d: dict[str, Any]) -> None:
    d["nodes"][0]["colour"] = "blue"


def _unknown_op(d: dict[str, Any]) -> None:
    d["associations"].append({"source": "submit", "dest": "done", "condition": {"var": "x", "op": "like"}})


def _unknown_nested_op(d: dict[str, Any]) -> None:
    condition = {"all": [{"not": {"var": "x", "op": "~="}}]}
    d["associations"].append({"source": "submit", "dest": "done", "condition": condition})


def _two_source_kinds(d: dict[str, Any]) -> None:
    d["nodes"][1]["approvers"]["sources"] = [{"users": ["a"], "submitter": True}]


BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "missing nodes": _drop_nodes,
    "unknown node action": _unknown_action,
    "unknown approver mode": _unknown_mode,
    "unknown top-level key": _extra_key,
    "unknown node key": _extra_node_key,
    "unknown condition op": _unknown_op,
    "unknown nested condition op": _unknown_nested_op,
    "a source with two kinds": _two_source_kinds,
}


@pytest.mark.parametrize("breaking", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_definition_is_refused_by_the_schema_and_the_engine(
    validator: Draft202012Validator, breaking: Callable[[dict[str, Any]], None]
) -> None:
    definition = _example("leave-request.json")
    assert list(validator.iter_errors(definition)) == []
    breaking(definition)
    assert list(validator.iter_errors(definition)), "the schema accepted it"
    with pytest.raises(language.DefinitionError):
        language.parse_definition(definition)


def _example(name: str) -> dict[str, Any]:
    definition = json.loads((ROOT / "examples" / name).read_text(encoding="utf-8"))
    assert definition["nodes"][1]["approvers"]  # what the breakers above rely on
    assert {"submit", "done"} <= {node["key"] for node in definition["nodes"]}
    return copy.deepcopy(definition)


def _objects(schema: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, object schema) for the root and every $defs entry."""
    yield "root", schema
    yield from schema["$defs"].items()


def test_every_model_and_property_has_a_description_and_examples(schema: dict[str, Any]) -> None:
    assert len(schema["$defs"]) >= 10
    for name, model in _objects(schema):
        assert model["description"] and model["examples"], name
        assert model["properties"], name
        for prop_name, prop in model["properties"].items():
            assert prop.get("description"), f"{name}.{prop_name}"
            assert prop.get("examples"), f"{name}.{prop_name}"


def _as_components(node: Any) -> Any:
    """The schema as the OpenAPI shows it: #/$defs/ references as component references.

    FastAPI leaves out `"default": null` (its OpenAPI models drop None values); it says nothing
    a validator uses.
    """
    if isinstance(node, dict):
        return {
            key: value.replace("#/$defs/", COMPONENT) if key == "$ref" else _as_components(value)
            for key, value in node.items()
            if not (key == "default" and value is None)
        }
    if isinstance(node, list):
        return [_as_components(item) for item in node]
    return node


def test_the_openapi_bodies_use_the_same_schema(served: tuple[dict[str, Any], dict[str, Any]]) -> None:
    schema, openapi = served
    components = openapi["components"]["schemas"]
    served_root = {k: v for k, v in schema.items() if k not in ("$schema", "$defs")}
    assert components["WorkflowDefinition"] == _as_components(served_root)
    for name, definition in schema["$defs"].items():
        assert components[name] == _as_components(definition), name
    for method, path in (("post", "/workflows"), ("put", "/workflows/{workflow_id}")):
        body = openapi["paths"][f"{API}{path}"][method]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"]["$ref"] == f"{COMPONENT}WorkflowDefinition"
    properties = components["WorkflowDefinition"]["properties"]
    assert {"name", "document_type", "nodes", "associations", "zones"} == set(properties)


# --- the API keeps the engine's validation ------------------------------------------------------


def _engine_problems(raw: Any) -> list[dict[str, str]]:
    with pytest.raises(language.DefinitionError) as refused:
        language.parse_definition(raw)
    return [{"path": p.path, "message": p.message} for p in refused.value.problems]


def _graph_invalid() -> dict[str, Any]:
    """Valid for the schema, refused by the graph checks: a second create node, an unreachable node."""
    definition = leave_request_definition()
    definition["nodes"].append({"key": "lost", "name": "Lost", "action": "create"})
    return definition


def _shape_invalid() -> dict[str, Any]:
    definition = leave_request_definition()
    definition["nodes"][0]["action"] = "dance"
    definition["colour"] = "blue"
    return definition


@pytest.mark.parametrize("make", [_graph_invalid, _shape_invalid], ids=["graph", "shape"])
def test_an_invalid_definition_gets_the_engines_422_on_post_and_put(
    client: TestClient, tenant: Tenant, validator: Draft202012Validator, make: Callable[[], dict[str, Any]]
) -> None:
    definition = make()
    expected = _engine_problems(definition)
    assert len(expected) >= 2
    created = client.post(f"{API}/workflows", json=leave_request_definition(), headers=tenant.headers)
    assert created.status_code == 201
    for method, path in (("POST", "/workflows"), ("PUT", f"/workflows/{created.json()['id']}")):
        response = client.request(method, f"{API}{path}", json=definition, headers=tenant.headers)
        assert response.status_code == 422, method
        error = response.json()["error"]
        assert error["code"] == "invalid_definition", method
        assert error["details"] == expected, method
    # The graph problems are beyond the schema: it accepts that definition.
    assert (list(validator.iter_errors(definition)) == []) is (make is _graph_invalid)


def test_a_body_that_is_not_an_object_is_still_refused(client: TestClient, tenant: Tenant) -> None:
    response = client.post(f"{API}/workflows", json=[leave_request_definition()], headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"
