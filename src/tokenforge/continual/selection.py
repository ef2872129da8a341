"""Which samples of a finished task go into the replay memory, as a priority order.

The memory's byte budget decides later how many samples per class are kept, and that number shrinks
as tasks arrive, so a selection here is a ranking: the caller keeps prefixes of it (`take`).
- random: one seeded permutation of all samples (the baseline; classes may end up unequal);
- class_balanced: a seeded permutation within each class;
- herding (iCaRL, Rebuffi et al. 2017): per class, the greedy order that keeps the mean of the picked
  L2-normalised pre-logit features closest to the class mean;
- gradient (CRAIG, Mirzasoleiman et al. 2020): per class, greedy facility location on the per-sample
  gradients of the CE loss w.r.t. the classifier head, so the first picks cover the gradient clusters.
Every method but random interleaves its per-class orders round-robin (classes ascending), so any
prefix is as balanced as the class sizes allow. Ties always go to the lower sample index.
"""

from __future__ import annotations

import heapq
from typing import Callable

import numpy as np
import torch

from tokenforge.continual import SELECTIONS
from tokenforge.continual.features import pre_logit_features
from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import device_of

_DENSE_LIMIT = 5000  # facility location: above this many samples in a class, similarity rows are computed on demand
_CHUNK = 1024  # rows per block when building pairwise distances


def selection_order(method: str) -> Callable:
    """The selection `method` names (a built-in, an installed plugin's name or an import path); see the module doc."""
    return SELECTIONS.load(method)


def selection_for(method: str, family: str = "classification") -> Callable:
    """The selection `method` for `family`; a one-line error when it cannot order that family's samples (herding and
    gradient read the ViT's features: `order.families`, all families when unset)."""
    from tokenforge.continual.methods import ALL_FAMILIES

    return SELECTIONS.load_for(method, family, ALL_FAMILIES)


def is_class_balanced(method: str) -> bool:
    """Whether `take` keeps per-class quotas of the method's order (True unless the order says otherwise)."""
    return bool(getattr(selection_order(method), "class_balanced", True))


def rank_samples(model, units: np.ndarray, labels: np.ndarray, method: str, seed: int, batch_size: int = 256) -> np.ndarray:
    """A priority order: a permutation of range(M) (int64). Keeping the first n of it (method random), or the first q of each
    class in this order (every other method), gives that method's selection of that size.

    A selection of your own (`memory.selection: "mylab.pick:order"`) is a function
    `order(model, units, labels, *, seed, batch_size) -> np.ndarray` returning a permutation of range(M), with an
    optional attribute `class_balanced = False` when its prefixes are taken as a whole rather than per class."""
    order_of = selection_order(method)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(units) != len(labels):
        raise TokenforgeError(f"memory.selection: {len(units)} samples but {len(labels)} labels")
    m = len(labels)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.asarray(order_of(model, units, labels, seed=seed, batch_size=batch_size), dtype=np.int64)
    if order.shape != (m,) or not np.array_equal(np.sort(order), np.arange(m)):
        raise TokenforgeError(f"memory.selection: {method!r} did not return a permutation of the task's {m} samples")
    return order


def _members(labels: np.ndarray) -> list[np.ndarray]:
    """Each class's sample indices (ascending), classes in ascending order."""
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def random_order(model, units, labels: np.ndarray, *, seed: int, batch_size: int = 256) -> np.ndarray:
    """One seeded permutation of all samples (the baseline; classes may end up unequal)."""
    return np.random.default_rng(seed).permutation(len(labels)).astype(np.int64)


random_order.class_balanced = False


def class_balanced_order(model, units, labels: np.ndarray, *, seed: int, batch_size: int = 256) -> np.ndarray:
    """A seeded permutation within each class, interleaved."""
    rng = np.random.default_rng(seed)
    return _interleave([idx[rng.permutation(len(idx))] for idx in _members(labels)])


def herding_order(model, units, labels: np.ndarray, *, seed: int, batch_size: int = 256) -> np.ndarray:
    """iCaRL herding per class on L2-normalised pre-logit features, interleaved."""
    features = pre_logit_features(model, units, batch_size=batch_size).astype(np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit_features = features / np.maximum(norms, 1e-12)
    return _interleave([idx[_herding_order(unit_features[idx])] for idx in _members(labels)])


def gradient_order(model, units, labels: np.ndarray, *, seed: int, batch_size: int = 256) -> np.ndarray:
    """CRAIG per class: facility location on the per-sample head gradients, interleaved."""
    features = pre_logit_features(model, units, batch_size=batch_size).astype(np.float64)
    with torch.no_grad():
        logits = model.vit.head(torch.from_numpy(features).float().to(device_of(model))).double().cpu().numpy()
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise TokenforgeError(f"memory.selection: labels must lie in [0, {logits.shape[1]}) for the model's head")
    orders = []
    for idx in _members(labels):
        a, b = _gradient_factors(features[idx], logits[idx], labels[idx])
        orders.append(idx[_gradient_order(a, b)])
    return _interleave(orders)


herding_order.families = gradient_order.families = ("classification",)  # they read the ViT's features and head


def take(order: np.ndarray, labels: np.ndarray, method: str, per_class: int | dict[int, int]) -> np.ndarray:
    """Indices kept when each class may hold `per_class` samples (one number, or a quota per class label; a class
    not in the dict keeps none): for class-balanced methods the first of each class in `order`; for random the
    first sum-of-quotas (over the classes present) of `order`. Returned in priority order."""
    balanced = is_class_balanced(method)
    quota = per_class if isinstance(per_class, dict) else None
    if quota is None and per_class < 0:
        raise TokenforgeError(f"memory.samples_per_class: must be >= 0, got {per_class}")
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    present = np.unique(labels)
    if not balanced:
        total = per_class * len(present) if quota is None else sum(quota.get(int(c), 0) for c in present)
        return order[:total].copy()
    ordered = labels[order]
    limit = per_class if quota is None else np.array([quota.get(int(c), 0) for c in ordered], dtype=np.int64)
    return order[_rank_within_class(ordered) < limit]


def _rank_within_class(labels: np.ndarray) -> np.ndarray:
    """For each position of a label sequence, how many earlier positions hold the same label."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    grouped = np.lexsort((np.arange(n), labels))  # by class, then by position
    sorted_labels = labels[grouped]
    starts = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[grouped] = np.arange(n) - group_start
    return ranks


def _interleave(orders: list[np.ndarray]) -> np.ndarray:
    """Round-robin over per-class orders (given in ascending class order): the first of every class, then the second, ..."""
    if not orders:
        return np.zeros(0, dtype=np.int64)
    flat = np.concatenate(orders).astype(np.int64)
    rank = np.concatenate([np.arange(len(o)) for o in orders])
    cls = np.concatenate([np.full(len(o), i) for i, o in enumerate(orders)])
    return flat[np.lexsort((cls, rank))]


def _herding_order(f: np.ndarray) -> np.ndarray:
    """iCaRL herding over the rows of f (n, d): step k picks the unpicked row that brings the mean of the k picked rows
    closest to the mean of all rows. Returns the pick order (a permutation of range(n))."""
    f = np.asarray(f, dtype=np.float64)
    n = len(f)
    mean = f.mean(axis=0) if n else np.zeros(f.shape[1:])
    sq = np.einsum("ij,ij->i", f, f)
    picked = np.zeros(n, dtype=bool)
    total = np.zeros_like(mean)
    order = np.empty(n, dtype=np.int64)
    for k in range(1, n + 1):
        # ||mean - (total + f_i) / k||^2 * k^2 = ||r - f_i||^2 with r = k * mean - total; drop the constant ||r||^2.
        r = k * mean - total
        cost = sq - 2.0 * (f @ r)
        cost[picked] = np.inf
        i = int(np.argmin(cost))  # first minimum: ties go to the lower index
        order[k - 1] = i
        picked[i] = True
        total += f[i]
    return order


def _gradient_factors(features: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two factors of each sample's head gradient g_i = a_i outer b_i: a = softmax(logits) - onehot(y), b = [features, 1]."""
    logits = np.asarray(logits, dtype=np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    a = p / p.sum(axis=1, keepdims=True)
    a[np.arange(len(a)), np.asarray(labels, dtype=np.int64)] -= 1.0
    b = np.concatenate([np.asarray(features, dtype=np.float64), np.ones((len(features), 1))], axis=1)
    return a, b


def _gradient_embeddings(features: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample CE gradients w.r.t. the head's (weight | bias), flattened: (n, C * (E + 1))."""
    a, b = _gradient_factors(features, logits, labels)
    return (a[:, :, None] * b[:, None, :]).reshape(len(a), -1)


def _gradient_order(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Facility-location order of the gradients a_i outer b_i, without forming them: <g_i, g_j> = <a_i, a_j> <b_i, b_j>."""
    sq = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b)
    return _facility_location_greedy(lambda rows: (a[rows] @ a.T) * (b[rows] @ b.T), sq)


def _facility_location_order(g: np.ndarray) -> np.ndarray:
    """Greedy facility-location order of the rows of g (n, d) under Euclidean distance (see _facility_location_greedy)."""
    g = np.asarray(g, dtype=np.float64)
    return _facility_location_greedy(lambda rows: g[rows] @ g.T, np.einsum("ij,ij->i", g, g))


def _facility_location_greedy(gram_rows: Callable[[np.ndarray], np.ndarray], sq: np.ndarray) -> np.ndarray:
    """Greedy maximisation of F(S) = sum_i max_{j in S} (c - d_ij), c = max d + eps, over all n points; the pick order.

    `gram_rows(rows)` gives inner products of the given points with all points (len(rows), n), `sq` the squared norms.
    Lazy greedy (Minoux): stale gains are upper bounds because F is submodular, and each gain is computed the same way on
    a shrinking residual, so the bounds hold exactly in floating point; heap keys (-gain, index) make it pick exactly what
    plain greedy with ties to the lower index picks."""
    n = len(sq)
    if n == 0:
        return np.zeros(0, dtype=np.int64)

    def dist_rows(rows: np.ndarray) -> np.ndarray:
        d = np.sqrt(np.maximum(sq[rows, None] + sq[None, :] - 2.0 * gram_rows(rows), 0.0))
        d[np.arange(len(rows)), rows] = 0.0
        return d

    blocks = [np.arange(s, min(s + _CHUNK, n)) for s in range(0, n, _CHUNK)]
    if n <= _DENSE_LIMIT:
        sim = np.concatenate([dist_rows(rows) for rows in blocks])
        d_max = float(sim.max())
        c = d_max * (1.0 + 1e-6) + 1e-12
        np.subtract(c, sim, out=sim)

        def sim_row(j: int) -> np.ndarray:
            return sim[j]

    else:
        d_max = max(float(dist_rows(rows).max()) for rows in blocks)
        c = d_max * (1.0 + 1e-6) + 1e-12

        def sim_row(j: int) -> np.ndarray:
            return c - dist_rows(np.array([j]))[0]

    best = np.zeros(n)  # max similarity of each point to the picked set (0 for the empty set)

    def gain(j: int) -> float:
        return float(np.maximum(sim_row(j) - best, 0.0).sum())

    heap = [(-gain(j), j) for j in range(n)]
    heapq.heapify(heap)
    fresh = np.zeros(n, dtype=np.int64)  # the step at which each point's heap key was computed
    order = np.empty(n, dtype=np.int64)
    for step in range(n):
        while True:
            _, j = heapq.heappop(heap)
            if fresh[j] == step:
                break
            fresh[j] = step
            heapq.heappush(heap, (-gain(j), j))
        order[step] = j
        np.maximum(best, sim_row(j), out=best)
    return order
