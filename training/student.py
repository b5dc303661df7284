"""The student: its size, and how its encoder is initialised.

``student.init`` selects the starting weights:

* ``random``: PyTorch's default initialisation, seeded;
* ``whisper:<path>``: a pre-trained Whisper encoder (OpenAI ``.pt``, Hugging Face or CTranslate2
  folder), the paper's choice; the student's dims must equal the checkpoint's, except that a
  student with fewer layers takes evenly spaced blocks of it, as ``teacher-layers`` does;
* ``teacher-layers``: the teacher's convolutions and final LayerNorm plus ``n_layer`` of its blocks
  at evenly spaced depths, ``linspace(0, L-1, n_layer)`` (the DistilBART / distil-whisper recipe);
  needs the teacher's width, heads, MLP width and mel bins.

The classification head starts random, or (``student.head: teacher``) from the head of a QUADS
teacher with the same labels: ``copy_teacher_head``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from core.model import (
    WHISPER_BASE,
    WHISPER_TINY,
    AudioEncoder,
    IntentClassifier,
    ModelDims,
)
from training.config import StudentConfig
from training.teacher import Teacher
from training.whisper import load_whisper_encoder

log = logging.getLogger(__name__)

PRESETS = {"tiny": WHISPER_TINY, "base": WHISPER_BASE}
_COMPARED = ("n_mels", "n_state", "n_head", "n_layer", "n_mlp")


class StudentInitError(ValueError):
    """The requested initialisation does not fit the student's dims. The message says what to change."""


def student_dims(cfg: StudentConfig, n_mels: int) -> ModelDims:
    """The preset's dims with any non-zero ``n_*`` field of ``cfg`` replacing it, at ``n_mels`` mel bins."""
    if cfg.preset not in PRESETS:
        raise StudentInitError(f"student.preset must be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
    base = PRESETS[cfg.preset]
    n_state = cfg.n_state or base.n_state
    return ModelDims(
        n_mels=n_mels,
        n_ctx=base.n_ctx,
        n_state=n_state,
        n_head=cfg.n_head or base.n_head,
        n_layer=cfg.n_layer or base.n_layer,
        # An overridden width without an MLP width gets Whisper's 4x, not the preset's MLP width.
        n_mlp=cfg.n_mlp or (base.n_mlp if n_state == base.n_state else 4 * n_state),
    )


def _describe(dims: ModelDims, keys=_COMPARED) -> str:
    return ", ".join(f"{k}={getattr(dims, k)}" for k in keys)


def teacher_layer_indices(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher blocks for ``n_student`` student blocks: round(linspace(0, L-1, n))."""
    if not 1 <= n_student <= n_teacher:
        raise StudentInitError(f"cannot pick {n_student} of the teacher's {n_teacher} layers")
    return torch.linspace(0, n_teacher - 1, n_student).round().long().tolist()


def copy_teacher_layers(student: AudioEncoder, teacher: AudioEncoder) -> list[int]:
    """Copy the teacher's convs, final LayerNorm and evenly spaced blocks into ``student``; returns the block indices."""
    s, t = student.dims, teacher.dims
    differing = [k for k in ("n_mels", "n_state", "n_head", "n_mlp") if getattr(s, k) != getattr(t, k)]
    if differing:
        raise StudentInitError(
            "student.init=teacher-layers needs the teacher's width: the student has "
            f"{_describe(s, differing)}, the teacher {_describe(t, differing)}; set the student's "
            "n_state/n_head/n_mlp to the teacher's, or use student.init=random or whisper:<path>"
        )
    indices = teacher_layer_indices(t.n_layer, s.n_layer)
    with torch.no_grad():
        for name in ("conv1", "conv2", "ln_post"):
            getattr(student, name).load_state_dict(getattr(teacher, name).state_dict())
        for i, j in enumerate(indices):
            student.blocks[i].load_state_dict(teacher.blocks[j].state_dict())
        _copy_positions(student, teacher)
    return indices


def _copy_positions(student: AudioEncoder, source: AudioEncoder) -> None:
    # The table is recomputed from dims (not saved in checkpoints), but a Whisper file carries
    # its own; copy the rows both have so the start is exactly the source's.
    n = min(student.positional_embedding.shape[0], source.positional_embedding.shape[0])
    student.positional_embedding[:n].copy_(source.positional_embedding[:n])


def init_student(
    cfg: StudentConfig, dims: ModelDims, n_labels: int, *, teacher_encoder: AudioEncoder | None = None, seed: int = 0
) -> IntentClassifier:
    """A new student classifier initialised as ``cfg.init`` says."""
    torch.manual_seed(seed)
    model = IntentClassifier(dims, n_labels)
    if cfg.init == "random":
        log.info("student: random init, %s", _describe(dims))
    elif cfg.init.startswith("whisper:"):
        path = Path(cfg.init.removeprefix("whisper:")).expanduser()
        encoder = load_whisper_encoder(path)
        differing = [k for k in _COMPARED if getattr(encoder.dims, k) != getattr(dims, k)]
        if differing == ["n_layer"] and dims.n_layer < encoder.dims.n_layer:
            indices = copy_teacher_layers(model.encoder, encoder)  # a shallower student: evenly spaced blocks
            log.info(
                "student: Whisper checkpoint %s, blocks %s of %d (%s)",
                path,
                indices,
                encoder.dims.n_layer,
                _describe(dims),
            )
            return model
        if differing:
            matching = [
                name
                for name, p in PRESETS.items()
                if all(getattr(p, k) == getattr(encoder.dims, k) for k in _COMPARED if k != "n_mels")
            ]
            hint = (
                f"--set student.preset={matching[0]}"
                if matching
                else "set student.n_state/n_head/n_layer/n_mlp to the checkpoint's"
            )
            raise StudentInitError(
                f"student.init={cfg.init}: the student's dims ({_describe(dims, differing)}) differ from the "
                f"Whisper checkpoint's ({_describe(encoder.dims, differing)}); {hint}"
                + (f" and data.n_mels={encoder.dims.n_mels}" if "n_mels" in differing else "")
            )
        model.encoder.load_state_dict(encoder.state_dict())
        with torch.no_grad():
            _copy_positions(model.encoder, encoder)
        log.info("student: encoder initialised from Whisper checkpoint %s (%s)", path, _describe(dims))
    elif cfg.init == "teacher-layers":
        if teacher_encoder is None:
            raise StudentInitError("student.init=teacher-layers needs a teacher (--teacher PATH)")
        indices = copy_teacher_layers(model.encoder, teacher_encoder)
        log.info("student: teacher blocks %s copied into %d layers (%s)", indices, dims.n_layer, _describe(dims))
    else:
        raise StudentInitError(f"student.init must be random, whisper:<path> or teacher-layers, got {cfg.init!r}")
    return model


@torch.no_grad()
def copy_teacher_head(
    model: IntentClassifier, teacher: Teacher | None, labels: list[str], projection: torch.nn.Linear | None = None
) -> str:
    """Start ``model``'s head from the teacher's when the teacher has one over the same labels,
    its rows put in the student's label order. At equal widths it is copied; otherwise it is
    composed with the learned width projection (head(P e + p) = (W P) e + (W p + b)). Returns
    what was done, for the log."""
    order = teacher.label_order(labels) if teacher is not None else None
    if order is None:
        return "random: the teacher has no head over the student's labels"
    weight, bias = teacher.head.weight[order], teacher.head.bias[order]
    if weight.shape[1] == model.head.in_features:
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
        return "the teacher's head"
    if projection is not None and projection.out_features == weight.shape[1]:
        model.head.weight.copy_(weight @ projection.weight)
        model.head.bias.copy_(weight @ projection.bias + bias)
        return "the teacher's head through the width projection"
    return (
        f"random: the teacher's head reads width {weight.shape[1]}, the student's {model.head.in_features}, "
        "and the max-pool width match has no inverse (distill.width_match=projection composes them)"
    )
