"""The frozen teacher encoder and the on-disk cache of its embeddings.

A teacher is read from an OpenAI Whisper ``.pt`` file or a Hugging Face Whisper folder
(``training.whisper.load_whisper_encoder``), or from a QUADS ``.safetensors`` checkpoint trained
here (``core.checkpoint.load_checkpoint``; e.g. a classifier fine-tuned with
``quads-train --strategy finetune``). Either way only its encoder is used, frozen.

The teacher is by far the largest network in a run (Whisper large: 32 layers of width 1280), and
its input never changes between epochs, so ``TeacherCache`` runs it once per dataset and keeps
its targets on disk (``TeacherTargets``: pooled embeddings, and the logits of a QUADS teacher
whose labels are the student's), keyed by the teacher's weights and the data. Every distillation
epoch and every later run with the same teacher and data reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from core.checkpoint import FORMAT, load_checkpoint
from core.model import AudioEncoder, ModelDims, masked_mean
from core.tensor_files import (
    TensorFileError,
    read_metadata,
    read_tensors,
    write_tensors,
)
from training.features import MelDataset, collate
from training.whisper import load_whisper_encoder

log = logging.getLogger(__name__)

CACHE_VERSION = 2


@dataclass
class TeacherTargets:
    """What distillation compares the student with, per clip: the teacher's pooled embeddings
    (N, C) and, from a teacher with a head over the student's labels, its logits (N, n_labels)
    in the student's label order."""

    embeddings: Tensor
    logits: Tensor | None = None

    def __getitem__(self, index) -> TeacherTargets:
        return TeacherTargets(self.embeddings[index], None if self.logits is None else self.logits[index])

    def to(self, device) -> TeacherTargets:
        return TeacherTargets(self.embeddings.to(device), None if self.logits is None else self.logits.to(device))


@dataclass
class Teacher:
    """A frozen encoder; ``sha256`` identifies its weights (part of the cache key). A QUADS
    checkpoint also brings its classification ``head`` and ``labels``."""

    encoder: AudioEncoder
    source: Path
    sha256: str
    kind: str  # "whisper" or "quads"
    head: nn.Linear | None = None
    labels: list[str] | None = None

    def label_order(self, labels: list[str]) -> list[int] | None:
        """For each of ``labels``, its row in the teacher's head; None if the label sets differ."""
        if self.head is None or self.labels is None or sorted(self.labels) != sorted(labels):
            return None
        return [self.labels.index(label) for label in labels]

    @property
    def dims(self) -> ModelDims:
        return self.encoder.dims

    @property
    def width(self) -> int:
        return self.encoder.dims.n_state

    @torch.no_grad()
    def targets(
        self,
        mel: Tensor,
        lengths: Tensor | None,
        frame_pool: nn.Module | None = None,
        label_order: list[int] | None = None,
    ) -> TeacherTargets:
        """Targets of mel (B, n_mels, T): the embedding is ``frame_pool`` on each frame, then the
        masked time mean (B, C); with ``label_order``, also the head's logits (B, n_labels).

        The paper max-pools the teacher's frames along channels before the time mean, so a pool
        is applied per frame here, not to the mean; the head sees the unpooled mean, as in training.
        """
        frames, mask = self.encoder(mel, lengths)
        pooled = masked_mean(frame_pool(frames) if frame_pool is not None else frames, mask)
        logits = None
        if label_order is not None:
            logits = self.head(masked_mean(frames, mask))[:, label_order]
        return TeacherTargets(pooled, logits)

    def to(self, device) -> Teacher:
        self.encoder.to(device)
        if self.head is not None:
            self.head.to(device)
        return self


def _is_quads_checkpoint(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return read_metadata(path).get("format") == FORMAT
    except TensorFileError:
        return False


def files_sha256(paths: list[Path]) -> str:
    """SHA-256 over the contents of ``paths`` (in the given order), streamed."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def load_teacher(path: str | Path) -> Teacher:
    """The frozen encoder of a Whisper checkpoint (``.pt`` / HF folder) or a QUADS checkpoint."""
    path = Path(path).expanduser()
    if _is_quads_checkpoint(path):
        checkpoint = load_checkpoint(path)
        encoder, sha, kind = checkpoint.model.encoder, checkpoint.sha256, "quads"
        head, labels = checkpoint.model.head.requires_grad_(False), checkpoint.labels
    else:
        head, labels = None, None
        encoder = load_whisper_encoder(path)  # raises WhisperImportError with the reason
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors"))
        sha, kind = files_sha256(files), "whisper"
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    log.info(
        "teacher: %s encoder from %s (%d layers, width %d, %d mel bins)",
        kind,
        path,
        encoder.dims.n_layer,
        encoder.dims.n_state,
        encoder.dims.n_mels,
    )
    return Teacher(encoder, path, sha, kind, head, labels)


class TeacherCache:
    """Pooled teacher embeddings on disk, one ``.safetensors`` file per (teacher, data, pooling).

    The key is sha256 of the teacher's weights, the dataset's fingerprint (every sample's path,
    size, mtime and label, and the feature settings), the teacher's mel bins and the pooling.
    Files are written atomically, so a killed run leaves either no file or a complete one.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()

    def key(self, teacher: Teacher, dataset: MelDataset, frame_pool: nn.Module | None) -> str:
        pool = frame_pool.describe() if frame_pool is not None and hasattr(frame_pool, "describe") else repr(frame_pool)
        spec = {
            "version": CACHE_VERSION,
            "teacher": teacher.sha256,
            "data": dataset.fingerprint(),
            "teacher_n_mels": teacher.dims.n_mels,
            "pad_to_30s": dataset.pad_to_30s,
            "pool": pool,
            "logits_order": teacher.label_order(dataset.labels),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"teacher-{key[:32]}.safetensors"

    def load(self, key: str, n: int) -> TeacherTargets | None:
        """The cached targets of n clips, or None if absent or unusable (then they are recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors, metadata = read_tensors(path)
        except TensorFileError as e:
            log.warning("ignoring the unreadable teacher cache (%s)", e)
            return None
        if metadata.get("key") != key:
            log.warning("ignoring the teacher cache %s: it was written for another teacher or data", path)
            return None
        targets = TeacherTargets(tensors.get("embeddings"), tensors.get("logits"))
        if (
            any(t is not None and (t.dim() != 2 or t.shape[0] != n) for t in (targets.embeddings, targets.logits))
            or targets.embeddings is None
        ):
            log.warning("ignoring the teacher cache %s: it does not hold targets for %d samples", path, n)
            return None
        return targets

    def targets(
        self,
        teacher: Teacher,
        dataset: MelDataset,
        frame_pool: nn.Module | None = None,
        *,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        progress: bool = True,
        write: bool = True,
    ) -> TeacherTargets:
        """The teacher's targets for ``dataset`` (row i is item i), from the cache or computed.

        The teacher sees clean audio with its own mel bins: ``dataset`` is used for its
        samples only, and re-featurised when its mel bins or augmentation differ from the teacher's.
        ``write=False`` computes without storing (e.g. on DDP ranks other than 0).
        """
        key = self.key(teacher, dataset, frame_pool)
        cached = self.load(key, len(dataset))
        if cached is not None:
            log.info("teacher embeddings of %d clips read from %s", len(dataset), self.path(key))
            return cached
        targets = compute_targets(teacher, dataset, frame_pool, batch_size=batch_size, device=device, progress=progress)
        if write:
            metadata = {"key": key, "teacher": str(teacher.source), "n": str(len(dataset))}
            tensors = {
                "embeddings": targets.embeddings,
                **({"logits": targets.logits} if targets.logits is not None else {}),
            }
            write_tensors(self.path(key), tensors, metadata)
            log.info("teacher embeddings of %d clips written to %s", len(dataset), self.path(key))
        return targets


def teacher_view(teacher: Teacher, dataset: MelDataset, progress: bool = True) -> MelDataset:
    """``dataset`` as the teacher must see it: clean (no augmentation), with the teacher's mel bins."""
    return dataset.clean_view(teacher.dims.n_mels, progress)


@torch.no_grad()
def compute_targets(
    teacher: Teacher,
    dataset: MelDataset,
    frame_pool: nn.Module | None = None,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TeacherTargets:
    """Run the teacher over ``dataset`` once: float32 targets on the CPU, row i for item i (logits
    too when the teacher's head covers the dataset's labels)."""
    view = teacher_view(teacher, dataset, progress)
    order = teacher.label_order(dataset.labels)
    teacher.to(device)
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, shuffle=False, collate_fn=collate)
    embeddings, logits = [None] * len(view), [None] * len(view)
    for mels, lengths, _, indices in tqdm(loader, desc="teacher embeddings", unit="batch", disable=not progress):
        batch = teacher.targets(mels.to(device), lengths.to(device), frame_pool, order).to("cpu")
        for row, i in enumerate(indices.tolist()):
            embeddings[i] = batch.embeddings[row].float()
            logits[i] = batch.logits[row].float() if batch.logits is not None else None
    if not embeddings:
        raise ValueError("the dataset is empty: no teacher embeddings to compute")
    return TeacherTargets(torch.stack(embeddings), torch.stack(logits) if order is not None else None)
