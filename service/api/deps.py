"""Dependencies of the routes, as ``Annotated`` aliases (the FastAPI full-stack template's style).

Everything lives on ``app.state``, set by ``service.main.create_app`` and its lifespan: no
import-time singletons, so tests can build several apps side by side.

The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop per dependency per request. ``POST /intent`` made
several, which cost more than the rest of its HTTP handling.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from service.api.schemas import ModelInfo
from service.engine import InferenceEngine
from service.metrics import ServiceMetrics
from service.problems import ProblemError
from service.settings import Settings

FILE_FIELD = "file"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_engine(request: Request) -> InferenceEngine:
    """The loaded engine, or 503 while the model is not loaded (starting or stopped)."""
    engine = request.app.state.engine
    if engine is None:
        raise ProblemError(
            503, "not-ready", "the model is not loaded yet (or the service is stopping); retry shortly",
            headers={"Retry-After": "1"},
        )
    return engine


async def get_model_info(request: Request, engine: Annotated[InferenceEngine, Depends(get_engine)]) -> ModelInfo:
    """The loaded model's identity (``ModelInfo.of``, built once in the lifespan); 503 like ``get_engine``."""
    return request.app.state.model_info


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
ModelInfoDep = Annotated[ModelInfo, Depends(get_model_info)]


async def read_audio(request: Request, settings: SettingsDep) -> bytes:
    """The uploaded audio: multipart field ``file``, or the whole body for ``audio/*`` content.

    The body-limit middleware has already bounded the size, so reading it whole is safe.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart_file(request, settings.max_body_bytes)
    if media_type.startswith("audio/") or media_type == "application/octet-stream":
        return await request.body()
    raise ProblemError(
        415, "unsupported-media-type",
        f"content type {media_type or '(none)'!r} is not accepted; send multipart/form-data with the audio "
        f"in field {FILE_FIELD!r} (curl -F {FILE_FIELD}=@clip.wav) or a raw body with an audio/* "
        "content type (curl -H 'Content-Type: audio/wav' --data-binary @clip.wav)",
    )


async def _read_multipart_file(request: Request, max_bytes: int) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=max_bytes)
    except (MultiPartException, HTTPException) as e:  # Starlette wraps parser errors in HTTPException(400)
        reason = e.message if isinstance(e, MultiPartException) else e.detail
        raise ProblemError(400, "malformed-multipart", f"the multipart body could not be parsed: {reason}") from None
    try:
        upload = form.get(FILE_FIELD)
        if upload is None:
            present = ", ".join(repr(k) for k in form.keys()) or "none"
            raise ProblemError(
                422, "missing-file",
                f"the multipart body has no field {FILE_FIELD!r} (fields present: {present}); "
                f"send the audio as curl -F {FILE_FIELD}=@clip.wav",
            )
        if not isinstance(upload, UploadFile):
            raise ProblemError(
                422, "file-not-uploaded",
                f"field {FILE_FIELD!r} is a plain form value, not a file; send it as a file part with a filename "
                f"(curl -F {FILE_FIELD}=@clip.wav)",
            )
        return await upload.read()
    finally:
        await form.close()


AudioBytesDep = Annotated[bytes, Depends(read_audio)]
