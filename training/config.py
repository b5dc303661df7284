"""The one typed configuration of a training run: dataclasses, loaded from YAML plus overrides.

Precedence, lowest first: the defaults below, a YAML file (``--config run.yaml``), the explicit
command-line flags (``--strategy mct``), and ``--set section.key=value`` overrides, whose values
are parsed as YAML scalars (``--set distill.alpha=0.5``, ``--set train.bits=[32,4]``). Every value
is checked against the field's type, and unknown keys are refused with the list of known ones.
The resolved configuration is saved as ``config.yaml`` next to the run's outputs, and
``--resume`` reads it back from there.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import yaml

from core.codebook import SUPPORTED_BITS
from core.tensor_files import atomic_write

# The paper's 20 epochs (reference notes, section 1): distillation in epochs 1-3 and 7-12,
# quantization in 4-6 and 13-20.
PAPER_SCHEDULE = "DDDQQQDDDDDDQQQQQQQQ"
STRATEGIES = ("finetune", "distill", "qad", "mct")
WIDTH_MATCHES = ("maxpool", "projection")


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the key."""


@dataclass
class DataConfig:
    root: str = ""  # an FSC root, a SLURP root, a manifest file, or a folder of {split}.csv/.jsonl manifests
    train_split: str = "train"
    valid_split: str = "valid"  # SLURP's "devel" is found under this name too
    test_split: str = "test"
    slurp_headset: bool = True  # SLURP: keep the close-talk *-headset.flac recordings
    slurp_synthetic: bool = False  # SLURP: add train_synthetic.jsonl to the train split
    n_mels: int = 80
    pad_to_30s: bool = False  # the paper's 30-s zero padding; off: clips run at their real length
    max_seconds: float = 30.0
    on_error: str = "skip"  # a bad sample (unreadable, missing, unknown label): "skip" (reported) or "raise"
    augment: bool = True  # train split only
    feature_cache: str = ""  # folder for cached log-mels; "" computes them every epoch
    batch_size: int = 16
    num_workers: int = 0


@dataclass
class StudentConfig:
    # "random", "whisper:<path>" (OpenAI .pt or Hugging Face folder) or "teacher-layers"
    init: str = "random"
    preset: str = "tiny"  # "tiny" or "base" (Whisper's encoder sizes); the fields below override it
    n_state: int = 0
    n_head: int = 0
    n_layer: int = 0
    n_mlp: int = 0


@dataclass
class TeacherConfig:
    path: str = ""  # OpenAI .pt, Hugging Face folder, or a QUADS .safetensors checkpoint
    cache: bool = True  # run the teacher once per dataset and keep its embeddings on disk
    cache_dir: str = "~/.cache/quads/teacher-embeddings"
    batch_size: int = 16


@dataclass
class DistillConfig:
    alpha: float = 0.5  # L = alpha * L1(teacher, student) + (1 - alpha) * CE
    width_match: str = "maxpool"  # "maxpool": the paper's channel max-pool of the teacher; "projection": learned student->teacher
    lr_encoder: float = 1e-5  # Adam; the authors' code uses 1e-5 (the paper says 1e-6) from a pre-trained init
    lr_head: float = 1e-3
    # D and F phases: linear warm-up of both learning rates over this many steps at the start of
    # each phase (0 = none), an optional cosine decay to 0 at the phase's end, and gradient-norm
    # clipping (0 = none). They help a random init.
    warmup_steps: int = 0
    decay: bool = False
    grad_clip: float = 0.0


@dataclass
class QuantConfig:
    lr: float = 0.01  # SGD with momentum and a cosine schedule over each quantization phase
    momentum: float = 0.9
    centroid_weight: float = 1.0  # L = centroid_weight * L_centroid + CE
    kmeans_iters: int = 50


@dataclass
class TrainConfig:
    strategy: str = "mct"  # finetune | distill | qad | mct (see docs/training.md)
    bits: list[int] = field(default_factory=lambda: [32, 16, 8, 4])
    schedule: str = PAPER_SCHEDULE  # one letter per epoch: D = distillation, Q = quantization
    seed: int = 0
    out: str = "runs/quads"
    name: str = "quads-fsc"  # checkpoints are <out>/<name>-<bits>bit.safetensors
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    progress: bool = True  # tqdm bars
    eval_every_epoch: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "Config":
        """Check the cross-field rules; returns self. Raises ``ConfigError``."""
        t = self.train
        if t.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {t.strategy!r}")
        if not t.bits:
            raise ConfigError("train.bits is empty; give at least one of 1..8, 16, 32")
        bad = [b for b in t.bits if b not in SUPPORTED_BITS]
        if bad:
            raise ConfigError(f"train.bits: {bad} not supported; choose from {list(SUPPORTED_BITS)}")
        if len(set(t.bits)) != len(t.bits):
            raise ConfigError(f"train.bits has duplicates: {t.bits}")
        if t.strategy in ("finetune", "distill") and any(b <= 8 for b in t.bits):
            raise ConfigError(
                f"--strategy {t.strategy} trains a float model and emits 32/16-bit checkpoints only; "
                f"for {[b for b in t.bits if b <= 8]} bits use --strategy qad (k-means after training) or mct"
            )
        if not self.data.root:
            raise ConfigError("data.root is not set: give --data DIR (an FSC or SLURP root, or a manifest)")
        if t.strategy != "finetune" and not self.teacher.path:
            raise ConfigError(f"--strategy {t.strategy} distils from a teacher: give --teacher PATH")
        if self.student.init == "teacher-layers" and not self.teacher.path:
            raise ConfigError("student.init=teacher-layers copies layers of the teacher: give --teacher PATH")
        if not (self.student.init in ("random", "teacher-layers") or self.student.init.startswith("whisper:")):
            raise ConfigError(
                f"student.init must be random, whisper:<path> or teacher-layers, got {self.student.init!r}"
            )
        if self.distill.width_match not in WIDTH_MATCHES:
            raise ConfigError(f"distill.width_match must be one of {WIDTH_MATCHES}, got {self.distill.width_match!r}")
        if not 0.0 <= self.distill.alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be in [0, 1], got {self.distill.alpha}")
        if self.data.on_error not in ("skip", "raise"):
            raise ConfigError(f"data.on_error must be skip or raise, got {self.data.on_error!r}")
        if self.data.batch_size < 1 or self.teacher.batch_size < 1:
            raise ConfigError("batch sizes must be >= 1")
        from training.schedule import parse_pattern  # late import: schedule imports this module's constants

        try:
            parse_pattern(t.schedule, t.strategy)
        except ValueError as e:
            raise ConfigError(f"train.schedule: {e}") from None
        return self


# ------------------------------------------------------------------------------ loading


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(key: str, value, tp):
    """``value`` checked (and gently converted: int -> float, "1,2" -> [1, 2]) against type ``tp``."""
    if _is_optional(tp):
        if value is None:
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            value = [yaml.safe_load(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-5" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _merge(obj, updates: dict, prefix: str = ""):
    """A copy of dataclass ``obj`` with ``updates`` (a nested dict) applied and type-checked."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    changes = {}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown config key {path!r}; known keys here: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        if is_dataclass(current):
            changes[key] = _merge(current, value, f"{path}.")
        else:
            changes[key] = _coerce(path, value, hints[key])
    return replace(obj, **changes)


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


def load_config(path: str | os.PathLike | None = None, updates: list[dict] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then each dict of ``updates`` in order."""
    config = Config()
    if path:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        config = _merge(config, data)
    for update in updates:
        config = _merge(config, update)
    return config


def save_config(config: Config, path: str | os.PathLike) -> Path:
    """Write ``config`` as YAML, atomically."""
    path = Path(path)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out = []
    da, db = a.to_dict(), b.to_dict()
    for section in da:
        for key in da[section]:
            if da[section][key] != db[section][key]:
                out.append(f"{section}.{key}")
    return out
