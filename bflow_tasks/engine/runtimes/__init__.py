"""Runtimes: admission, transitions under row locks, routing, stages and tasks, the audit trail."""
