"""Per-tensor k-means codebook quantization (the QUADS quantization phase), vectorised and 1-D.

Each weight matrix gets its own codebook of k = 2**bits centroids. Because the weights are
scalars, assignment is a ``bucketize`` on the midpoints between sorted centroids (O(N log k),
no N x k distance matrix, so even k = 65536 fits), and a centroid update is one ``index_add_``
plus one ``bincount`` (no Python loop over clusters). An empty cluster keeps its centroid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.codebook import Codebook, check_bits, is_quantizable, storage


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


def kmeans_1d(w: Tensor, k: int, iters: int = 50) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on the scalars of ``w`` (any shape) from a linear init: (centroids (k,), labels (numel,)).

    The weights are sorted once; each cluster is then a contiguous run of them, found with
    ``searchsorted`` on the centroid midpoints, and its mean comes from prefix sums. An
    iteration costs O(k log N) rather than O(N log k).
    """
    flat = w.detach().reshape(-1).float()
    values = flat.sort().values
    prefix = torch.cat([values.new_zeros(1, dtype=torch.float64), values.double().cumsum(0)])
    centroids = linear_init(values, k)
    for _ in range(iters):
        ends = torch.searchsorted(values, (centroids[1:] + centroids[:-1]) / 2, right=True)
        ends = torch.cat([ends, ends.new_tensor([values.numel()])])
        starts = torch.cat([ends.new_zeros(1), ends[:-1]])
        counts = ends - starts
        means = ((prefix[ends] - prefix[starts]) / counts.clamp(min=1)).to(centroids.dtype)
        new = torch.where(counts > 0, means, centroids).sort().values
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids, assign(flat, centroids)


class KMeansQuantizer:
    """Codebooks for every weight matrix of a model, and the operations of a quantization phase.

    ``fit()`` clusters the current weights (at the start of a quantization phase); after each
    optimizer step ``snap()`` re-estimates each centroid as the mean of its cluster's weights
    (assignments fixed) and writes the centroids back, so the model always holds <= 2**bits
    distinct values per matrix. ``centroid_loss()`` is L_centroid, the within-cluster squared
    distance, which pulls the weights toward their shared values between snaps (it is exactly
    0 right after a snap).
    At 16 bits weights are rounded to float16; at 32 bits nothing changes.
    """

    def __init__(self, model: nn.Module, bits: int, iters: int = 50):
        check_bits(bits)
        self.bits, self.iters = bits, iters
        self.params = {n: p for n, p in model.named_parameters() if is_quantizable(p)}
        self.centroids: dict[str, Tensor] = {}
        self.labels: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}  # cluster sizes: fixed while the labels are

    @property
    def clusters(self) -> bool:
        """Whether this width uses codebooks (1..8 bits)."""
        return storage(self.bits) == "codebook"

    def codebooks(self) -> dict[str, Codebook]:
        """Each weight matrix's codebook, as ``core.checkpoint.save_checkpoint`` stores it."""
        if not self.clusters:
            return {}
        return {n: Codebook(self.centroids[n].detach().float().cpu(), self.labels[n].cpu(), self.bits) for n in self.params}

    @torch.no_grad()
    def fit(self) -> "KMeansQuantizer":
        if self.clusters:
            self._counts = {}
            for name, p in self.params.items():
                self.centroids[name], self.labels[name] = kmeans_1d(p, 2**self.bits, self.iters)
        return self.snap(update=False)

    @torch.no_grad()
    def snap(self, update: bool = True) -> "KMeansQuantizer":
        for name, p in self.params.items():
            if storage(self.bits) == "float16":
                p.copy_(p.half().float())
            elif self.clusters:
                labels = self.labels[name]
                if update:
                    if name not in self._counts:
                        self._counts[name] = torch.bincount(labels, minlength=self.centroids[name].numel())
                    self.centroids[name] = update_centroids(
                        p.reshape(-1).float(), labels, self.centroids[name], self._counts[name]
                    )
                p.copy_(self.centroids[name][labels].view_as(p).to(p.dtype))
        return self

    def centroid_loss(self) -> Tensor:
        """Mean squared distance of each weight to its (detached) centroid, averaged over tensors."""
        if not self.clusters:
            return torch.zeros(())
        losses = [
            (p.reshape(-1) - self.centroids[n][self.labels[n]].detach()).pow(2).mean() for n, p in self.params.items()
        ]
        return torch.stack(losses).mean()

    def state_dict(self) -> dict:
        return {"bits": self.bits, "centroids": dict(self.centroids), "labels": dict(self.labels)}

    def load_state_dict(self, state: dict) -> None:
        if state["bits"] != self.bits:
            raise ValueError(f"quantizer state is for {state['bits']} bits, not {self.bits}")
        self.centroids, self.labels = dict(state["centroids"]), dict(state["labels"])
        self._counts = {}


def quantize_model(model: nn.Module, bits: int, iters: int = 50) -> KMeansQuantizer:
    """Quantize ``model`` in place (k-means on every weight matrix, then snap); returns the quantizer."""
    return KMeansQuantizer(model, bits, iters).fit()
