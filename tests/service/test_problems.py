"""service.problems on a bare FastAPI app: every error is RFC 9457 problem+json with the same fields."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.problems import (
    PROBLEM_MEDIA_TYPE,
    ProblemError,
    document_problems,
    install_problem_handlers,
    problem_responses,
)


class Busy(RuntimeError):
    pass


def make_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app, raised=[(Busy, 503, "busy"), (ValueError, 400, "bad-value")])
    document_problems(app)

    @app.get("/problem", responses=problem_responses(409))
    async def problem():
        raise ProblemError(409, "conflict-here", "change x", headers={"X-Why": "test"}, hint="try y")

    @app.get("/busy")
    async def busy():
        raise Busy("the queue is full; retry")

    @app.get("/value")
    async def value():
        raise ValueError("x must be positive")

    @app.get("/crash")
    async def crash():
        raise KeyError("secret internals")

    @app.get("/typed")
    async def typed(n: int):
        return {"n": n}

    @app.middleware("http")
    async def request_id(request, call_next):
        request.scope.setdefault("state", {})["request_id"] = "req-1"
        return await call_next(request)

    return app


def problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["type"] == f"urn:quads:problem:{slug}" and body["status"] == status
    assert body["request_id"] == "req-1" and body["instance"] == response.request.url.path
    return body


def test_a_raised_problem_keeps_its_slug_detail_headers_and_extensions():
    response = TestClient(make_app()).get("/problem")
    body = problem(response, 409, "conflict-here")
    assert body["title"] == "Conflict" and body["detail"] == "change x" and body["hint"] == "try y"
    assert response.headers["X-Why"] == "test"


def test_mapped_exceptions_use_their_message_and_a_503_says_when_to_retry():
    client = TestClient(make_app())
    busy = client.get("/busy")
    assert problem(busy, 503, "busy")["detail"] == "the queue is full; retry"
    assert busy.headers["Retry-After"] == "1"
    value = client.get("/value")
    assert problem(value, 400, "bad-value")["detail"] == "x must be positive"
    assert "Retry-After" not in value.headers


def test_an_unexpected_error_is_a_500_that_leaks_nothing(caplog):
    response = TestClient(make_app(), raise_server_exceptions=False).get("/crash")
    body = problem(response, 500, "internal-error")
    assert "secret" not in response.text and "logged" in body["detail"]
    assert "unhandled error on GET /crash" in caplog.text


def test_starlette_404_and_405_and_validation_errors_say_what_to_change():
    client = TestClient(make_app())
    assert "/docs" in problem(client.get("/nowhere"), 404, "not-found")["detail"]
    assert "allowed: GET" in problem(client.post("/busy"), 405, "method-not-allowed")["detail"]
    body = problem(client.get("/typed?n=abc"), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["query", "n"] and "query.n" in body["detail"]


def test_openapi_refers_to_one_problem_schema():
    schema = TestClient(make_app()).get("/openapi.json").json()
    assert set(schema["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status", "detail"}
    content = schema["paths"]["/problem"]["get"]["responses"]["409"]["content"]
    assert content == {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
