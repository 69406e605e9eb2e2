"""SQLAlchemy 2 models: the seed schema plus commands (the transition outbox) and events.

Every table the engine touches in a transition is reached through an index; the unique
constraints are the last line of defence against a transition applied twice. One module per
concept; everything is imported from here.
"""

from bflow_tasks.models.archive_tables import ARCHIVE_TWINS, ARCHIVED_TABLES
from bflow_tasks.models.base import NAMING_CONVENTION, Base, Timestamped, UTCDateTime, new_id, utcnow
from bflow_tasks.models.job_tables import JobRun
from bflow_tasks.models.runtime_tables import (
    Runtime,
    RuntimeAssignee,
    RuntimeCommand,
    RuntimeEvent,
    RuntimeLog,
    RuntimeStage,
    RuntimeViewer,
)
from bflow_tasks.models.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from bflow_tasks.models.workflow_tables import (
    ApiToken,
    Association,
    Company,
    Node,
    Tenant,
    Workflow,
    WorkflowVersion,
)

__all__ = [
    "ARCHIVED_TABLES",
    "ARCHIVE_TWINS",
    "NAMING_CONVENTION",
    "ApiToken",
    "Association",
    "Base",
    "Company",
    "JobRun",
    "Node",
    "Runtime",
    "RuntimeAssignee",
    "RuntimeCommand",
    "RuntimeEvent",
    "RuntimeLog",
    "RuntimeStage",
    "RuntimeViewer",
    "Tenant",
    "Timestamped",
    "UTCDateTime",
    "Workflow",
    "WorkflowVersion",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "new_id",
    "utcnow",
]
