"""Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    """Every metric in the Prometheus text format (one worker per container, so no multiprocess mode)."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
