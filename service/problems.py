"""Errors as RFC 9457 ``application/problem+json``, and the handlers that produce them.

Every error response, including FastAPI's own validation errors and Starlette's 404/405, has
the same shape: ``{type, title, status, detail, instance}`` plus extension members (``errors``
for validation failures). ``type`` is a URN naming the problem (``urn:quads:problem:<slug>``);
``detail`` tells the client what to change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 1
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before the answer
logger = logging.getLogger("service.problems")


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="URN identifying the kind of problem.", examples=["urn:quads:problem:undecodable-audio"]
    )
    title: str = Field(description="Short summary of the kind of problem.", examples=["Bad Request"])
    status: int = Field(description="The HTTP status code.", examples=[400])
    detail: str = Field(description="What went wrong with this request and what to do about it.")
    instance: str | None = Field(None, description="The request path.", examples=["/intent"])
    request_id: str | None = Field(None, description="The request's X-Request-ID, as in the logs.")


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem+json response."""

    def __init__(self, status: int, slug: str, detail: str, headers: dict[str, str] | None = None, **extensions: Any):
        super().__init__(detail)
        self.status, self.slug, self.detail, self.headers, self.extensions = status, slug, detail, headers, extensions


def problem_response(
    request: Request, status: int, slug: str, detail: str, headers: dict[str, str] | None = None, **extensions: Any
) -> JSONResponse:
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id is not None:
        extensions = {**extensions, "request_id": request_id}
    body = Problem(
        type=f"urn:quads:problem:{slug}",
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        **extensions,
    )
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


PROBLEM_SCHEMA_REF = "#/components/schemas/Problem"


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for problem+json answers: each refers to the one ``Problem``
    schema that ``document_problems`` adds to the components."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
        }
        for status in statuses
    }


def document_problems(app: FastAPI) -> None:
    """Add the ``Problem`` schema to the app's OpenAPI components (routes refer to it, never copy it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def install_problem_handlers(app: FastAPI, raised: Iterable[tuple[type[Exception], int, str]] = ()) -> None:
    """Register the handlers that turn every error into problem+json.

    ``raised``: (exception type, status, slug) for the errors that the app's own code raises with a
    message for the client (``service.main.ERROR_PROBLEMS``); ``str(exc)`` becomes the detail,
    and a 503 carries ``Retry-After``. Handlers match the most specific class first.
    """

    async def on_problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc.status, exc.slug, exc.detail, exc.headers, **exc.extensions)

    async def on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 404:
            detail = f"there is no resource at {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path} (allowed: {exc.headers.get('Allow', '?')})"
        slug = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        return problem_response(request, exc.status_code, slug, detail, exc.headers)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem_response(request, 422, "invalid-request", f"the request is invalid: {summary}", errors=errors)

    async def on_client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody is left to read an answer: no traceback, and nginx's 499 in the metrics.
        logger.info("client closed the connection during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "internal-error", "the server failed on this request; it has been logged")

    def raised_handler(status: int, slug: str):
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None

        async def on_raised(request: Request, exc: Exception) -> JSONResponse:
            return problem_response(request, status, slug, str(exc), headers)

        return on_raised

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    for exc_type, status, slug in raised:
        app.add_exception_handler(exc_type, raised_handler(status, slug))
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)
