"""Class-incremental classification: targets are class labels, the loss is cross-entropy over the classes
seen so far, the prediction is the best of those classes (no task id at test time).

The stage hooks (families/__init__.py): `split` cuts the shard's class names (--classes) into tasks, `training_job`
is the TokenViT's job (families/classification_job.py), `evaluate` one row of the accuracy matrix (engine/evaluate.py).

Restricting to seen classes fills the other logits with a large finite value, not -inf: soft (CutMix)
targets times -inf would give NaN, and an argmax is the same either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json

if TYPE_CHECKING:
    import torch

UNSEEN = -1e9  # the logit of a class not seen yet


class Classification:
    """(torch is imported where a job uses it, so the Snakefile can read the class's attributes without it.)"""

    name = "classification"
    memory_columns: tuple[str, ...] = ()  # a memory row's label is its whole target
    reads_text = False  # the split reads class names, not the token file's text (families/__init__.py)

    def __init__(self, num_classes: int, seen: list[int]):
        import torch

        self.num_classes = num_classes
        self.seen = list(seen)
        self._unseen = torch.ones(num_classes, dtype=torch.bool)
        self._unseen[self.seen] = False

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot float targets (B, C): augmentations such as CutMix mix them by area."""
        import torch.nn.functional as F

        return F.one_hot(labels, self.num_classes).float()

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """fp32 logits with the classes not seen so far at UNSEEN."""
        return logits.float().masked_fill(self._unseen.to(logits.device), UNSEEN)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of restricted logits; `targets` are class indices (B,) or probabilities (B, C)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, targets.to(logits.device))

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> int:
        return int((logits.argmax(1).cpu() == labels).sum())

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The best seen class of each row of raw logits."""
        return self.restrict(logits).argmax(1)

    # --- stage hooks (families/__init__.py) ------------------------------------------------------------------
    @classmethod
    def split(cls, args):
        """The shard's class names (classes.json, --classes), cut into tasks by class."""
        from tokenforge.families import SplitPlan

        if args.classes is None:
            raise TokenforgeError("--classes: required for classification")
        class_names = read_json(args.classes)
        if not isinstance(class_names, list) or not class_names:
            raise TokenforgeError(f"{args.classes}: expected a non-empty list of class names")
        return SplitPlan(class_names)

    @classmethod
    def training_job(cls, args, tracker):
        from tokenforge.families.classification_job import ClassificationJob

        return ClassificationJob(cls, args, tracker)

    @classmethod
    def evaluate(cls, args, tracker) -> tuple[dict, dict]:
        """Accuracy on every task's test samples, predictions among the classes seen up to task `args.task`."""
        from tokenforge.engine.evaluate import evaluate_split
        from tokenforge.models.vit import load_model
        from tokenforge.runtime import compute_device

        tasks = read_json(args.split / "tasks.json")["tasks"]
        if not 0 <= args.task < len(tasks):
            raise TokenforgeError(f"--task {args.task}: the split has tasks 0..{len(tasks) - 1}")
        model = load_model(args.model).to(compute_device())  # a GPU where the job has one
        row, samples = evaluate_split(model, args.tokens, args.shards, tasks, args.task, args.batch_size)  # streamed
        source = args.tokens if model.config.input == "tokens" else args.shards
        tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "evaluation", {"samples": samples})
        return row, {"accuracy": (row["accuracy"], row["average_accuracy"])}

    @classmethod
    def sequence_mask(cls, manifest: dict, labels: np.ndarray) -> np.ndarray:
        """The samples of the classes of the split's tasks."""
        return np.isin(labels, sorted({c for t in manifest["tasks"] for c in t["classes"]}))
