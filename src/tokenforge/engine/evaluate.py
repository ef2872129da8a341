"""The model after task t on every task's test set: one row of the accuracy matrix.

Predictions come from the task family (families/): for classification the best of the classes seen up
to task t (class-incremental evaluation: the model is not told which task a test image belongs to), so
tasks not learned yet score near 0.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenforge import families
from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import device_of


def predict(model, units: np.ndarray, family, batch_size: int = 512) -> np.ndarray:
    """The family's predictions for units (N, h, w[, F]), in batches, on the model's device."""
    device = device_of(model)
    preds = []
    with torch.no_grad():
        for i in range(0, len(units), batch_size):
            logits = model(torch.from_numpy(units[i : i + batch_size]).to(device))
            preds.append(family.predict(logits).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def accuracy_row(model, units: np.ndarray, labels: np.ndarray, tasks: list[dict], after: int, batch_size: int = 512, source="") -> dict:
    """Row `after` of the accuracy matrix: accuracy on each task's test samples, predictions among the classes seen
    up to task `after`; `tasks` are the split's manifests ({"task", "classes"})."""
    seen = [c for t in tasks[: after + 1] for c in t["classes"]]
    family = families.get("classification", num_classes=model.config.num_classes, seen=seen)
    preds = predict(model, units, family, batch_size)
    accuracy, counts = [], []
    for t in tasks:
        mask = np.isin(labels, t["classes"])
        if not mask.any():
            raise TokenforgeError(f"{source}: no test samples for task {t['task']}'s classes {t['classes']}")
        accuracy.append(float((preds[mask] == labels[mask]).mean()))
        counts.append(int(mask.sum()))
    return {"task": after, "accuracy": accuracy, "num_test": counts, "seen_classes": seen,
            "average_accuracy": float(np.mean(accuracy[: after + 1]))}
