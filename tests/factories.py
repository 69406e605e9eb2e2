"""Reusable test data: valid workflow definitions."""

from __future__ import annotations

from typing import Any


def leave_request_definition() -> dict[str, Any]:
    """Return a valid definition: a 3-approver parallel review, then finance above 1000."""
    return {
        "name": "Leave request",
        "document_type": "leave_request",
        "nodes": [
            {"key": "submit", "name": "Submit", "action": "create"},
            {
                "key": "manager_review",
                "name": "Manager review",
                "action": "approve",
                "approvers": {"mode": "all", "sources": [{"users": ["u1", "u2", "u3"]}]},
            },
            {
                "key": "finance",
                "name": "Finance",
                "action": "approve",
                "approvers": {"mode": "any", "sources": [{"users": ["fin1"]}]},
            },
            {"key": "done", "name": "Done", "action": "end"},
        ],
        "associations": [
            {"source": "submit", "dest": "manager_review"},
            {
                "source": "manager_review",
                "dest": "finance",
                "condition": {"var": "amount", "op": ">=", "value": 1000},
            },
            {
                "source": "manager_review",
                "dest": "done",
                "condition": {"var": "amount", "op": "<", "value": 1000},
            },
            {"source": "finance", "dest": "done"},
        ],
    }
