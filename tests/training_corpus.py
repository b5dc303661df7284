"""A tiny synthetic spoken-command corpus (espeak-ng, FSC layout) shared by the training tests.

Four acoustically distinct intents, 8 training voices and unseen validation/test voices, clean
speech: small enough to synthesise in seconds, and learnable in a few CPU epochs. It is made
once per pytest session (under the session's base temp folder) and reused by every test file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from core.checkpoint import save_checkpoint
from core.model import AudioEncoder, IntentClassifier, ModelDims
from training.context import load_context
from training.corpus.espeak_voices import default_voices
from training.corpus.synth import CorpusRecipe, synthesize_corpus

INTENTS = ["change language_none_none", "activate_music_none", "increase_volume_none", "bring_newspaper_none"]
CONTEXT = Path(__file__).resolve().parent / "contexts" / "four-commands.yaml"  # INTENTS, one sentence each
VOICES = {"train": 8, "valid": 2, "test": 3}
REPO = Path(__file__).resolve().parents[1]


def tiny_corpus(tmp_path_factory) -> Path:
    """The shared corpus: 64 train, 16 valid, 24 test clips of 4 intents (made on first use)."""
    root = tmp_path_factory.getbasetemp() / "quads-tiny-corpus"
    if not (root / "data" / "test_data.csv").is_file():  # the CSVs are written last
        synthesize_corpus(
            root,
            CorpusRecipe(
                context=load_context(CONTEXT),
                voices=default_voices(VOICES, seed=1),
                utterances_per_voice=2,
                seed=1,
                noise=False,
            ),
            workers=2,
            progress=False,
        )
    return root


def random_teacher(path: Path, n_state: int = 96, n_layer: int = 2, n_labels: int = 4, seed: int = 0) -> Path:
    """A randomly initialised QUADS checkpoint, to serve as a (weak but real) teacher."""
    torch.manual_seed(seed)
    model = IntentClassifier(ModelDims(n_mels=80, n_ctx=1500, n_state=n_state, n_head=2, n_layer=n_layer), n_labels)
    return save_checkpoint(path, model, [f"label{i}" for i in range(n_labels)], 32)


def tiny_student_args(n_state: int = 64, n_layer: int = 1) -> list[str]:
    return ["--set", f"student.n_state={n_state}", "--set", "student.n_head=2", "--set", f"student.n_layer={n_layer}"]


def run_cli(module: str, args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in the repository, one torch thread, output captured."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def write_openai_checkpoint(path, dims: ModelDims, seed=0):
    """A Whisper-format .pt (dims + model_state_dict with encoder.* keys), tensors only."""
    torch.manual_seed(seed)
    encoder = AudioEncoder(dims)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["encoder.positional_embedding"] = encoder.positional_embedding.clone()
    torch.save(
        {
            "dims": {
                "n_mels": dims.n_mels,
                "n_audio_ctx": dims.n_ctx,
                "n_audio_state": dims.n_state,
                "n_audio_head": dims.n_head,
                "n_audio_layer": dims.n_layer,
            },
            "model_state_dict": state,
        },
        path,
    )
    return encoder
