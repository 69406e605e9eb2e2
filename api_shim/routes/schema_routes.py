"""The JSON Schema of a workflow definition, for editors and clients (no auth)."""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter
from pydantic import TypeAdapter

from bflow_tasks.engine.definitions.language import WorkflowDefinition

router = APIRouter(prefix="/schemas", tags=["schemas"])

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@cache
def workflow_definition_schema() -> dict[str, Any]:
    """The schema of the definition language, as pydantic generates it from the engine's models."""
    generated = TypeAdapter(WorkflowDefinition).json_schema()
    return {"$schema": JSON_SCHEMA_DIALECT, **generated}


@router.get("/workflow-definition", response_model=dict[str, Any])
def get_workflow_definition_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the body of POST /workflows and PUT /workflows/{id}.

    It checks the shape of a definition; the graph checks a schema cannot express (one create
    node, every node reachable, a quorum within the approvers named...) still answer 422.
    """
    return workflow_definition_schema()
