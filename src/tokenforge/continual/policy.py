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

from tokenforge.continual.memory import Memory, arrow_stream, kept_units, serialize
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
        """The memory's bytes on disk: one zstd-19 compression (the costly part of every budget fit)."""
        return len(serialize(memory, self.num_codes, self.num_positions, self.num_classes))

    def raw_nbytes(self, memory: Memory) -> int:
        """The memory's Arrow bytes before compression: cheap, an upper guess of `nbytes`."""
        return arrow_stream(memory, self.num_codes, self.num_positions, self.num_classes).size


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

    def every_sample(k: int) -> Memory:
        return _proxy(keys, labels, units, k)

    top = policy.num_positions - 1  # level k - 1: k = 1 is kept even when it does not fit (check_minimum says so)
    slope = (policy.raw_nbytes(every_sample(top + 1)) - policy.raw_nbytes(every_sample(1))) / max(top, 1)
    return 1 + largest_fitting(lambda level: policy.nbytes(every_sample(level + 1)), top, policy.budget, slope)


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


def _kept(memory: Memory, selection: str, quota: dict[int, int]) -> np.ndarray:
    """Per task, the rows (already in priority order) its selection keeps under per-class quotas: their indices."""
    keep = [take(np.flatnonzero(memory.tasks == t), memory.labels, selection, quota) for t in np.unique(memory.tasks)]
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)


def _assemble(memory: Memory, selection: str, quota: dict[int, int]) -> Memory:
    """The memory of the rows `_kept` keeps."""
    return memory.rows(_kept(memory, selection, quota)) if len(memory) else memory


_STEERED = 8  # looks aimed by the sizes seen before plain bisection takes over (a typical fit needs 5-7 looks)


def largest_fitting(nbytes: Callable[[int], int], top: int, budget: int, slope: float) -> int:
    """The largest level in 0..top with nbytes(level) <= budget, for sizes that grow with the level; 0 when none fits
    (level 0 itself is the caller's to report).

    Each nbytes is a zstd-19 compression, so rather than bisect (log2(top) looks) or step (one look per class, ~1000
    at ImageNet scale) the search aims by the sizes seen, which grow about linearly with the level (`_aim`); `slope`
    (bytes per level) is the first guess of that line. Every look moves one end of the bracket (the largest level
    seen to fit, the smallest seen not to), so the answer was compressed and fits. Sizes are not monotone (one more row
    moves zstd-19's output by up to ~1% either way; for the drop past a step of zstd's tables see `_past_table_steps`),
    so this search, as bisection did, stops at one of several levels where a fit meets a miss."""
    if top <= 0:
        return 0
    seen = {0: nbytes(0)}
    if seen[0] > budget:
        return 0
    lo, hi = 0, top + 1  # lo fits, hi does not (top + 1: past the end)
    while hi - lo > 1:
        if len(seen) <= _STEERED:
            level = min(max(_aim(seen, lo, hi, budget, slope), lo + 1), hi - 1)
        else:
            level = (lo + hi) // 2
        seen[level] = nbytes(level)
        lo, hi = (level, hi) if seen[level] <= budget else (lo, level)
    return lo


def _aim(seen: dict[int, int], lo: int, hi: int, budget: int, slope: float) -> int:
    """The next level to look at. With a miss seen: where the line through the bracket's ends meets the budget, kept
    off the ends (sizes jitter by several rows' bytes; this way the bracket shrinks by a quarter at least). Before:
    one past where the line through the last two fits (through level 0 when jitter makes that one fall; level 0 at
    `slope` at first) meets it, so that the next look likely brackets the answer closely."""
    if hi in seen:
        quarter = (hi - lo) // 4
        return min(max(lo + int((budget - seen[lo]) * (hi - lo) // (seen[hi] - seen[lo])), lo + quarter), hi - quarter)
    fits = sorted(level for level in seen if level <= lo)
    for a in (fits[-2], 0) if len(fits) > 1 else ():
        if seen[lo] > seen[a]:
            slope = (seen[lo] - seen[a]) / (lo - a)
            break
    return lo + int((budget - seen[lo]) // slope) + 1 if slope > 0 else (lo + hi) // 2


def _quota_at(level: int, classes: list[int], sizes: np.ndarray, starts: np.ndarray) -> dict[int, int]:
    """Level `level` of the fit as quotas: round q gives one more row to each class that has one (classes in order),
    so level = the rows kept (class-balanced) and round q, step j is q rows per class and one more for the first j."""
    q = int(np.searchsorted(starts, level, side="right")) - 1
    first = np.asarray(classes)[sizes > q][: level - int(starts[q])] if q < len(starts) - 1 else []
    extra = set(np.asarray(first).tolist())
    return {c: q + (c in extra) for c in classes}


def fit_budget(candidates: Memory, policy: Policy, classes: list[int]) -> tuple[Memory, dict[int, int]]:
    """Keep, per class, the same number of top-priority rows (plus one more for the first classes while it
    fits), the most whose file fits the budget. `candidates` rows are in priority order within each task.

    The choices line up as levels, each one row more than the last (`_quota_at`), so the fit is `largest_fitting` over
    them, then `_past_table_steps`: ~7 compressions, ~15 when a step of zstd's tables lies near the budget, instead of
    a bisection over the per-class count and then one per class (~1000 at ImageNet scale)."""
    labels = candidates.labels
    cap = max((int((labels == c).sum()) for c in classes), default=0)
    if policy.samples_per_class is not None:
        cap = min(cap, policy.samples_per_class)
    sizes = np.array([min(int((labels == c).sum()), cap) for c in classes], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum([(sizes > q).sum() for q in range(cap)], dtype=np.int64)]).astype(np.int64)
    top = int(starts[-1])

    def kept(level: int) -> np.ndarray:
        return _kept(candidates, policy.selection, _quota_at(level, classes, sizes, starts))

    sized: dict[bytes, int] = {}  # random selection: levels past a task's last row keep the same rows; sized once
    streamed: dict[int, int] = {}

    def nbytes(level: int) -> int:
        index = kept(level)
        key = index.tobytes()
        if key not in sized:
            sized[key] = policy.nbytes(candidates.rows(index))
        return sized[key]

    def raw(level: int) -> int:
        if level not in streamed:
            streamed[level] = policy.raw_nbytes(candidates.rows(kept(level)))
        return streamed[level]

    level = top
    if policy.budget is not None and top > 0:
        slope = raw(top) / top
        level = largest_fitting(nbytes, top, policy.budget, slope)
        level = _past_table_steps(level, top, nbytes, raw, policy.budget, slope)
    return candidates.rows(kept(level)) if len(candidates) else candidates, _quota_at(level, classes, sizes, starts)


_ZSTD_SIZED_UNTIL = 1 << 23  # zstd-19 fits its window and tables to inputs up to 8 MiB (its window), not beyond
_ZSTD_STEP_GAIN = 0.25  # the most a step of its tables is taken to save (measured: ~19% past 64 KiB)


def _past_table_steps(level: int, top: int, nbytes: Callable[[int], int], raw: Callable[[int], int], budget: int,
                      slope: float) -> int:  # fmt: skip
    """`level`, or a larger level that fits past a step of zstd's tables. zstd fits its window and tables to the
    input's size, rounded up to a power of two, so a stream just past a power of two compresses better (by a fifth past
    64 KiB, on rows of 8 tokens) and a level there may fit though `level + 1` did not. One look past the next step (its
    level found by bisection on the Arrow bytes, no compression) when even at the most a step saves it could fit, a
    search on from there when it does, and so on."""
    while level < top:
        step = 1 << (raw(level + 1) - 1).bit_length()  # the power of two the next level's stream rounds up to
        if step >= _ZSTD_SIZED_UNTIL or raw(top) <= step:
            return level
        lo, hi = level + 1, top  # the first level whose stream is past `step`
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if raw(mid) <= step else (lo, mid)
        if nbytes(level) * raw(lo) / raw(level) * (1 - _ZSTD_STEP_GAIN) > budget or nbytes(lo) > budget:
            return level
        if level > 0 and nbytes(level) > nbytes(0):  # bytes per level as compressed so far (both sized already)
            slope = (nbytes(level) - nbytes(0)) / level
        level = lo + largest_fitting(lambda x, at=lo: nbytes(at + x), top - lo, budget, slope)
    return level


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
