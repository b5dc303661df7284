"""Files written whole or not at all, and safetensors files read in one place.

Every file the project writes (checkpoints, caches, training state, reports, figures) goes
through ``atomic_write``: a temporary file in the same folder, fsynced, then renamed, so a
reader or a crash never sees half a file. torch is imported only to write or read tensors, so
that the commands' ``--help`` and config checks stay fast.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:
    from torch import Tensor


class TensorFileError(ValueError):
    """A safetensors file is missing, truncated, corrupt or not safetensors at all."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # mkstemp creates 0600: readable by others, as a plain open() would be
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` and string ``metadata`` as one safetensors file, atomically."""
    from safetensors.torch import save_file  # torch loads here: writing text files needs none of it

    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_tensors(path: Path, names: Iterable[str] | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file: every tensor, or only ``names``.

    Raises ``TensorFileError`` naming the file when it cannot be read or lacks one of ``names``.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            wanted = list(f.keys()) if names is None else list(names)
            return {k: f.get_tensor(k) for k in wanted}, metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TensorFileError(
            f"{path}: not a readable .safetensors file: missing, truncated or corrupt ({e})"
        ) from None


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TensorFileError(
            f"{path}: not a readable .safetensors file: missing, truncated or corrupt ({e})"
        ) from None
