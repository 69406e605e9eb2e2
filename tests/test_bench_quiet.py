"""The benchmarks' quiet-machine rule: no ratio from a run that started on a busy machine."""

from __future__ import annotations

from bench import quiet


def test_a_quiet_run_reports_its_ratio() -> None:
    assert quiet.ratio_or_refusal(0.4412, load_before=0.95) == "0.44x"


def test_a_run_that_started_busy_reports_why_instead() -> None:
    refusal = quiet.ratio_or_refusal(0.44, load_before=1.37)
    assert "0.44" not in refusal
    assert refusal == "not reported: the load was 1.37 (> 1.0) before the first run"


def test_the_load_is_read_from_the_machine() -> None:
    assert quiet.load_average() >= 0.0
    assert quiet.describe(0.5) == "load 0.50 before the run"
