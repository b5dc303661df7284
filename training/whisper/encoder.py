"""Import the audio encoder of a real Whisper checkpoint into ``core.model.AudioEncoder``.

Three layouts are read:

* OpenAI ``.pt`` (``{"dims": {...}, "model_state_dict": {...}}``), loaded with
  ``torch.load(weights_only=True)``, so a pickle that would run code is refused;
* a Hugging Face directory (``config.json`` + ``model.safetensors``, or a sharded
  ``model.safetensors.index.json``), keys with or without the ``model.`` prefix.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from core.model import AudioEncoder, ModelDims
from core.tensor_files import TensorFileError, read_tensors
from training.whisper.ct2 import CT2FormatError, read_ct2_encoder


class WhisperImportError(ValueError):
    """The path is not a usable OpenAI, Hugging Face or CTranslate2 Whisper checkpoint."""


_HF_RENAMES = [
    (r"^layers\.(\d+)\.self_attn\.q_proj\.", r"blocks.\1.attn.query."),
    (r"^layers\.(\d+)\.self_attn\.k_proj\.", r"blocks.\1.attn.key."),
    (r"^layers\.(\d+)\.self_attn\.v_proj\.", r"blocks.\1.attn.value."),
    (r"^layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.out."),
    (r"^layers\.(\d+)\.self_attn_layer_norm\.", r"blocks.\1.attn_ln."),
    (r"^layers\.(\d+)\.fc1\.", r"blocks.\1.mlp.0."),
    (r"^layers\.(\d+)\.fc2\.", r"blocks.\1.mlp.2."),
    (r"^layers\.(\d+)\.final_layer_norm\.", r"blocks.\1.mlp_ln."),
    (r"^layer_norm\.", "ln_post."),
    (r"^embed_positions\.weight$", "positional_embedding"),
]


def load_whisper_encoder(path: str | os.PathLike) -> AudioEncoder:
    """Read the encoder of an OpenAI ``.pt`` file, or a Hugging Face or CTranslate2 Whisper directory, in eval mode."""
    path = Path(path)
    if not path.exists():
        raise WhisperImportError(
            f"{path}: not found; expected an OpenAI Whisper .pt file, a Hugging Face directory "
            "with config.json and model.safetensors, or a CTranslate2 directory with config.json and model.bin"
        )
    if path.is_dir() and (path / "model.bin").exists() and not any(path.glob("model*.safetensors*")):
        try:
            dims, state = read_ct2_encoder(path)
        except CT2FormatError as e:
            raise WhisperImportError(str(e)) from None
    elif path.is_dir():
        dims, state = _read_hf(path)
    else:
        dims, state = _read_openai(path)
    encoder = AudioEncoder(dims)
    _load_into(encoder, state, path)
    return encoder.eval()


def _read_openai(path: Path) -> tuple[ModelDims, dict[str, Tensor]]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WhisperImportError(
            f"{path}: refused: the file holds objects other than tensors, and it is never unpickled "
            f"unsafely ({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise WhisperImportError(
            f"{path}: not a readable OpenAI Whisper .pt checkpoint, truncated or corrupt ({str(e).splitlines()[0]})"
        ) from None
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise WhisperImportError(f"{path}: expected a dict with 'dims' and 'model_state_dict' (OpenAI Whisper format)")
    d = checkpoint["dims"]
    try:
        dims = ModelDims(
            n_mels=d["n_mels"],
            n_ctx=d["n_audio_ctx"],
            n_state=d["n_audio_state"],
            n_head=d["n_audio_head"],
            n_layer=d["n_audio_layer"],
        )
    except (KeyError, TypeError) as e:
        raise WhisperImportError(f"{path}: 'dims' lacks the audio encoder's sizes ({e})") from None
    prefix = "encoder."
    state = {k[len(prefix) :]: v for k, v in checkpoint["model_state_dict"].items() if k.startswith(prefix)}
    return dims, state


def _read_hf(path: Path) -> tuple[ModelDims, dict[str, Tensor]]:
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
        dims = ModelDims(
            n_mels=config["num_mel_bins"],
            n_ctx=config["max_source_positions"],
            n_state=config["d_model"],
            n_head=config["encoder_attention_heads"],
            n_layer=config["encoder_layers"],
            n_mlp=config["encoder_ffn_dim"],
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WhisperImportError(f"{config_path}: not a readable Hugging Face Whisper config ({e!r})") from None
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    raw: dict[str, Tensor] = {}
    for name in files:
        try:
            raw.update(read_tensors(path / name)[0])
        except TensorFileError as e:
            raise WhisperImportError(str(e)) from None
    state = {}
    for key, value in raw.items():
        for prefix in ("model.encoder.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                for pattern, repl in _HF_RENAMES:
                    key = re.sub(pattern, repl, key)
                state[key] = value
                break
    return dims, state


def _load_into(encoder: AudioEncoder, state: dict[str, Tensor], path: Path) -> None:
    # Whisper keeps the positional table in its files; ours is recomputed, but copy the file's so
    # the imported encoder is exactly the one that was trained.
    positions = state.pop("positional_embedding", None)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WhisperImportError(f"{path}: encoder weights missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for key, ref in expected.items():
        if state[key].shape != ref.shape:
            raise WhisperImportError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, config says {tuple(ref.shape)}"
            )
    encoder.load_state_dict({k: state[k].float() for k in expected})
    if positions is not None:
        if positions.shape != encoder.positional_embedding.shape:
            raise WhisperImportError(f"{path}: positional table has shape {tuple(positions.shape)}")
        encoder.positional_embedding.copy_(positions.float())
