"""Token expansion (ToE, `train.token_expansion`): the blocks after block `after` see a growing subset of the tokens
while training, the tokens left out merged into the kept ones (METHODS.md §3; Osilly/TokenExpansion,
`token_select.py`).

A schedule, not an architecture: no parameters, nothing in the saved model. `TokenViT.set_expansion(config)` turns
it on, `TokenViT.set_epoch(epoch)` (called by the training loop at every epoch's start) moves it through its stages;
it thins only forwards that train (`model.training` and gradients enabled) with no attention probe, so evaluation,
memory scoring and the shortcut probe see every token. On block `after`'s output, before the next block:
1. prefix tokens (class token, prompts: `vit.num_prefix_tokens`) are split off and re-attached untouched;
2. seeds: the first int(M * r0) of the M other tokens at sequence indices i with i % int(1 // r0) == 0 (fixed, not
   data-dependent; raster order for a full grid);
3. expansion: every stage up to the current one adds its tokens in `chunks` chunks; per chunk, each unselected
   token's largest cosine similarity to the selected ones, and the chunk-size tokens with the *lowest* (the most
   novel) move in;
4. merge: each left-out token is averaged into its most similar kept token (scatter_reduce "mean" with the kept
   token itself included); gradients flow through the merge, selection is under no_grad.
The kept tokens' grid positions go with them: the blocks after take `positions`. A replayed subset is thinned the
same way, its M being the subset's length.

Stages count epochs within each task (the loop's epoch restarts at 0 for every task): stage s is the number of
entries of `steps` that are <= the epoch, minus one (the official code's bisect_right(expansion_step, epoch),
which is 1-based); s = -1 (an epoch before steps[0]) and a stage keeping 1.0 leave the sequence whole. Tokens
added per stage are the official counts: int(M * (keep[s] - keep[s-1])) (keep[-1] = r0), except the last stage
of `keep`, which tops up to int(M * keep[-1]) in all. With M = 196 and the defaults: 98 / 147 / 196 kept.

Torch-free at import (torch is imported where tensors are made), so the CLI builds its flags from the dataclass.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenforge.errors import TokenforgeError

if TYPE_CHECKING:
    import torch

__all__ = ["ExpansionConfig", "expand", "seeds"]

KEY = "train.token_expansion"  # where the settings live in the config, for error messages


@dataclass(frozen=True)
class ExpansionConfig:
    """The ToE schedule. The DeiT defaults (0/100/200 of 300 epochs, keep 0.5/0.75/1.0) scaled to our 30 epochs."""

    steps: tuple[int, ...] = (0, 10, 20)  # epochs of each task at which the stages start (0-based, increasing)
    keep: tuple[float, ...] = (0.5, 0.75, 1.0)  # share of the non-prefix tokens kept in each stage, non-decreasing
    r0: float = 0.25  # share of seeds (the paper's initial keep rate); DeiT-T/S in EfficientTrain use 0.3
    chunks: int = 2  # each stage's tokens join in this many chunks (the official `expansion_multiple_stage`)
    after: int = 0  # applied to this block's output, before block after + 1 (the official code: after block 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "keep", tuple(float(k) for k in self.keep))
        if not self.steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.steps):
            raise TokenforgeError(f"{KEY}.steps: must be whole epochs >= 0, got {list(self.steps)}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise TokenforgeError(f"{KEY}.steps: must increase, got {list(self.steps)}")
        if len(self.keep) != len(self.steps):
            raise TokenforgeError(f"{KEY}.keep: one keep rate per stage, got {len(self.keep)} for {len(self.steps)} steps")
        if not 0.0 < self.r0 <= 1.0:
            raise TokenforgeError(f"{KEY}.r0: must be in (0, 1], got {self.r0}")
        if any(not 0.0 < k <= 1.0 for k in self.keep) or any(b < a for a, b in zip(self.keep, self.keep[1:])):
            raise TokenforgeError(f"{KEY}.keep: rates in (0, 1], non-decreasing, got {list(self.keep)}")
        if self.keep[0] < self.r0:
            raise TokenforgeError(f"{KEY}.keep: the first stage keeps at least the seeds (r0 {self.r0}), got {self.keep[0]}")
        if isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or self.chunks < 1:
            raise TokenforgeError(f"{KEY}.chunks: must be an integer >= 1, got {self.chunks!r}")
        if isinstance(self.after, bool) or not isinstance(self.after, int) or self.after < 0:
            raise TokenforgeError(f"{KEY}.after: must be a block index >= 0, got {self.after!r}")

    def check_depth(self, depth: int) -> None:
        """`after` must leave a block to run on the thinned sequence."""
        if self.after >= depth - 1:
            raise TokenforgeError(f"{KEY}.after: must be below the last block ({depth - 1} for depth {depth}), got {self.after}")

    def stage(self, epoch: int) -> int:
        """The stage of `epoch` (0-based within the task): -1 before steps[0], else an index into `keep`."""
        return bisect.bisect_right(self.steps, epoch) - 1

    def thins(self, epoch: int) -> bool:
        """Whether the stage of `epoch` leaves tokens out (not before the first step, not at a keep rate of 1.0)."""
        stage = self.stage(epoch)
        return stage >= 0 and self.keep[stage] < 1.0

    def chunk_sizes(self, m: int, stage: int) -> list[int]:
        """Tokens added per chunk, stages 0..`stage` in order, after the seeds: the official counts for M = m."""
        rates = [self.keep[0] - self.r0] + [b - a for a, b in zip(self.keep, self.keep[1:])]
        sizes = []
        for s in range(stage + 1):
            if s == len(self.keep) - 1:  # the last stage tops up to int(m * keep[-1]), whatever rounding took before
                n = int(m * self.keep[-1]) - int(m * (self.r0 + sum(rates[:s])))
            else:
                n = int(m * rates[s])
            n = max(n, 0)  # never below 0 (keep rates equal up to float rounding)
            part = n // self.chunks
            sizes += [part] * (self.chunks - 1) + [n - (self.chunks - 1) * part]
        return sizes


def seeds(m: int, r0: float) -> list[int]:
    """The seed indices among m tokens: the first int(m * r0) indices i with i % int(1 // r0) == 0."""
    return list(range(0, m, int(1 // r0)))[: int(m * r0)]


def expand(
    x: torch.Tensor, positions: torch.Tensor, config: ExpansionConfig, stage: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin x (B, prefix + M, E) to its prefix tokens and the kept tokens of `stage`, the rest merged into them;
    positions (B, M) -> the kept tokens' positions. Returned unchanged when nothing would be left out (also when M
    is too short for a seed)."""
    import torch

    tokens = x[:, prefix:]
    m, e = tokens.shape[1:]
    seed, sizes = seeds(m, config.r0), config.chunk_sizes(m, stage)
    if not seed or len(seed) + sum(sizes) >= m:
        return x, positions
    keep_idx, rest_idx, into = _select(tokens, seed, sizes)

    def rows(idx: torch.Tensor) -> torch.Tensor:
        return tokens.gather(1, idx[..., None].expand(-1, -1, e))

    merged = rows(keep_idx).scatter_reduce(1, into[..., None].expand(-1, -1, e), rows(rest_idx), "mean", include_self=True)
    return torch.cat([x[:, :prefix], merged], dim=1), positions.gather(1, keep_idx)


def _select(tokens: torch.Tensor, seed: list[int], sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which tokens stay (B, n) in the order they joined, which go (B, M - n) in sequence order, and for each token
    that goes the index (into the kept ones) of its most similar kept token."""
    import torch
    import torch.nn.functional as F

    b, m, _ = tokens.shape
    with torch.no_grad():
        unit = F.normalize(tokens.detach().float(), dim=-1)
        cosine = unit @ unit.transpose(1, 2)  # (B, M, M)
        joined = [torch.tensor(seed, device=tokens.device).expand(b, -1)]
        chosen = torch.zeros(b, m, dtype=torch.bool, device=tokens.device)
        chosen[:, seed] = True
        nearest = cosine[:, :, seed].amax(-1)  # each token's largest cosine to the chosen ones
        for size in sizes:
            if size == 0:
                continue
            # the most novel first; stable, so ties go in sequence order
            new = nearest.masked_fill(chosen, float("inf")).argsort(dim=-1, stable=True)[:, :size]
            joined.append(new)
            chosen.scatter_(1, new, True)
            nearest = torch.maximum(nearest, cosine.gather(2, new[:, None, :].expand(-1, m, -1)).amax(-1))
        keep_idx = torch.cat(joined, dim=1)
        n = keep_idx.shape[1]
        rest_idx = chosen.to(torch.uint8).argsort(dim=-1, stable=True)[:, : m - n]  # the unchosen, in sequence order
        to_kept = cosine.gather(1, rest_idx[..., None].expand(-1, -1, m)).gather(2, keep_idx[:, None, :].expand(-1, m - n, -1))
        into = to_kept.argmax(dim=-1)  # the first of equals, as torch.max
    return keep_idx, rest_idx, into
