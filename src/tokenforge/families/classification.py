"""Class-incremental classification: targets are class labels, the loss is cross-entropy over the classes
seen so far, the prediction is the best of those classes (no task id at test time).

Restricting to seen classes fills the other logits with a large finite value, not -inf: soft (CutMix)
targets times -inf would give NaN, and an argmax is the same either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNSEEN = -1e9  # the logit of a class not seen yet


class Classification:
    name = "classification"
    memory_columns: tuple[str, ...] = ()  # a memory row's label is its whole target

    def __init__(self, num_classes: int, seen: list[int]):
        self.num_classes = num_classes
        self.seen = list(seen)
        self._unseen = torch.ones(num_classes, dtype=torch.bool)
        self._unseen[self.seen] = False

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot float targets (B, C): augmentations such as CutMix mix them by area."""
        return F.one_hot(labels, self.num_classes).float()

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """fp32 logits with the classes not seen so far at UNSEEN."""
        return logits.float().masked_fill(self._unseen.to(logits.device), UNSEEN)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of restricted logits; `targets` are class indices (B,) or probabilities (B, C)."""
        return F.cross_entropy(logits, targets.to(logits.device))

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> int:
        return int((logits.argmax(1).cpu() == labels).sum())

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The best seen class of each row of raw logits."""
        return self.restrict(logits).argmax(1)
