"""The log of a training run: stderr, and on rank 0 also ``<out>/train.log``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_LOG_HANDLERS: list[logging.Handler] = []


def close_logging() -> None:
    root = logging.getLogger()
    for handler in _LOG_HANDLERS:
        root.removeHandler(handler)
        handler.close()
    _LOG_HANDLERS.clear()


def setup_logging(out: Path | None, main: bool) -> None:
    """Log to stderr (unless the root logger already does), and on rank 0 also to ``<out>/train.log``;
    replaces the handlers of an earlier run."""
    close_logging()
    root = logging.getLogger()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root.setLevel(logging.INFO if main else logging.WARNING)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):  # a caller (quads-demo) may log already
        _LOG_HANDLERS.append(logging.StreamHandler(sys.stderr))
    if out is not None and main:
        _LOG_HANDLERS.append(logging.FileHandler(out / "train.log"))
    for handler in _LOG_HANDLERS:
        handler.setFormatter(fmt)
        root.addHandler(handler)
