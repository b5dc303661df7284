"""``GET /``: a page to try the service from a browser, recording with the microphone or sending a file.

The page (``service/try_page/``) is plain HTML, CSS and JavaScript shipped in the package: no build
step and nothing fetched from elsewhere. It calls the real ``POST /intent``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parents[2] / "try_page"
ASSETS_PATH = "/try"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def try_page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html")


def assets() -> StaticFiles:
    """The page's script and style sheet, to mount at ``ASSETS_PATH``."""
    return StaticFiles(directory=PAGE_DIR)
