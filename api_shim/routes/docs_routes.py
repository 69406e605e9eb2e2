"""The browsable API docs, Swagger UI and ReDoc, served with their own assets (no CDN, no network).

The assets are vendored from npm into api_shim/static/ (see api_shim/static/README.md) and ship
in the wheel as package data, so the docs work where the service cannot reach the internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def install(app: FastAPI, prefix: str) -> None:
    """Serve {prefix}/docs, {prefix}/redoc and {prefix}/static/; send / and /docs to the docs."""
    openapi_url = app.openapi_url or f"{prefix}/openapi.json"
    static = f"{prefix}/static"
    router = APIRouter(include_in_schema=False)

    @router.get(f"{prefix}/docs")
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{static}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{static}/swagger-ui/favicon-32x32.png",
            # The default asks validator.swagger.io to check the schema: no calls out.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @router.get(f"{prefix}/redoc")
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            redoc_js_url=f"{static}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{static}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )

    @router.get("/")
    @router.get("/docs")
    def to_the_docs() -> RedirectResponse:
        return RedirectResponse(f"{prefix}/docs")

    app.include_router(router)
    app.mount(static, StaticFiles(directory=STATIC_DIR), name="static")
