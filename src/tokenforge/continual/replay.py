"""The replay mechanism: how the memory that the buffer policy kept (continual/policy.py) is fed back.

Experience replay of core tokens: every step draws `batch` memory rows uniformly with replacement, and
each enters the model as a short sequence of only its kept tokens at their own grid positions, so
replay costs less compute than whole grids. Its loss is added to the current batch's.

Input dropout: when partial memory rows are replayed, a current-task batch is fed, with probability
`input_dropout`, as random token subsets as short as a memory row. Otherwise the model learns "full
grid = new class" and tells replayed samples apart by their length. Not in task 0 (nothing is
replayed there, and on a 2-class task it kept the model at chance for 8 epochs).

Every random draw comes from the one generator the training loop passes in, in a fixed order per step
(dropout coin, subset positions, memory rows), so a run is reproducible and resumes exactly.
"""

from __future__ import annotations

import torch

from tokenforge.continual.memory import Memory


def subset(units: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The units (B, h, w[, F]) at `positions` (B, k) -> (B, k[, F])."""
    flat = units.flatten(1, 2)
    if flat.dim() == 2:
        return flat.gather(1, positions)
    return flat.gather(1, positions[:, :, None].expand(-1, -1, flat.shape[2]))


class Replay:
    def __init__(self, memory: Memory, batch: int, keep: int, num_tokens: int, input_dropout: float, generator: torch.Generator):
        self.size = len(memory)
        self.batch = batch  # memory rows per step
        self.keep = keep  # tokens per memory row: the length of an input-dropout subset
        self.num_tokens = num_tokens
        self.dropout = input_dropout if self.size and 0 < keep < num_tokens else 0.0
        self.generator = generator
        self.ids = torch.from_numpy(memory.ids)
        self.positions = torch.from_numpy(memory.positions)
        self.labels = torch.from_numpy(memory.labels)

    def current(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A current-task batch as the model takes it: (units, None) for whole grids (float maps channels first),
        or (subset units, positions) under input dropout. `units`: ids (B, h, w) or channels-last maps (B, h, w, D)."""
        if self.dropout and torch.rand((), generator=self.generator) < self.dropout:
            pos = torch.rand(len(units), self.num_tokens, generator=self.generator).argsort(1)[:, : self.keep].sort(1).values
            return subset(units, pos), pos
        return (units.permute(0, 3, 1, 2) if units.is_floating_point() else units), None

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """This step's memory batch (ids, positions, labels), or None when there is no memory."""
        if not self.size:
            return None
        m = torch.randint(self.size, (self.batch,), generator=self.generator)
        return self.ids[m], self.positions[m], self.labels[m]
