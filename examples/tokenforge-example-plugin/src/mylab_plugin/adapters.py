"""A model option: a bottleneck adapter beside each block's MLP (Houlsby et al. 2019), Linear(D, width) -> GELU ->
Linear(width, D), its output added to the MLP's. The second layer starts at zero, so a model starts as the plain ViT.

tokenforge calls `build(model, settings)` whenever a TokenViT with this option is made (new, from --init, or loaded
from disk), so the adapters' parameters are in every saved model and come back on load.
"""

from torch import nn

from tokenforge.models.options.base import ModelOption


def _with_adapter(module: nn.Module, inputs: tuple, output):
    """Forward hook on a block's MLP: its output plus the adapter's, on the same input."""
    return output + module.adapter(inputs[0])


class Adapters(ModelOption):
    def build(self, model, settings: dict) -> None:
        width = int(settings.get("width", 8))
        dim = model.config.embed_dim
        for block in model.vit.blocks:
            adapter = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, dim))
            nn.init.zeros_(adapter[2].weight)
            nn.init.zeros_(adapter[2].bias)
            block.mlp.adapter = adapter  # a submodule: its parameters train and are saved with the model
            block.mlp.register_forward_hook(_with_adapter)


ADAPTERS = Adapters()
