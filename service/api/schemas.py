"""Pydantic models of the API's JSON bodies (they appear in the OpenAPI schema)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from service.engine import InferenceEngine


class IntentScore(BaseModel):
    intent: str = Field(description="An intent label of the model.", examples=["activate_lights"])
    confidence: float = Field(ge=0, le=1, description="Softmax probability of this intent.")


class ModelSummary(BaseModel):
    name: str = Field(description="Checkpoint file name without extension.", examples=["quads-fsc-4bit"])
    bits: int = Field(description="Bit width of the quantized weights.")
    file_bytes: int = Field(description="Size of the checkpoint file.")


class StageTimings(BaseModel):
    """Milliseconds per stage; ``inference`` is the model call of the whole micro-batch."""

    decode: float
    features: float
    inference: float
    total: float = Field(description="From the body being received to the answer, queueing included.")


class IntentResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "intent": "activate_lights_none",
        "confidence": 0.949,
        "top_k": [{"intent": "activate_lights_none", "confidence": 0.949},
                  {"intent": "activate_lights_bedroom", "confidence": 0.033},
                  {"intent": "deactivate_lights_none", "confidence": 0.006}],
        "audio_seconds": 1.196,
        "model": {"name": "quads-fsc-4bit", "bits": 4, "file_bytes": 3906564},
        "timing_ms": {"decode": 1.3, "features": 0.9, "inference": 10.3, "total": 12.9},
    }]})  # the README's quickstart answer

    intent: str = Field(description="The most probable intent.", examples=["activate_lights"])
    confidence: float = Field(ge=0, le=1, description="Its softmax probability.")
    top_k: list[IntentScore] = Field(description="The top_k most probable intents, most probable first.")
    audio_seconds: float = Field(description="Duration of the decoded audio.")
    model: ModelSummary
    timing_ms: StageTimings


class ModelInfo(BaseModel):
    name: str
    labels: list[str]
    bits: int
    params: int = Field(description="Number of parameters.")
    file_bytes: int = Field(description="Size of the checkpoint file (packed codes).")
    memory_bytes: int = Field(description="Bytes of the loaded model: dequantized, its matrix weights in the compute dtype.")
    dims: dict[str, int] = Field(description="Architecture (ModelDims).")
    sha256: str = Field(description="Content hash stored in the checkpoint.")
    max_audio_seconds: float = Field(description="Longest clip accepted.")
    precision: str = Field(description="The matrix products' precision: float32, bfloat16 or int8 (QUADS_PRECISION).")

    @classmethod
    def of(cls, engine: InferenceEngine) -> ModelInfo:
        """The identity of the engine's model: built once when it is loaded, then served as is."""
        checkpoint = engine.checkpoint
        return cls(
            name=engine.model_name, labels=checkpoint.labels, bits=checkpoint.bits, params=checkpoint.n_params,
            file_bytes=checkpoint.file_bytes, memory_bytes=checkpoint.memory_bytes, dims=checkpoint.dims.to_dict(),
            sha256=checkpoint.sha256, max_audio_seconds=engine.max_audio_seconds, precision=engine.compute_dtype,
        )

    @cached_property
    def summary(self) -> ModelSummary:
        """What every /intent answer says about the model."""
        return ModelSummary(name=self.name, bits=self.bits, file_bytes=self.file_bytes)


class Status(BaseModel):
    status: str = Field(examples=["ok"])
