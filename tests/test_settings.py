"""Settings read from the environment."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

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


@pytest.mark.parametrize("lease", [5, 15])
def test_a_webhook_lease_must_outlast_the_attempt_timeout(lease):
    with pytest.raises(ValidationError, match="BFLOW_WEBHOOK_LEASE_SECONDS .* must exceed"):
        Settings(webhook_lease_seconds=lease, webhook_timeout_seconds=15)
    assert Settings(webhook_lease_seconds=15.5, webhook_timeout_seconds=15).webhook_lease_seconds == 15.5


def test_a_webhook_lease_from_the_environment_is_checked_too(monkeypatch):
    monkeypatch.setenv("BFLOW_WEBHOOK_TIMEOUT_SECONDS", "30")
    assert Settings().webhook_lease_seconds == 60  # the default lease outlasts it
    monkeypatch.setenv("BFLOW_WEBHOOK_LEASE_SECONDS", "20")
    with pytest.raises(ValidationError, match="must exceed"):
        Settings()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("BFLOW_MAX_BODY_BYTES", "0"),  # every request, /health included, would be a 413
        ("BFLOW_PUBLISH_TIMEOUT_SECONDS", "-1"),
        ("BFLOW_VISIBILITY_TIMEOUT_SECONDS", "0"),
        ("BFLOW_SWEEP_GRACE", "-30"),
        ("BFLOW_ARCHIVE_AFTER_DAYS", "1000000"),  # the cutoff would overflow every date
        ("BFLOW_LOG_LEVEL", "verbose"),
    ],
)
def test_a_setting_out_of_its_range_is_refused_at_start_up(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValidationError, match=name.removeprefix("BFLOW_").lower()):
        Settings()


def test_the_log_level_may_be_given_in_any_case(monkeypatch):
    monkeypatch.setenv("BFLOW_LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"
