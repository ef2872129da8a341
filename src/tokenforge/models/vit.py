"""TokenViT, its settings, saving and loading it, and the unit helpers, from one import: the model's public face.

The model is models.tokenvit (its module docstring describes it), its settings models.config, and its files
models.store, which builds a TokenViT to load one. This module only gathers them: it sits above all three, so they
never import it, and `from tokenforge.models.vit import TokenViT, load_model` works as it always has.
"""

from tokenforge.models.config import ModelConfig
from tokenforge.models.store import load_model, save_model
from tokenforge.models.tokenvit import Probe, TokenViT, device_of, patchify, standardised

__all__ = ["ModelConfig", "Probe", "TokenViT", "device_of", "load_model", "patchify", "save_model", "standardised"]
