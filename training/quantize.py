"""Per-tensor k-means codebook quantization (the QUADS quantization phase), vectorised and 1-D.

Each weight matrix gets its own codebook of k = 2**bits centroids. Because the weights are
scalars, assignment is a ``bucketize`` on the midpoints between sorted centroids (O(N log k),
no N x k distance matrix, so even k = 65536 fits), and a centroid update is one ``index_add_``
plus one ``bincount`` (no Python loop over clusters). A cluster that k-means leaves empty is
re-seeded by splitting the most populous one, so every one of the 2**bits codes is used.

How the centroids learn in a quantization phase (``centroid_update``):

* ``sum`` (paper eq. 4): the forward pass uses ``codebook[labels]``, so the gradient of a
  centroid is the *sum* of its weights' gradients. The centroids are parameters of their own
  (``centroid_parameters``), stepped by the phase's optimizer at their own learning rate; the
  weight matrices themselves are not stepped, only re-snapped to their codebooks.
* ``mean`` (the authors' code): the optimizer steps the weights, then each centroid is
  re-estimated as the mean of its cluster's weights. A centroid then moves by the learning
  rate times the *mean* of its weights' gradients: by the cluster size less than eq. 4.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from core.codebook import Codebook, check_bits, is_quantizable, storage

CentroidUpdate = Literal["sum", "mean"]
MAX_RESEED_ROUNDS = 50


def linear_init(w: Tensor, k: int) -> Tensor:
    """k centroids evenly spaced over [min(w), max(w)] (linear initialisation)."""
    return torch.linspace(float(w.min()), float(w.max()), k, dtype=w.dtype, device=w.device)


def assign(w: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid for every element of 1-D ``w``; ``centroids`` must be sorted."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(w, midpoints)


def update_centroids(w: Tensor, labels: Tensor, centroids: Tensor, counts: Tensor | None = None) -> Tensor:
    """Mean of the weights in each cluster; a cluster with no weights keeps its old centroid.

    ``counts`` (the cluster sizes, ``bincount(labels)``) may be passed when the labels are fixed.
    """
    if counts is None:
        counts = torch.bincount(labels, minlength=centroids.numel())
    sums = torch.zeros_like(centroids).index_add_(0, labels, w)
    counts = counts.to(w.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), centroids)


def _runs(values: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """(starts, ends): the slice of sorted ``values`` nearest to each sorted centroid."""
    ends = torch.searchsorted(values, (centroids[1:] + centroids[:-1]) / 2, right=True)
    ends = torch.cat([ends, ends.new_tensor([values.numel()])])
    return torch.cat([ends.new_zeros(1), ends[:-1]]), ends


def _lloyd(values: Tensor, prefix: Tensor, mass: Tensor, centroids: Tensor, iters: int) -> Tensor:
    """Lloyd's iterations on sorted ``values``; ``prefix`` and ``mass`` are the prefix sums of
    importance * value and of importance (importance 1: the plain mean)."""
    for _ in range(iters):
        starts, ends = _runs(values, centroids)
        weight = mass[ends] - mass[starts]
        means = ((prefix[ends] - prefix[starts]) / weight.clamp(min=1e-300)).to(centroids.dtype)
        new = torch.where(weight > 0, means, centroids).sort().values
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids


def _reseed_empty(values: Tensor, prefix: Tensor, mass: Tensor, centroids: Tensor) -> tuple[Tensor, bool]:
    """Move each empty cluster's centroid into one of the most populous clusters that hold two or
    more distinct values, splitting it at its median (the two halves' means). Returns the sorted
    centroids and whether any moved."""
    starts, ends = _runs(values, centroids)
    counts = ends - starts
    empty = (counts == 0).nonzero().flatten()
    last = values.numel() - 1
    splittable = (counts >= 2) & (values[(ends - 1).clamp(0, last)] > values[starts.clamp(0, last)])
    donors = torch.argsort(torch.where(splittable, counts, 0), descending=True)[
        : min(empty.numel(), int(splittable.sum()))
    ]
    if donors.numel() == 0:
        return centroids, False
    s, e = starts[donors], ends[donors]
    mid = (s + e) // 2
    moved = centroids.clone()
    moved[donors] = ((prefix[mid] - prefix[s]) / (mass[mid] - mass[s])).to(centroids.dtype)
    moved[empty[: donors.numel()]] = ((prefix[e] - prefix[mid]) / (mass[e] - mass[mid])).to(centroids.dtype)
    return moved.sort().values, True


def kmeans_1d(
    w: Tensor, k: int, iters: int = 50, reseed: bool = True, importance: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on the scalars of ``w`` (any shape) from a linear init: (centroids (k,), labels (numel,)).

    The weights are sorted once; each cluster is then a contiguous run of them, found with
    ``searchsorted`` on the centroid midpoints, and its mean comes from prefix sums. An
    iteration costs O(k log N) rather than O(N log k). With ``reseed``, clusters left empty are
    re-seeded by splitting the most populous ones and Lloyd runs again, so that with at least k
    distinct values all k codes are used (the linear init leaves 10-25% unused at 8 bits).

    ``importance`` (same shape, >= 0) weights each scalar in the means: sensitivity-weighted
    k-means (SqueezeLLM, coremltools' SKM), where it is the squared gradient of the loss, so that
    the weights the loss is most sensitive to sit closest to their centroids. Assignment stays
    nearest-centroid. A tiny floor keeps every cluster's mass positive.
    """
    flat = w.detach().reshape(-1).float()
    values, order = flat.sort()
    if importance is None:
        mass = torch.arange(values.numel() + 1, dtype=torch.float64, device=values.device)
        weighted = values.double()
    else:
        weight = importance.detach().reshape(-1).double()[order]
        weight = weight + 1e-6 * float(weight.max().clamp(min=1e-30))  # no cluster of zero mass
        mass = torch.cat([weight.new_zeros(1), weight.cumsum(0)])
        weighted = values.double() * weight
    prefix = torch.cat([values.new_zeros(1, dtype=torch.float64), weighted.cumsum(0)])
    centroids = _lloyd(values, prefix, mass, linear_init(values, k), iters)
    for _ in range(MAX_RESEED_ROUNDS if reseed else 0):
        centroids, moved = _reseed_empty(values, prefix, mass, centroids)
        if not moved:
            break
        centroids = _lloyd(values, prefix, mass, centroids, iters)
    return centroids, assign(flat, centroids)


class KMeansQuantizer:
    """Codebooks for every weight matrix of a model, and the operations of a quantization phase.

    ``fit()`` clusters the current weights (at the start of a quantization phase) and snaps them
    onto their codebooks; ``reuse(other)`` keeps another quantizer's cluster assignments instead,
    with centroids re-estimated from the current weights. After each optimizer step ``snap()``
    writes the centroids back (``mean``: re-estimated first), so the model always holds <= 2**bits
    distinct values per matrix. ``centroid_loss()`` is L_centroid, the within-cluster squared
    distance, which pulls the weights toward their shared values between snaps (exactly 0 right
    after one). At 16 bits weights are rounded to float16; at 32 bits nothing changes.
    """

    def __init__(self, model: nn.Module, bits: int, iters: int = 50, centroid_update: CentroidUpdate = "mean"):
        check_bits(bits)
        if centroid_update not in ("sum", "mean"):
            raise ValueError(f"centroid_update must be sum or mean, got {centroid_update!r}")
        self.bits, self.iters, self.centroid_update = bits, iters, centroid_update
        self.params = {n: p for n, p in model.named_parameters() if is_quantizable(p)}
        self.centroids: dict[str, Tensor] = {}
        self.labels: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}  # cluster sizes: fixed while the labels are

    @property
    def clusters(self) -> bool:
        """Whether this width uses codebooks (1..8 bits)."""
        return storage(self.bits) == "codebook"

    def _set_codebooks(self, centroids: dict[str, Tensor], labels: dict[str, Tensor]) -> None:
        self.labels, self._counts = dict(labels), {}
        # Under eq. 4 the centroids are trained: leaf tensors with gradients of their own.
        self.centroids = {
            n: c.detach().float().requires_grad_(self.centroid_update == "sum") for n, c in centroids.items()
        }

    @torch.no_grad()
    def fit(self, importance: dict[str, Tensor] | None = None) -> KMeansQuantizer:
        """k-means on each matrix (weighted by ``importance[name]``, e.g. squared gradients, when
        given), then snap the weights onto the codebooks."""
        if self.clusters:
            weights = importance or {}
            fitted = {
                name: kmeans_1d(p, 2**self.bits, self.iters, importance=weights.get(name))
                for name, p in self.params.items()
            }
            self._set_codebooks({n: c for n, (c, _) in fitted.items()}, {n: lab for n, (_, lab) in fitted.items()})
        return self.snap(update=False)

    @torch.no_grad()
    def reuse(self, other: KMeansQuantizer) -> KMeansQuantizer:
        """Keep ``other``'s cluster assignments (fitted once, as the authors' code does); each
        centroid becomes the mean of its cluster's current weights."""
        if other.bits != self.bits or set(other.labels) != set(self.params):
            raise ValueError("the quantizers are for different bit widths or weights")
        centroids = {
            n: update_centroids(p.reshape(-1).float(), other.labels[n], other.centroids[n].detach())
            for n, p in self.params.items()
        }
        self._set_codebooks(centroids, other.labels)
        return self.snap(update=False)

    @torch.no_grad()
    def reassign(self, weights: dict[str, Tensor]) -> KMeansQuantizer:
        """One Lloyd step on ``weights`` (the latent weights of a straight-through phase, by name):
        each goes to its nearest centroid, then each centroid becomes its cluster's mean (a cluster
        left empty keeps its centroid). The codebooks stay sorted. The model is not touched."""
        for name, w in weights.items():
            flat = w.reshape(-1).float()
            labels = assign(flat, self.centroids[name])
            centroids, order = update_centroids(flat, labels, self.centroids[name]).sort()
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel(), device=order.device)
            self.centroids[name].copy_(centroids)
            self.labels[name] = rank[labels]
        self._counts = {}
        return self

    def centroid_parameters(self) -> list[Tensor]:
        """The centroids, for the quantization phase's optimizer (``sum`` only: ``mean`` re-estimates them)."""
        return list(self.centroids.values()) if self.centroid_update == "sum" else []

    @torch.no_grad()
    def accumulate_centroid_grads(self) -> None:
        """Eq. 4: each centroid's gradient is the sum of its weights' gradients. Call it after
        ``backward()`` and before the optimizer step; it takes the gradients off the weights."""
        for name, p in self.params.items():
            if p.grad is not None:
                centroid = self.centroids[name]
                centroid.grad = torch.zeros_like(centroid).index_add_(0, self.labels[name], p.grad.reshape(-1).float())
                p.grad = None

    @torch.no_grad()
    def snap(self, update: bool = True) -> KMeansQuantizer:
        for name, p in self.params.items():
            if storage(self.bits) == "float16":
                p.copy_(p.half().float())
            elif self.clusters:
                labels, centroids = self.labels[name], self.centroids[name]
                if update and self.centroid_update == "mean":
                    if name not in self._counts:
                        self._counts[name] = torch.bincount(labels, minlength=centroids.numel())
                    centroids.copy_(update_centroids(p.reshape(-1).float(), labels, centroids, self._counts[name]))
                p.copy_(centroids[labels].view_as(p).to(p.dtype))
        return self

    def centroid_loss(self) -> Tensor:
        """Mean squared distance of each weight to its (detached) centroid, averaged over tensors."""
        if not self.clusters:
            return torch.zeros(())
        losses = [
            (p.reshape(-1) - self.centroids[n][self.labels[n]].detach()).pow(2).mean() for n, p in self.params.items()
        ]
        return torch.stack(losses).mean()

    def codebooks(self) -> dict[str, Codebook]:
        """Each weight matrix's codebook, as ``core.checkpoint.save_checkpoint`` stores it."""
        if not self.clusters:
            return {}
        return {
            n: Codebook(self.centroids[n].detach().float().cpu(), self.labels[n].cpu(), self.bits) for n in self.params
        }

    def state_dict(self) -> dict:
        return {
            "bits": self.bits,
            "centroids": {n: c.detach() for n, c in self.centroids.items()},
            "labels": dict(self.labels),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["bits"] != self.bits:
            raise ValueError(f"quantizer state is for {state['bits']} bits, not {self.bits}")
        self._set_codebooks(state["centroids"], state["labels"])


def quantize_model(model: nn.Module, bits: int, iters: int = 50) -> KMeansQuantizer:
    """Quantize ``model`` in place (k-means on every weight matrix, then snap); returns the quantizer."""
    return KMeansQuantizer(model, bits, iters).fit()
