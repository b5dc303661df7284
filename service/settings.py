"""Service configuration, read from ``QUADS_*`` environment variables (pydantic-settings).

Which checkpoint is served:

* ``QUADS_MODEL`` set: that file (a relative path is relative to the working directory);
* otherwise ``<QUADS_MODEL_DIR>/<QUADS_MODEL_PREFIX>-<QUADS_BITS>bit.safetensors``, by default
  ``service/models/quads-fsc-4bit.safetensors`` inside the installed package: in a source
  checkout ``service/models`` links to the repository's ``models/``, and a built wheel carries
  the files themselves, so the default works from any working directory.

When the bit width was chosen (``QUADS_BITS`` set, or the directory rule used), the loaded file
must hold weights of that width, so a mislabelled file is a startup error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.codebook import SUPPORTED_BITS
from core.cpu_features import native_bfloat16

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_PREFIX = "quads-fsc"
MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUADS_", protected_namespaces=(), extra="ignore")

    model: Path | None = Field(None, description="Checkpoint file; overrides QUADS_MODEL_DIR/QUADS_BITS.")
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Directory searched with QUADS_BITS.")
    model_prefix: str = Field(DEFAULT_MODEL_PREFIX, description="File-name prefix in QUADS_MODEL_DIR.")
    bits: int = Field(4, description="Bit width of the checkpoint to serve from QUADS_MODEL_DIR.")

    threads: int = Field(0, ge=0, description="Torch intra-op threads; 0 = the container's CPU limit.")
    max_body_bytes: int = Field(10 * MiB, gt=0, description="Largest request body, counted while streaming.")
    body_timeout_seconds: float = Field(30.0, gt=0, description="Time allowed to upload a request body.")
    min_upload_bytes_per_second: float = Field(
        1000.0,
        ge=0,
        description="After QUADS_UPLOAD_GRACE_SECONDS, a body arriving slower than this is cut with 408; 0 = no minimum.",
    )
    upload_grace_seconds: float = Field(5.0, ge=0, description="Time before the minimum upload rate applies.")
    max_uploads: int = Field(
        512, ge=1, description="Concurrent POST /intent uploads in progress (they hold no model slot) before 503."
    )
    max_audio_seconds: float = Field(30.0, gt=0, description="Longest clip accepted (the model takes at most 30 s).")
    max_batch_size: int = Field(8, ge=1, description="Largest micro-batch; 1 disables batching.")
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long a batch waits to fill, except right after a batch of one clip; 0 = take what is queued.",
    )
    max_queue: int = Field(32, ge=1, description="Requests waiting for the model before 503 overloaded.")
    refusals_per_second: float = Field(
        100.0,
        gt=0,
        description="Pace of 503 overloaded answers; beyond it a refusal waits (up to 1 s, no CPU) for its turn.",
    )
    drain_seconds: float = Field(0.0, ge=0, description="After SIGTERM, keep serving this long while /readyz says 503.")
    shutdown_timeout_seconds: float = Field(
        20.0, gt=0, description="After the drain, how long in-flight requests may finish."
    )
    confidence_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Answer understood=false when the best intent's probability is below this; unset = the "
        "threshold calibrated on validation data and stored in the checkpoint (0 for models that cannot refuse).",
    )
    pad_to_30s: bool = Field(False, description="Pad every clip to 30 s as Whisper does (only to benchmark that cost).")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text, or one JSON object per line.")
    precision: Literal["float32", "bfloat16", "int8", "auto"] = Field(
        "auto",
        description="The encoder's matrix products: auto (the fastest correct path on this CPU, timed at start: "
        "float32, or bfloat16 where the CPU has AMX or AVX512-BF16; service.compute_path), float32 (exact), "
        "bfloat16 (probabilities move by ~1e-2), int8 (dynamic int8 linear layers).",
    )

    @field_validator("bits")
    @classmethod
    def _supported_bits(cls, bits: int) -> int:
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"QUADS_BITS must be one of {SUPPORTED_BITS}, got {bits}")
        return bits

    @field_validator("precision")
    @classmethod
    def _bfloat16_in_hardware(cls, precision: str) -> str:
        if precision == "bfloat16" and not native_bfloat16():
            raise ValueError(
                "QUADS_PRECISION=bfloat16 needs a CPU with AMX or AVX512-BF16, and this one has "
                "neither (it would be slower than float32); use float32 or auto"
            )
        return precision

    @property
    def model_path(self) -> Path:
        """The checkpoint to serve, by the rule in the module docstring."""
        if self.model is not None:
            return self.model.expanduser()
        return self.model_dir.expanduser() / f"{self.model_prefix}-{self.bits}bit.safetensors"

    @property
    def expected_bits(self) -> int | None:
        """The bit width the served file must have, or None when any width is fine."""
        if self.model is None or "bits" in self.model_fields_set:
            return self.bits
        return None


ENV_PREFIX = "QUADS_"


def env_name(field: str) -> str:
    """The environment variable of a ``Settings`` field: ``bits`` -> ``QUADS_BITS``."""
    return f"{ENV_PREFIX}{field.upper()}"


def describe_variables() -> str:
    """Every ``QUADS_*`` variable with its default and meaning, one per line (for ``--help``)."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else str(field.default)
        lines.append(f"  {env_name(name)} (default {default}): {field.description}")
    return "\n".join(lines)


def describe_errors(error: ValidationError) -> str:
    """A ``ValidationError`` of ``Settings`` as one line per bad variable, named as the user set it."""
    lines = []
    for problem in error.errors():
        where = env_name(str(problem["loc"][0])) if problem.get("loc") else ENV_PREFIX + "*"
        value = f" (got {problem['input']!r})" if "input" in problem and not isinstance(problem["input"], dict) else ""
        lines.append(f"  {where}{value}: {problem['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
