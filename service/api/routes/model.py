"""Metadata of the served model."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import EngineDep
from service.api.schemas import ModelInfo
from service.problems import problem_responses

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo, responses=problem_responses(503))
async def model_info(engine: EngineDep) -> ModelInfo:
    """Labels, bit width, size and architecture of the loaded checkpoint."""
    ckpt = engine.checkpoint
    return ModelInfo(
        name=engine.model_name,
        labels=ckpt.labels,
        bits=ckpt.bits,
        params=ckpt.n_params,
        file_bytes=ckpt.file_bytes,
        memory_bytes=ckpt.memory_bytes,
        dims=ckpt.dims.to_dict(),
        sha256=ckpt.sha256,
        max_audio_seconds=engine.max_audio_seconds,
        precision=engine.compute_dtype,
    )
