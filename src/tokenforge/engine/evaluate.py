r"""Evaluate the model after task t on every task's test set: one row of the accuracy matrix.

  tokenforge evaluate --model train/task-2 --tokens tokens/test.parquet --split split/ --task 2 \
      --out evaluate/task-2.json

Predictions are restricted to the classes seen up to task t (class-incremental evaluation: the
model is not told which task a test image belongs to). Tasks not learned yet score near 0.
"""

from __future__ import annotations

import numpy as np


def predict(model, ids: np.ndarray, seen: list[int], batch_size: int = 512) -> np.ndarray:
    """Class predictions among the `seen` classes for token grids `ids` (N, h, w)."""
    import torch

    from tokenforge.models.vit import device_of

    device = device_of(model)
    allowed = torch.zeros(model.config.num_classes, dtype=torch.bool, device=device)
    allowed[seen] = True
    preds = []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            logits = model(torch.from_numpy(ids[i : i + batch_size]).to(device))
            preds.append(logits.masked_fill(~allowed, float("-inf")).argmax(1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


