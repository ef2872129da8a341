"""The seeded random draws of the token augmentations (data/augment.py) and of TokenAdapt's spatial transforms
(tokenizer/adapt.py): which samples an augmentation takes, a partner per sample, uniform numbers, a Beta draw, and
random resized crop boxes.

Each takes a `torch.Generator` and draws on its device, so the same seed gives the same numbers. Below both users,
so the token augmentations can run TokenAdapt's transforms and TokenAdapt can draw the crops the augmentations draw.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# A random resized crop keeps the crop's aspect ratio (relative to the grid's) within this range,
# torchvision's default, narrowed where the scale leaves no room (scale 1 means the whole grid).
CROP_RATIO = (3 / 4, 4 / 3)


def chosen(batch: int, p: float, generator: torch.Generator) -> Tensor:
    """(B,) bool: which samples an augmentation with per-sample probability p applies to."""
    return torch.rand(batch, generator=generator, device=generator.device) < p


def partners(batch: int, generator: torch.Generator) -> Tensor:
    """(B,) int64: a random partner for each sample, never itself when B > 1 (one random cycle)."""
    order = torch.randperm(batch, generator=generator, device=generator.device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def uniform(low: float, high: float, size: int, generator: torch.Generator) -> Tensor:
    """(size,) float64 uniform in [low, high)."""
    return low + (high - low) * torch.rand(size, generator=generator, device=generator.device, dtype=torch.float64)


def beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw, seeded from `generator` (torch has no seeded Beta sampler)."""
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def crop_boxes(batch: int, scale: tuple[float, float], generator: torch.Generator) -> Tensor:
    """(B, 4) float64 boxes (top, left, height, width) as fractions of the grid, for a random resized crop.

    Area fraction s ~ U(scale), aspect ratio r log-uniform in CROP_RATIO narrowed to [s, 1/s] so that the box
    (sqrt(s/r), sqrt(s*r)) always fits; the position is uniform. Scale (1, 1) gives the whole grid.
    """
    area = uniform(scale[0], scale[1], batch, generator)
    low = torch.log(torch.clamp(area, min=CROP_RATIO[0]))
    high = torch.log(torch.clamp(1 / area, max=CROP_RATIO[1]))
    ratio = torch.exp(low + (high - low) * uniform(0.0, 1.0, batch, generator))
    height = torch.clamp(torch.sqrt(area / ratio), max=1.0)
    width = torch.clamp(torch.sqrt(area * ratio), max=1.0)
    top = (1 - height) * uniform(0.0, 1.0, batch, generator)
    left = (1 - width) * uniform(0.0, 1.0, batch, generator)
    return torch.stack([top, left, height, width], dim=1)
