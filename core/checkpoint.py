"""The QUADS checkpoint format: one ``.safetensors`` file per model and bit width, never pickled.

Layout of a file (all safetensors, so loading executes nothing):

* every weight matrix (a parameter with ``dim > 1``) quantized to ``b`` bits, 1 <= b <= 8, is
  stored as ``<name>.codes`` (uint8, the b-bit cluster indices densely bit-packed, LSB first)
  and ``<name>.codebook`` (float32, 2**b centroids); at 16 bits it is stored as float16,
  at 32 bits as float32;
* biases and LayerNorms are float32; the sinusoidal positional table is recomputed from dims;
* metadata: ``format``, ``format_version``, ``dims``, ``labels``, ``bits``, ``provenance``,
  ``quantization`` (the map name -> shape/bits the loader rebuilds from), ``threshold`` (the
  refusal threshold calibrated on validation data, ``core.refusal``; absent in files of models
  that cannot refuse, read as 0), ``frames`` (``core.frames.FrameTable``: what each label means as
  an intent with slots, and the context the model was built from; absent in the FSC files, whose
  labels are their intents) and ``content_sha256``, a hash of every tensor and every other metadata field, so a tampered or
  mismatched file is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from core.codebook import Codebook, check_bits, is_quantizable, pack_codes, storage, unpack_codes
from core.frames import Frame, FrameTable
from core.model import IntentClassifier, ModelDims
from core.refusal import REFUSAL_LABEL, refusal_index
from core.tensor_files import TensorFileError, read_tensors, write_tensors

FORMAT = "quads-intent"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered, inconsistent or not in the expected format."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the float model (dequantized) plus what the file says about it."""

    model: IntentClassifier
    labels: list[str]
    bits: int
    dims: ModelDims
    provenance: dict = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None
    file_bytes: int = 0
    n_params: int = 0  # the file's parameter count (the served model may add a few: service.served_attention)
    threshold: float = 0.0  # refuse an intent whose probability is below this (core.refusal)
    frames: FrameTable | None = None  # what each label means (core.frames); None: each label is its intent

    def frame(self, label: str) -> Frame:
        """The intent and slots that ``label`` answers with."""
        return self.frames.frame(label) if self.frames is not None else Frame(label)

    @property
    def refusal_index(self) -> int | None:
        """Index of ``REFUSAL_LABEL`` among the labels; None for a model that cannot refuse."""
        return refusal_index(self.labels)

    @property
    def intents(self) -> list[str]:
        """The intents a client can be answered with (each once; never ``REFUSAL_LABEL``)."""
        labels = [label for label in self.labels if label != REFUSAL_LABEL]
        return list(dict.fromkeys(self.frame(label).intent for label in labels))

    @property
    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self._weights(), *self.model.buffers()])

    def _weights(self) -> list[Tensor]:
        """The model's parameters, including those that serving layers keep packed outside ``parameters()``."""
        from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

        tensors = list(self.model.parameters())
        for module in self.model.modules():
            if isinstance(module, HoldsPackedTensors):
                tensors += module.packed_tensors()
            elif isinstance(module, DynamicInt8Linear):  # torch's: its int8 weight is not a parameter
                tensors += [t for t in (module.weight(), module.bias()) if t is not None]
        return tensors


@runtime_checkable
class HoldsPackedTensors(Protocol):
    """A layer that a runtime swaps in for speed and that keeps its weights outside ``parameters()``
    (a kernel's packed layout): it lists them, so ``Checkpoint.memory_bytes`` counts them without
    ``core`` knowing the runtime's types."""

    def packed_tensors(self) -> list[Tensor]: ...


def _content_hash(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != "content_sha256":
            h.update(f"{key}={metadata[key]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    model: IntentClassifier,
    labels: list[str],
    bits: int,
    *,
    provenance: dict | None = None,
    codebooks: Mapping[str, Codebook] | None = None,
    threshold: float = 0.0,
    frames: FrameTable | None = None,
) -> Path:
    """Write ``model`` at ``bits`` bits and return the path written.

    At <= 8 bits each weight matrix is stored as its codebook: ``codebooks[name]`` (a
    ``KMeansQuantizer``'s own), or, when not given, read off a weight already snapped to at most
    2**bits values. The codebook must reproduce the weight exactly, so a stale one is refused.
    ``threshold``: the refusal threshold (``core.refusal``), for a model whose labels include
    ``REFUSAL_LABEL``. ``frames``: the intent and slots of every label but ``REFUSAL_LABEL``, for
    a model built from a context.
    """
    check_bits(bits)
    if len(labels) != model.head.out_features:
        raise ValueError(f"{len(labels)} labels for a head of {model.head.out_features} outputs")
    if not 0.0 <= threshold <= 1.0 or (threshold and REFUSAL_LABEL not in labels):
        raise ValueError(f"threshold {threshold}: must be in [0, 1], and above 0 only with a {REFUSAL_LABEL!r} label")
    if frames is not None:
        _check_frames(frames, labels, ValueError)
    kind = storage(bits)
    tensors: dict[str, Tensor] = {}
    qmap: dict[str, dict] = {}
    for name, t in model.state_dict().items():
        t = t.detach().float().cpu()
        if not is_quantizable(t) or kind == "float32":
            tensors[name] = t.contiguous()
        elif kind == "float16":
            tensors[name] = t.half().contiguous()
        else:
            codebook = _codebook_of(name, t, bits, codebooks)
            tensors[f"{name}.codebook"] = codebook.centroids.float().cpu().contiguous()
            tensors[f"{name}.codes"] = pack_codes(codebook.codes.cpu(), bits)
            qmap[name] = {"shape": list(t.shape), "bits": bits}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "dims": json.dumps(model.dims.to_dict()),
        "labels": json.dumps(list(labels)),
        "bits": str(bits),
        "provenance": json.dumps(provenance or {}, default=str),
        "quantization": json.dumps(qmap),
    }
    if REFUSAL_LABEL in labels:
        metadata["threshold"] = repr(float(threshold))
    if frames is not None:
        metadata["frames"] = frames.to_json()
    metadata["content_sha256"] = _content_hash(tensors, metadata)
    path = Path(path)
    write_tensors(path, tensors, metadata)
    return path


def _codebook_of(name: str, weight: Tensor, bits: int, codebooks: Mapping[str, Codebook] | None) -> Codebook:
    try:
        codebook = codebooks[name] if codebooks is not None else Codebook.of_snapped(weight, bits)
    except KeyError:
        raise ValueError(f"{name}: no codebook given for this weight matrix") from None
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    if codebook.bits != bits:
        raise ValueError(f"{name}: a {codebook.bits}-bit codebook for a {bits}-bit checkpoint")
    if not torch.equal(codebook.weight(weight.shape).cpu(), weight):
        raise ValueError(f"{name}: the codebook does not reproduce the weight (snap the model to it first)")
    return codebook


def _sniff(path: Path) -> None:
    """Refuse files that are not safetensors before any parser sees them, naming what they look like."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path}: this is a PyTorch/pickle file, not a QUADS .safetensors checkpoint; "
            "pickles are never loaded (import Whisper weights with training.whisper.load_whisper_encoder)"
        )
    raise CheckpointError(f"{path}: not a .safetensors file (no safetensors header), or truncated")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and verify a QUADS checkpoint. Raises ``CheckpointError`` with the file name and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (expected a QUADS .safetensors file)")
    _sniff(path)
    try:
        tensors, metadata = read_tensors(path)
    except TensorFileError as e:
        raise CheckpointError(str(e)) from None

    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: format version {metadata.get('format_version')!r}; this build reads version {FORMAT_VERSION}"
        )
    if metadata.get("content_sha256") != _content_hash(tensors, metadata):
        raise CheckpointError(f"{path}: content hash mismatch: the tensors or metadata were modified after saving")
    try:
        dims = ModelDims(**json.loads(metadata["dims"]))
        labels = json.loads(metadata["labels"])
        bits = int(metadata["bits"])
        qmap = json.loads(metadata["quantization"])
        provenance = json.loads(metadata.get("provenance", "{}"))
        threshold = float(metadata.get("threshold", "0"))
        frames = FrameTable.from_json(metadata["frames"]) if "frames" in metadata else None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid metadata ({e})") from None

    if frames is not None:
        _check_frames(frames, labels, CheckpointError, f"{path}: ")
    head_bias = tensors.get("head.bias")
    if head_bias is not None and head_bias.numel() != len(labels):
        raise CheckpointError(
            f"{path}: metadata lists {len(labels)} labels but the head has {head_bias.numel()} outputs"
        )
    model = IntentClassifier(dims, len(labels))
    state = _model_state(path, tensors, qmap, model.state_dict(), len(labels))
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(
        model,
        labels,
        bits,
        dims,
        provenance,
        metadata["content_sha256"],
        path,
        path.stat().st_size,
        n_params=sum(t.numel() for t in state.values()),
        threshold=threshold,
        frames=frames,
    )


def _model_state(
    path: Path, tensors: dict[str, Tensor], qmap: dict, expected: dict[str, Tensor], n_labels: int
) -> dict[str, Tensor]:
    """The float32 state dict the file describes (codebook matrices dequantized), checked name by
    name and shape by shape against the model its dims and labels build."""
    state: dict[str, Tensor] = {}
    for name, ref in expected.items():
        if name in qmap:
            state[name] = _dequantize(path, name, tensors, qmap[name], ref.shape)
        elif name in tensors:
            state[name] = tensors[name].float()
        else:
            raise CheckpointError(f"{path}: tensor {name!r} is missing")
        if state[name].shape != ref.shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}, but dims "
                f"and {n_labels} labels need {tuple(ref.shape)}"
            )
    stored = {n for n in tensors if n.rsplit(".", 1)[0] not in qmap}
    if extra := stored - set(expected):
        raise CheckpointError(f"{path}: unexpected tensors {sorted(extra)[:5]}")
    return state


def _check_frames(frames: FrameTable, labels: list[str], error: type[Exception], where: str = "") -> None:
    """Every label but the refusal class has a frame, and every frame a label."""
    answered = [label for label in labels if label != REFUSAL_LABEL]
    if missing := [label for label in answered if label not in frames.frames]:
        raise error(f"{where}labels without a frame: {missing[:5]}")
    if extra := sorted(set(frames.frames) - set(answered)):
        raise error(f"{where}frames for labels the model does not have: {extra[:5]}")


def _dequantize(path: Path, name: str, tensors: dict[str, Tensor], entry: dict, shape: torch.Size) -> Tensor:
    bits = int(entry["bits"])
    codes, codebook = tensors.get(f"{name}.codes"), tensors.get(f"{name}.codebook")
    if codes is None or codebook is None:
        raise CheckpointError(f"{path}: {name!r} is marked quantized but its codes or codebook are missing")
    if list(entry["shape"]) != list(shape) or codebook.numel() != 2**bits:
        raise CheckpointError(
            f"{path}: {name!r} quantization entry (shape {entry['shape']}, {codebook.numel()} centroids) "
            f"does not fit shape {list(shape)} at {bits} bits"
        )
    try:
        return Codebook(codebook.float(), unpack_codes(codes, bits, math.prod(shape)), bits).weight(shape)
    except ValueError as e:
        raise CheckpointError(f"{path}: {name!r}: {e}") from None
