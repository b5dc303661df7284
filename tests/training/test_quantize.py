"""training.quantize against naive references: Lloyd's k-means with a full distance matrix, and
the per-cluster Python loop of the authors' centroid update."""

import time

import pytest
import torch

from core.model import IntentClassifier, ModelDims
from training.quantize import (
    KMeansQuantizer,
    assign,
    kmeans_1d,
    linear_init,
    quantize_model,
    update_centroids,
)

SMALL = ModelDims(n_mels=16, n_ctx=64, n_state=32, n_head=2, n_layer=1)


def naive_lloyd(
    w: torch.Tensor, k: int, iters: int = 50, importance: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook Lloyd's algorithm in float64: N x k distances, argmin, per-cluster (weighted) mean; empty keeps."""
    x = w.reshape(-1).double()
    h = torch.ones_like(x) if importance is None else importance.reshape(-1).double()
    centroids = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    for _ in range(iters):
        labels = (x[:, None] - centroids[None, :]).abs().argmin(dim=1)  # ties go to the lower index
        new = centroids.clone()
        for j in range(k):
            members = labels == j
            if members.any():
                new[j] = (x[members] * h[members]).sum() / h[members].sum()
        if torch.equal(new, centroids):
            break
        centroids = new
    labels = (x[:, None] - centroids[None, :]).abs().argmin(dim=1)
    return centroids, labels


def loop_update(w: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The authors' centroid update: a Python loop over clusters (mean of each cluster's weights)."""
    out = centroids.clone()
    for j in range(centroids.numel()):
        mask = labels == j
        if mask.any():
            out[j] = w[mask].mean()
    return out


@pytest.mark.parametrize("k", [2, 4, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_matches_naive_lloyd(k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3000, generator=g) * 0.05
    centroids, labels = kmeans_1d(w, k)
    ref_centroids, ref_labels = naive_lloyd(w, k)
    torch.testing.assert_close(centroids.double(), ref_centroids, atol=1e-6, rtol=0)
    assert (labels == ref_labels).float().mean() > 0.999  # float32 vs float64 may flip a boundary point


@pytest.mark.parametrize("k", [2, 8])
def test_sensitivity_weighted_kmeans_matches_naive_weighted_lloyd(k):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(2000, generator=g) * 0.05
    importance = torch.rand(2000, generator=g) ** 4  # a few weights matter far more than the rest
    centroids, labels = kmeans_1d(w, k, importance=importance)
    ref_centroids, ref_labels = naive_lloyd(w, k, importance=importance)
    torch.testing.assert_close(centroids.double(), ref_centroids, atol=1e-6, rtol=0)
    assert (labels == ref_labels).float().mean() > 0.999


def test_an_important_weight_pulls_its_centroid_to_itself_by_hand():
    # One cluster of {0, 1} at 1 bit with {10}: plain mean 0.5; importance 1 and 3 give 0.75.
    w = torch.tensor([0.0, 1.0, 10.0])
    assert sorted(kmeans_1d(w, 2)[0].tolist()) == pytest.approx([0.5, 10.0])
    weighted = kmeans_1d(w, 2, importance=torch.tensor([1.0, 3.0, 1.0]))[0]
    assert sorted(weighted.tolist()) == pytest.approx([0.75, 10.0])


def sse(w: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((w.reshape(-1).double() - centroids.double()[labels]) ** 2).sum())


def test_empty_clusters_are_reseeded_on_gapped_weights():
    # Two tight clumps far apart: the linear init puts most centroids in the empty gap, where
    # plain Lloyd leaves them with no weights.
    w = torch.cat([torch.randn(500) * 0.01 - 1.0, torch.randn(500) * 0.01 + 1.0])
    ref_centroids, ref_labels = naive_lloyd(w, 8)
    assert torch.unique(ref_labels).numel() < 8  # the problem
    centroids, labels = kmeans_1d(w, 8)
    assert torch.isfinite(centroids).all() and torch.unique(labels).numel() == 8
    assert sse(w, centroids, labels) < 0.5 * sse(w, ref_centroids, ref_labels)
    plain, plain_labels = kmeans_1d(w, 8, reseed=False)  # the option reproduces plain Lloyd
    torch.testing.assert_close(plain.double(), ref_centroids, atol=1e-6, rtol=0)


def test_a_4_bit_tensor_with_16_distinct_values_uses_16_codes_and_keeps_them_exact():
    # 15 values crowded near 0 and one far away: a linear init covers them with 2 of 16 centroids.
    distinct = torch.cat([torch.arange(15) * 1e-3, torch.tensor([1.0])])
    w = distinct.repeat_interleave(torch.arange(1, 17))  # uneven counts
    centroids, labels = kmeans_1d(w, 16)
    assert torch.unique(labels).numel() == 16
    assert torch.equal(centroids[labels], w)  # each distinct value is its own centroid


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_width_uses_all_its_codes(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.cat([torch.randn(20_000, generator=g) * 0.02, torch.randn(50, generator=g) * 0.3])  # heavy tails
    _, labels = kmeans_1d(w, 2**bits)
    assert torch.unique(labels).numel() == 2**bits


def test_assign_is_nearest_centroid():
    w = torch.randn(5000)
    centroids = torch.sort(torch.randn(32)).values
    nearest = (w[:, None] - centroids[None, :]).abs().argmin(dim=1)
    assert torch.equal(assign(w, centroids), nearest)


def test_vectorised_update_equals_per_cluster_loop():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(10_000, generator=g)
    centroids = linear_init(w, 64)
    labels = torch.randint(0, 60, (10_000,), generator=g)  # clusters 60..63 are empty
    torch.testing.assert_close(update_centroids(w, labels, centroids), loop_update(w, labels, centroids))


def test_empty_cluster_keeps_its_centroid():
    w = torch.tensor([0.0, 0.1, 0.9, 1.0])
    centroids = torch.tensor([0.0, 0.5, 1.0])
    labels = torch.tensor([0, 0, 2, 2])  # nobody in cluster 1
    new = update_centroids(w, labels, centroids)
    assert torch.isfinite(new).all()
    assert new.tolist() == pytest.approx([0.05, 0.5, 0.95])


def test_16_bit_kmeans_with_65536_clusters_is_feasible():
    w = torch.randn(200_000) * 0.02
    started = time.perf_counter()
    centroids, labels = kmeans_1d(w, 2**16, iters=5)
    elapsed = time.perf_counter() - started
    assert centroids.numel() == 65536 and int(labels.max()) < 65536
    assert (w - centroids[labels]).abs().max() < 1e-4  # 65536 levels over the range of w
    assert elapsed < 20, f"16-bit k-means took {elapsed:.1f} s"


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_snap_keeps_at_most_2_to_the_bits_values_after_training_steps(bits):
    torch.manual_seed(0)
    model = IntentClassifier(SMALL, 3)
    quantizer = quantize_model(model, bits)
    labels_before = {n: t.clone() for n, t in quantizer.labels.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        _, logits = model(torch.randn(2, SMALL.n_mels, 20))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])) + quantizer.centroid_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        quantizer.snap()
    for name, p in quantizer.params.items():
        assert torch.unique(p.detach()).numel() <= 2**bits, name
        assert torch.equal(quantizer.labels[name], labels_before[name])  # assignments stay fixed in a phase
        # Each weight holds exactly its cluster's centroid.
        assert torch.equal(p.detach().reshape(-1), quantizer.centroids[name][quantizer.labels[name]])


def test_snap_centroid_is_the_mean_of_the_updated_cluster():
    torch.manual_seed(1)
    model = IntentClassifier(SMALL, 3)
    quantizer = quantize_model(model, 3)
    name, p = next(iter(quantizer.params.items()))
    with torch.no_grad():
        p.add_(torch.randn_like(p) * 0.01)  # what an optimizer step does
    moved = p.detach().reshape(-1).clone()
    expected = loop_update(moved, quantizer.labels[name], quantizer.centroids[name])
    quantizer.snap()
    torch.testing.assert_close(quantizer.centroids[name], expected)


def test_16_bit_rounds_to_float16_and_32_bit_changes_nothing():
    torch.manual_seed(2)
    model = IntentClassifier(SMALL, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    KMeansQuantizer(model, 32).fit()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    q16 = KMeansQuantizer(model, 16).fit()
    for name, p in q16.params.items():
        assert torch.equal(p.detach(), before[name].half().float())
    assert float(q16.centroid_loss()) == 0.0


def two_matrices() -> torch.nn.Module:
    """Two 2x2 weight matrices whose 1-bit codebooks are obvious: {0.05, 1.1} and {-1, 3}."""
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.tensor([[0.0, 0.1], [1.0, 1.2]]))
    model.b = torch.nn.Parameter(torch.tensor([[-1.0, -1.0], [3.0, 3.0]]))
    return model


def test_centroid_loss_is_mean_squared_distance_to_centroids_by_hand():
    model = two_matrices()
    quantizer = quantize_model(model, 1)
    assert sorted(quantizer.centroids["a"].tolist()) == pytest.approx([0.05, 1.1])
    assert float(quantizer.centroid_loss().detach()) == 0.0  # snapped: every weight on its centroid
    with torch.no_grad():  # move weights off their centroids by hand, as an optimizer step would
        model.a.copy_(torch.tensor([[0.05, 0.25], [1.1, 0.9]]))  # distances 0, 0.2, 0, 0.2
        model.b.copy_(torch.tensor([[-1.0, -0.5], [3.0, 3.0]]))  # distances 0, 0.5, 0, 0
    # a: (0.04 + 0.04) / 4 = 0.02; b: 0.25 / 4 = 0.0625; the mean over the two matrices: 0.04125
    assert float(quantizer.centroid_loss().detach()) == pytest.approx(0.04125, abs=1e-6)


# --- how centroids learn in a quantization phase -------------------------------------------------


class OneMatrix(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([[0.0, 0.1, 0.9], [1.0, 0.05, 0.95]]))


def one_step(centroid_update: str, lr: float) -> tuple[KMeansQuantizer, torch.Tensor]:
    """One SGD step (no momentum) on L = sum(weight * G): dL/dweight = G."""
    model = OneMatrix()
    quantizer = KMeansQuantizer(model, 1, centroid_update=centroid_update).fit()
    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    params = quantizer.centroid_parameters() or list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr)
    if centroid_update == "sum":
        optimizer.register_step_pre_hook(lambda *_: quantizer.accumulate_centroid_grads())
    (model.weight * grad).sum().backward()
    optimizer.step()
    quantizer.snap()
    return quantizer, model.weight.detach()


def test_one_sum_step_is_eq_4_by_hand():
    quantizer, weight = one_step("sum", lr=0.01)
    # k-means on {0, .05, .1} and {.9, .95, 1}: centroids .05 and .95; the gradients in each
    # cluster are {1, 5, 2} and {3, 4, 6}, summed (eq. 4): 8 and 13.
    expected = torch.tensor([0.05 - 0.01 * 8, 0.95 - 0.01 * 13])
    torch.testing.assert_close(quantizer.centroids["weight"].detach(), expected)
    torch.testing.assert_close(weight, expected[torch.tensor([[0, 0, 1], [1, 0, 1]])])


def test_one_mean_step_is_the_authors_rule_by_hand():
    quantizer, weight = one_step("mean", lr=0.01)
    expected = torch.tensor([0.05 - 0.01 * 8 / 3, 0.95 - 0.01 * 13 / 3])  # the mean of each cluster's steps
    torch.testing.assert_close(quantizer.centroids["weight"], expected)
    torch.testing.assert_close(weight, expected[torch.tensor([[0, 0, 1], [1, 0, 1]])])


def test_fixed_assignments_are_kept_and_centroids_follow_the_weights():
    torch.manual_seed(4)
    model = IntentClassifier(SMALL, 3)
    first = quantize_model(model, 3)
    with torch.no_grad():  # a distillation phase moves the weights freely
        for p in first.params.values():
            p.add_(torch.randn_like(p) * 0.01)
    moved = {n: p.detach().reshape(-1).clone() for n, p in first.params.items()}
    again = KMeansQuantizer(model, 3).reuse(first)
    for name in first.params:
        assert torch.equal(again.labels[name], first.labels[name])
        torch.testing.assert_close(
            again.centroids[name], loop_update(moved[name], first.labels[name], first.centroids[name])
        )
