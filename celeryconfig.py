"""Celery settings (see docs/architecture.md). Every value comes from `bflow_tasks.settings`."""

from kombu import Queue

from beat_schedule import beat_schedule  # noqa: F401  (Celery reads it from this module)
from bflow_tasks.settings import settings

broker_url = settings.broker_url
result_backend = settings.result_backend

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# A task is acknowledged after it ran, so a worker killed mid-task leaves its message to be
# redelivered; every task is idempotent, so running it twice is harmless.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
result_backend_always_retry = True
result_expires = 24 * 3600
task_track_started = True

# Flower reads these events.
worker_send_task_events = True
task_send_sent_event = True

task_default_queue = "workflow"
task_queues = (Queue("workflow"), Queue("webhooks"), Queue("maintenance"))
task_routes = {
    "workflow.*": {"queue": "workflow"},
    "webhooks.*": {"queue": "webhooks"},
    "maintenance.*": {"queue": "maintenance"},
}

# One visibility timeout, the same for broker and backend, larger than the longest task.
broker_transport_options = {
    "visibility_timeout": settings.visibility_timeout_seconds,
    "confirm_publish": True,  # RabbitMQ: wait for the broker's ack before returning
    # Redis: a broker that took the connection and then went silent (a hung server, a
    # half-open link) fails the publish instead of holding the request forever.
    "socket_timeout": settings.publish_timeout_seconds,
}
if settings.is_embedded_broker:
    # memory:// is polled (kombu's virtual transport, 1 s by default): in one process a
    # short interval costs little and keeps each step of a runtime from waiting a second.
    broker_transport_options["polling_interval"] = 0.05
result_backend_transport_options = {"visibility_timeout": settings.visibility_timeout_seconds}
broker_connection_retry_on_startup = True
broker_connection_timeout = settings.publish_timeout_seconds
redis_socket_connect_timeout = settings.publish_timeout_seconds
redis_socket_timeout = 30
