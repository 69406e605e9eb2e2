"""`bflow` run in this process with Click's CliRunner, as a fresh `bflow` process would run.

The settings are read from an environment without any BFLOW_* variable but an SQLite file in
the test's directory (and what the test adds), that directory is the working directory,
stdout and stderr stay apart, and an exception that escapes `bflow` is printed on stderr as
the interpreter prints it (exit status 1).
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from unittest import mock

from click.testing import CliRunner

from bflow_tasks import cli, db
from bflow_tasks.settings import Settings, settings

# stdout and stderr apart: the default from Click 8.2, an option before.
RUNNER = CliRunner(mix_stderr=False) if "mix_stderr" in signature(CliRunner).parameters else CliRunner()


@dataclass(frozen=True)
class Ran:
    """What one `bflow` run left: its exit status and its two streams."""

    returncode: int
    stdout: str
    stderr: str


def bflow_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any BFLOW_* setting, plus an SQLite file in tmp_path (and `env`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BFLOW_")}
    return {**base, "BFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'bflow.db'}", **(env or {})}


@contextlib.contextmanager
def settings_from(env: dict[str, str]) -> Iterator[None]:
    """The process's settings as a `bflow` process started with `env` reads them, then back."""
    with mock.patch.dict(os.environ, env, clear=True):
        fresh = Settings()
    saved = {name: getattr(settings, name) for name in Settings.model_fields}
    for name in Settings.model_fields:
        setattr(settings, name, getattr(fresh, name))
    db.reset_engine()
    try:
        yield
    finally:
        db.reset_engine()
        for name, value in saved.items():
            setattr(settings, name, value)


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Ran:
    """Run `bflow ARGS` in this process, in tmp_path, as a fresh process with `bflow_env` would."""
    with settings_from(bflow_env(tmp_path, env)), contextlib.chdir(tmp_path):
        result = RUNNER.invoke(cli.main, list(args), prog_name="bflow")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # Escaped `bflow`: the interpreter would print the traceback on stderr and exit 1.
        assert result.exit_code == 1
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return Ran(result.exit_code, result.stdout, stderr)
