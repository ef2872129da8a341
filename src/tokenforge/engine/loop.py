"""The training loop of one task, as the method reads: per step, a current-task batch (augmented, maybe as a
token subset), the loss of the family over the outputs allowed so far, plus the loss of a replayed memory
batch; one backward and one optimizer step through the DeepSpeed engine.

Everything around the method is a callback (engine/callbacks.py): progress bars, MLflow step and epoch
metrics, resumable checkpoints. A callback sees the loop and its `LoopState` and may not change what is
computed. Every random draw comes from the loop's generators, in a fixed order, and their states are
part of a checkpoint, so a resumed run equals an uninterrupted one. The model is told the epoch when each one
starts (`set_epoch`: token expansion's stages count epochs within the task) and, before every step, how far the
task's training is (`set_progress`: hard routing's temperature follows it), from the state, so also on resume.

Data parallel: each rank trains on its own slice of the task's samples, padded to equal length as
DistributedSampler does, so every rank takes the same number of steps and no collective waits forever. Only that
slice goes onto the rank's device, code ids at the narrow type they were read in (data/tokens.py `narrow_dtype`);
a batch becomes long on the device (`widened`), just before the model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LoopState:
    """Where training is: enough, with the generators' states, to continue exactly after a restart."""

    epoch: int = 0
    batch: int = 0  # the next batch of `epoch`
    step: int = 0
    seen_samples: int = 0
    order: torch.Tensor | None = None  # this epoch's sample order (None: draw one at the epoch's start)
    loss_sum: float = 0.0  # this epoch's running sums
    correct: int = 0
    loss: float = 0.0  # the last step's loss
    epoch_loss: float = 0.0  # the last finished epoch's figures
    epoch_acc: float = 0.0
    rate: float = 0.0  # samples/s since this process started training


class Callback:
    """Hooks of the training loop; each gets the loop (its state in `loop.state`). The default does nothing."""

    def on_train_start(self, loop: "TrainLoop") -> None: ...

    def on_step_end(self, loop: "TrainLoop") -> None: ...

    def on_epoch_end(self, loop: "TrainLoop") -> None: ...

    def on_train_end(self, loop: "TrainLoop") -> None: ...


def rank_slice(n: int, rank: int, world: int) -> torch.Tensor:
    """This rank's sample indices: slices of equal length, padded by wrapping around."""
    per_rank = math.ceil(n / world)
    return (torch.arange(per_rank * world) % n)[rank::world]


def device_units(units: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor of `units` sharing their memory: uint16 code ids as their int16 bits (every device moves and indexes
    int16; torch's uint16 support is partial), everything else as it is."""
    if isinstance(units, torch.Tensor):
        return units.view(torch.int16) if units.dtype == torch.uint16 else units
    return torch.from_numpy(units.view(np.int16) if units.dtype == np.uint16 else units)


def widened(batch: torch.Tensor) -> torch.Tensor:
    """A batch of `device_units` as the model takes it, where it is: code ids (B, h, w) as long (int16 bits read back
    as uint16), pixel patches (B, h, w, F) unchanged."""
    if batch.ndim != 3:
        return batch
    return batch.long() & 0xFFFF if batch.dtype == torch.int16 else batch.long()


def rank_units(units, local: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This rank's rows of `units` on `device` (all of them, without a copy, when the rank has every row in order)
    and where sample i of the task sits among them (None: at i)."""
    units = device_units(units)
    if torch.equal(local, torch.arange(len(units))):
        return units.to(device), None
    slot = torch.zeros(len(units), dtype=torch.long)
    slot[local] = torch.arange(len(local))
    return units[local].to(device), slot


class TrainLoop:
    def __init__(self, engine, family, replay, units, labels, *, local, epochs, batch_size, generator, augmenter=None, callbacks=()):
        self.engine, self.family, self.replay, self.augmenter = engine, family, replay, augmenter
        self.device = engine.device
        # this rank's samples (code ids at their narrow type, or patches), resident on the compute device, where
        # batches are indexed (random draws stay on the CPU and name the task's samples); labels on the CPU
        self.units, self.slot = rank_units(units, local, self.device)
        self.labels, self.local = labels, local
        self.epochs, self.batch_size, self.generator = epochs, batch_size, generator
        self.steps_per_epoch = max(1, math.ceil(len(local) / batch_size))
        self.callbacks = list(callbacks)
        self.state = LoopState()

    def _emit(self, hook: str) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self)

    def run(self) -> LoopState:
        """Train from `self.state` (fresh, or restored by a callback at train start) to the last epoch."""
        self.engine.train()
        self._emit("on_train_start")
        self.t_start = time.perf_counter()
        s = self.state
        model = getattr(self.engine, "module", self.engine)  # the DeepSpeed engine wraps the model
        while s.epoch < self.epochs:
            if hasattr(model, "set_epoch"):
                model.set_epoch(s.epoch)
            if s.order is None:
                s.order = self.local[torch.randperm(len(self.local), generator=self.generator)]
                s.loss_sum, s.correct, s.batch = 0.0, 0, 0
            while s.batch < self.steps_per_epoch:
                if hasattr(model, "set_progress"):  # 0 at the task's first step, 1 at its last
                    total = self.epochs * self.steps_per_epoch
                    model.set_progress((s.epoch * self.steps_per_epoch + s.batch) / max(1, total - 1))
                idx = s.order[s.batch * self.batch_size : (s.batch + 1) * self.batch_size]
                self.train_step(idx)
                s.batch += 1
                self._emit("on_step_end")
            s.epoch_loss, s.epoch_acc = s.loss_sum / len(self.local), s.correct / len(self.local)
            s.rate = s.seen_samples / (time.perf_counter() - self.t_start)
            self._emit("on_epoch_end")
            s.epoch, s.order, s.batch = s.epoch + 1, None, 0
        self._emit("on_train_end")
        return s

    def train_step(self, idx: torch.Tensor) -> None:
        """One step of the method: the step's loss (`step_loss`), one backward and one optimizer step."""
        s = self.state
        loss = self.step_loss(idx)
        self.engine.backward(loss)
        self.engine.step()
        s.loss = loss.item()
        s.loss_sum += s.loss * len(idx)
        s.seen_samples += len(idx)
        s.step += 1

    def joined(self, loss: torch.Tensor, rows: int, memory_loss: torch.Tensor, memory_rows: int) -> torch.Tensor:
        """The current batch's loss with the memory batch's: one mean over both rows (the epoch schedule, as one
        loader over current and memory samples), else their sum."""
        if self.replay.weighted:
            return (loss * rows + memory_loss * memory_rows) / (rows + memory_rows)
        return loss + memory_loss

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The units of the task's samples `idx` (this rank's), on the device, as the model takes them."""
        at = idx if self.slot is None else self.slot[idx]
        return widened(self.units[at.to(self.units.device)])

    def step_loss(self, idx: torch.Tensor) -> torch.Tensor:
        """The loss of a step: current batch (+ augmentation, maybe as a subset) and a memory batch."""
        family, s = self.family, self.state
        units, targets = self.rows(idx), family.targets(self.labels[idx])
        if self.augmenter is not None:  # augmented grids enter as embedding maps, channels last for subsets
            units, targets = self.augmenter.embed(self.augmenter.augment_ids(units), targets)
            units = units.permute(0, 2, 3, 1)
        logits = family.restrict(self.forward(*self.replay.current(units)))
        loss = family.loss(logits, targets)
        s.correct += family.correct(logits, self.labels[idx])
        memory = self.replay.sample(s.epoch, s.batch)
        if memory is not None:
            units, positions, labels = memory
            memory_loss = family.loss(family.restrict(self.forward(units, positions)), labels)
            loss = self.joined(loss, len(idx), memory_loss, len(labels))
        return loss

    def forward(self, units: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:
            return self.engine(units.to(self.device))
        return self.engine(units.to(self.device), positions.to(self.device))
