import numpy as np
import pytest
import torch
from torch import nn

from tokenforge.continual.selection import (
    is_class_balanced,
    SELECTIONS,
    _facility_location_order,
    _gradient_embeddings,
    _gradient_factors,
    _gradient_order,
    _herding_order,
    _interleave,
    rank_samples,
    take,
)
from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import ModelConfig, TokenViT

SIZES = [15, 10, 9, 6]  # unequal classes


def tiny(num_classes: int = 4) -> TokenViT:
    torch.manual_seed(0)
    cfg = ModelConfig(grid=(4, 4), codebook_size=32, code_dim=8, num_classes=num_classes, embed_dim=32, depth=2, num_heads=2)
    return TokenViT(cfg, torch.randn(32, 8)).eval()


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(SIZES)), SIZES)
    labels = labels[rng.permutation(len(labels))]  # classes mixed, not in blocks
    return rng.integers(0, 32, (len(labels), 4, 4)).astype(np.int64), labels.astype(np.int64)


def fl_value(g: np.ndarray, picks: np.ndarray) -> float:
    """F(S) = sum_i max_{j in S} (c - ||g_i - g_j||), c = max pairwise distance + eps, as the module defines it."""
    d = np.sqrt(((g[:, None] - g[None]) ** 2).sum(-1))
    c = d.max() * (1 + 1e-6) + 1e-12
    return float((c - d[:, picks]).max(axis=1).sum())


class TableModel(nn.Module):
    """A stand-in model: units (B, 1, 1) hold a row index, features are that row of a fixed table."""

    def __init__(self, table: np.ndarray, num_classes: int):
        super().__init__()
        self.table = torch.from_numpy(table).float()
        self.vit = nn.Module()
        self.vit.head = nn.Linear(table.shape[1], num_classes)

    def features(self, units: torch.Tensor) -> torch.Tensor:
        return self.table[units[:, 0, 0]]


@pytest.mark.parametrize("method", SELECTIONS)
def test_every_method_is_a_deterministic_permutation(method):
    model = tiny()
    units, labels = data()
    a = rank_samples(model, units, labels, method, seed=3, batch_size=16)
    assert a.dtype == np.int64
    assert sorted(a.tolist()) == list(range(len(labels)))
    assert np.array_equal(a, rank_samples(model, units, labels, method, seed=3, batch_size=7))
    if is_class_balanced(method):
        # Round-robin: every prefix of C * k holds k of each class while all classes still have k.
        for k in range(1, min(SIZES) + 1):
            assert np.bincount(labels[a[: 4 * k]], minlength=4).tolist() == [k] * 4
    if method in ("random", "class_balanced"):
        assert not np.array_equal(a, rank_samples(model, units, labels, method, seed=4))


def test_rank_samples_restores_training_mode():
    model = tiny().train()
    units, labels = data()
    rank_samples(model, units, labels, "herding", seed=0)
    assert model.training


@pytest.mark.parametrize("method", SELECTIONS)
def test_take_keeps_per_class_or_total(method):
    units, labels = data()
    order = rank_samples(tiny(), units, labels, method, seed=1)
    for per_class in (0, 1, 5, 8, 12, 100):
        kept = take(order, labels, method, per_class)
        assert len(np.unique(kept)) == len(kept)
        assert np.array_equal(kept, order[np.isin(order, kept)])  # in priority order
        if is_class_balanced(method):
            counts = np.bincount(labels[kept], minlength=4)
            assert counts.tolist() == [min(per_class, s) for s in SIZES]
            # the first per_class of each class in `order`
            for c in range(4):
                assert np.array_equal(kept[labels[kept] == c], order[labels[order] == c][:per_class])
        else:
            assert np.array_equal(kept, order[: min(per_class * 4, len(order))])
    with pytest.raises(TokenforgeError, match="memory.samples_per_class"):
        take(order, labels, method, -1)


def test_interleave_round_robin_in_class_order():
    out = _interleave([np.array([5, 1, 7]), np.array([2]), np.array([9, 0])])
    assert out.tolist() == [5, 2, 9, 1, 0, 7]


def test_herding_first_pick_is_nearest_the_mean_and_prefix_means_track_it():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(80, 2)) * np.array([3.0, 0.5]) + np.array([1.0, -2.0])
    order = _herding_order(f)
    assert sorted(order.tolist()) == list(range(80))
    mean = f.mean(0)
    assert order[0] == np.argmin(((f - mean) ** 2).sum(1))
    for q in (3, 5, 10):
        herd = np.linalg.norm(f[order[:q]].mean(0) - mean)
        rand = np.mean([np.linalg.norm(f[np.random.default_rng(s).permutation(80)[:q]].mean(0) - mean) for s in range(20)])
        assert herd < rand / 3
    assert np.array_equal(order, _herding_order(f))
    assert _herding_order(np.zeros((0, 2))).size == 0


def test_herding_ranks_normalised_model_features_per_class():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(30, 3)) * 5
    labels = np.array([0, 1, 2] * 10, dtype=np.int64)
    model = TableModel(table, 3)
    units = np.arange(30, dtype=np.int64).reshape(30, 1, 1)
    order = rank_samples(model, units, labels, "herding", seed=0, batch_size=4)
    f = table / np.linalg.norm(table, axis=1, keepdims=True)
    expected = []
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        expected.append(idx[_herding_order(f[idx])])
    assert np.array_equal(order, _interleave(expected))


def test_facility_location_covers_both_clusters_first():
    rng = np.random.default_rng(0)
    big = rng.normal(size=(30, 6)) * 0.05
    small = rng.normal(size=(8, 6)) * 0.05 + 3.0
    g = np.concatenate([small, big])[rng.permutation(38)]
    in_big = np.linalg.norm(g, axis=1) < 1.0
    order = _facility_location_order(g)
    assert sorted(order.tolist()) == list(range(38))
    assert in_big[order[0]]  # the larger cluster is worth more
    assert not in_big[order[1]]
    for q in (1, 2, 4, 8):
        greedy = fl_value(g, order[:q])
        for s in range(10):
            assert greedy >= fl_value(g, np.random.default_rng(s).permutation(38)[:q]) - 1e-9


def test_facility_location_equals_plain_greedy_with_ties_to_the_lower_index():
    rng = np.random.default_rng(2)
    g = np.round(rng.normal(size=(25, 2)))  # many duplicates: ties
    d = np.sqrt(((g[:, None] - g[None]) ** 2).sum(-1))
    sim = d.max() * (1 + 1e-6) + 1e-12 - d
    best, left, expected = np.zeros(25), list(range(25)), []
    for _ in range(25):
        gains = [np.maximum(sim[j] - best, 0).sum() for j in left]
        j = left.pop(int(np.argmax(gains)))
        expected.append(j)
        best = np.maximum(best, sim[j])
    assert _facility_location_order(g).tolist() == expected


def test_gradient_embeddings_are_the_head_gradient():
    torch.manual_seed(0)
    head = nn.Linear(5, 3)
    feats = torch.randn(4, 5)
    labels = torch.tensor([0, 2, 1, 2])
    logits = head(feats)
    g = _gradient_embeddings(feats.numpy(), logits.detach().numpy(), labels.numpy())
    for i in range(4):
        head.zero_grad()
        nn.functional.cross_entropy(head(feats[i : i + 1]), labels[i : i + 1]).backward()
        ref = torch.cat([head.weight.grad, head.bias.grad[:, None]], dim=1).flatten()
        assert np.allclose(g[i], ref.numpy(), atol=1e-6)
    # The factorised path (Gram = <a_i, a_j> <b_i, b_j>) ranks like the explicit gradients.
    feats, logits, same = torch.randn(40, 5).numpy(), torch.randn(40, 3).numpy(), np.full(40, 2)
    a, b = _gradient_factors(feats, logits, same)
    assert np.array_equal(_gradient_order(a, b), _facility_location_order(_gradient_embeddings(feats, logits, same)))


def test_gradient_ranking_through_a_model_covers_gradient_clusters():
    # One class; features in two tight clusters (22 and 6 samples): the first two picks take one of each.
    rng = np.random.default_rng(3)
    table = np.concatenate([rng.normal(size=(22, 4)) * 0.01, rng.normal(size=(6, 4)) * 0.01 + 4.0])
    model = TableModel(table, 2)
    units = np.arange(28, dtype=np.int64).reshape(28, 1, 1)
    order = rank_samples(model, units, np.zeros(28, dtype=np.int64), "gradient", seed=0)
    assert order[0] < 22 and order[1] >= 22


def test_pixel_units():
    torch.manual_seed(0)
    cfg = ModelConfig(
        grid=(4, 4), codebook_size=0, code_dim=12, num_classes=3, embed_dim=32, depth=2, num_heads=2, input="pixels"
    )
    model = TokenViT(cfg).eval()
    rng = np.random.default_rng(0)
    units = rng.integers(0, 256, (24, 4, 4, 12)).astype(np.uint8)
    labels = np.arange(24, dtype=np.int64) % 3
    for method in SELECTIONS:
        order = rank_samples(model, units, labels, method, seed=0, batch_size=10)
        assert sorted(order.tolist()) == list(range(24))


def test_empty_and_errors():
    model = tiny()
    for method in SELECTIONS:
        out = rank_samples(model, np.zeros((0, 4, 4), np.int64), np.zeros(0, np.int64), method, seed=0)
        assert out.dtype == np.int64 and out.size == 0
        assert take(out, np.zeros(0, np.int64), method, 5).size == 0
    units, labels = data()
    with pytest.raises(TokenforgeError, match="memory.selection: unknown selection 'x'; expected one of random, class_balanced"):
        rank_samples(model, units, labels, "x", seed=0)
    with pytest.raises(TokenforgeError, match="memory.selection: unknown selection"):
        take(np.arange(3), np.zeros(3, np.int64), "kmeans", 1)
    with pytest.raises(TokenforgeError, match="memory.selection"):
        rank_samples(model, units, labels[:-1], "random", seed=0)
    with pytest.raises(TokenforgeError, match="memory.selection"):
        rank_samples(model, units, labels + 10, "gradient", seed=0)
