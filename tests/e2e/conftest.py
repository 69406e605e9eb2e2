"""End-to-end fixtures: the stacks' logs go into the report of any test that fails on them."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tests.e2e.stack import Stack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed:
        stacks = {id(v): v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Stack)}
        for stack in stacks.values():
            report.sections.append((f"{stack.kind} stack: process logs", stack.logs()))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the summary lines tests recorded (`record_property("e2e_summary", ...)`)."""
    lines = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", [])
        if name == "e2e_summary" and getattr(report, "when", "") == "call"
    ]
    if lines:
        terminalreporter.write_sep("-", "e2e summary")
        for line in lines:
            terminalreporter.write_line(line)
