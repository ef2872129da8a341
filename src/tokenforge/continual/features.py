"""Pre-logit features of a model over many samples, in batches: what herding, the gradient coreset and the shortcut
probe compare samples by."""

from __future__ import annotations

import numpy as np
import torch

from tokenforge.models.vit import device_of


def pre_logit_features(model, units, positions=None, batch_size: int = 256) -> np.ndarray:
    """float32 features (M, E) of `units` (a numpy array or tensor of ids (M, h, w) or patches, or kept tokens with
    their `positions`), in eval mode without gradients; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    units = torch.from_numpy(np.ascontiguousarray(units)) if isinstance(units, np.ndarray) else units
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(units), batch_size):
                batch = units[i : i + batch_size].to(device)
                if positions is None:
                    out.append(model.features(batch).float().cpu())
                else:
                    out.append(model.features(batch, positions[i : i + batch_size].to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()
