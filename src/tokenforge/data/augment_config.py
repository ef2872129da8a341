"""The augmentation settings (`augment:` in the config, `--augment-*` flags of `tokenforge train`), torch-free so
the CLI can build its flags from the dataclass without importing the augmentations themselves (data/augment.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from tokenforge.errors import TokenforgeError

PROBABILITIES = (
    "synonym_p", "synonym_token_p", "swap_p", "crop_p", "flip_p", "noise_p", "cutmix_p", "coloradapt_p", "tokenadapt_p",
)


@dataclass
class AugmentConfig:
    """Which augmentations run and how strongly; every probability is 0 by default (the identity)."""

    synonym_p: float = 0.0  # per sample: apply synonym replacement (SeiT Token-EDA)
    synonym_token_p: float = 0.25  # per token inside a chosen sample: replace by one of its top-k synonyms
    synonym_k: int = 5
    swap_p: float = 0.0  # per sample: swap two non-overlapping square regions of the id grid
    swap_fraction: float = 0.25  # side of the square as a fraction of the grid side (>= 1 token)
    crop_p: float = 0.0  # per sample: random resized crop, resized back bilinearly (soft code mixtures)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # area of the crop as a fraction of the grid's
    flip_p: float = 0.0  # per sample: horizontal flip of the map
    noise_p: float = 0.0  # per sample: embedding noise (per-channel offset + per-element Gaussian)
    noise_std: float = 0.1  # relative to the codebook's per-channel std
    cutmix_p: float = 0.0  # per batch: CutMix on the embedding maps (targets mixed by area)
    cutmix_alpha: float = 1.0
    coloradapt_p: float = 0.0  # per sample: take another sample's per-channel mean/std (AdaIN)
    tokenadapt_p: float = 0.0  # per batch: its second half goes through TokenAdapt instead (needs an adapter)

    def __post_init__(self) -> None:
        self.crop_scale = _check_scale(self.crop_scale)
        for name in PROBABILITIES:
            value = _check_number(name, getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise TokenforgeError(f"augment.{name}: must be in [0, 1], got {value}")
        if isinstance(self.synonym_k, bool) or not isinstance(self.synonym_k, int) or self.synonym_k < 1:
            raise TokenforgeError(f"augment.synonym_k: must be an integer >= 1, got {self.synonym_k!r}")
        if not 0.0 < _check_number("swap_fraction", self.swap_fraction) <= 1.0:
            raise TokenforgeError(f"augment.swap_fraction: must be in (0, 1], got {self.swap_fraction}")
        if _check_number("noise_std", self.noise_std) < 0.0:
            raise TokenforgeError(f"augment.noise_std: must be >= 0, got {self.noise_std}")
        if _check_number("cutmix_alpha", self.cutmix_alpha) <= 0.0:
            raise TokenforgeError(f"augment.cutmix_alpha: must be > 0, got {self.cutmix_alpha}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AugmentConfig":
        """A config from a mapping such as the `augment:` block of the pipeline config; unknown keys are errors."""
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise TokenforgeError(f"augment: must be a mapping of settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise TokenforgeError(f"augment: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    @property
    def active(self) -> bool:
        """True when any augmentation can fire (synonym_token_p only matters through synonym_p)."""
        return any(getattr(self, name) > 0 for name in PROBABILITIES if name != "synonym_token_p")


# Help text of each field for the CLI (`tokenforge train --help`), in the words of the comments above.
FIELD_HELP = {
    'synonym_k': 'synonyms considered per token (the first k of its list)',
    'cutmix_alpha': 'Beta(alpha, alpha) distribution of the CutMix area',
    'synonym_p': 'per sample: apply synonym replacement (SeiT Token-EDA)',
    'synonym_token_p': 'per token inside a chosen sample: replace by one of its top-k synonyms',
    'swap_p': 'per sample: swap two non-overlapping square regions of the id grid',
    'swap_fraction': 'side of the square as a fraction of the grid side (>= 1 token)',
    'crop_p': 'per sample: random resized crop, resized back bilinearly (soft code mixtures)',
    'crop_scale': "area of the crop as a fraction of the grid's",
    'flip_p': 'per sample: horizontal flip of the map',
    'noise_p': 'per sample: embedding noise (per-channel offset + per-element Gaussian)',
    'noise_std': "relative to the codebook's per-channel std",
    'cutmix_p': 'per batch: CutMix on the embedding maps (targets mixed by area)',
    'coloradapt_p': "per sample: take another sample's per-channel mean/std (AdaIN)",
    'tokenadapt_p': "per batch: its second half goes through TokenAdapt (f -> flip, rotate, translate, shear, crop -> "
    "Mixup/CutMix -> g; SeiT++, official 1.0) instead of the crop/flip/CutMix path; needs --adapter",
}


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TokenforgeError(f"augment.{name}: must be a number, got {value!r}")
    return float(value)



def _check_scale(scale: Any) -> tuple[float, float]:
    """crop_scale as a (low, high) tuple with 0 < low <= high <= 1 (a YAML/JSON list is accepted)."""
    if not isinstance(scale, (list, tuple)) or len(scale) != 2:
        raise TokenforgeError(f"augment.crop_scale: must be a pair [low, high], got {scale!r}")
    low, high = (_check_number("crop_scale", v) for v in scale)
    if not 0.0 < low <= high <= 1.0:
        raise TokenforgeError(f"augment.crop_scale: must satisfy 0 < low <= high <= 1, got {list(scale)}")
    return (low, high)

