"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.schemas import Status
from service.problems import ProblemError, problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status)
async def liveness() -> Status:
    """Liveness: the process answers HTTP. Independent of the model, so a slow load never restarts it."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses=problem_responses(503))
async def readiness(request: Request) -> Status:
    """Readiness: 200 only while the model is loaded and the service is not draining after SIGTERM."""
    state = request.app.state
    if state.draining:
        raise ProblemError(503, "draining", "the service is shutting down and takes no new traffic")
    if state.engine is None:
        raise ProblemError(503, "not-ready", "the model is not loaded yet")
    return Status(status="ready")
