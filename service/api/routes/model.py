"""Metadata of the served model."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ModelInfoDep
from service.api.schemas import ModelInfo
from service.problems import problem_responses

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo, responses=problem_responses(503))
async def model_info(info: ModelInfoDep) -> ModelInfo:
    """Labels, bit width, size and architecture of the loaded checkpoint."""
    return info
