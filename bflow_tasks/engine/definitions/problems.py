"""The problem type shared by the definition and condition checks."""

from __future__ import annotations

from pydantic import BaseModel


class DefinitionProblem(BaseModel):
    """One reason a definition was refused, with the JSON path it is about."""

    path: str
    message: str
