"""Dependencies of the routes, as ``Annotated`` aliases (the FastAPI full-stack template's style).

Everything lives on ``app.state``, set by ``service.main.create_app`` and its lifespan: no
import-time singletons, so tests can build several apps side by side.

The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop per dependency per request. Each dependency also
costs FastAPI's dependency solving on every request, so ``POST /intent``, the hot path, takes
one (``IntentServingDep``) and reads its body with a plain call (``read_audio``).
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from fastapi import Depends, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from service.api.schemas import ModelInfo
from service.body import carries_audio
from service.body import media_type as body_media_type
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
            503,
            "not-ready",
            "the model is not loaded yet (or the service is stopping); retry shortly",
            headers={"Retry-After": "1"},
        )
    return engine


async def get_model_info(request: Request, engine: Annotated[InferenceEngine, Depends(get_engine)]) -> ModelInfo:
    """The loaded model's identity (``ModelInfo.of``, built once in the lifespan); 503 like ``get_engine``."""
    return request.app.state.model_info


class IntentServing(NamedTuple):
    """What ``POST /intent`` needs, as one dependency."""

    engine: InferenceEngine
    model: ModelInfo
    metrics: ServiceMetrics
    max_body_bytes: int


async def get_intent_serving(request: Request) -> IntentServing:
    """The engine, model identity, metrics and body limit; 503 like ``get_engine``."""
    state = request.app.state
    return IntentServing(await get_engine(request), state.model_info, state.metrics, state.settings.max_body_bytes)


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
ModelInfoDep = Annotated[ModelInfo, Depends(get_model_info)]
IntentServingDep = Annotated[IntentServing, Depends(get_intent_serving)]


async def read_audio(request: Request, max_bytes: int) -> bytes:
    """The uploaded audio: multipart field ``file``, or the whole body for ``audio/*`` content.

    The body-limit middleware has already bounded the size to ``max_bytes``, so reading it whole is safe.
    """
    media_type = body_media_type(request.scope)
    if media_type == "multipart/form-data":
        return await _read_multipart_file(request, max_bytes)
    if carries_audio(media_type):
        return await request.body()
    raise ProblemError(
        415,
        "unsupported-media-type",
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
                422,
                "missing-file",
                f"the multipart body has no field {FILE_FIELD!r} (fields present: {present}); "
                f"send the audio as curl -F {FILE_FIELD}=@clip.wav",
            )
        if not isinstance(upload, UploadFile):
            raise ProblemError(
                422,
                "file-not-uploaded",
                f"field {FILE_FIELD!r} is a plain form value, not a file; send it as a file part with a filename "
                f"(curl -F {FILE_FIELD}=@clip.wav)",
            )
        return await upload.read()
    finally:
        await form.close()
