"""The model after task t on every task's test set: one row of the accuracy matrix.

Predictions come from the task family (families/): for classification the best of the classes seen up
to task t (class-incremental evaluation: the model is not told which task a test image belongs to), so
tasks not learned yet score near 0.

The test set is streamed (`streamed_row`): batch after batch is predicted on the model's device (code ids travel at
their narrow type and become long there) and only per-task counts of right answers are kept, so memory does not grow
with the test set. A task's accuracy is right / total, the same number as the mean over its samples.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from tokenforge import families
from tokenforge.engine.loop import device_units, widened
from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import device_of


def predicted(model, units: np.ndarray, family) -> np.ndarray:
    """The family's predictions for one batch of units (B, h, w[, F]), computed on the model's device."""
    with torch.no_grad():
        logits = model(widened(device_units(np.ascontiguousarray(units)).to(device_of(model))))
        return family.predict(logits).cpu().numpy()


def predict(model, units: np.ndarray, family, batch_size: int = 512) -> np.ndarray:
    """The family's predictions for units (N, h, w[, F]), in batches, on the model's device."""
    preds = [predicted(model, units[i : i + batch_size], family) for i in range(0, len(units), batch_size)]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def streamed_row(model, batches: Iterable[tuple[np.ndarray, np.ndarray]], tasks: list[dict], after: int, source="") -> dict:
    """Row `after` of the accuracy matrix from (units, labels) batches: accuracy on each task's test samples,
    predictions among the classes seen up to task `after`; `tasks` are the split's manifests ({"task", "classes"})."""
    seen = [c for t in tasks[: after + 1] for c in t["classes"]]
    family = families.get("classification", num_classes=model.config.num_classes, seen=seen)
    right, counts = np.zeros(len(tasks), dtype=np.int64), np.zeros(len(tasks), dtype=np.int64)
    for units, labels in batches:
        preds = predicted(model, units, family)
        for j, t in enumerate(tasks):
            mask = np.isin(labels, t["classes"])
            right[j] += int(np.count_nonzero(preds[mask] == labels[mask]))
            counts[j] += int(np.count_nonzero(mask))
    accuracy = []
    for j, t in enumerate(tasks):
        if not counts[j]:
            raise TokenforgeError(f"{source}: no test samples for task {t['task']}'s classes {t['classes']}")
        accuracy.append(int(right[j]) / int(counts[j]))
    return {"task": after, "accuracy": accuracy, "num_test": [int(c) for c in counts], "seen_classes": seen,
            "average_accuracy": float(np.mean(accuracy[: after + 1]))}


def accuracy_row(model, units: np.ndarray, labels: np.ndarray, tasks: list[dict], after: int, batch_size: int = 512, source="") -> dict:
    """`streamed_row` of test units (N, h, w[, F]) and labels (N,) held in memory, in batches of `batch_size`."""
    batches = ((units[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(units), batch_size))
    return streamed_row(model, batches, tasks, after, source)


def evaluate_split(model, tokens, shards, tasks: list[dict], after: int, batch_size: int = 512) -> tuple[dict, int]:
    """Row `after` on the model's test split (its input: the token file, streamed, or the pixel shards) and the split's
    number of samples."""
    from tokenforge.data.units import UnitBatches

    batches = UnitBatches(model.config.input, tokens, shards, "test", model.config.patch, batch_size)
    source = tokens if model.config.input == "tokens" else shards
    return streamed_row(model, batches, tasks, after, source=source), batches.rows
