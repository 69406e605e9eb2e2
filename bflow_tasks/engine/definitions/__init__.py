"""Workflow definitions: the language, its checks, conditions, diagrams, and their storage."""
