"""Workflow tasks on a real worker: the webhook suite's shim, receiver and in-process worker."""

from __future__ import annotations

from tests.webhooks.conftest import (  # noqa: F401  (shared fixtures; the autouse ones apply here too)
    client,
    empty_queues,
    receiver,
    tenant,
    webhook_settings,
    worker,
)
