"""POST /intent: classify the spoken command in an audio clip."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from core.refusal import decide
from service.api.deps import FILE_FIELD, IntentServingDep, read_audio
from service.api.schemas import IntentResponse, IntentScore, StageTimings
from service.problems import problem_responses

router = APIRouter(tags=["intent"])

# The body is read by a dependency (to accept both multipart and raw audio), so describe it here.
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FILE_FIELD],
                "properties": {
                    FILE_FIELD: {
                        "type": "string",
                        "format": "binary",
                        "description": "WAV, FLAC, OGG, MP3, WebM or MP4/M4A",
                    }
                },
            }
        },
        "audio/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "/intent",
    response_model=IntentResponse,
    responses=problem_responses(400, 408, 413, 415, 422, 503),
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def classify_intent(
    request: Request,
    serving: IntentServingDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="How many intents to list (at most the label count).")] = 3,
) -> Response:
    """Classify a spoken command (any sample rate and channel count, at most 30 s), or answer
    `understood: false` when the clip is none of the model's commands."""
    engine, model, metrics, max_body_bytes = serving
    audio = await read_audio(request, max_body_bytes)
    with metrics.in_flight.track_inprogress():
        start = time.perf_counter()
        prediction = await engine.predict(audio)
        total = time.perf_counter() - start

    metrics.observe_stages(
        {
            "decode": prediction.decode_seconds,
            "features": prediction.features_seconds,
            "inference": prediction.inference_seconds,
            "total": total,
        }
    )
    metrics.audio_duration.observe(prediction.audio_seconds)

    labels, refusal = model.outputs, model.refusal_index
    # Ranked in Python, not with torch.topk: a torch op on the event loop's thread would start a
    # second OpenMP team there, whose threads contend with the engine's for the same cores.
    probabilities = prediction.probabilities.tolist()
    best, understood = decide(probabilities, refusal, model.confidence_threshold)
    intents = (i for i in range(len(labels)) if i != refusal)
    ranked = sorted(intents, key=probabilities.__getitem__, reverse=True)[:top_k]
    frames = [model.frame(labels[i]) for i in ranked]
    scores = [IntentScore(intent=f.intent, slots=f.slots, confidence=probabilities[i]) for f, i in zip(frames, ranked)]
    metrics.answers.labels("true" if understood else "false").inc()
    frame = model.frame(labels[best])
    answer = IntentResponse(
        understood=understood,
        intent=frame.intent if understood else None,
        slots=frame.slots if understood else {},
        confidence=probabilities[best],
        top_k=scores,
        audio_seconds=prediction.audio_seconds,
        model=model.summary,
        timing_ms=StageTimings(
            decode=prediction.decode_seconds * 1000,
            features=prediction.features_seconds * 1000,
            inference=prediction.inference_seconds * 1000,
            total=total * 1000,
        ),
    )
    # Serialized here: returned as a model, FastAPI would validate it again against response_model.
    return Response(answer.model_dump_json(), media_type="application/json")
