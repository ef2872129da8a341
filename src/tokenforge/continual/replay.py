"""The replay mechanism: how the memory that the buffer policy kept (continual/policy.py) is fed back.

Three choices, each a config key:

- `memory.view`, how a kept sample enters the model. `subset` (default): a short sequence of only its kept
  tokens at their own grid positions, so replay costs less compute than whole grids. `fill`: the whole
  grid, the positions it did not keep filled by `memory.fill`: `frequent` (the most frequent code of the
  current task's tokens; on digits the background), `mask` (a learned mask embedding, the model's
  `mask_token`), `mean` (pixels: the mean patch of the current task, as the paper blanks patches to the
  mean colour), or `mtm` (a pretrained masked-token model's predictions); continual/fills.py, where a fill of
  one's own plugs in.
- `memory.schedule`, which rows a step replays. `step` (default): `batch` rows drawn uniformly with
  replacement every step, their loss added to the current batch's. `epoch`: the paper's loader, every
  memory row once per epoch, the memory shuffled per epoch and spread evenly over the epoch's steps, its
  rows weighted like the current batch's in one mean (as a loader over current + memory samples does).
- `train.input_dropout_mode`, how current-task inputs are made to look like replayed ones. `batch`
  (default): from task 1 on, with probability `input_dropout` a whole batch enters as random token subsets
  as short as a memory row (otherwise the model learns "full grid = new class"). `token`: the paper's,
  from task 0 on each token of a current-task input is dropped with probability `input_dropout`, its
  position kept; as subsets a batch stays rectangular by drawing its kept count once from
  Binomial(h*w, 1 - p), as filled grids every token draws its own coin.

Every random draw comes from the one generator the training loop passes in, in a fixed order per step
(dropout coin or mask, subset positions, memory rows), so a run is reproducible and resumes exactly; the
epoch schedule's shuffle comes from a generator seeded by the epoch, so it needs no state of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tokenforge.continual.memory import Memory


def subset(units: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The units (B, h, w[, F]) at `positions` (B, k) -> (B, k[, F]), on the units' device."""
    flat, positions = units.flatten(1, 2), positions.to(units.device)
    if flat.dim() == 2:
        return flat.gather(1, positions)
    return flat.gather(1, positions[:, :, None].expand(-1, -1, flat.shape[2]))


def fill_grid(
    ids: torch.Tensor,
    positions: torch.Tensor,
    grid: tuple[int, int],
    fill: torch.Tensor,
) -> torch.Tensor:
    """Whole grids (B, h, w[, F]) holding `ids` (B, k[, F]) at `positions` (B, k) and `fill` (a code id, or one
    patch (F,)) everywhere else."""
    b, n = len(ids), grid[0] * grid[1]
    out, positions = fill.to(ids.device, ids.dtype).expand(b, n, *ids.shape[2:]).clone(), positions.to(ids.device)
    index = (
        positions
        if ids.dim() == 2
        else positions[:, :, None].expand(-1, -1, ids.shape[2])
    )
    return out.scatter(1, index, ids).reshape(b, *grid, *ids.shape[2:])


def fill_value(units: np.ndarray, fill: str, codebook_size: int) -> torch.Tensor:
    """The value non-kept positions take under the fill `fill` (continual/fills.py), from `units` (N, h, w[, F])."""
    from tokenforge.continual.fills import fill_spec

    return fill_spec(fill).value(units, codebook_size)


@dataclass
class ReplayConfig:
    batch: int  # memory rows per step (schedule step)
    keep: int  # tokens per memory row: the length of a batch-mode subset
    grid: tuple[int, int]
    input_dropout: float = 1.0
    dropout_mode: str = "batch"  # batch | token
    view: str = "subset"  # subset | fill
    fill: torch.Tensor | None = (
        None  # with view fill: the value of non-kept positions (fill_value)
    )
    schedule: str = "step"  # step | epoch
    steps_per_epoch: int = 1
    seed: int = 0  # epoch schedule: the shuffles' seed
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None  # fill mtm: grids with mask ids -> filled grids

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


class Replay:
    def __init__(
        self, memory: Memory, config: ReplayConfig, generator: torch.Generator
    ):
        self.config, self.size, self.generator = config, len(memory), generator
        self.batch = config.batch
        self.keep = config.keep
        self.num_tokens = config.num_tokens
        if config.dropout_mode == "token":  # the paper's: from task 0 on, per token
            self.dropout = config.input_dropout
        else:  # batch subsets of a memory row's length, only when partial rows are replayed
            self.dropout = (
                config.input_dropout
                if self.size and 0 < config.keep < config.num_tokens
                else 0.0
            )
        self.ids = torch.from_numpy(memory.ids)
        self.positions = torch.from_numpy(memory.positions)
        self.labels = torch.from_numpy(memory.labels)
        self._order: tuple[int, torch.Tensor] | None = (
            None  # (epoch, the memory's order in that epoch)
        )
        # Filled views of the memory's rows, made once: they do not change within a task (an MTM fill is argmax).
        self._filled = (
            self._view(self.ids, self.positions)[0]
            if config.view == "fill" and self.size
            else None
        )

    @property
    def weighted(self) -> bool:
        """Whether the memory loss joins the current one as one mean over both (the epoch schedule)."""
        return self.config.schedule == "epoch"

    def current(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A current-task batch as the model takes it: (units, None) for whole grids (float maps channels first),
        or (subset units, positions) under input dropout. `units`: ids (B, h, w) or channels-last maps (B, h, w, D)."""
        if self.dropout:
            if self.config.dropout_mode == "token":
                return self._token_dropout(units)
            if torch.rand((), generator=self.generator) < self.dropout:
                pos = (
                    torch.rand(len(units), self.num_tokens, generator=self.generator)
                    .argsort(1)[:, : self.keep]
                    .sort(1)
                    .values
                )
                return self._view(subset(units, pos), pos)
        return (units.permute(0, 3, 1, 2) if units.is_floating_point() else units), None

    def _token_dropout(
        self, units: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, p = self.num_tokens, self.dropout
        if (
            self.config.view == "fill"
        ):  # every token its own coin; dropped ones take the fill value
            dropped = torch.rand(len(units), n, generator=self.generator) < p
            flat = units.flatten(1, 2).clone()
            flat[dropped] = self.config.fill.to(flat.dtype)
            return self._predicted(flat.reshape(units.shape)), None
        count = torch.binomial(
            torch.tensor(float(n)), torch.tensor(1.0 - p), generator=self.generator
        )
        k = max(1, int(count))
        pos = (
            torch.rand(len(units), n, generator=self.generator)
            .argsort(1)[:, :k]
            .sort(1)
            .values
        )
        return subset(units, pos), pos

    def _view(
        self, ids: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kept units as the model takes them: the subset with its positions, or the filled whole grid."""
        if self.config.view == "fill":
            return self._predicted(fill_grid(ids, positions, self.config.grid, self.config.fill)), None
        return ids, positions

    def _predicted(self, grids: torch.Tensor) -> torch.Tensor:
        return grids if self.config.predict is None else self.config.predict(grids)

    def rows(self, epoch: int, batch: int) -> torch.Tensor | None:
        """The memory rows replayed at this step (None: no memory, or none this step in the epoch schedule)."""
        if not self.size:
            return None
        if self.config.schedule == "step":
            return torch.randint(self.size, (self.batch,), generator=self.generator)
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
            self._order = (epoch, torch.randperm(self.size, generator=g))
        steps = self.config.steps_per_epoch
        lo, hi = (
            math.floor(batch * self.size / steps),
            math.floor((batch + 1) * self.size / steps),
        )
        return self._order[1][lo:hi] if hi > lo else None

    def sample(
        self, epoch: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None:
        """This step's memory batch (units, positions or None for whole grids, labels), or None."""
        m = self.rows(epoch, batch)
        if m is None:
            return None
        if self._filled is not None:
            return self._filled[m], None, self.labels[m]
        units, positions = self._view(self.ids[m], self.positions[m])
        return units, positions, self.labels[m]

    def views(self, memory: Memory) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row of `memory` as replay feeds it (the shortcut probe reads these)."""
        return self._view(
            torch.from_numpy(memory.ids), torch.from_numpy(memory.positions)
        )
