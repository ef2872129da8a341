"""The buffer policy: what the replay memory keeps after each task, within a byte budget.

`Policy` holds the choices (`memory.*` in the config): the method, how samples are selected
(continual/selection.py), how tokens are scored (continual/scorers.py), the share of tokens kept, and
the budget. `build_memory` applies it after a task: rank this task's samples, score their tokens, and
refit the memory of all tasks so far to the budget.

Invariants: the budget (bytes, or a share of the training set's token bytes) holds for the memory of
all tasks together, measured as its file's bytes on disk (continual/memory.py `serialize`). Every seen
class gets the same number of samples, plus one for the first classes while the leftover bytes allow;
when a new task arrives, older tasks give up their last-ranked samples, so the memory stays
class-balanced and within budget. How the memory is fed back is not decided here (continual/replay.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from tokenforge.continual.memory import Memory, kept_units, serialize
from tokenforge.continual.methods import MemoryMethod, keep_count, memory_method
from tokenforge.continual.selection import take
from tokenforge.errors import TokenforgeError

_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def resolve_budget(value, token_bytes: int | None) -> int | None:
    """`memory.budget` in bytes: an int (bytes), "N%" of the training set's token bytes, or None (no limit)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, str):
        match = _BUDGET.match(value)
        if match:
            if token_bytes is None:
                raise TokenforgeError(f"memory.budget: {value!r} is a share of the token bytes, but no train tokens were given")
            share = float(match.group(1)) / 100
            if not 0 < share <= 1:
                raise TokenforgeError(f"memory.budget: {value!r} must be a share in (0%, 100%]")
            return int(share * token_bytes)
        if value.strip().isdigit():
            value = int(value)
        else:
            raise TokenforgeError(f"memory.budget: {value!r} is neither a byte count nor a percentage like '1%'")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TokenforgeError(f"memory.budget: {value!r} must be a positive number of bytes or a percentage like '1%'")
    return value


@dataclass
class Policy:
    """What the memory keeps; `tokens` is the per-sample token count (k) once resolved."""

    method: str = "coretokenset"
    selection: str = "class_balanced"
    scorer: str = "random"
    token_fraction: float = 0.5
    budget: int | None = None  # bytes for the memory of all tasks together; None: no limit
    samples_per_class: int | None = None  # optional cap per class; None: only the budget limits
    num_codes: int = 256  # bounds of the stored values, for the smallest integer types
    num_positions: int = 16
    num_classes: int = 256
    tokens: int = field(default=0)

    def __post_init__(self):
        impl = self.implementation  # a one-line error for an unknown name or a wrong object
        if self.samples_per_class is not None and self.samples_per_class < 1:
            raise TokenforgeError(
                f"memory.samples_per_class: must be >= 1, got {self.samples_per_class} (memory.method none keeps no memory)"
            )
        if impl.keeps_memory and self.budget is None and self.samples_per_class is None:
            raise TokenforgeError(f"memory.budget: method {self.method!r} needs a budget or memory.samples_per_class")
        if impl.keeps_memory:
            tokens = impl.tokens_per_sample(self.num_positions, self.token_fraction)
            if tokens is not None:  # None: fitted to the budget later (`resolved`), so a given count is kept
                if not 1 <= tokens <= self.num_positions:
                    raise TokenforgeError(
                        f"memory.method: {self.method!r} keeps {tokens} tokens per sample; a sample has 1..{self.num_positions}"
                    )
                self.tokens = tokens

    @property
    def implementation(self) -> MemoryMethod:
        """The memory method object `method` names (continual/methods.py)."""
        return memory_method(self.method)

    @property
    def keeps_memory(self) -> bool:
        return self.implementation.keeps_memory

    @property
    def trains_on_seen(self) -> bool:
        """joint: each task trains on every task's data so far."""
        return self.implementation.trains_on_seen

    def nbytes(self, memory: Memory) -> int:
        return len(serialize(memory, self.num_codes, self.num_positions, self.num_classes))


def scattered(rows: int, num_positions: int, k: int) -> np.ndarray:
    """`rows` rows of k random ascending positions (seeded): sizing stand-ins that compress like chosen ones, as
    attribution scatters them (contiguous ones would compress far better than real memories)."""
    rng = np.random.default_rng(0)
    return np.sort(np.argsort(rng.random((rows, num_positions)), axis=1)[:, :k], axis=1).astype(np.int64)


def _proxy(keys: list[str], labels: np.ndarray, units: np.ndarray, k: int, task: int = 0) -> Memory:
    """Samples with k random units each as kept tokens: about the right size, for sizing before any scoring."""
    positions = scattered(len(units), units.shape[1] * units.shape[2], k)
    return Memory(list(keys), labels.astype(np.int64), np.full(len(units), task, np.int64), positions, kept_units(units, positions))


def first_of_each_class(labels: np.ndarray) -> np.ndarray:
    """The index of each class's first sample, classes ascending."""
    return np.array([np.flatnonzero(labels == c)[0] for c in np.unique(labels)], dtype=np.int64)


def resolve_tokens(policy: Policy, keys: list[str], labels: np.ndarray, units: np.ndarray) -> int:
    """Tokens per sample. `coretokens`: the most that lets every training sample (all tasks) fit the budget, at least 1."""
    if policy.implementation.tokens_per_sample(policy.num_positions, policy.token_fraction) is not None:
        return policy.tokens
    if policy.budget is None:
        return keep_count(policy.num_positions, policy.token_fraction)
    lo, hi = 1, policy.num_positions
    while lo < hi:  # the largest k whose all-sample memory fits
        mid = (lo + hi + 1) // 2
        memory = _proxy(keys, labels, units, mid)
        if policy.nbytes(memory) <= policy.budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def resolved(policy: Policy, keys: list[str], labels: np.ndarray, units: np.ndarray) -> Policy:
    """The policy with its token count fixed for these samples (`resolve_tokens`), ready to build memories."""
    return replace(policy, tokens=resolve_tokens(policy, keys, labels, units))


def check_minimum(policy: Policy, keys: list[str], labels: np.ndarray, units: np.ndarray) -> int:
    """Bytes of one sample per class (of every class given) at the policy's token count; raise if over budget."""
    pick = first_of_each_class(labels)
    memory = _proxy([keys[i] for i in pick], labels[pick], units[pick], policy.tokens)
    need = policy.nbytes(memory)
    if policy.budget is not None and need > policy.budget:
        raise TokenforgeError(
            f"memory.budget: {policy.budget:,} bytes cannot hold one sample per class ({len(pick)} classes x "
            f"{policy.tokens} tokens); the minimum is about {need:,} bytes"
        )
    return need

# --- fitting the budget ---------------------------------------------------------------------------


def _assemble(memory: Memory, selection: str, quota: dict[int, int]) -> Memory:
    """Per task, the rows (already in priority order) its selection keeps under per-class quotas."""
    keep = []
    for t in np.unique(memory.tasks):
        rows = np.flatnonzero(memory.tasks == t)
        keep.append(take(rows, memory.labels, selection, quota))
    return memory.rows(np.concatenate(keep)) if keep else memory


def fit_budget(candidates: Memory, policy: Policy, classes: list[int]) -> tuple[Memory, dict[int, int]]:
    """Keep, per class, the same number of top-priority rows (plus one more for the first classes while it
    fits), the most whose file fits the budget. `candidates` rows are in priority order within each task."""
    sizes = {c: int((candidates.labels == c).sum()) for c in classes}
    cap = max(sizes.values(), default=0)
    if policy.samples_per_class is not None:
        cap = min(cap, policy.samples_per_class)

    def build(quota):
        return _assemble(candidates, policy.selection, quota)

    def fits(quota) -> bool:
        return policy.budget is None or policy.nbytes(build(quota)) <= policy.budget

    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(dict.fromkeys(classes, mid)):
            lo = mid
        else:
            hi = mid - 1
    quota = dict.fromkeys(classes, lo)
    if lo < cap and policy.budget is not None:
        for c in classes:  # the leftover bytes: one more sample for as many classes as fit, in class order
            if sizes[c] > lo:
                trial = {**quota, c: lo + 1}
                if fits(trial):
                    quota = trial
    return build(quota), quota

# --- building the memory after a task ---------------------------------------------------------------


def refit(policy: Policy, previous: Memory, order: np.ndarray, labels: np.ndarray,
          rows: Callable[[np.ndarray, np.ndarray], Memory], positions_of: Callable[[np.ndarray], np.ndarray],
          task: int, seen: list[int], unit: tuple[str, str, str] = ("sample", "class", "classes")) -> tuple[Memory, dict]:  # fmt: skip
    """The memory after `task`, for every family: the previous rows and this task's, refitted to the budget.

    `order` is this task's priority order (`rank_samples`) and `labels` its rows' classes (groups); the family says
    how rows are made (`rows(indices, positions) -> Memory`) and which positions a chosen row keeps
    (`positions_of(indices) -> (n, k)`, ascending: attribution is the costly part, so it runs only on what could be
    kept). `unit` names a row, a class and classes in the error message ("item", "group", "groups" for text)."""
    cap, k, n = policy.samples_per_class, policy.tokens, policy.num_positions
    if policy.budget is not None and k < n:
        # Per class, twice what the budget would hold of rows of this size (sized with stand-in tokens), plus one.
        _, quota = fit_budget(previous.concat(rows(order, scattered(len(order), n, k))), policy, seen)
        bound = 2 * max(quota[c] for c in np.unique(labels).tolist()) + 1
        cap = bound if cap is None else min(cap, bound)
    if cap is not None:
        order = take(order, labels, policy.selection, cap)
    candidates = previous.concat(rows(order, positions_of(order)))
    memory, quota = fit_budget(candidates, policy, seen)
    if policy.budget is not None and any(quota[c] == 0 for c in seen):
        need = policy.nbytes(_assemble(candidates, policy.selection, dict.fromkeys(seen, 1)))
        raise TokenforgeError(
            f"memory.budget: {policy.budget:,} bytes cannot hold one {unit[0]} per {unit[1]} ({len(seen)} {unit[2]} x "
            f"{k} tokens) after task {task}; the minimum is about {need:,} bytes"
        )
    return memory, {"samples_per_class": {int(c): int((memory.labels == c).sum()) for c in seen}}


def build_memory(
    model,
    previous: Memory,
    keys: list[str],
    labels: np.ndarray,
    units: np.ndarray,
    task: int,
    seen: list[int],
    policy: Policy,
    seed: int,
) -> tuple[Memory, dict]:
    """The classification memory after `task`: the previous one plus this task's samples, refitted to the budget.

    `keys/labels/units` are this task's training samples; `seen` the classes of tasks 0..task."""
    from tokenforge.continual.scorers import token_scores, top_positions
    from tokenforge.continual.selection import rank_samples

    if not policy.keeps_memory or len(keys) == 0:
        return Memory.empty(), {}
    model.eval()
    # coretokens keeps every sample; its order only says which go first if even one token each is too much.
    order = rank_samples(model, units, labels, policy.selection, seed)
    k, n = policy.tokens, policy.num_positions

    def rows(idx: np.ndarray, positions: np.ndarray) -> Memory:
        tasks = np.full(len(idx), task, np.int64)
        return Memory([keys[i] for i in idx], labels[idx].astype(np.int64), tasks, positions, kept_units(units[idx], positions))

    def positions_of(idx: np.ndarray) -> np.ndarray:
        if k >= n:
            return np.broadcast_to(np.arange(n, dtype=np.int64), (len(idx), k)).copy()
        scores = token_scores(model, units[idx], labels[idx], policy.scorer, seed)
        return np.sort(top_positions(scores, k), axis=1)  # ascending positions compress better

    return refit(policy, previous, order, labels, rows, positions_of, task, seen)
