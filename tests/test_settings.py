"""Settings read from the environment."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bflow_tasks.settings import Settings


@pytest.mark.parametrize("raw", ["3", "3.0", "PT3S", "00:00:03"])
def test_sweep_grace_takes_bare_seconds_or_iso_8601(monkeypatch, raw):
    monkeypatch.setenv("BFLOW_SWEEP_GRACE", raw)
    assert Settings().sweep_grace == timedelta(seconds=3)


def test_the_defaults_are_the_embedded_setup(monkeypatch):
    for name in ("BFLOW_DATABASE_URL", "BFLOW_BROKER_URL", "BFLOW_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert defaults.is_sqlite and defaults.is_embedded_broker
    assert defaults.result_backend == "cache+memory://"
