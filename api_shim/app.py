"""The ASGI app: `uvicorn api_shim.app:app`. Validate, authorise, enqueue; read status."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api_shim import deps, error_responses
from api_shim.body_limit import BodyLimit
from api_shim.head import HeadAsGet
from api_shim.routes import (
    docs_routes,
    health_routes,
    metrics_routes,
    prometheus_routes,
    runtime_routes,
    schema_routes,
    task_routes,
    webhook_routes,
    workflow_routes,
)
from bflow_tasks.observability import logs, request_context

API_PREFIX = "/api/v1"


def create_app() -> FastAPI:
    """Build the shim: the routes under /api/v1, JSON bodies and errors, a request body limit, HEAD."""
    logs.configure_shim()
    app = FastAPI(
        dependencies=[Depends(request_context.bind_path_ids), Depends(deps.require_json_body)],
        title="Bflow",
        summary="Approval workflows for ERP documents, carried by Celery",
        version="0.1.0",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # docs_routes serves it with local assets
        redoc_url=None,
        responses=error_responses.OTHER_ERROR_RESPONSES,
    )
    for module in (workflow_routes, metrics_routes, runtime_routes, task_routes, webhook_routes):
        app.include_router(module.router, prefix=API_PREFIX, responses=error_responses.API_ERROR_RESPONSES)
    app.include_router(health_routes.router, prefix=API_PREFIX)
    app.include_router(schema_routes.router, prefix=API_PREFIX)
    # Prometheus looks at /metrics by default; /api/v1/metrics is the API's own address.
    app.include_router(prometheus_routes.router)
    app.include_router(prometheus_routes.router, prefix=API_PREFIX)
    docs_routes.install(app, API_PREFIX)
    error_responses.install(app)
    app.add_middleware(HeadAsGet)  # innermost: the middleware around it sees the request as sent
    app.add_middleware(BodyLimit)
    app.add_middleware(request_context.RequestContext)  # outermost: a 413 carries X-Request-ID too
    return app


app = create_app()
