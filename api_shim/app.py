"""The ASGI app: `uvicorn api_shim.app:app`. Validate, authorise, enqueue; read status."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api_shim import deps, errors
from api_shim.head import HeadAsGet
from api_shim.limits import BodyLimit
from api_shim.routes import health, metrics, prometheus, runtimes, tasks, webhooks, workflows
from bflow_tasks.observability import http as observability
from bflow_tasks.observability import logs

API_PREFIX = "/api/v1"


def create_app() -> FastAPI:
    """Build the shim: the routes under /api/v1, JSON bodies and errors, a request body limit, HEAD."""
    logs.configure_shim()
    app = FastAPI(
        dependencies=[Depends(observability.bind_path_ids), Depends(deps.require_json_body)],
        title="Bflow",
        summary="Approval workflows for ERP documents, carried by Celery",
        version="0.1.0",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        responses=errors.OTHER_ERROR_RESPONSES,
    )
    for module in (workflows, metrics, runtimes, tasks, webhooks):
        app.include_router(module.router, prefix=API_PREFIX, responses=errors.API_ERROR_RESPONSES)
    app.include_router(health.router, prefix=API_PREFIX)
    # Prometheus looks at /metrics by default; /api/v1/metrics is the DESIGN §5 address.
    app.include_router(prometheus.router)
    app.include_router(prometheus.router, prefix=API_PREFIX)
    errors.install(app)
    app.add_middleware(HeadAsGet)  # innermost: the middleware around it sees the request as sent
    app.add_middleware(BodyLimit)
    app.add_middleware(observability.RequestContext)  # outermost: a 413 carries X-Request-ID too
    return app


app = create_app()
