"""The training losses, each a small module: distillation, quantization, and width matching.

Teacher and student encoders can have any widths. Two ways to compare them:

* ``ChannelMaxPool`` (the paper's): the teacher's frames are max-pooled along the channel axis
  with kernel 3, stride 2 and a dilation chosen so the output has the student's width (1280 ->
  512 with dilation 128, as in the authors' code), then mean-pooled over time. Widths the
  stride-2 pool cannot reach use stride 1, then an adaptive max-pool; equal widths are copied.
  It has no parameters, so its output can be cached with the teacher's embeddings.
* ``StudentProjection``: a learned linear map of the student's embedding to the teacher's
  width. The teacher target is fixed, so the map cannot collapse it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from training.quantize import KMeansQuantizer
from training.teacher import TeacherTargets


def channel_pool_geometry(c_in: int, c_out: int) -> tuple[int, int] | None:
    """(stride, dilation) of a kernel-3 max-pool mapping ``c_in`` channels to exactly ``c_out``, or None.

    Output width is ``(c_in - 2 * dilation - 1) // stride + 1``. Stride 2 is tried first (the
    paper's; 1280 -> 512 gives dilation 128), then stride 1. None when neither fits, e.g. when
    the teacher is not wider than the student.
    """
    for stride in (2, 1):
        for slack in range(stride):  # (c_in - 2d - 1) = stride * (c_out - 1) + slack
            twice_d = c_in - 1 - stride * (c_out - 1) - slack
            if twice_d >= 2 and twice_d % 2 == 0:
                return stride, twice_d // 2
    return None


class ChannelMaxPool(nn.Module):
    """Max-pool along the last (channel) axis: (..., c_in) -> (..., c_out). No parameters."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.geometry = None if c_in == c_out else channel_pool_geometry(c_in, c_out)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.c_in:
            raise ValueError(f"expected {self.c_in} channels in the last axis, got {x.shape[-1]}")
        if self.c_in == self.c_out:
            return x
        flat = x.reshape(-1, 1, self.c_in)
        if self.geometry is None:
            y = F.adaptive_max_pool1d(flat, self.c_out)
        else:
            stride, dilation = self.geometry
            y = F.max_pool1d(flat, kernel_size=3, stride=stride, dilation=dilation)
        return y.reshape(*x.shape[:-1], self.c_out)

    def describe(self) -> str:
        """A stable description, part of the teacher-cache key."""
        if self.c_in == self.c_out:
            return f"identity{self.c_in}"
        if self.geometry is None:
            return f"adaptive-maxpool{self.c_in}->{self.c_out}"
        return f"maxpool{self.c_in}->{self.c_out}:k3s{self.geometry[0]}d{self.geometry[1]}"

    def extra_repr(self) -> str:
        return self.describe()


class StudentProjection(nn.Linear):
    """Learned map of the student's pooled embedding to the teacher's width: (B, c_s) -> (B, c_t)."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__(student_width, teacher_width)


@dataclass
class LossParts:
    """The total loss (to backpropagate) and its parts (detached floats, for logs).

    Every training loss is called the same way, ``loss(embedding, logits, labels, teacher)``, with
    the student's pooled embedding (B, C), its logits (B, n_labels), the labels (B,) and the
    teacher's targets (B, C_t) or None; each uses what it needs.
    """

    total: Tensor
    parts: dict[str, float]


class DistillationLoss(nn.Module):
    """``alpha * L1(teacher, student) + (1 - alpha) * CE(logits, labels)`` (paper eq. 3), plus
    ``kl_weight * T**2 * KL(teacher || student)`` on logits softened by the temperature T.

    The teacher's embeddings are pooled already at the student's width (with ``ChannelMaxPool``),
    or at the teacher's width when ``projection`` maps the student there. L1 is the mean absolute
    difference per element, so its scale does not grow with the width. The KL term (Hinton's
    logit distillation; T**2 keeps its gradients' scale as T changes) needs a teacher whose head
    covers the student's labels.
    """

    def __init__(
        self,
        alpha: float,
        projection: StudentProjection | None = None,
        kl_weight: float = 0.0,
        temperature: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha, self.projection, self.kl_weight, self.temperature = alpha, projection, kl_weight, temperature

    def forward(self, embedding: Tensor, logits: Tensor, labels: Tensor, teacher: TeacherTargets | None) -> LossParts:
        """embedding: (B, c_s) pooled student embedding; logits: (B, n_labels); labels: (B,);
        teacher: the batch's targets, embeddings (B, c) and, for the KL term, logits (B, n_labels)."""
        if teacher is None:
            raise ValueError("distillation needs the teacher's embeddings of the batch")
        matched = self.projection(embedding) if self.projection is not None else embedding
        if matched.shape != teacher.embeddings.shape:
            raise ValueError(
                f"student embedding {tuple(matched.shape)} and teacher target {tuple(teacher.embeddings.shape)} "
                "differ; pool the teacher to the student's width (ChannelMaxPool) or use a StudentProjection"
            )
        l1 = F.l1_loss(matched, teacher.embeddings)
        ce = F.cross_entropy(logits, labels)
        total = self.alpha * l1 + (1.0 - self.alpha) * ce
        parts = {"l1": l1.item(), "ce": ce.item()}
        if self.kl_weight:
            if teacher.logits is None:
                raise ValueError("the KL term needs the teacher's logits: a QUADS teacher over the student's labels")
            t = self.temperature
            kl = (
                F.kl_div(
                    F.log_softmax(logits / t, -1),
                    F.log_softmax(teacher.logits / t, -1),
                    log_target=True,
                    reduction="batchmean",
                )
                * t
                * t
            )
            total = total + self.kl_weight * kl
            parts["kl"] = kl.item()
        return LossParts(total, {"loss": total.item(), **parts})


class QuantizationLoss(nn.Module):
    """``centroid_weight * L_centroid + CE(logits, labels)`` (paper eq. 5).

    L_centroid is ``KMeansQuantizer.centroid_loss()``: the mean squared distance of each weight
    to its centroid. Right after ``fit()`` or ``snap()`` every weight equals its centroid, so
    L_centroid and its gradient are exactly zero; in a training loop that snaps after every step
    (use ``self.snap``) that holds at every forward pass; the centroids learn as
    ``KMeansQuantizer.centroid_update`` says (eq. 4's sum, or the authors' cluster means). The
    loss then skips computing the zeros: every in-place
    change to a tensor bumps its version counter, so unchanged versions since the last snap prove
    the weights are still on their codebooks. Otherwise L_centroid is computed in full.
    """

    def __init__(self, quantizer: KMeansQuantizer, centroid_weight: float = 1.0):
        super().__init__()
        self.quantizer = quantizer
        self.centroid_weight = centroid_weight
        self._snapped_versions: list[int] | None = None

    def _versions(self) -> list[int]:
        return [p._version for p in self.quantizer.params.values()]

    def fit(self, previous: KMeansQuantizer | None = None, importance: dict[str, Tensor] | None = None) -> None:
        """Fit the codebooks (start of a Q phase; weighted by ``importance`` when given), or keep
        ``previous``'s assignments, and snap the weights onto them."""
        self.quantizer.reuse(previous) if previous is not None else self.quantizer.fit(importance)
        self._snapped_versions = self._versions()

    def snap(self) -> None:
        """Re-estimate the centroids and snap the weights onto them (after every optimizer step)."""
        self.quantizer.snap()
        self.mark_snapped()

    def mark_snapped(self) -> None:
        """The weights were just put on their codebooks (by ``snap`` or by the phase itself)."""
        self._snapped_versions = self._versions()

    def on_codebook(self) -> bool:
        """Whether the weights are unchanged since the last fit/snap (so L_centroid is exactly 0)."""
        return self._snapped_versions is not None and self._snapped_versions == self._versions()

    def forward(self, embedding: Tensor, logits: Tensor, labels: Tensor, teacher: Tensor | None = None) -> LossParts:
        ce = F.cross_entropy(logits, labels)
        if self.on_codebook():
            centroid = ce.new_zeros(())
        else:
            centroid = self.quantizer.centroid_loss().to(logits.device)
        total = self.centroid_weight * centroid + ce
        return LossParts(total, {"loss": total.item(), "centroid": centroid.item(), "ce": ce.item()})


class ClassificationLoss(nn.Module):
    """Plain cross-entropy, for fine-tuning a classifier (e.g. a teacher) without a teacher."""

    def forward(self, embedding: Tensor, logits: Tensor, labels: Tensor, teacher: Tensor | None = None) -> LossParts:
        ce = F.cross_entropy(logits, labels)
        return LossParts(ce, {"loss": ce.item(), "ce": ce.item()})
