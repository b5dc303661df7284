"""Pydantic models of the API's JSON bodies (they appear in the OpenAPI schema)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from core.frames import Frame, FrameTable

if TYPE_CHECKING:
    from service.engine import InferenceEngine


class IntentScore(BaseModel):
    intent: str = Field(description="An intent of the model.", examples=["activate_lights_none"])
    slots: dict[str, str] = Field(
        default_factory=dict,
        description="The slot values this intent is scored with "
        "(a model built from a context scores each combination of intent and slots).",
    )
    confidence: float = Field(ge=0, le=1, description="Softmax probability of this intent.")


def document_null_intent(app) -> None:
    """FastAPI drops None values from the OpenAPI document (``exclude_none``), so the refused
    example would lose its ``"intent": null``, the one field a client must handle: put it back."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for example in schema["components"]["schemas"]["IntentResponse"].get("examples", []):
                example.setdefault("intent", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "understood": True,
                    "intent": "activate_lights_none",
                    "confidence": 0.992,
                    "slots": {},
                    "top_k": [
                        {"intent": "activate_lights_none", "slots": {}, "confidence": 0.992},
                        {"intent": "activate_lights_bedroom", "slots": {}, "confidence": 0.003},
                        {"intent": "activate_lights_washroom", "slots": {}, "confidence": 0.002},
                    ],
                    "audio_seconds": 1.196,
                    "model": {"name": "quads-fsc-4bit", "bits": 4, "file_bytes": 3906840},
                    "timing_ms": {"decode": 1.8, "features": 0.9, "inference": 21.7, "total": 24.9},
                },
                {
                    "understood": False,
                    "intent": None,
                    "confidence": 0.009,
                    "slots": {},
                    "top_k": [
                        {"intent": "deactivate_music_none", "slots": {}, "confidence": 0.009},
                        {"intent": "change language_English_none", "slots": {}, "confidence": 0.004},
                        {"intent": "change language_Chinese_none", "slots": {}, "confidence": 0.004},
                    ],
                    "audio_seconds": 1.105,
                    "model": {"name": "quads-fsc-4bit", "bits": 4, "file_bytes": 3906840},
                    "timing_ms": {"decode": 4.3, "features": 0.9, "inference": 15.7, "total": 21.5},
                },
            ]
        }
    )  # the README's quickstart answer, then a question ("what time is it?") the model refuses

    understood: bool = Field(
        description="False when the clip is none of the model's commands (speech or a sound "
        "that is not a command, or a command heard too unsure): then `intent` is null."
    )
    intent: str | None = Field(
        description="The command understood; null when `understood` is false.", examples=["activate_lights_none"]
    )
    confidence: float = Field(
        ge=0,
        le=1,
        description="Softmax probability of the most probable intent (given also when it is not understood).",
    )
    slots: dict[str, str] = Field(
        default_factory=dict,
        description="Slot values of the intent, as the context's "
        "lists give them (a value's `out` form when it has one), plus the sentence's fixed "
        "slots; a slot the sentence leaves out is absent. Empty when not understood, and "
        "for models whose intents name every slot (the FSC models).",
        examples=[{"channel": "four"}],
    )
    top_k: list[IntentScore] = Field(
        description="The top_k most probable intents, most probable first (given also "
        "when not understood, for debugging)."
    )
    audio_seconds: float = Field(description="Duration of the decoded audio.")
    model: ModelSummary
    timing_ms: StageTimings


class ContextInfo(BaseModel):
    name: str = Field(description="The context file the model was built from (its name, without .yaml).")
    sha256: str = Field(description="SHA-256 of that file's bytes: check it against your copy.")
    language: str = ""
    slots: dict[str, list[str]] = Field(description="Every slot an answer can carry, with its values.")


class ModelInfo(BaseModel):
    name: str
    labels: list[str] = Field(description="The intents an answer can name (the refusal class is not one).")
    context: ContextInfo | None = Field(
        None,
        description="The context the model understands; null for a model trained on labelled data (the FSC models).",
    )
    can_refuse: bool = Field(description="Whether the model was trained to refuse non-commands and sounds.")
    confidence_threshold: float = Field(
        description="Below this probability the best intent is not understood "
        "(QUADS_CONFIDENCE_THRESHOLD, else the checkpoint's calibrated value)."
    )
    bits: int
    params: int = Field(description="Number of parameters.")
    file_bytes: int = Field(description="Size of the checkpoint file (packed codes).")
    memory_bytes: int = Field(
        description="Bytes of the loaded model: dequantized, its matrix weights in the compute dtype."
    )
    dims: dict[str, int] = Field(description="Architecture (ModelDims).")
    sha256: str = Field(description="Content hash stored in the checkpoint.")
    max_audio_seconds: float = Field(description="Longest clip accepted.")
    precision: str = Field(
        description="The matrix products' precision: float32, bfloat16 or int8 (QUADS_PRECISION; "
        "auto: chosen on this CPU at start)."
    )
    compute_path: str = Field(
        description="The precision and kernels chosen at start, e.g. float32-onednn or "
        "bfloat16-torch (service.compute_path)."
    )
    # The head's outputs, refusal class included, and where it is: what answers are decided on.
    _outputs: list[str] = PrivateAttr(default_factory=list)
    _refusal_index: int | None = PrivateAttr(None)
    _frames: FrameTable | None = PrivateAttr(None)

    @classmethod
    def of(cls, engine: InferenceEngine, threshold: float | None = None) -> ModelInfo:
        """The identity of the engine's model: built once when it is loaded, then served as is.
        ``threshold``: QUADS_CONFIDENCE_THRESHOLD (None: the checkpoint's)."""
        checkpoint = engine.checkpoint
        info = cls(
            name=engine.model_name,
            labels=checkpoint.intents,
            can_refuse=checkpoint.refusal_index is not None,
            confidence_threshold=checkpoint.threshold if threshold is None else threshold,
            bits=checkpoint.bits,
            params=checkpoint.n_params,
            file_bytes=checkpoint.file_bytes,
            memory_bytes=checkpoint.memory_bytes,
            dims=checkpoint.dims.to_dict(),
            sha256=checkpoint.sha256,
            max_audio_seconds=engine.max_audio_seconds,
            precision=engine.compute_dtype,
            compute_path=engine.compute_path,
        )
        if (frames := checkpoint.frames) is not None:
            info.context = ContextInfo(
                name=frames.context.get("name", ""),
                sha256=frames.context.get("sha256", ""),
                language=frames.context.get("language", ""),
                slots=frames.slot_values,
            )
        info._outputs, info._refusal_index = list(checkpoint.labels), checkpoint.refusal_index
        info._frames = checkpoint.frames
        return info

    def frame(self, label: str) -> Frame:
        """The intent and slots that the head's ``label`` answers with."""
        return self._frames.frame(label) if self._frames is not None else Frame(label)

    @property
    def outputs(self) -> list[str]:
        """Every label of the model's head, in its order (``labels`` plus the refusal class, if any)."""
        return self._outputs

    @property
    def refusal_index(self) -> int | None:
        return self._refusal_index

    @cached_property
    def summary(self) -> ModelSummary:
        """What every /intent answer says about the model."""
        return ModelSummary(name=self.name, bits=self.bits, file_bytes=self.file_bytes)


class Status(BaseModel):
    status: str = Field(examples=["ok"])
