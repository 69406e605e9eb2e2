"""The ASGI app: `uvicorn api_shim.app:app`. Validate, authorise, enqueue; read status."""

from __future__ import annotations

from fastapi import FastAPI

from api_shim import errors
from api_shim.limits import BodyLimit
from api_shim.routes import health, metrics, runtimes, tasks, webhooks, workflows

API_PREFIX = "/api/v1"


def create_app() -> FastAPI:
    """Build the shim: the routes under /api/v1, JSON errors, a request body limit."""
    app = FastAPI(
        title="Bflow",
        summary="Approval workflows for ERP documents, carried by Celery",
        version="0.1.0",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    for module in (workflows, metrics, runtimes, tasks, webhooks, health):
        app.include_router(module.router, prefix=API_PREFIX)
    errors.install(app)
    app.add_middleware(BodyLimit)
    return app


app = create_app()
