"""Replay's fills (`memory.fill`): what the non-kept positions of a replayed grid hold under `memory.view: fill`.

A fill is an object with
    input             the input it is for: "tokens" (code ids) or "pixels" (patches)
    mask_token        True: the model needs a learned mask embedding (code id `codebook_size`) to read it
    needs_fill_model  True: a pretrained masked-token model predicts the non-kept codes (`--fill-model`)
    value(units, codebook_size) -> torch.Tensor
                      the value of every non-kept position: a code id, or one patch (F,), from the current task's
                      training units (N, h, w[, F])
A fill of your own (`memory.fill: "mylab.fills:NOISE"`, or an entry point in `tokenforge.fills`) is such an object;
subclass `Fill` and override `value`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Fill:
    input: str = "tokens"
    mask_token: bool = False
    needs_fill_model: bool = False

    def value(self, units: np.ndarray, codebook_size: int) -> torch.Tensor:
        """The mask id: one past the codebook (the model's mask embedding; also what an MTM filler replaces)."""
        return torch.tensor(codebook_size)


@dataclass(frozen=True)
class Frequent(Fill):
    def value(self, units: np.ndarray, codebook_size: int) -> torch.Tensor:
        """The current task's most frequent code (on digits, the background)."""
        return torch.tensor(int(np.bincount(units.reshape(-1)).argmax()))


@dataclass(frozen=True)
class MeanPatch(Fill):
    input: str = "pixels"

    def value(self, units: np.ndarray, codebook_size: int) -> torch.Tensor:
        """The mean patch of the current task, rounded to uint8 (the paper blanks patches to the mean colour)."""
        return torch.from_numpy(np.rint(units.reshape(-1, units.shape[-1]).mean(0)).astype(np.uint8))


FREQUENT = Frequent()
MASK = Fill(mask_token=True)  # a learned mask embedding
MEAN = MeanPatch()
MTM = Fill(needs_fill_model=True)  # the mask id, then a masked-token model's predictions in its place


def fill_spec(name: str) -> Fill:
    """The fill `name` names (a built-in, an installed plugin's name or an import path)."""
    from tokenforge.continual import FILLS

    return FILLS.load(name)
