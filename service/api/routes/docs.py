"""Swagger UI at ``/docs`` that works without internet: its assets ship in the swagger-ui-bundle
wheel and are served from ``/docs-assets``, instead of FastAPI's default CDN links."""

from __future__ import annotations

import swagger_ui_bundle
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"

router = APIRouter()


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
    )


def assets() -> StaticFiles:
    """The Swagger UI files, to mount at ``ASSETS_PATH``."""
    return StaticFiles(directory=swagger_ui_bundle.swagger_ui_path)
