"""Read the audio encoder of a CTranslate2 (faster-whisper) Whisper directory, without CTranslate2.

A converted model is a folder with ``config.json`` (tokenizer settings, no dims) and ``model.bin``,
whose layout is CTranslate2's ``specs/model_spec.py`` serialisation, all little-endian::

    uint32 binary version (<= 6)   string spec name ("WhisperSpec")   uint32 spec revision
    uint32 variable count, then per variable:
        string name   uint8 rank   rank x uint32 dims   uint8 dtype   uint32 byte count   bytes
    uint32 alias count, then (alias, target) string pairs
    string = uint16 length (counting a trailing NUL), then the bytes and the NUL

Only the bytes of the encoder's variables are read: the file is parsed as data and nothing in it
is ever executed. Dtypes: float32, float16, bfloat16, and int8/int16 with a ``weight_scale``
beside the weight (``float = int / scale``; int8 scales are per output row).
"""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path

import torch
from torch import Tensor

from core.model import ModelDims

MAX_BINARY_VERSION = 6
WHISPER_SPEC = "WhisperSpec"
# Whisper large has d=1280 and 32 layers; anything far past that is a corrupt or hostile header.
MAX_STATE, MAX_LAYERS, MAX_RANK = 8192, 256, 4
_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}


class CT2FormatError(ValueError):
    """``model.bin`` is not a readable CTranslate2 Whisper model; the message names the file."""


class _Reader:
    """Sequential little-endian reads over a memory map, each checked against the file's end."""

    def __init__(self, path: Path, buffer: mmap.mmap):
        self.path, self.buffer, self.offset = path, buffer, 0

    def skip(self, n: int, what: str) -> slice:
        """Step over ``n`` bytes, returning where they lie (the bytes are read only if needed)."""
        end = self.offset + n
        if end > len(self.buffer):
            raise CT2FormatError(
                f"{self.path}: truncated: {what} needs bytes {self.offset}-{end}, the file has {len(self.buffer)}"
            )
        span, self.offset = slice(self.offset, end), end
        return span

    def take(self, n: int, what: str) -> bytes:
        return self.buffer[self.skip(n, what)]

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        raw = self.take(n, what)
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: {what} at byte {self.offset - n} is not a NUL-terminated string")
        return raw[:-1].decode("utf-8", errors="replace")


def read_ct2_variables(path: Path, prefix: str = "encoder/") -> dict[str, Tensor]:
    """The variables of ``model.bin`` whose names start with ``prefix``, as tensors (copies, not views)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return _parse(_Reader(path, buffer), prefix)
    except CT2FormatError:
        raise
    except ValueError as e:  # mmap of an empty file
        raise CT2FormatError(f"{path}: not a CTranslate2 model file ({e})") from None
    except OSError as e:
        raise CT2FormatError(f"{path}: cannot be read ({e.strerror or e})") from None


def _parse(reader: _Reader, prefix: str) -> dict[str, Tensor]:
    path = reader.path
    (version,) = reader.unpack("I", "the binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise CT2FormatError(
            f"{path}: binary version {version}; expected a CTranslate2 model.bin (1-{MAX_BINARY_VERSION})"
        )
    spec = reader.string("the spec name") if version >= 2 else ""
    if spec != WHISPER_SPEC:
        raise CT2FormatError(f"{path}: a CTranslate2 {spec or 'unnamed'} model; expected a {WHISPER_SPEC} (Whisper)")
    reader.unpack("I", "the spec revision")
    (count,) = reader.unpack("I", "the variable count")
    index: dict[str, tuple[tuple[int, ...], torch.dtype, slice]] = {}
    for _ in range(count):
        name = reader.string("a variable name")
        index[name] = _variable_header(reader, name)
    # Converters store equal tensors once and name the others as aliases of it.
    aliases: dict[str, str] = {}
    if version >= 3:
        (n_aliases,) = reader.unpack("I", "the alias count")
        for _ in range(n_aliases):
            alias = reader.string("an alias name")
            aliases[alias] = reader.string(f"the target of alias {alias}")
    variables: dict[str, Tensor] = {}
    for name in [n for n in (*index, *aliases) if n.startswith(prefix)]:
        target = aliases.get(name, name)
        if target not in index:
            raise CT2FormatError(f"{path}: alias {name} points to {target}, which the file does not hold")
        shape, dtype, span = index[target]
        data = bytearray(reader.buffer[span])
        tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        variables[name[len(prefix) :]] = tensor.reshape(shape)
    return variables


def _variable_header(reader: _Reader, name: str) -> tuple[tuple[int, ...], torch.dtype, slice]:
    """Shape, dtype and (unread) bytes of the variable whose name was just read."""
    path = reader.path
    (rank,) = reader.unpack("B", f"{name}'s rank")
    if rank > MAX_RANK:
        raise CT2FormatError(f"{path}: {name} has rank {rank}; Whisper variables have at most {MAX_RANK}")
    shape = reader.unpack("I" * rank, f"{name}'s shape")
    (dtype_id,) = reader.unpack("B", f"{name}'s dtype")
    (nbytes,) = reader.unpack("I", f"{name}'s byte count")
    if dtype_id not in _DTYPES:
        raise CT2FormatError(f"{path}: {name} has unknown dtype id {dtype_id}; expected one of {sorted(_DTYPES)}")
    dtype = _DTYPES[dtype_id]
    numel = 1
    for d in shape:
        numel *= d
    if numel * dtype.itemsize != nbytes:
        raise CT2FormatError(
            f"{path}: {name} has shape {shape} of {dtype} ({numel * dtype.itemsize} bytes) but says {nbytes} bytes"
        )
    return shape, dtype, reader.skip(nbytes, f"{name}'s {nbytes} bytes of data")


def _dequantize(variables: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """float32 tensors: int weights divided by their ``weight_scale``, floats widened."""
    out = {}
    for name, value in variables.items():
        if name.endswith("weight_scale"):
            continue
        if value.dtype in (torch.int8, torch.int16) and name.endswith("weight"):
            scale = variables.get(name + "_scale")
            if scale is None:
                raise CT2FormatError(f"{path}: {name} is {value.dtype} but has no {name}_scale beside it")
            scale = scale.float().reshape(-1, *([1] * (value.dim() - 1))) if scale.numel() > 1 else scale.float()
            value = value.float() / scale
        out[name] = value.float() if value.is_floating_point() else value
    return out


def read_ct2_encoder(directory: Path) -> tuple[ModelDims, dict[str, Tensor]]:
    """Dims and an openai-whisper-named encoder state dict from a CTranslate2 Whisper directory."""
    path = directory / "model.bin"
    if not path.is_file():
        raise CT2FormatError(
            f"{directory}: no model.bin; expected a CTranslate2 Whisper directory (config.json + model.bin)"
        )
    variables = _dequantize(read_ct2_variables(path), path)
    try:
        dims = _dims(variables, path)
    except KeyError as e:
        raise CT2FormatError(f"{path}: a WhisperSpec without the encoder variable {e}") from None
    state: dict[str, Tensor] = {
        "conv1.weight": variables["conv1/weight"],
        "conv1.bias": variables["conv1/bias"],
        "conv2.weight": variables["conv2/weight"],
        "conv2.bias": variables["conv2/bias"],
        "ln_post.weight": variables["layer_norm/gamma"],
        "ln_post.bias": variables["layer_norm/beta"],
        "positional_embedding": variables["position_encodings/encodings"],
    }
    for i in range(dims.n_layer):
        src, dst = f"layer_{i}/", f"blocks.{i}."
        try:
            qkv_w = variables[src + "self_attention/linear_0/weight"]
            qkv_b = variables[src + "self_attention/linear_0/bias"]
            if qkv_w.shape[0] != 3 * dims.n_state:
                raise CT2FormatError(
                    f"{path}: {src}self_attention/linear_0 has {qkv_w.shape[0]} rows; "
                    f"a fused q,k,v projection of width {dims.n_state} has {3 * dims.n_state}"
                )
            for j, part in enumerate(("query", "key", "value")):
                state[f"{dst}attn.{part}.weight"] = qkv_w[j * dims.n_state : (j + 1) * dims.n_state]
                if part != "key":  # Whisper's key projection has no bias; CTranslate2 stores zeros there
                    state[f"{dst}attn.{part}.bias"] = qkv_b[j * dims.n_state : (j + 1) * dims.n_state]
            for ours, theirs in (
                ("attn.out", "self_attention/linear_1"),
                ("mlp.0", "ffn/linear_0"),
                ("mlp.2", "ffn/linear_1"),
            ):
                state[f"{dst}{ours}.weight"] = variables[f"{src}{theirs}/weight"]
                state[f"{dst}{ours}.bias"] = variables[f"{src}{theirs}/bias"]
            for ours, theirs in (("attn_ln", "self_attention/layer_norm"), ("mlp_ln", "ffn/layer_norm")):
                state[f"{dst}{ours}.weight"] = variables[f"{src}{theirs}/gamma"]
                state[f"{dst}{ours}.bias"] = variables[f"{src}{theirs}/beta"]
        except KeyError as e:
            raise CT2FormatError(f"{path}: encoder layer {i} lacks the variable {e}") from None
    return dims, state


def _dims(variables: dict[str, Tensor], path: Path) -> ModelDims:
    conv1 = variables["conv1/weight"]
    if conv1.dim() != 3:
        raise CT2FormatError(f"{path}: encoder/conv1/weight has shape {tuple(conv1.shape)}; expected (d, n_mels, 3)")
    n_state, n_mels = conv1.shape[:2]
    n_layer = len({name.split("/")[0] for name in variables if re.match(r"layer_\d+/", name)})
    n_ctx = variables["position_encodings/encodings"].shape[0]
    if not (1 <= n_state <= MAX_STATE and 1 <= n_layer <= MAX_LAYERS and 1 <= n_mels <= 512 and 1 <= n_ctx <= 1 << 16):
        raise CT2FormatError(
            f"{path}: encoder dims n_state={n_state}, n_layer={n_layer}, n_mels={n_mels}, n_ctx={n_ctx} "
            f"are outside what any Whisper uses (n_state <= {MAX_STATE}, n_layer <= {MAX_LAYERS})"
        )
    heads = variables.get("num_heads")
    # Every Whisper has 64-dimensional heads; older converters did not store the count.
    n_head = int(heads.item()) if heads is not None and heads.numel() == 1 else max(1, n_state // 64)
    n_mlp = variables["layer_0/ffn/linear_0/weight"].shape[0]
    try:
        return ModelDims(n_mels=n_mels, n_ctx=n_ctx, n_state=n_state, n_head=n_head, n_layer=n_layer, n_mlp=n_mlp)
    except ValueError as e:
        raise CT2FormatError(f"{path}: {e}") from None
