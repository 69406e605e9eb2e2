"""Whether the machine is quiet enough for a benchmark's ratio to mean anything.

A ratio compares Bflow with a raw baseline run in the same script, on a machine of 2 cores
that MariaDB, Redis, the workers and the load client share. Another test suite or benchmark
running beside it takes cores from one side more than the other, so a run that starts with
the 1-minute load average above `MAX_LOAD` prints its figures but says why it reports no ratio.
The load before each run is printed beside it too; a script's own earlier runs raise it for
the later ones, so only the load before its first run decides.
"""

from __future__ import annotations

import os

MAX_LOAD = 1.0


def load_average() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def describe(load: float) -> str:
    """How the load looked before a run, for the line that reports it."""
    return f"load {load:.2f} before the run"


def ratio_or_refusal(ratio: float, *, load_before: float, template: str = "{:.2f}x") -> str:
    """`ratio` formatted, or why it is not reported: the script started on a busy machine."""
    if load_before > MAX_LOAD:
        return f"not reported: the load was {load_before:.2f} (> {MAX_LOAD:.1f}) before the first run"
    return template.format(ratio)
