"""How every benchmark publishes its Markdown report: to stdout, and atomically to ``--out`` if given."""

from __future__ import annotations

from pathlib import Path

from core.tensor_files import atomic_write


def publish(text: str, out: Path | None) -> None:
    print(text)
    if out is not None:
        atomic_write(out, lambda path: path.write_text(text))
