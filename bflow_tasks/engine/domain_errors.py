"""Domain errors: each carries a stable code the shim turns into an HTTP status."""

from __future__ import annotations

from typing import Any


class BflowError(Exception):
    """Base of every refusal the engine makes; nothing was changed when one is raised."""

    code = "error"

    def __init__(self, message: str, *, details: Any = None):
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(BflowError):
    code = "invalid_input"


class InvalidField(InvalidInput):
    """A well-formed request whose field holds a value the service refuses (an unsafe URL)."""


class NotFound(BflowError):
    code = "not_found"


class Forbidden(BflowError):
    code = "forbidden"


class Conflict(BflowError):
    code = "conflict"
