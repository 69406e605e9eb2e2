"""Log lines as JSON (or text) carrying the request/task context, for the shim and Celery.

`BFLOW_LOG_FORMAT=json` switches it on: Celery's own logging setup is hooked through its
`after_setup_logger`/`after_setup_task_logger` signals (so `celery worker` and `celery beat`
print JSON), and the shim applies `log_config()` with dictConfig when its app is built,
which takes uvicorn's access and error loggers over as well.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from bflow_tasks.observability import context
from bflow_tasks.settings import settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class ContextFilter(logging.Filter):
    """Copy the current request/task context onto each record (as attributes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context.current().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """Plain lines, with the context fields appended in brackets when there are any."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(
            f"{name}={getattr(record, name)}" for name in context.FIELDS if getattr(record, name, None)
        )
        return f"{line} [{fields}]" if fields else line


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, message, then the context fields."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(processName)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "processName": "process"},
        timestamp="time",
        # uvicorn adds an ANSI-coloured copy of each message: noise in JSON.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


def make_formatter(fmt: str | None = None) -> logging.Formatter:
    """The formatter for `fmt` (`json` or `text`; the setting when None)."""
    return json_formatter() if (fmt or settings.log_format) == "json" else TextFormatter()


def log_config(fmt: str | None = None, level: str | None = None) -> dict[str, Any]:
    """A logging dictConfig for the shim (also fit for `uvicorn.run(log_config=...)`)."""
    chosen = (level or settings.log_level).upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"bflow": {"()": make_formatter, "fmt": fmt}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "bflow",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["default"], "level": chosen},
        # uvicorn's own config gives these loggers handlers and propagate=False: route them
        # through the root handler instead, so access lines carry the request's context too.
        # Same level as the root: a propagated record is not filtered by the root's level.
        "loggers": {name: {"handlers": [], "propagate": True, "level": chosen} for name in UVICORN_LOGGERS},
    }


def configure_shim() -> None:
    """Apply the JSON log config in the shim's process; text mode leaves uvicorn's as it is."""
    if settings.log_format == "json":
        logging.config.dictConfig(log_config("json"))


@after_setup_logger.connect(weak=False)
@after_setup_task_logger.connect(weak=False)
def _celery_logging_ready(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery has installed its handlers (stderr or --logfile) on this logger: keep them, and
    # give them our context and, in JSON mode, our formatter.
    if logger is None:
        return
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if settings.log_format == "json":
            handler.setFormatter(json_formatter())
