"""The one typed configuration of a training run: pydantic models, loaded from YAML plus overrides.

Precedence, lowest first: the defaults below, a YAML file (``--config run.yaml``), the explicit
command-line flags (``--strategy mct``), and ``--set section.key=value`` overrides, whose values
are parsed as YAML scalars (``--set distill.alpha=0.5``, ``--set train.bits=[32,4]``). pydantic
checks every value against its field (types, ranges, literal choices) and refuses unknown keys;
``Config.check`` adds the rules that span fields. The resolved configuration is saved as
``config.yaml`` next to the run's outputs, and ``--resume`` reads it back from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.codebook import SUPPORTED_BITS, storage
from core.tensor_files import atomic_write

# The paper's 20 epochs (reference notes, section 1): distillation in epochs 1-3 and 7-12,
# quantization in 4-6 and 13-20.
PAPER_SCHEDULE = "DDDQQQDDDDDDQQQQQQQQ"


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the key."""


class Section(BaseModel):
    """A section of the config: unknown keys are errors; a number may stand for a string."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class DataConfig(Section):
    root: str = ""  # an FSC root, a SLURP root, a manifest file, or a folder of {split}.csv/.jsonl manifests
    # The context the corpus was synthesised from (a path, or a name in contexts/): its frames (each
    # label's intent and slots, core.frames) go into every checkpoint, so the service answers with slots.
    context: str = ""
    train_split: str = "train"
    valid_split: str = "valid"  # SLURP's "devel" is found under this name too
    test_split: str = "test"
    slurp_headset: bool = True  # SLURP: keep the close-talk *-headset.flac recordings
    slurp_synthetic: bool = False  # SLURP: add train_synthetic.jsonl to the train split
    n_mels: int = Field(80, ge=1)
    pad_to_30s: bool = False  # the paper's 30-s zero padding; off: clips run at their real length
    max_seconds: float = Field(30.0, gt=0)
    on_error: Literal["skip", "raise"] = (
        "skip"  # a bad sample (unreadable, missing, unknown label): "skip" (reported) or "raise"
    )
    augment: bool = True  # train split only
    feature_cache: str = ""  # folder for cached log-mels; "" computes them every epoch
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)


class StudentConfig(Section):
    # "random", "whisper:<path>" (OpenAI .pt or Hugging Face folder) or "teacher-layers"
    init: str = "random"
    preset: Literal["tiny", "base"] = "tiny"  # "tiny" or "base" (Whisper's encoder sizes); the fields below override it
    n_state: int = 0
    n_head: int = 0
    n_layer: int = 0
    n_mlp: int = 0
    # "teacher": start from the teacher's head when it has the student's labels and fits its width
    # (equal widths, or through the learned projection); "random" (also the fallback) otherwise.
    head: Literal["teacher", "random"] = "teacher"

    @field_validator("init")
    @classmethod
    def _known_init(cls, init: str) -> str:
        if init in ("random", "teacher-layers") or init.startswith("whisper:"):
            return init
        raise ValueError(f"student.init must be random, whisper:<path> or teacher-layers, got {init!r}")


class TeacherConfig(Section):
    path: str = ""  # OpenAI .pt, Hugging Face folder, or a QUADS .safetensors checkpoint
    cache: bool = True  # run the teacher once per dataset and keep its embeddings on disk
    cache_dir: str = "~/.cache/quads/teacher-embeddings"
    batch_size: int = Field(16, ge=1)


class DistillConfig(Section):
    alpha: float = Field(0.5, ge=0, le=1)  # L = alpha * L1(teacher, student) + (1 - alpha) * CE
    width_match: Literal["maxpool", "projection"] = (
        "maxpool"  # "maxpool": the paper's channel max-pool of the teacher; "projection": learned student->teacher
    )
    lr_encoder: float = 1e-5  # Adam; the authors' code uses 1e-5 (the paper says 1e-6) from a pre-trained init
    lr_head: float = 1e-3
    # D and F phases: linear warm-up of both learning rates over this many steps at the start of
    # each phase (0 = none), an optional cosine decay to 0 at the phase's end, and gradient-norm
    # clipping (0 = none). They help a random init.
    warmup_steps: int = 0
    decay: bool = False
    grad_clip: float = 0.0
    # Logit distillation beside the L1 on embeddings: + kl_weight * T^2 * KL(teacher || student) at
    # temperature T. Needs a QUADS teacher whose head has the student's labels.
    kl_weight: float = Field(0.0, ge=0)
    temperature: float = Field(2.0, gt=0)


class QuantConfig(Section):
    lr: float = 0.01  # SGD with momentum and a cosine schedule over each quantization phase
    momentum: float = 0.9
    centroid_weight: float = 1.0  # L = centroid_weight * L_centroid + CE
    kmeans_iters: int = 50
    # How centroids learn (training.quantize): "sum", eq. 4 (each centroid's gradient is the sum of
    # its weights', stepped at centroid_lr by the same SGD), or "mean" (the authors' code: step the
    # weights at lr, then each centroid becomes its cluster's mean).
    centroid_update: Literal["sum", "mean"] = "mean"
    centroid_lr: float = Field(1e-5, gt=0)
    # "refit": k-means again at the start of every Q phase; "fixed": the assignments of a branch's
    # first Q phase are kept (the authors' code), centroids re-estimated from the current weights.
    labels: Literal["refit", "fixed"] = "refit"
    # What a Q phase trains. "centroids": only the codebooks, by centroid_update's rule (the paper).
    # "ste": latent float weights behind the snapped ones, stepped with straight-through gradients
    # (the snap's gradient taken as 1), every weight re-assigned to its nearest centroid every
    # reassign_every steps and the centroids re-estimated as their clusters' means, so a weight
    # can change cluster (TF Model Optimization's clustering after its PR 519).
    method: Literal["centroids", "ste"] = "centroids"
    reassign_every: int = Field(1, ge=1)
    # How a Q phase's k-means weighs the weights: "plain", or "sensitivity": by the squared gradient
    # of the cross-entropy over calibration_batches training batches (SqueezeLLM, coremltools' SKM).
    codebook_fit: Literal["plain", "sensitivity"] = "plain"
    calibration_batches: int = Field(25, ge=1)


class TrainConfig(Section):
    strategy: Literal["finetune", "distill", "qad", "mct"] = (
        "mct"  # finetune | distill | qad | mct (see docs/training.md)
    )
    bits: list[int] = Field(default_factory=lambda: [32, 16, 8, 4], min_length=1)
    schedule: str = PAPER_SCHEDULE  # one letter per epoch: D = distillation, Q = quantization
    seed: int = 0
    out: str = "runs/quads"
    name: str = "quads-fsc"  # checkpoints are <out>/<name>-<bits>bit.safetensors
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # "bfloat16": mixed-precision training (the forward's matrix products in bfloat16; weights,
    # gradients and optimizer state float32). About 2x faster per epoch on CPUs with AMX or
    # AVX512-BF16, slower than float32 elsewhere. Evaluation and exported files stay float32.
    autocast: Literal["none", "bfloat16"] = "none"
    progress: bool = True  # tqdm bars
    eval_every_epoch: bool = True
    # MCT only: the float branch also writes k-means copies of itself at these widths
    # (<name>-ptq-<bits>bit.safetensors): post-training quantization of the distilled model.
    post_hoc_bits: list[int] = Field(default_factory=list)

    @field_validator("bits", mode="before")
    @classmethod
    def _bits_from_text(cls, bits):
        """``"32,4"`` (a flag) and ``4`` (a YAML scalar) mean ``[32, 4]`` and ``[4]``."""
        if isinstance(bits, str):
            return [int(b) if b.strip().isdigit() else b.strip() for b in bits.strip("[] ").split(",") if b.strip()]
        return [bits] if isinstance(bits, int) else bits

    @field_validator("bits")
    @classmethod
    def _supported_bits(cls, bits: list[int]) -> list[int]:
        if bad := [b for b in bits if b not in SUPPORTED_BITS]:
            raise ValueError(f"{bad} not supported; choose from {list(SUPPORTED_BITS)}")
        if len(set(bits)) != len(bits):
            raise ValueError(f"duplicates in {bits}")
        return bits


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def check(self) -> Config:
        """Check the rules that span fields (each field checked itself when loaded); returns self."""
        t = self.train
        if t.strategy in ("finetune", "distill") and (codebook := [b for b in t.bits if storage(b) == "codebook"]):
            raise ConfigError(
                f"--strategy {t.strategy} trains a float model and emits 32/16-bit checkpoints only; "
                f"for {codebook} bits use --strategy qad (k-means after training) or mct"
            )
        if t.post_hoc_bits and (t.strategy != "mct" or not [b for b in t.bits if storage(b) != "codebook"]):
            raise ConfigError(
                "train.post_hoc_bits quantizes MCT's float branch: use --strategy mct with 32 or 16 in --bits"
            )
        if bad := [b for b in t.post_hoc_bits if storage(b) != "codebook"]:
            raise ConfigError(f"train.post_hoc_bits: {bad} are not codebook widths (1..8)")
        if self.quant.method == "ste" and self.quant.centroid_update == "sum":
            raise ConfigError(
                "quant.method=ste steps the weights and re-estimates the centroids as cluster means; "
                "quant.centroid_update=sum (eq. 4) steps the centroids instead: use one or the other"
            )
        if not self.data.root:
            raise ConfigError("data.root is not set: give --data DIR (an FSC or SLURP root, or a manifest)")
        if t.strategy != "finetune" and not self.teacher.path:
            raise ConfigError(f"--strategy {t.strategy} distils from a teacher: give --teacher PATH")
        if self.student.init == "teacher-layers" and not self.teacher.path:
            raise ConfigError("student.init=teacher-layers copies layers of the teacher: give --teacher PATH")
        from training.schedule import (
            parse_pattern,  # late import: schedule imports this module's constants
        )

        try:
            parse_pattern(t.schedule, t.strategy)
        except ValueError as e:
            raise ConfigError(f"train.schedule: {e}") from None
        return self


# ------------------------------------------------------------------------------ loading


def _merged(base: dict, update: Any) -> Any:
    """``update`` laid over ``base``, section by section (anything but two mappings: ``update`` wins)."""
    if not (isinstance(base, dict) and isinstance(update, dict)):
        return update
    return {**base, **{key: _merged(base.get(key), value) for key, value in update.items()}}


def _config_error(e: ValidationError, where: str) -> ConfigError:
    """One line per problem, each naming its dotted key; an unknown key lists the known ones."""
    lines = []
    for error in e.errors():
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            section: Any = Config
            for part in error["loc"][:-1]:
                section = section.model_fields[part].annotation
            known = ", ".join(section.model_fields)
            lines.append(f"unknown config key {key!r}; known keys here: {known}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {message} (got {error['input']!r})")
    return ConfigError(f"{where}: " + "; ".join(lines) if where else "; ".join(lines))


def load_config(path: str | os.PathLike | None = None, updates: list[dict] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then each dict of ``updates`` in order."""
    merged: Any = Config().model_dump()
    where = ""
    if path:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        merged, where = _merged(merged, data), str(path)
    for update in updates:
        merged = _merged(merged, update)
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise _config_error(e, where) from None


def parse_override(text: str) -> dict:
    """``"distill.alpha=0.5"`` -> ``{"distill": {"alpha": 0.5}}`` (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the key must be section.key, e.g. distill.alpha")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return {parts[0]: {parts[1]: value}}


def save_config(config: Config, path: str | os.PathLike) -> Path:
    """Write ``config`` as YAML, atomically."""
    path = Path(path)
    text = yaml.safe_dump(config.model_dump(), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out = []
    da, db = a.model_dump(), b.model_dump()
    for section in da:
        for key in da[section]:
            if da[section][key] != db[section][key]:
                out.append(f"{section}.{key}")
    return out
